-- Upgrades a version-4 database to version 5: the history of attempts, pauses, monotonic run
-- counters and broken callbacks (see schema.sql). New tables and columns only: no row is rewritten. Applied in
-- one transaction with the version change.

-- the job as it was before its last claim (state, started_at, state_changed_at): a callback
-- that cannot be started puts it back as it was. Added columns with no default rewrite no row.
ALTER TABLE jobs ADD COLUMN before_claim_state TEXT;
ALTER TABLE jobs ADD COLUMN before_claim_started_at INTEGER;
ALTER TABLE jobs ADD COLUMN before_claim_changed_at INTEGER;

-- every kept attempt of a job, oldest first, for `bgq show` (a setting bounds how many
-- are kept per job; `clear` deletes them with their job). A callback that could not start is not
-- an attempt and has no row.
CREATE TABLE attempts (
    id         INTEGER PRIMARY KEY,
    job_id     INTEGER NOT NULL,
    -- BGQ_ATTEMPT of the run (a WAITING run does not count, so two rows may share a number).
    attempt    INTEGER NOT NULL,
    -- The `process` run (runs.id) that ran it.
    run_id     INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    ended_at   INTEGER NOT NULL,
    -- finished, temporarily_failed, waiting, permanently_failed, timeout, cancelled, recovered
    outcome    TEXT    NOT NULL,
    exit_code  INTEGER,
    signal     INTEGER,
    -- Tail of what the run printed (stdout and stderr).
    output     BLOB
);
CREATE INDEX attempts_job ON attempts (job_id, id);

-- paused queues and callbacks (`bgq pause`); '' stands for every queue or every
-- callback. A paused job stays due, and no run claims it until resumed.
CREATE TABLE pauses (
    queue     TEXT    NOT NULL,
    callback  TEXT    NOT NULL,
    paused_at INTEGER NOT NULL,
    PRIMARY KEY (queue, callback)
) WITHOUT ROWID;

-- runs of jobs counted since the queue began, per callback and outcome (the values of
-- attempts.outcome), never pruned: the monotonic `_total` counters of `stats --prometheus`.
CREATE TABLE run_totals (
    queue    TEXT    NOT NULL,
    callback TEXT    NOT NULL,
    outcome  TEXT    NOT NULL,
    total    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, callback, outcome)
) WITHOUT ROWID;

-- callbacks whose command could not be started (missing, not executable, missing
-- interpreter or working_dir): a deployment problem, reported by `status` until a run of that
-- queue starts the callback again.
CREATE TABLE broken_callbacks (
    queue    TEXT    NOT NULL,
    callback TEXT    NOT NULL,
    reason   TEXT    NOT NULL,
    since    INTEGER NOT NULL,
    run_id   INTEGER NOT NULL,
    PRIMARY KEY (queue, callback)
) WITHOUT ROWID;

-- jobs that `clear --state` deleted without their having FINISHED (PERMANENTLY_FAILED or
-- CANCELLED). A gone job otherwise counts as FINISHED for `--after` (only FINISHED jobs were ever
-- cleared before); one listed here never finishes, so the jobs waiting for it keep waiting, and
-- `status` reports them.
CREATE TABLE cleared_unfinished (
    id         INTEGER PRIMARY KEY,
    state      TEXT    NOT NULL,
    cleared_at INTEGER NOT NULL
);

PRAGMA user_version = 5;
