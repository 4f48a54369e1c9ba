-- Upgrades a version-3 database to version 4: `bgq cancel --kill` leaves a running job
-- PROCESSING, marked, until its callback has ended. Applied in one transaction with the
-- version change.

-- O(1): the rows are not rewritten.
ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;

PRAGMA user_version = 4;
