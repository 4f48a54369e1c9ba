-- Upgrades a version-6 schema to version 7: the kept job counts of `stats` and `status` (see
-- schema.sql), filled from the jobs there are. Applied with search_path set to bgq's schema, in
-- one transaction with the version change and the functions of revision 5 (whose triggers keep
-- the counts from then on), under the upgrade lock. The lock on jobs lets readers on and holds
-- writers until the commit, so that no change falls between the count and the triggers.

LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE;
-- How many jobs each (queue, callback) has in each state, for `stats` and `status`,
-- which would otherwise count the whole table (it grows with the FINISHED jobs `clear` has not
-- pruned): job_counts plus the not yet folded rows of job_count_deltas. Each change of a job
-- adds a row to job_count_deltas in its own transaction (the triggers of functions.sql; `clear`
-- counts what it deletes), which contends with nothing; fold_job_counts() moves them into
-- job_counts, one folder at a time. A row of job_counts may fall to 0.
CREATE TABLE job_counts (
    queue    text   NOT NULL,
    callback text   NOT NULL,
    state    text   NOT NULL,
    jobs     bigint NOT NULL,
    PRIMARY KEY (queue, callback, state)
);
CREATE TABLE job_count_deltas (
    queue    text   NOT NULL,
    callback text   NOT NULL,
    state    text   NOT NULL,
    jobs     bigint NOT NULL
);

INSERT INTO job_counts (queue, callback, state, jobs)
SELECT queue, callback, state, count(*) FROM jobs GROUP BY queue, callback, state;

-- The index of jobs waiting for `--after` jobs (see schema.sql).
CREATE INDEX jobs_blocked ON jobs (id) WHERE blocked_by > 0;

UPDATE meta SET value = '7' WHERE key = 'version';
