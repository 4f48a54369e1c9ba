-- Upgrades a version-2 database to version 3: priorities, `--after` dependencies, unique jobs,
-- serial groups held by failed jobs, and `process --watch` runs. Applied in one transaction
-- with the version change.

-- O(1): the rows are not rewritten.
ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN blocked_by INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN is_unique INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN watch INTEGER NOT NULL DEFAULT 0;

-- Building an index reads the whole jobs table once (see BENCHMARKS.md, "Issue 6", for the
-- time per million jobs).
-- The claim index changes its name too: a `process` of bgq 2 still running when the file is
-- upgraded fails at its next claim (its statement names jobs_claim) instead of claiming
-- without priorities and `--after`; the next run recovers the jobs it was running.
DROP INDEX jobs_claim;
CREATE INDEX jobs_ready ON jobs (queue, priority DESC, id) WHERE due = 1 AND blocked_by = 0;
DROP INDEX jobs_schedule;
CREATE INDEX jobs_schedule ON jobs (queue, run_at)
    WHERE due = 0 AND blocked_by = 0 AND state IN ('READY', 'TEMPORARILY_FAILED', 'WAITING');
CREATE INDEX jobs_serial_failed ON jobs (serial_group, callback, id)
    WHERE serial_group IS NOT NULL AND state = 'PERMANENTLY_FAILED';
CREATE UNIQUE INDEX jobs_unique ON jobs (queue, identifier)
    WHERE is_unique = 1 AND state != 'FINISHED';

CREATE TABLE dependencies (
    job_id   INTEGER NOT NULL,
    after_id INTEGER NOT NULL,
    PRIMARY KEY (job_id, after_id)
) WITHOUT ROWID;
CREATE INDEX dependencies_after ON dependencies (after_id);

PRAGMA user_version = 3;
