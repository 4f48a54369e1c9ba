-- Upgrades a version-6 database to version 7: the kept job counts of `stats` and `status` (see
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

-- The completion of a batch (version 6) publishes its jobs itself: it now counts them too.
DROP TRIGGER batches_complete;
-- Completion: a sealed batch whose last member ended, or sealed with none unfinished. Its jobs
-- are published in the same transaction, once (completed_at), their parameters stored as JSON
-- text after the byte 0xc1, which MessagePack never uses (job::JSON_TEXT): SQLite's own JSON
-- functions write them, so that any SQLite client may change a job's state.
CREATE TRIGGER batches_complete AFTER UPDATE OF unfinished, sealed_at ON batches
WHEN NEW.unfinished = 0 AND NEW.sealed_at IS NOT NULL AND NEW.completed_at IS NULL
BEGIN
    UPDATE batches SET completed_at = NEW.changed_at WHERE id = NEW.id;
    INSERT INTO jobs (queue, callback, payload, created_at, run_at, state_changed_at)
        SELECT NEW.queue, NEW.on_complete,
               CAST(X'c1' || json_object(
                   'batch', NEW.id, 'description', NEW.description,
                   'counts', json_object('FINISHED', NEW.finished,
                                         'PERMANENTLY_FAILED', NEW.failed,
                                         'CANCELLED', NEW.cancelled),
                   'unfinished_ids', json((SELECT json_group_array(u.id) FROM (
                       SELECT m.id FROM jobs m WHERE m.batch_id = NEW.id
                          AND m.state != 'FINISHED' ORDER BY m.id) u)),
                   'params', json(NEW.on_complete_params)) AS BLOB),
               NEW.changed_at, NEW.changed_at, NEW.changed_at
        WHERE NEW.on_complete IS NOT NULL;
    UPDATE batches SET complete_job = last_insert_rowid()
        WHERE id = NEW.id AND NEW.on_complete IS NOT NULL;
    INSERT INTO jobs (queue, callback, payload, created_at, run_at, state_changed_at)
        SELECT NEW.queue, NEW.on_success,
               CAST(X'c1' || json_object(
                   'batch', NEW.id, 'description', NEW.description,
                   'counts', json_object('FINISHED', NEW.finished,
                                         'PERMANENTLY_FAILED', NEW.failed,
                                         'CANCELLED', NEW.cancelled),
                   'unfinished_ids', json('[]'),
                   'params', json(NEW.on_success_params)) AS BLOB),
               NEW.changed_at, NEW.changed_at, NEW.changed_at
        WHERE NEW.on_success IS NOT NULL AND NEW.failed = 0 AND NEW.cancelled = 0;
    UPDATE batches SET success_job = last_insert_rowid()
        WHERE id = NEW.id AND NEW.on_success IS NOT NULL AND NEW.failed = 0 AND NEW.cancelled = 0;
    -- Version 7: the kept counts (job_counts) count jobs as they enter, and these enter here.
    INSERT INTO job_counts (queue, callback, state, jobs)
        SELECT NEW.queue, NEW.on_complete, 'READY', 1 WHERE NEW.on_complete IS NOT NULL
        ON CONFLICT (queue, callback, state) DO UPDATE SET jobs = jobs + 1;
    INSERT INTO job_counts (queue, callback, state, jobs)
        SELECT NEW.queue, NEW.on_success, 'READY', 1
        WHERE NEW.on_success IS NOT NULL AND NEW.failed = 0 AND NEW.cancelled = 0
        ON CONFLICT (queue, callback, state) DO UPDATE SET jobs = jobs + 1;
END;

PRAGMA user_version = 7;
