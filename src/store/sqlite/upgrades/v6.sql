-- Upgrades a version-5 database to version 6: the kept job counts of `stats` and `status` (see
-- schema.sql), filled from the jobs there are, and the indexes their other reads seek. Applied in one transaction with the version
-- change, which holds the database's write lock: no job changes between the count and the
-- triggers.
-- How many jobs each (queue, callback) has in each state, kept in the transaction of
-- every change so that `stats` and `status` read a few rows instead of counting the table (which
-- grows with the FINISHED jobs `clear` has not pruned). A change of a job's state is counted by
-- the trigger below. Jobs enter through one statement and leave through one, which count
-- themselves in the same transaction, once per (queue, callback) rather than per row: `publish`
-- (a per-row trigger cost --jsonl a fifth of its speed) and `clear` (40 % slower on a million
-- rows). A row may fall to 0.
CREATE TABLE job_counts (
    queue    TEXT    NOT NULL,
    callback TEXT    NOT NULL,
    state    TEXT    NOT NULL,
    jobs     INTEGER NOT NULL,
    PRIMARY KEY (queue, callback, state)
) WITHOUT ROWID;
CREATE TRIGGER jobs_count_update AFTER UPDATE OF queue, callback, state ON jobs
WHEN NEW.state IS NOT OLD.state OR NEW.queue IS NOT OLD.queue OR NEW.callback IS NOT OLD.callback
BEGIN
    UPDATE job_counts SET jobs = jobs - 1
    WHERE queue = OLD.queue AND callback = OLD.callback AND state = OLD.state;
    INSERT INTO job_counts (queue, callback, state, jobs)
    VALUES (NEW.queue, NEW.callback, NEW.state, 1)
    ON CONFLICT (queue, callback, state) DO UPDATE SET jobs = jobs + 1;
END;

INSERT INTO job_counts (queue, callback, state, jobs)
SELECT queue, callback, state, count(*) FROM jobs GROUP BY queue, callback, state;

-- run_at added to the claim index, and the index of jobs waiting for `--after` jobs: `status`
-- and `stats` read them instead of every unfinished or failed job. Each index is built from one
-- pass over the table.
DROP INDEX jobs_ready;
CREATE INDEX jobs_ready ON jobs (queue, priority DESC, id, run_at) WHERE due = 1 AND blocked_by = 0;
CREATE INDEX jobs_blocked ON jobs (id) WHERE blocked_by > 0;

PRAGMA user_version = 6;
