-- bgq: the canonical schema. The binary embeds this file and applies it to a new database;
-- `PRAGMA user_version` records which version a database has.
--
-- Times are Unix epoch milliseconds (UTC). States are the names of SPEC.md section 4, and
-- CANCELLED (`bgq cancel`). Older databases are upgraded by the files in src/store/sqlite/upgrades/.

CREATE TABLE jobs (
    -- AUTOINCREMENT: ids must keep increasing in publish order even after `clear` deleted the newest.
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    queue         TEXT    NOT NULL,
    callback      TEXT    NOT NULL,
    -- The parameters as MessagePack: a JSON value, or a `bin` holding the exact bytes of a --raw job.
    payload       BLOB    NOT NULL,
    state         TEXT    NOT NULL DEFAULT 'READY',
    -- Runs that counted (a run that ended WAITING does not).
    attempts      INTEGER NOT NULL DEFAULT 0,
    serial_group  TEXT,
    identifier    TEXT,
    created_at    INTEGER NOT NULL,
    -- When the job is due (publish time, end of its backoff, or the WAITING run's end).
    run_at        INTEGER NOT NULL,
    -- 1 while the job is in the claim path: runnable now, waiting only for a free slot. 0 while it
    -- waits for run_at or for the next `process` run, so that future jobs never slow claims down.
    due           INTEGER NOT NULL DEFAULT 1,
    started_at    INTEGER,
    finished_at   INTEGER,
    -- The `process` run (runs.id) that started the job last; one run starts a job at most once.
    -- (The process group running it is recorded in that run's lock file: see running_log.rs.)
    claimed_run   INTEGER NOT NULL DEFAULT 0,
    -- Tail of what the last run printed (stdout and stderr).
    output        BLOB,
    -- 1 once the notify_on_attempts notice went out.
    notified      INTEGER NOT NULL DEFAULT 0,
    -- When the state last changed (version 2; columns added by upgrades go last, so that an
    -- upgraded database and a new one have the same columns in the same order).
    state_changed_at INTEGER NOT NULL DEFAULT 0,
    -- Version 3. Higher runs first among the due jobs of a queue (`publish --priority`).
    priority      INTEGER NOT NULL DEFAULT 0,
    -- How many of its `--after` jobs have not FINISHED; until 0 the job is never due.
    blocked_by    INTEGER NOT NULL DEFAULT 0,
    -- 1 for a job published with `--unique`: its identifier is unique among unfinished jobs of
    -- its queue (jobs_unique).
    is_unique     INTEGER NOT NULL DEFAULT 0,
    -- Version 4. 1 while `bgq cancel --kill` stops the job's callback: the job stays PROCESSING,
    -- holding its serial group, until its run sees the callback end and stores it CANCELLED.
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    -- Version 5. The job as it was before its last claim (state, started_at, state_changed_at):
    -- a callback that cannot be started puts it back as it was (SPEC section 5).
    before_claim_state      TEXT,
    before_claim_started_at INTEGER,
    before_claim_changed_at INTEGER,
    -- Version 6. The batch it belongs to (batches.id), if any.
    batch_id      INTEGER
);

-- The claim path: runnable jobs of a queue, highest priority first, then oldest first. (Named
-- jobs_claim up to version 2: a `process` of bgq 2 still running when the file is upgraded
-- fails at its next claim instead of claiming without priorities and `--after`.)
-- (Version 7: run_at last, so that `stats` and `status` find how many jobs are due and since
-- when from this index alone; the claim reads only the first three columns.)
CREATE INDEX jobs_ready ON jobs (queue, priority DESC, id, run_at) WHERE due = 1 AND blocked_by = 0;
-- Jobs waiting for their time (delay, backoff, WAITING), found by time when they fall due; jobs
-- still waiting for their `--after` jobs stay out until those finish.
CREATE INDEX jobs_schedule ON jobs (queue, run_at)
    WHERE due = 0 AND blocked_by = 0 AND state IN ('READY', 'TEMPORARILY_FAILED', 'WAITING');
-- Unfinished jobs of a serial group, to hold back younger ones.
CREATE INDEX jobs_serial ON jobs (serial_group, id)
    WHERE serial_group IS NOT NULL
      AND state IN ('READY', 'PROCESSING', 'TEMPORARILY_FAILED', 'WAITING');
-- PERMANENTLY_FAILED jobs of a serial group, which hold it when their callback says
-- serial_failure = "block". Apart from jobs_serial, so that the failures a long-lived group
-- collects cost nothing to groups that skip them.
CREATE INDEX jobs_serial_failed ON jobs (serial_group, callback, id)
    WHERE serial_group IS NOT NULL AND state = 'PERMANENTLY_FAILED';
-- Jobs left PROCESSING, for orphan recovery.
CREATE INDEX jobs_processing ON jobs (queue) WHERE state = 'PROCESSING';
-- `list --state S`, `--queue Q`, `--callback C`: newest first, however large the table.
-- jobs_state also walks `clear` through the FINISHED jobs in id order.
CREATE INDEX jobs_state ON jobs (state, id);
-- FINISHED jobs stay out of these two, so that `clear` has fewer entries to delete: `list`
-- reads FINISHED jobs through jobs_state.
CREATE INDEX jobs_queue ON jobs (queue, id) WHERE state != 'FINISHED';
CREATE INDEX jobs_callback ON jobs (callback, id) WHERE state != 'FINISHED';
-- Version 7. Jobs waiting for their `--after` jobs, for `status` to find those waiting for one
-- that will never finish without reading every failed job.
CREATE INDEX jobs_blocked ON jobs (id) WHERE blocked_by > 0;
-- `list --identifier` and `list --unfinished`.
CREATE INDEX jobs_identifier ON jobs (identifier, state) WHERE identifier IS NOT NULL;
-- `publish --unique`: one unfinished unique job per queue and identifier, even when publishers
-- race.
CREATE UNIQUE INDEX jobs_unique ON jobs (queue, identifier)
    WHERE is_unique = 1 AND state != 'FINISHED';

-- `publish --after`: job_id runs only after after_id FINISHED.
CREATE TABLE dependencies (
    job_id   INTEGER NOT NULL,
    after_id INTEGER NOT NULL,
    PRIMARY KEY (job_id, after_id)
) WITHOUT ROWID;
-- The jobs waiting for a job that just finished.
CREATE INDEX dependencies_after ON dependencies (after_id);

-- One row per `process` run: numbers the runs and records when each ran.
CREATE TABLE runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    queue       TEXT    NOT NULL,
    -- The `process` that ran it (pid, start ticks, boot id): recovery leaves alone the jobs of a
    -- run that still lives, even if a misconfigured temp_dir let it bypass the lock.
    pid         INTEGER NOT NULL,
    pid_started INTEGER NOT NULL,
    boot_id     TEXT    NOT NULL,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    -- Version 2: jobs the run started, how many of them failed, and why the run itself failed.
    jobs        INTEGER NOT NULL DEFAULT 0,
    failed      INTEGER NOT NULL DEFAULT 0,
    error       TEXT,
    -- Version 3: 1 for a `process --watch` run, which holds the lock for as long as it lives.
    watch       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX runs_queue ON runs (queue, id);

-- How runs of jobs ended, counted per queue and minute, for `bgq stats` (kept for two days).
CREATE TABLE outcomes (
    queue              TEXT    NOT NULL,
    -- Unix epoch minutes.
    minute             INTEGER NOT NULL,
    finished           INTEGER NOT NULL DEFAULT 0,
    temporarily_failed INTEGER NOT NULL DEFAULT 0,
    permanently_failed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, minute)
) WITHOUT ROWID;

-- Notices not yet sent. Each is stored with the job's new state, in one transaction, and deleted
-- once sent: a `process` that dies before sending its digest leaves them to the next run.
CREATE TABLE notices (
    id         INTEGER PRIMARY KEY,
    queue      TEXT    NOT NULL,
    job_id     INTEGER NOT NULL,
    -- attempts, failed, orphan or recovered
    kind       TEXT    NOT NULL,
    reason     TEXT    NOT NULL,
    -- Tail of what the job's run printed.
    output     BLOB,
    created_at INTEGER NOT NULL
);
CREATE INDEX notices_queue ON notices (queue, id);

-- Version 5: every kept attempt of a job, oldest first, for `bgq show` (a setting bounds how many
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

-- Version 5: paused queues and callbacks (`bgq pause`); '' stands for every queue or every
-- callback. A paused job stays due, and no run claims it until resumed.
CREATE TABLE pauses (
    queue     TEXT    NOT NULL,
    callback  TEXT    NOT NULL,
    paused_at INTEGER NOT NULL,
    PRIMARY KEY (queue, callback)
) WITHOUT ROWID;

-- Version 5: runs of jobs counted since the queue began, per callback and outcome (the values of
-- attempts.outcome), never pruned: the monotonic `_total` counters of `stats --prometheus`.
CREATE TABLE run_totals (
    queue    TEXT    NOT NULL,
    callback TEXT    NOT NULL,
    outcome  TEXT    NOT NULL,
    total    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, callback, outcome)
) WITHOUT ROWID;

-- Version 5: callbacks whose command could not be started (missing, not executable, missing
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

-- Version 5: jobs that `clear --state` deleted without their having FINISHED (PERMANENTLY_FAILED or
-- CANCELLED). A gone job otherwise counts as FINISHED for `--after` (only FINISHED jobs were ever
-- cleared before); one listed here never finishes, so the jobs waiting for it keep waiting, and
-- `status` reports them.
CREATE TABLE cleared_unfinished (
    id         INTEGER PRIMARY KEY,
    state      TEXT    NOT NULL,
    cleared_at INTEGER NOT NULL
);

-- Version 6: batches (SPEC section 11). A batch is a set of jobs (jobs.batch_id) with a job to
-- publish when all of them have ended. Its counters follow its members' states in the
-- transaction of every change (the triggers below), so that an outcome costs one row's update
-- and never a count over the batch; completed_at guards the completion jobs to once.
CREATE TABLE batches (
    -- AUTOINCREMENT: ids keep increasing even after `clear` pruned the newest.
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    -- The queue of its completion jobs.
    queue         TEXT    NOT NULL,
    description   TEXT,
    -- Callbacks published when it completes (on_success: only when every member FINISHED),
    -- with the JSON text given for their `params` (NULL: none).
    on_complete        TEXT,
    on_complete_params TEXT,
    on_success         TEXT,
    on_success_params  TEXT,
    created_at    INTEGER NOT NULL,
    -- Set by `bgq batch seal`: from then on only its running members add jobs.
    sealed_at     INTEGER,
    completed_at  INTEGER,
    -- When a member last moved into or out of a final state (or the batch was sealed): the
    -- completion's time, as the triggers know no clock.
    changed_at    INTEGER NOT NULL,
    -- The jobs its completion published.
    complete_job  INTEGER,
    success_job   INTEGER,
    -- Members READY, PROCESSING, TEMPORARILY_FAILED or WAITING; and members per final state.
    unfinished    INTEGER NOT NULL DEFAULT 0,
    finished      INTEGER NOT NULL DEFAULT 0,
    failed        INTEGER NOT NULL DEFAULT 0,
    cancelled     INTEGER NOT NULL DEFAULT 0
);
-- `stats` and `batch list` find the open batches without reading the completed ones.
CREATE INDEX batches_open ON batches (id) WHERE completed_at IS NULL;
-- `list --batch`, `cancel --batch`, `retry --batch`, the completion's unfinished_ids and the
-- prune of `clear`. It holds no state, so a member's state changes never touch it.
CREATE INDEX jobs_batch ON jobs (batch_id, id) WHERE batch_id IS NOT NULL;

-- A new member is unfinished.
CREATE TRIGGER jobs_batch_insert AFTER INSERT ON jobs WHEN NEW.batch_id IS NOT NULL
BEGIN
    UPDATE batches SET unfinished = unfinished + 1 WHERE id = NEW.batch_id;
END;

-- A member moving into or out of a final state (an outcome, a cancel, a retry, a recovery).
-- Moves among the unfinished states (a claim, a backoff) do not fire it.
CREATE TRIGGER jobs_batch_state AFTER UPDATE OF state ON jobs
WHEN NEW.batch_id IS NOT NULL AND NEW.state != OLD.state
 AND (NEW.state IN ('FINISHED', 'PERMANENTLY_FAILED', 'CANCELLED')
      OR OLD.state IN ('FINISHED', 'PERMANENTLY_FAILED', 'CANCELLED'))
BEGIN
    UPDATE batches SET
        unfinished = unfinished
            + (NEW.state NOT IN ('FINISHED', 'PERMANENTLY_FAILED', 'CANCELLED'))
            - (OLD.state NOT IN ('FINISHED', 'PERMANENTLY_FAILED', 'CANCELLED')),
        finished = finished + (NEW.state = 'FINISHED') - (OLD.state = 'FINISHED'),
        failed = failed + (NEW.state = 'PERMANENTLY_FAILED') - (OLD.state = 'PERMANENTLY_FAILED'),
        cancelled = cancelled + (NEW.state = 'CANCELLED') - (OLD.state = 'CANCELLED'),
        changed_at = NEW.state_changed_at
    WHERE id = NEW.batch_id;
END;

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

-- Version 7. How many jobs each (queue, callback) has in each state, kept in the transaction of
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

PRAGMA user_version = 7;
