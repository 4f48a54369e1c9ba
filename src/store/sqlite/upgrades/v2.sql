-- Upgrades a version-1 database to version 2: state times, run outcomes for `bgq stats`, and
-- stored notices for the per-run digest. Applied in one transaction with the version change.

-- Every ALTER here is O(1): a large queue is upgraded at once, without rewriting its rows (jobs
-- stored before keep state_changed_at 0, read as their last known time).
ALTER TABLE jobs ADD COLUMN state_changed_at INTEGER NOT NULL DEFAULT 0;

ALTER TABLE runs ADD COLUMN jobs INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN failed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN error TEXT;

CREATE TABLE outcomes (
    queue              TEXT    NOT NULL,
    minute             INTEGER NOT NULL,
    finished           INTEGER NOT NULL DEFAULT 0,
    temporarily_failed INTEGER NOT NULL DEFAULT 0,
    permanently_failed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, minute)
) WITHOUT ROWID;

CREATE TABLE notices (
    id         INTEGER PRIMARY KEY,
    queue      TEXT    NOT NULL,
    job_id     INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    reason     TEXT    NOT NULL,
    output     BLOB,
    created_at INTEGER NOT NULL
);
CREATE INDEX notices_queue ON notices (queue, id);

PRAGMA user_version = 2;
