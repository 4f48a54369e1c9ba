-- Upgrades a version-2 database to version 3: priorities, `--after` dependencies, unique jobs,
-- serial groups held by failed jobs, and `process --watch` runs. Applied in one transaction
-- with the version change.

-- O(1): the rows are not rewritten.
ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN blocked_by INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN is_unique INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN watch INTEGER NOT NULL DEFAULT 0;

-- Three partial indexes change their columns or condition. Building one reads the whole jobs
-- table once (see BENCHMARKS.md, "Issue 6", for the time per million jobs).
DROP INDEX jobs_claim;
CREATE INDEX jobs_claim ON jobs (queue, priority DESC, id) WHERE due = 1;
DROP INDEX jobs_schedule;
CREATE INDEX jobs_schedule ON jobs (queue, run_at)
    WHERE due = 0 AND blocked_by = 0 AND state IN ('READY', 'TEMPORARILY_FAILED', 'WAITING');
DROP INDEX jobs_serial;
CREATE INDEX jobs_serial ON jobs (serial_group, id)
    WHERE serial_group IS NOT NULL
      AND state IN ('READY', 'PROCESSING', 'TEMPORARILY_FAILED', 'WAITING', 'PERMANENTLY_FAILED');
CREATE UNIQUE INDEX jobs_unique ON jobs (queue, identifier)
    WHERE is_unique = 1 AND state != 'FINISHED';

CREATE TABLE dependencies (
    job_id   INTEGER NOT NULL,
    after_id INTEGER NOT NULL,
    PRIMARY KEY (job_id, after_id)
) WITHOUT ROWID;
CREATE INDEX dependencies_after ON dependencies (after_id);

PRAGMA user_version = 3;
