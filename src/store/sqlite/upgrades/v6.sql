-- Upgrades a version-5 database to version 6: batches (see schema.sql). A new table, column,
-- index and triggers only: no row is rewritten. Applied in one transaction with the version change.

-- the batch a job belongs to (batches.id), if any.
ALTER TABLE jobs ADD COLUMN batch_id INTEGER;

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
END;

PRAGMA user_version = 6;
