//! Reading a whole SQLite queue for `bgq migrate`, without changing its file: a read-only
//! connection (so no schema upgrade, no checkpoint, no write of any kind) and one read
//! transaction, so that every table is read from the same snapshot while `publish` and
//! `process` may go on writing. Rows stream out one at a time (see `store::transfer`): a
//! queue of millions of jobs is never held in memory.

use std::path::Path;

use anyhow::{Context, bail};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::{BUSY_TIMEOUT, SCHEMA_VERSION};
use crate::coord::process_group::ProcessRecord;
use crate::store::transfer::{
    AttemptRow, BATCH_ROW_COLUMNS, BatchRow, DependencyRow, JobRow, NoticeRow, OutcomeRow, RunRow,
    Source, StateRow,
};

/// A SQLite queue opened for reading only.
pub struct SqliteExport {
    conn: Connection,
    /// Its canonical path (as `Store::identity` names it: lock names are derived from it).
    identity: String,
    /// Whether the read transaction has begun.
    reading: bool,
}

/// A `process` run recorded as not ended: alive, or died without ending.
#[derive(Debug, Clone)]
pub struct UnfinishedRun {
    /// Run number.
    pub id: i64,
    /// Queue it runs.
    pub queue: String,
    /// The process that runs it.
    pub runner: ProcessRecord,
}

impl SqliteExport {
    /// Opens the bgq database at `path` read-only; refuses a file that is missing, not bgq's,
    /// or of another schema version than this bgq's (an older one is upgraded by any other
    /// command of this bgq, which this one must not do to a file it only reads).
    pub fn open(path: &Path) -> anyhow::Result<SqliteExport> {
        let shown = path.display();
        if !path.exists() {
            bail!("there is no database at {shown}: nothing to migrate");
        }
        if let Some(problem) = crate::coord::trust::database_folder_problem(path) {
            bail!(problem);
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("cannot open database {shown} to read it"))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .with_context(|| format!("cannot read database {shown}"))?;
        if version == 0 {
            bail!("{shown} is not a bgq database");
        }
        if version > SCHEMA_VERSION {
            bail!(
                "{shown} has schema version {version}, newer than this bgq knows ({SCHEMA_VERSION}): upgrade bgq"
            );
        }
        if version < SCHEMA_VERSION {
            bail!(
                "{shown} has schema version {version}: run any other command of this bgq on it once (e.g. `bgq stats`) to upgrade it to {SCHEMA_VERSION}, then migrate"
            );
        }
        let identity = std::fs::canonicalize(path)
            .with_context(|| format!("cannot resolve {shown}"))?
            .to_string_lossy()
            .into_owned();
        Ok(SqliteExport {
            conn,
            identity,
            reading: false,
        })
    }

    /// The database as bgq names it (see `Store::identity`).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Every queue that has a job or a recorded run, sorted.
    pub fn queues(&self) -> anyhow::Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT queue FROM jobs UNION SELECT queue FROM runs ORDER BY 1")?;
        let rows = stmt.query_map([], |row| row.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Starts the snapshot every later read sees. Call it once the queues' locks are held, so
    /// that what runs finished before is in it.
    pub fn begin(&mut self) -> anyhow::Result<()> {
        if !self.reading {
            self.conn.execute_batch("BEGIN DEFERRED")?;
            // A deferred transaction takes its snapshot at its first read.
            self.conn
                .query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
            self.reading = true;
        }
        Ok(())
    }

    /// The runs recorded as not ended, whose jobs may still be running.
    pub fn unfinished_runs(&self) -> anyhow::Result<Vec<UnfinishedRun>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, queue, pid, pid_started, boot_id FROM runs
             WHERE finished_at IS NULL ORDER BY id",
        )?;
        let rows = stmt.query_map([], |row| {
            let started: i64 = row.get(3)?;
            Ok(UnfinishedRun {
                id: row.get(0)?,
                queue: row.get(1)?,
                runner: ProcessRecord {
                    pid: row.get(2)?,
                    started: u64::try_from(started).unwrap_or_default(),
                    boot_id: row.get(4)?,
                },
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The highest id AUTOINCREMENT handed out in `table` (0: none yet).
    fn sequence(&self, table: &str) -> anyhow::Result<i64> {
        Ok(self
            .conn
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = ?1",
                [table],
                |row| row.get(0),
            )
            .optional()?
            .unwrap_or(0))
    }

    /// Runs `sql` and hands each row, made by `read`, to `each`.
    fn stream<T>(
        &mut self,
        sql: &str,
        read: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
        each: &mut dyn FnMut(T) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        self.begin()?;
        let mut stmt = self.conn.prepare(sql)?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            each(read(row)?)?;
        }
        Ok(())
    }
}

impl Source for SqliteExport {
    fn jobs(&mut self, each: &mut dyn FnMut(JobRow) -> anyhow::Result<()>) -> anyhow::Result<()> {
        self.stream(
            "SELECT id, queue, callback, payload, state, attempts, serial_group, identifier,
                    created_at, run_at, due, started_at, finished_at, claimed_run, output,
                    notified, state_changed_at, priority, blocked_by, is_unique, cancel_requested,
                    batch_id
             FROM jobs ORDER BY id",
            |row| {
                Ok(JobRow {
                    id: row.get(0)?,
                    queue: row.get(1)?,
                    callback: row.get(2)?,
                    payload: row.get(3)?,
                    state: row.get(4)?,
                    attempts: row.get(5)?,
                    serial_group: row.get(6)?,
                    identifier: row.get(7)?,
                    created_at: row.get(8)?,
                    run_at: row.get(9)?,
                    due: row.get(10)?,
                    started_at: row.get(11)?,
                    finished_at: row.get(12)?,
                    claimed_run: row.get(13)?,
                    output: row.get(14)?,
                    notified: row.get(15)?,
                    state_changed_at: row.get(16)?,
                    priority: row.get(17)?,
                    blocked_by: row.get(18)?,
                    is_unique: row.get(19)?,
                    cancel_requested: row.get(20)?,
                    batch_id: row.get(21)?,
                })
            },
            each,
        )
    }

    fn dependencies(
        &mut self,
        each: &mut dyn FnMut(DependencyRow) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        self.stream(
            "SELECT job_id, after_id FROM dependencies ORDER BY job_id, after_id",
            |row| {
                Ok(DependencyRow {
                    job_id: row.get(0)?,
                    after_id: row.get(1)?,
                })
            },
            each,
        )
    }

    fn runs(&mut self, each: &mut dyn FnMut(RunRow) -> anyhow::Result<()>) -> anyhow::Result<()> {
        self.stream(
            "SELECT id, queue, pid, pid_started, boot_id, started_at, finished_at, jobs, failed,
                    error, watch
             FROM runs ORDER BY id",
            |row| {
                Ok(RunRow {
                    id: row.get(0)?,
                    queue: row.get(1)?,
                    pid: row.get(2)?,
                    pid_started: row.get(3)?,
                    boot_id: row.get(4)?,
                    started_at: row.get(5)?,
                    finished_at: row.get(6)?,
                    jobs: row.get(7)?,
                    failed: row.get(8)?,
                    error: row.get(9)?,
                    watch: row.get(10)?,
                })
            },
            each,
        )
    }

    fn outcomes(
        &mut self,
        each: &mut dyn FnMut(OutcomeRow) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        self.stream(
            "SELECT queue, minute, finished, temporarily_failed, permanently_failed
             FROM outcomes ORDER BY queue, minute",
            |row| {
                Ok(OutcomeRow {
                    queue: row.get(0)?,
                    minute: row.get(1)?,
                    finished: row.get(2)?,
                    temporarily_failed: row.get(3)?,
                    permanently_failed: row.get(4)?,
                })
            },
            each,
        )
    }

    fn notices(
        &mut self,
        each: &mut dyn FnMut(NoticeRow) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        self.stream(
            "SELECT id, queue, job_id, kind, reason, output, created_at FROM notices ORDER BY id",
            |row| {
                Ok(NoticeRow {
                    id: row.get(0)?,
                    queue: row.get(1)?,
                    job_id: row.get(2)?,
                    kind: row.get(3)?,
                    reason: row.get(4)?,
                    output: row.get(5)?,
                    created_at: row.get(6)?,
                })
            },
            each,
        )
    }

    fn attempts(
        &mut self,
        each: &mut dyn FnMut(AttemptRow) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        self.stream(
            "SELECT id, job_id, attempt, run_id, started_at, ended_at, outcome, exit_code, signal,
                    output
             FROM attempts ORDER BY id",
            |row| {
                Ok(AttemptRow {
                    id: row.get(0)?,
                    job_id: row.get(1)?,
                    attempt: row.get(2)?,
                    run_id: row.get(3)?,
                    started_at: row.get(4)?,
                    ended_at: row.get(5)?,
                    outcome: row.get(6)?,
                    exit_code: row.get(7)?,
                    signal: row.get(8)?,
                    output: row.get(9)?,
                })
            },
            each,
        )
    }

    fn state_rows(
        &mut self,
        each: &mut dyn FnMut(StateRow) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        self.stream(
            "SELECT queue, callback, paused_at FROM pauses ORDER BY queue, callback",
            |row| {
                Ok(StateRow::Pause {
                    queue: row.get(0)?,
                    callback: row.get(1)?,
                    paused_at: row.get(2)?,
                })
            },
            each,
        )?;
        self.stream(
            "SELECT queue, callback, outcome, total FROM run_totals
             ORDER BY queue, callback, outcome",
            |row| {
                Ok(StateRow::RunTotal {
                    queue: row.get(0)?,
                    callback: row.get(1)?,
                    outcome: row.get(2)?,
                    total: row.get(3)?,
                })
            },
            each,
        )?;
        self.stream(
            "SELECT id, state, cleared_at FROM cleared_unfinished ORDER BY id",
            |row| {
                Ok(StateRow::ClearedUnfinished {
                    id: row.get(0)?,
                    state: row.get(1)?,
                    cleared_at: row.get(2)?,
                })
            },
            each,
        )?;
        self.stream(
            &format!("SELECT {BATCH_ROW_COLUMNS} FROM batches ORDER BY id"),
            |row| {
                Ok(StateRow::Batch(BatchRow {
                    id: row.get(0)?,
                    queue: row.get(1)?,
                    description: row.get(2)?,
                    on_complete: row.get(3)?,
                    on_complete_params: row.get(4)?,
                    on_success: row.get(5)?,
                    on_success_params: row.get(6)?,
                    created_at: row.get(7)?,
                    sealed_at: row.get(8)?,
                    completed_at: row.get(9)?,
                    changed_at: row.get(10)?,
                    complete_job: row.get(11)?,
                    success_job: row.get(12)?,
                    unfinished: row.get(13)?,
                    finished: row.get(14)?,
                    failed: row.get(15)?,
                    cancelled: row.get(16)?,
                }))
            },
            each,
        )?;
        self.stream(
            "SELECT queue, callback, reason, since, run_id FROM broken_callbacks
             ORDER BY queue, callback",
            |row| {
                Ok(StateRow::BrokenCallback {
                    queue: row.get(0)?,
                    callback: row.get(1)?,
                    reason: row.get(2)?,
                    since: row.get(3)?,
                    run_id: row.get(4)?,
                })
            },
            each,
        )
    }

    fn last_job_id(&mut self) -> anyhow::Result<i64> {
        self.begin()?;
        self.sequence("jobs")
    }

    fn last_run_id(&mut self) -> anyhow::Result<i64> {
        self.begin()?;
        self.sequence("runs")
    }
}
