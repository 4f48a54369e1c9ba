//! The SQLite backend of the store (see `store` for the contract it keeps): one database file in
//! WAL mode, its schema and upgrades, the SQL of every operation, the wake-up of `--watch` on
//! commits, and the explanation of a full disk.
//!
//! How it keeps the contract: every write is one `BEGIN IMMEDIATE` transaction, so writers
//! queue behind SQLite's single write lock (polled every 200 µs, see `wait_for_lock`) and a
//! claim's read and mark cannot interleave with another's; `synchronous = FULL` makes a
//! publish durable, `NORMAL` relaxes the commits of `process` (and of publish with
//! `durability = "normal"`).
//!
//! The file layout (issue 17): the write-ahead log is kept between commands, so a durable
//! commit is one fdatasync of a log overwritten in place; the command that finds the log long
//! folds it in first (`fold_log`), and the folder is synced only when the log is made.

mod disk_full;
mod export;
mod wake;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params, params_from_iter};

use crate::coord::process_group::ProcessRecord;
use crate::coord::{Coordination, Local};
use crate::error::UsageError;
use crate::job::{JobRecord, JobState, Millis, NewJob, Payload, StoredPayload};
use crate::notify::NoticeKind;
use crate::queue::eligibility::GroupFacts;
use crate::store::{
    Applied, AttemptEnd, AttemptOutcome, AttemptRecord, BatchInfo, BatchTarget, BrokenCallback,
    Change, ClaimRequest, ClaimedJob, Completion, DueJobs, Durability, Fence, JobBrief, JobDetail,
    ListFilter, NewBatch, Orphan, Pause, PendingNotice, Published, RunInfo, Schedule, Sealed,
    Selection, Settled, Store, StuckAfter, Tally,
};

pub use export::SqliteExport;

/// Ends running job ?1, asked to stop by `bgq cancel --kill`, as CANCELLED with output ?2 at ?3,
/// if run ?4 holds it as attempt ?5.
macro_rules! end_cancel_sql {
    () => {
        "UPDATE jobs SET state = 'CANCELLED', due = 0, cancel_requested = 0,
        output = ?2, state_changed_at = ?3
    WHERE id = ?1 AND state = 'PROCESSING' AND cancel_requested = 1
      AND claimed_run = ?4 AND attempts = ?5"
    };
}
/// `end_cancel_sql!`, returning when its run started.
const END_CANCEL_SQL: &str = concat!(end_cancel_sql!(), " RETURNING started_at");

/// The canonical schema, applied to a new database.
const SCHEMA: &str = include_str!("../../../schema.sql");
/// The schema version this binary writes (`PRAGMA user_version` set by `schema.sql`).
pub const SCHEMA_VERSION: i64 = 7;
/// The steps from each older version to the next: (version reached, SQL).
const UPGRADES: [(i64, &str); 6] = [
    (2, include_str!("upgrades/v2.sql")),
    (3, include_str!("upgrades/v3.sql")),
    (4, include_str!("upgrades/v4.sql")),
    (5, include_str!("upgrades/v5.sql")),
    (6, include_str!("upgrades/v6.sql")),
    (7, include_str!("upgrades/v7.sql")),
];
/// The length of the write-ahead log beyond which a command that opens the database first
/// folds the log into it (`fold_log`); its next commit starts the log again from the start
/// and cuts the file back to this length. The log is kept between commands (see
/// `open_inner`), and every command that is the only one to have the database open reads the
/// log whole to rebuild its index (0.6 ms per MB here): kept short, a commit overwrites
/// the log in place, so that its sync carries no change of the file's size.
const WAL_KEPT_BYTES: i64 = 1 << 20;
/// After a commit leaves the write-ahead log this many pages long, the committing connection
/// folds it in (SQLite's automatic checkpoint, passive): for a long connection (`process`,
/// `clear`) or one large commit; twice `WAL_KEPT_BYTES` in 4 KiB pages, so that short
/// commands fold the log once, at their start, rather than at their end and again at the
/// start of the next.
const WAL_CHECKPOINT_PAGES: i64 = 2 * WAL_KEPT_BYTES / 4096;
/// How long per-minute outcome counts are kept for `stats`.
const OUTCOMES_KEPT_MINUTES: i64 = 2 * 24 * 60;
/// How long a writer waits for another one before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a waiting writer tries again.
const BUSY_POLL: Duration = Duration::from_micros(200);

/// SQLite's busy handler: try again every `BUSY_POLL` until `BUSY_TIMEOUT`.
///
/// SQLite's own handler sleeps ever longer (up to 100 ms a try), so a writer waiting behind a
/// stream of short transactions (a `clear`, a busy `process`) keeps missing the short gaps
/// between them; polling often lets it in within a few of them.
fn wait_for_lock(tries: i32) -> bool {
    let waited = BUSY_POLL * u32::try_from(tries).unwrap_or(u32::MAX);
    if waited >= BUSY_TIMEOUT {
        return false;
    }
    std::thread::sleep(BUSY_POLL);
    true
}
/// An open bgq database file.
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    /// Its canonical path (see `Store::identity`).
    identity: String,
    /// The last `PRAGMA data_version` seen by `changed_elsewhere`.
    data_version: Option<i64>,
}

/// The length of the write-ahead log's header, which its first commit writes.
const WAL_HEADER_BYTES: u64 = 32;
/// What `companions` calls the write-ahead log.
const LOG: &str = "write-ahead log";

/// The files SQLite keeps beside the database at `path`: its write-ahead log and its
/// shared-memory index.
fn companions(path: &Path) -> [(PathBuf, &'static str); 2] {
    let with = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    [(with("-wal"), LOG), (with("-shm"), "shared-memory file")]
}

/// A refused open of `path` as the one line that says who was refused and what to change.
fn denied(err: std::io::Error, path: &Path) -> anyhow::Error {
    if err.kind() != std::io::ErrorKind::PermissionDenied {
        return err.into();
    }
    let sharing = crate::coord::share::current();
    if let Ok(meta) = fs::metadata(path) {
        return anyhow::anyhow!(sharing.denied(path, Some(&meta), false));
    }
    // Not there, and its folder does not let us make it.
    let folder = path.parent().unwrap_or(Path::new("/"));
    let meta = fs::metadata(folder).ok();
    anyhow::anyhow!(
        "cannot create it in {}: {}",
        folder.display(),
        sharing.denied(folder, meta.as_ref(), true)
    )
}

/// Syncs the folder of the database at `path`, so that the names in it outlast a power cut.
/// A folder this user may not open is skipped, as SQLite's own folder sync skips it.
fn sync_folder(path: &Path) -> anyhow::Result<()> {
    let folder = match path.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder,
        _ => Path::new("."),
    };
    let Ok(handle) = fs::File::open(folder) else {
        return Ok(());
    };
    handle
        .sync_data()
        .with_context(|| format!("cannot sync the folder {}", folder.display()))
}

/// The file every commit to the database at `canonical` (its path with symlinks resolved, as
/// SQLite resolves them) writes: SQLite's write-ahead log, for watching the database.
pub fn write_log_path(canonical: &Path) -> PathBuf {
    let mut path = canonical.as_os_str().to_owned();
    path.push("-wal");
    PathBuf::from(path)
}

impl SqliteStore {
    /// Opens (creating with its folder, mode 0600, if needed) and upgrades the database.
    pub fn open(path: &Path, durability: Durability) -> anyhow::Result<SqliteStore> {
        // Opening can meet SQLITE_BUSY without the busy handler being asked: several processes
        // creating the database and switching it to WAL at once. It passes: try again.
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        loop {
            match Self::open_inner(path, durability) {
                Err(err) if is_busy(&err) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                result => {
                    return result
                        .map_err(|err| disk_full::explain(err, path))
                        .with_context(|| format!("cannot open database {}", path.display()));
                }
            }
        }
    }

    fn open_inner(path: &Path, durability: Durability) -> anyhow::Result<SqliteStore> {
        let sharing = crate::coord::share::current();
        if let Some(folder) = path.parent() {
            sharing.create_folder(folder, "database folder")?;
        }
        if let Some(problem) = crate::coord::trust::database_folder_problem(path) {
            bail!(problem);
        }
        if path.is_dir() {
            bail!("it is a directory");
        }
        // Create the file ourselves so that it is 0600 (0660 and the config's group) from the
        // start; SQLite gives its WAL and shared-memory files the same mode, and as root their
        // owner and group too.
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(sharing.file_mode())
            .open(path)
            .map_err(|err| denied(err, path))?;
        sharing.adopt_file(&file, path, "database")?;
        let mut log_bytes = 0;
        let mut log_before = None;
        for (companion, what) in companions(path) {
            // One another user left that we cannot open: SQLite would only say "unable to open
            // database file", or fall back to reading.
            if let Ok(meta) = fs::symlink_metadata(&companion) {
                if what == LOG {
                    log_bytes = meta.len();
                    log_before = Some((meta.dev(), meta.ino()));
                }
                fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                    .open(&companion)
                    .map_err(|err| denied(err, &companion))
                    .with_context(|| format!("its {what} {}", companion.display()))?;
            }
        }
        let mut conn = Connection::open(path)?;
        conn.busy_handler(Some(wait_for_lock))?;
        // Without the query planner stability guarantee, SQLite re-prepares the claim statement
        // on every execution (its bound values meet partial-index conditions); its plan never
        // depends on them, and the plans are checked by tests.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )?;
        // A closing connection leaves the write-ahead log as it is. Otherwise the last one to
        // close (every publish) copies the log into the database, syncs both and removes the
        // log, and the next commit creates, syncs and fills a new one: five syncs a publish
        // instead of its commit's one (issue 17). The log is folded in by the command that
        // finds it long as it opens (`fold_log`), and within a long connection by SQLite's
        // automatic checkpoint.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )?;
        let identity = fs::canonicalize(path)
            .with_context(|| format!("cannot resolve {}", path.display()))?
            .to_string_lossy()
            .into_owned();
        let mut store = SqliteStore {
            conn,
            path: path.to_owned(),
            identity,
            data_version: None,
        };
        store.migrate()?;
        let journal: String = store
            .conn
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        if !journal.eq_ignore_ascii_case("wal") {
            bail!("cannot switch to WAL mode (journal mode is {journal})");
        }
        let synchronous = match durability {
            Durability::Full => "FULL",
            Durability::Relaxed => "NORMAL",
        };
        store.conn.pragma_update(None, "synchronous", synchronous)?;
        store
            .conn
            .pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)?;
        store
            .conn
            .pragma_update(None, "journal_size_limit", WAL_KEPT_BYTES)?;
        // SQLite is built without its folder syncs (SQLITE_DISABLE_DIRSYNC, .cargo/config.toml):
        // it syncs the folder at every connection's first commit, a second sync for each
        // publish. Only a log just made needs it (its name, and the database's, must outlast
        // a power cut before a commit in it counts): then, now, before any commit.
        // (A read opens the log, making it if need be: a new database has none until then.)
        // A log with no header yet is as new: another client (a reader that never commits, say)
        // may have made it without syncing the folder, or made it again under the same inode
        // number between our two looks; its first commit writes the header, so nothing that
        // counts is in it before then.
        store.user_version()?;
        let log = write_log_path(path);
        let log_now = fs::symlink_metadata(&log).ok();
        let log_identity = log_now.as_ref().map(|meta| (meta.dev(), meta.ino()));
        let log_has_header = log_now
            .as_ref()
            .is_some_and(|meta| meta.len() >= WAL_HEADER_BYTES);
        if log_identity != log_before || !log_has_header {
            sync_folder(path)?;
        }
        if log_bytes > WAL_KEPT_BYTES.unsigned_abs() {
            store.fold_log()?;
        }
        // Made by SQLite as this user, in a folder that may not give them the group: shared
        // now, before another of the queue's users needs them.
        for (companion, what) in companions(path) {
            sharing.adopt_existing_file(&companion, what)?;
        }
        Ok(store)
    }

    /// Copies the write-ahead log into the database (a passive checkpoint: it waits for no
    /// reader or writer, and does what they allow), so that this connection's next commit
    /// starts the log again from its beginning and cuts it back to `WAL_KEPT_BYTES`.
    ///
    /// SQLite's automatic checkpoint is not enough when the log is kept between commands: the
    /// first connection to open the database rebuilds the log's index from the log itself and
    /// cannot know which of its pages were already copied, so a log that a command checkpointed
    /// as it closed is never started again, and grows without end (measured: 11 MB after 400
    /// publishes, and each publish reading it whole).
    fn fold_log(&mut self) -> anyhow::Result<()> {
        // Its row says whether it was stopped short (another checkpoint running, a reader on
        // the log): the log is then folded by a later command.
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        Ok(())
    }

    fn migrate(&mut self) -> anyhow::Result<()> {
        let version = self.user_version()?;
        if version == SCHEMA_VERSION {
            return Ok(());
        }
        if version > SCHEMA_VERSION {
            bail!(
                "it has schema version {version}, newer than this bgq knows ({SCHEMA_VERSION}): upgrade bgq"
            );
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Another process may have created or upgraded the schema while we waited for the lock.
        let version: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        if version == 0 {
            let tables: i64 =
                tx.query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))?;
            if tables > 0 {
                bail!("it is an SQLite database, but not one of bgq's");
            }
            tx.execute_batch(SCHEMA)
                .context("cannot create the schema")?;
        } else {
            for (reached, sql) in UPGRADES.iter().filter(|(reached, _)| *reached > version) {
                tx.execute_batch(sql).with_context(|| {
                    format!(
                        "cannot upgrade the schema from version {} to {reached}",
                        reached - 1
                    )
                })?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn user_version(&self) -> anyhow::Result<i64> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))?)
    }

    fn publish_inner(
        &mut self,
        jobs: &[NewJob],
        schedule: &Schedule,
        now: Millis,
    ) -> anyhow::Result<Published> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut after = schedule.after.clone();
        after.sort_unstable();
        after.dedup();
        let mut waiting_for = Vec::new();
        // Ids up to this one were handed out; one that is gone was FINISHED and cleared.
        let last_id: i64 = if after.is_empty() {
            0
        } else {
            tx.query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'jobs'",
                [],
                |row| row.get(0),
            )
            .optional()?
            .unwrap_or(0)
        };
        for parent in &after {
            let state = tx
                .prepare_cached("SELECT state FROM jobs WHERE id = ?1")?
                .query_row([parent], |row| read_state(row, 0))
                .optional()?;
            let state = match state {
                Some(state) => Some(state),
                None => cleared_unfinished(&tx, *parent)?,
            };
            match state {
                Some(JobState::Finished) => {}
                Some(state) => waiting_for.push((*parent, state)),
                None if *parent <= last_id => {}
                None => {
                    return Err(crate::error::usage(format!(
                        "--after: no job {parent} in {}",
                        self.path.display()
                    )));
                }
            }
        }
        // The batch before `--unique`, as on PostgreSQL: a publish into a closed batch is
        // refused even when an unfinished job has its identifier.
        if let Some(batch) = schedule.batch {
            check_batch_open(&tx, batch, &self.path)?;
        }
        if schedule.unique
            && let Some(job) = jobs.first()
            && let Some((id, state)) = unfinished_with_identifier(&tx, job)?
        {
            return Ok(Published::Existing { id, state });
        }
        let blocked_by = i64::try_from(waiting_for.len()).unwrap_or(i64::MAX);
        let due = blocked_by == 0 && schedule.run_at <= now;
        let run_at = schedule.run_at.max(now);
        let batch_id = schedule.batch.map(|batch| batch.id);
        let shared: [&dyn rusqlite::ToSql; 7] = [
            &now,
            &run_at,
            &schedule.priority,
            &blocked_by,
            &schedule.unique,
            &due,
            &batch_id,
        ];
        let mut ids = Vec::with_capacity(jobs.len());
        // Many rows per statement: a statement's fixed cost (and AUTOINCREMENT's bookkeeping)
        // is paid once per chunk instead of once per job.
        for chunk in jobs.chunks(INSERT_CHUNK) {
            let mut values: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(7 + chunk.len() * 5);
            values.extend(shared);
            for job in chunk {
                values.extend([
                    &job.queue as &dyn rusqlite::ToSql,
                    &job.callback,
                    &job.payload,
                    &job.serial_group,
                    &job.identifier,
                ]);
            }
            let inserted = tx
                .prepare_cached(&insert_sql(chunk.len()))?
                .execute(params_from_iter(values));
            if let Err(err) = inserted {
                // Another publisher stored the unique job first (possible where writers do not
                // take turns, as they do in SQLite): it is the one to report.
                if schedule.unique
                    && err.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation)
                    && let Some((id, state)) = unfinished_with_identifier(&tx, &chunk[0])?
                {
                    return Ok(Published::Existing { id, state });
                }
                return Err(err.into());
            }
            // Within one write transaction AUTOINCREMENT hands out consecutive ids.
            let last = tx.last_insert_rowid();
            let count = i64::try_from(chunk.len()).unwrap_or(i64::MAX);
            ids.extend(last - count + 1..=last);
        }
        count_published(&tx, jobs)?;
        if !after.is_empty() {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO dependencies (job_id, after_id) VALUES (?1, ?2)",
            )?;
            for id in &ids {
                for parent in &after {
                    insert.execute([id, parent])?;
                }
            }
        }
        tx.commit()?;
        Ok(Published::Stored { ids, waiting_for })
    }

    /// Opens the database if it exists, without creating it or its folder.
    pub fn open_existing(path: &Path) -> anyhow::Result<Option<SqliteStore>> {
        if !path.exists() {
            return Ok(None);
        }
        SqliteStore::open(path, Durability::Relaxed).map(Some)
    }
}

impl Store for SqliteStore {
    fn identity(&self) -> &str {
        &self.identity
    }

    fn spans_hosts(&self) -> bool {
        // Every run of a SQLite queue lives on the machine that holds its file.
        false
    }

    fn keep_alive(
        &mut self,
        _run: i64,
        _on_lost: Box<dyn FnOnce(String) + Send>,
    ) -> anyhow::Result<()> {
        // A run is known alive by its process (`coord::Local`); the file cannot be lost.
        Ok(())
    }

    fn on_change(&self, wake: Box<dyn Fn() -> bool + Send>) -> anyhow::Result<()> {
        // Every commit of another connection writes the write-ahead log beside the real file.
        wake::on_write(&write_log_path(Path::new(&self.identity)), wake)
    }

    fn publish_with(
        &mut self,
        jobs: &[NewJob],
        schedule: &Schedule,
        now: Millis,
    ) -> anyhow::Result<Published> {
        let result = self
            .publish_inner(jobs, schedule, now)
            .map_err(|err| disk_full::explain(err, &self.path));
        in_database(
            &self.path,
            || match jobs.len() {
                1 => "store the job".to_owned(),
                count => format!("store {count} jobs"),
            },
            result,
        )
    }

    fn begin_run(
        &mut self,
        queue: &str,
        runner: &ProcessRecord,
        now: Millis,
        watch: bool,
    ) -> anyhow::Result<i64> {
        let result = (|| -> anyhow::Result<i64> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO runs (queue, pid, pid_started, boot_id, started_at, watch)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    queue,
                    runner.pid,
                    i64::try_from(runner.started).unwrap_or(i64::MAX),
                    runner.boot_id,
                    now,
                    watch
                ],
            )?;
            let run = tx.last_insert_rowid();
            // Keep the last hundred runs of a queue: enough to tell when cron last ran it.
            tx.execute(
                "DELETE FROM runs WHERE queue = ?1 AND id <= ?2 - 100",
                params![queue, run],
            )?;
            prune_outcomes(&tx, queue, now)?;
            tx.commit()?;
            Ok(run)
        })();
        in_database(
            &self.path,
            || format!("record the start of a run of queue `{queue}`"),
            result,
        )
    }

    fn prune_outcomes(&mut self, queue: &str, now: Millis) -> anyhow::Result<()> {
        let result = prune_outcomes(&self.conn, queue, now);
        in_database(
            &self.path,
            || format!("prune the outcome counts of queue `{queue}`"),
            result,
        )
    }

    fn end_run(
        &mut self,
        run: i64,
        now: Millis,
        jobs: u64,
        failed: u64,
        error: Option<&str>,
    ) -> anyhow::Result<()> {
        let result = (|| -> anyhow::Result<()> {
            self.conn.execute(
            "UPDATE runs SET finished_at = ?2, jobs = ?3, failed = ?4, error = ?5 WHERE id = ?1",
            params![
                run,
                now,
                i64::try_from(jobs).unwrap_or(i64::MAX),
                i64::try_from(failed).unwrap_or(i64::MAX),
                error
            ],
        )?;
            Ok(())
        })();
        in_database(
            &self.path,
            || format!("record the end of run {run}"),
            result,
        )
    }

    fn orphans(&mut self, queue: &str) -> anyhow::Result<Vec<Orphan>> {
        let result = (|| -> anyhow::Result<Vec<Orphan>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT j.id, j.callback, j.attempts, j.notified, j.cancel_requested,
                    r.pid, r.pid_started, r.boot_id, j.claimed_run
             FROM jobs j LEFT JOIN runs r ON r.id = j.claimed_run
             WHERE j.queue = ?1 AND j.state = 'PROCESSING' ORDER BY j.id",
            )?;
            let rows = stmt.query_map([queue], |row| {
                let attempts = row.get(2)?;
                let claimed_by = read_process(row, 5)?;
                Ok(Orphan {
                    id: row.get(0)?,
                    callback: row.get(1)?,
                    attempts,
                    notified: row.get(3)?,
                    cancel_requested: row.get(4)?,
                    liveness: Local.liveness(claimed_by.as_ref()),
                    here: true,
                    claimed_by,
                    fence: Fence {
                        run: row.get(8)?,
                        attempt: attempts,
                    },
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })();
        in_database(
            &self.path,
            || format!("look for jobs of queue `{queue}` left running"),
            result,
        )
    }

    fn promote_due(
        &mut self,
        queue: &str,
        started_by: Option<i64>,
        now: Millis,
    ) -> anyhow::Result<usize> {
        let result = (|| -> anyhow::Result<usize> {
            let promoted = self.conn.prepare_cached(PROMOTE_SQL)?.execute(params![
                queue,
                started_by.unwrap_or(i64::MAX),
                now
            ])?;
            Ok(promoted)
        })();
        in_database(
            &self.path,
            || format!("look for due jobs of queue `{queue}`"),
            result,
        )
    }

    fn changed_elsewhere(&mut self) -> anyhow::Result<bool> {
        let result = (|| -> anyhow::Result<bool> {
            let version: i64 = self
                .conn
                .query_row("PRAGMA data_version", [], |row| row.get(0))?;
            let changed = self.data_version != Some(version);
            self.data_version = Some(version);
            Ok(changed)
        })();
        in_database(&self.path, || "look for changes".to_owned(), result)
    }

    fn settle_and_claim(
        &mut self,
        done: &[Completion],
        claim: &ClaimRequest<'_>,
        tally: &mut Tally,
        write_tally: bool,
    ) -> anyhow::Result<Settled> {
        let result = (|| -> anyhow::Result<Settled> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut failed = 0;
            let mut stale = Vec::new();
            for completion in done {
                match complete(&tx, completion, tally)? {
                    Applied::Stored
                        if matches!(
                            completion.state,
                            JobState::TemporarilyFailed | JobState::PermanentlyFailed
                        ) =>
                    {
                        failed += 1;
                    }
                    Applied::Stale => stale.push((completion.id, completion.fence)),
                    Applied::Stored | Applied::Cancelled => {}
                }
            }
            if write_tally {
                write_tally_to(tally, &tx)?;
            }
            let mut capacity = claim.callbacks.to_vec();
            // Paused callbacks claim nothing, read in this transaction: a pause committed before
            // it is obeyed, one committed after it finds the claimed jobs running.
            let paused = paused_callbacks(&tx, claim.queue)?;
            if paused.iter().any(String::is_empty) {
                capacity.clear();
            } else {
                capacity.retain(|(name, _)| !paused.iter().any(|paused| paused == name));
            }
            let mut claimed = Vec::new();
            while claimed.len() < claim.limit {
                let allowed: Vec<&str> = capacity
                    .iter()
                    .filter(|(_, left)| *left > 0)
                    .map(|(name, _)| *name)
                    .collect();
                if allowed.is_empty() {
                    break;
                }
                let Some(job) = claim_one(&tx, claim, &allowed)? else {
                    break;
                };
                if let Some((_, left)) = capacity.iter_mut().find(|(name, _)| *name == job.callback)
                {
                    *left -= 1;
                }
                claimed.push(job);
            }
            tx.commit()?;
            Ok(Settled {
                claimed,
                failed,
                stale,
            })
        })();
        in_database(
            &self.path,
            || format!("store outcomes and claim jobs of queue `{}`", claim.queue),
            result,
        )
    }

    fn due_callbacks_not_in(
        &self,
        queue: &str,
        known: &[&str],
    ) -> anyhow::Result<Vec<(String, i64)>> {
        let result = (|| -> anyhow::Result<Vec<(String, i64)>> {
            let placeholders = vec!["?"; known.len()].join(", ");
            let sql = format!(
                "SELECT callback, count(*) FROM jobs INDEXED BY jobs_ready
             WHERE queue = ? AND due = 1 AND blocked_by = 0 AND callback NOT IN ({placeholders})
             GROUP BY callback ORDER BY callback"
            );
            let mut values: Vec<&dyn rusqlite::ToSql> = vec![&queue];
            values.extend(known.iter().map(|name| name as &dyn rusqlite::ToSql));
            let mut stmt = self.conn.prepare(&sql)?;
            let rows = stmt.query_map(params_from_iter(values), |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })();
        in_database(
            &self.path,
            || format!("count due jobs of queue `{queue}`"),
            result,
        )
    }

    fn shift_schedule(&mut self, queue: &str, by: Millis) -> anyhow::Result<usize> {
        let result = (|| -> anyhow::Result<usize> {
            Ok(self.conn.execute(
                "UPDATE jobs SET run_at = run_at - ?2
             WHERE queue = ?1 AND due = 0 AND state IN ('READY', 'TEMPORARILY_FAILED', 'WAITING')",
                params![queue, by],
            )?)
        })();
        in_database(
            &self.path,
            || format!("move the due times of queue `{queue}`"),
            result,
        )
    }

    fn complete(&mut self, done: &Completion) -> anyhow::Result<Applied> {
        let result = (|| -> anyhow::Result<Applied> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut tally = Tally::default();
            let applied = complete(&tx, done, &mut tally)?;
            write_tally_to(&mut tally, &tx)?;
            tx.commit()?;
            Ok(applied)
        })();
        in_database(
            &self.path,
            || format!("store the outcome of job {}", done.id),
            result,
        )
    }

    fn unclaim(
        &mut self,
        id: i64,
        fence: Fence,
        reason: &str,
        now: Millis,
    ) -> anyhow::Result<bool> {
        let result = (|| -> anyhow::Result<bool> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let job: Option<(String, String)> = tx
                .prepare_cached(UNCLAIM_SQL)?
                .query_row(params![id, fence.run, fence.attempt, now], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()?;
            let Some((queue, callback)) = job else {
                return Ok(false);
            };
            tx.prepare_cached(
                "INSERT INTO broken_callbacks (queue, callback, reason, since, run_id)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (queue, callback) DO UPDATE SET
                     reason = excluded.reason, run_id = excluded.run_id",
            )?
            .execute(params![queue, callback, reason, now, fence.run])?;
            tx.commit()?;
            Ok(true)
        })();
        in_database(&self.path, || format!("put back job {id}"), result)
    }

    fn broken_callbacks(&self) -> anyhow::Result<Vec<BrokenCallback>> {
        let result = (|| -> anyhow::Result<Vec<BrokenCallback>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT queue, callback, reason, since, run_id FROM broken_callbacks
                 ORDER BY queue, callback",
            )?;
            let rows = stmt.query_map([], |row| {
                Ok(BrokenCallback {
                    queue: row.get(0)?,
                    callback: row.get(1)?,
                    reason: row.get(2)?,
                    since: row.get(3)?,
                    run: row.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })();
        in_database(&self.path, || "read broken callbacks".to_owned(), result)
    }

    fn callback_started(&mut self, queue: &str, callback: &str) -> anyhow::Result<()> {
        let result = (|| -> anyhow::Result<()> {
            self.conn
                .prepare_cached("DELETE FROM broken_callbacks WHERE queue = ?1 AND callback = ?2")?
                .execute(params![queue, callback])?;
            Ok(())
        })();
        in_database(
            &self.path,
            || format!("clear the broken mark of callback `{callback}`"),
            result,
        )
    }

    fn write_tally(&mut self, tally: &mut Tally) -> anyhow::Result<()> {
        let result = (|| -> anyhow::Result<()> {
            if tally.is_empty() {
                return Ok(());
            }
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            write_tally_to(tally, &tx)?;
            tx.commit()?;
            Ok(())
        })();
        in_database(&self.path, || "store outcome counts".to_owned(), result)
    }

    fn list(&self, filter: &ListFilter, limit: usize) -> anyhow::Result<Vec<JobRecord>> {
        let result = (|| -> anyhow::Result<Vec<JobRecord>> {
            let limit = limit.min(i64::MAX as usize);
            let (sql, values) = list_sql(filter, limit);
            let mut stmt = self.conn.prepare(&sql)?;
            let rows = stmt.query_map(params_from_iter(values.iter()), read_record)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })();
        in_database(&self.path, || "list jobs".to_owned(), result)
    }

    fn count(&self, filter: &ListFilter) -> anyhow::Result<u64> {
        let result = (|| -> anyhow::Result<u64> {
            let mut sql = "SELECT count(*) FROM jobs WHERE 1 = 1".to_owned();
            let mut values = Vec::new();
            push_filter(&mut sql, &mut values, filter);
            let count: i64 = self
                .conn
                .query_row(&sql, params_from_iter(values.iter()), |row| row.get(0))?;
            Ok(u64::try_from(count).unwrap_or(0))
        })();
        in_database(&self.path, || "count jobs".to_owned(), result)
    }

    fn record(&self, id: i64) -> anyhow::Result<Option<JobRecord>> {
        let result = (|| -> anyhow::Result<Option<JobRecord>> {
            let sql = format!("SELECT {RECORD_COLUMNS} FROM jobs WHERE id = ?1");
            Ok(self.conn.query_row(&sql, [id], read_record).optional()?)
        })();
        in_database(&self.path, || format!("read job {id}"), result)
    }

    fn state_of(&self, id: i64) -> anyhow::Result<Option<JobState>> {
        let result = (|| -> anyhow::Result<Option<JobState>> {
            Ok(self
                .conn
                .prepare_cached("SELECT state FROM jobs WHERE id = ?1")?
                .query_row([id], |row| read_state(row, 0))
                .optional()?)
        })();
        in_database(&self.path, || format!("read job {id}"), result)
    }

    fn cancels_requested(&self, queue: &str, run: i64) -> anyhow::Result<Vec<i64>> {
        let result = (|| -> anyhow::Result<Vec<i64>> {
            let mut stmt = self.conn.prepare_cached(
            "SELECT id FROM jobs INDEXED BY jobs_processing
             WHERE queue = ?1 AND state = 'PROCESSING' AND claimed_run = ?2 AND cancel_requested = 1",
        )?;
            let ids = stmt.query_map(params![queue, run], |row| row.get(0))?;
            Ok(ids.collect::<Result<_, _>>()?)
        })();
        in_database(
            &self.path,
            || format!("look for cancel requests of run {run}"),
            result,
        )
    }

    fn end_cancel(
        &mut self,
        id: i64,
        fence: Fence,
        output: &[u8],
        now: Millis,
        history: u32,
    ) -> anyhow::Result<bool> {
        let result = (|| -> anyhow::Result<bool> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let started_at: Option<Option<Millis>> = tx
                .prepare_cached(END_CANCEL_SQL)?
                .query_row(params![id, output, now, fence.run, fence.attempt], |row| {
                    row.get(0)
                })
                .optional()?;
            let Some(started_at) = started_at else {
                return Ok(false);
            };
            let ended = AttemptEnd {
                outcome: AttemptOutcome::Cancelled,
                exit_code: None,
                signal: None,
            };
            let run = Ran {
                id,
                fence,
                started_at,
                ended_at: now,
                output,
                history,
            };
            insert_attempt(&tx, &run, ended)?;
            tx.commit()?;
            Ok(true)
        })();
        in_database(&self.path, || format!("cancel job {id}"), result)
    }

    fn unfinished_identifiers(&self, filter: &ListFilter) -> anyhow::Result<Vec<String>> {
        let result = (|| -> anyhow::Result<Vec<String>> {
            let (sql, values) = unfinished_sql(filter);
            let mut stmt = self.conn.prepare(&sql)?;
            let rows = stmt.query_map(params_from_iter(values.iter()), |row| row.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })();
        in_database(
            &self.path,
            || "list unfinished identifiers".to_owned(),
            result,
        )
    }

    fn clear_batch(
        &mut self,
        state: JobState,
        cutoff: Millis,
        after: i64,
        batch: usize,
    ) -> anyhow::Result<(usize, Option<i64>)> {
        let result = (|| -> anyhow::Result<(usize, Option<i64>)> {
            // The batch's last id, read from jobs_state alone; the delete is then a plain range of
            // that index, with no list of ids to build.
            let upper: Option<i64> = self
                .conn
                .prepare_cached(CLEAR_UPPER_SQL)?
                .query_row(
                    params![
                        after,
                        i64::try_from(batch.saturating_sub(1)).unwrap_or(0),
                        state.as_str()
                    ],
                    |row| row.get(0),
                )
                .optional()?;
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let upper_id = upper.unwrap_or(i64::MAX);
            let deleted = if state == JobState::Finished {
                // Counted out first, from the rows the delete then finds in the cache.
                tx.prepare_cached(UNCOUNT_FINISHED_SQL)?
                    .execute(params![cutoff, after, upper_id])?;
                tx.prepare_cached(CLEAR_SQL)?
                    .execute(params![cutoff, after, upper_id])?
            } else {
                // Remembered first: a gone job would otherwise count as FINISHED for `--after`.
                tx.prepare_cached(CLEAR_REMEMBER_SQL)?.execute(params![
                    cutoff,
                    after,
                    upper_id,
                    state.as_str(),
                    crate::job::now_millis()
                ])?;
                let selected = params![cutoff, after, upper_id, state.as_str()];
                tx.prepare_cached(UNCOUNT_UNFINISHED_SQL)?
                    .execute(selected)?;
                tx.prepare_cached(CLEAR_UNFINISHED_SQL)?.execute(selected)?
            };
            if deleted > 0 {
                // The `--after` records of the deleted jobs: a range of the primary key.
                tx.prepare_cached(
                    "DELETE FROM dependencies WHERE job_id > ?1 AND job_id <= ?2
                   AND NOT EXISTS (SELECT 1 FROM jobs WHERE id = dependencies.job_id)",
                )?
                .execute(params![after, upper_id])?;
                // Their history: a range of attempts_job.
                tx.prepare_cached(CLEAR_ATTEMPTS_SQL)?
                    .execute(params![after, upper_id])?;
            }
            tx.commit()?;
            Ok((deleted, upper))
        })();
        in_database(&self.path, || format!("delete {state} jobs"), result)
    }

    fn pause(
        &mut self,
        queue: Option<&str>,
        callback: Option<&str>,
        now: Millis,
    ) -> anyhow::Result<bool> {
        let result = (|| -> anyhow::Result<bool> {
            let added = self
                .conn
                .prepare_cached(
                    "INSERT INTO pauses (queue, callback, paused_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (queue, callback) DO NOTHING",
                )?
                .execute(params![queue.unwrap_or(""), callback.unwrap_or(""), now])?;
            Ok(added > 0)
        })();
        in_database(&self.path, || "pause".to_owned(), result)
    }

    fn resume(
        &mut self,
        queue: Option<&str>,
        callback: Option<&str>,
    ) -> anyhow::Result<Vec<Pause>> {
        let result = (|| -> anyhow::Result<Vec<Pause>> {
            let mut stmt = self.conn.prepare_cached(
                "DELETE FROM pauses WHERE (?1 IS NULL OR queue = ?1) AND (?2 IS NULL OR callback = ?2)
                 RETURNING queue, callback, paused_at",
            )?;
            let rows = stmt.query_map(params![queue, callback], read_pause)?;
            let mut lifted: Vec<Pause> = rows.collect::<Result<_, _>>()?;
            lifted.sort_by_key(|pause| pause.since);
            Ok(lifted)
        })();
        in_database(&self.path, || "resume".to_owned(), result)
    }

    fn pauses(&self) -> anyhow::Result<Vec<Pause>> {
        let result = (|| -> anyhow::Result<Vec<Pause>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT queue, callback, paused_at FROM pauses ORDER BY paused_at, queue, callback",
            )?;
            let rows = stmt.query_map([], read_pause)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })();
        in_database(&self.path, || "read pauses".to_owned(), result)
    }

    fn run_totals(&self) -> anyhow::Result<Vec<(String, String, String, u64)>> {
        let result = (|| -> anyhow::Result<Vec<(String, String, String, u64)>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT queue, callback, outcome, total FROM run_totals
                 ORDER BY queue, callback, outcome",
            )?;
            let rows = stmt.query_map([], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, read_count(row, 3)?))
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })();
        in_database(&self.path, || "read run totals".to_owned(), result)
    }

    fn stuck_after(&self) -> anyhow::Result<Vec<StuckAfter>> {
        let result = (|| -> anyhow::Result<Vec<StuckAfter>> {
            // From the parents that never finish (few, by jobs_state and the tombstones) to the
            // jobs waiting for them, by dependencies_after.
            let mut stmt = self.conn.prepare_cached(STUCK_AFTER_SQL)?;
            let rows = stmt.query_map([], |row| {
                Ok(StuckAfter {
                    id: row.get(0)?,
                    queue: row.get(1)?,
                    parent: row.get(2)?,
                    parent_state: read_state(row, 3)?,
                    parent_gone: row.get(4)?,
                })
            })?;
            let mut stuck: Vec<StuckAfter> = rows.collect::<Result<_, _>>()?;
            stuck.dedup_by_key(|job| job.id);
            Ok(stuck)
        })();
        in_database(
            &self.path,
            || "read jobs waiting for failed jobs".to_owned(),
            result,
        )
    }

    fn dependents_of(&self, parents: &[i64]) -> anyhow::Result<Vec<(i64, i64)>> {
        let result = (|| -> anyhow::Result<Vec<(i64, i64)>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT d.job_id, d.after_id FROM dependencies d JOIN jobs j ON j.id = d.job_id
                 WHERE d.after_id = ?1 AND j.state = 'READY' AND j.blocked_by > 0",
            )?;
            let mut found = Vec::new();
            for parent in parents {
                let rows = stmt.query_map([parent], |row| Ok((row.get(0)?, row.get(1)?)))?;
                for row in rows {
                    found.push(row?);
                }
            }
            found.sort_unstable();
            Ok(found)
        })();
        in_database(&self.path, || "read waiting jobs".to_owned(), result)
    }

    fn detail(&self, id: i64) -> anyhow::Result<Option<JobDetail>> {
        let result = (|| -> anyhow::Result<Option<JobDetail>> {
            let sql = format!(
                "SELECT {RECORD_COLUMNS}, payload, output, notified, claimed_run, cancel_requested
             FROM jobs WHERE id = ?1"
            );
            self.conn
                .query_row(&sql, [id], |row| {
                    let payload: Vec<u8> = row.get(15)?;
                    let output: Option<Vec<u8>> = row.get(16)?;
                    Ok(JobDetail {
                        record: read_record(row)?,
                        payload: StoredPayload::new(payload),
                        output: output.unwrap_or_default(),
                        notified: row.get(17)?,
                        claimed_run: row.get(18)?,
                        cancel_requested: row.get(19)?,
                        runs: Vec::new(),
                        after: Vec::new(),
                    })
                })
                .optional()?
                .map(|mut detail| {
                    detail.after = self.after(id)?;
                    detail.runs = attempts_of(&self.conn, id)?;
                    Ok(detail)
                })
                .transpose()
        })();
        in_database(&self.path, || format!("read job {id}"), result)
    }

    fn serial_group_facts(
        &self,
        group: &str,
        id: i64,
        blocking: &[&str],
    ) -> anyhow::Result<GroupFacts> {
        let result = (|| -> anyhow::Result<GroupFacts> {
            let older_unfinished = self
                .conn
                .query_row(
                    "SELECT id, state FROM jobs INDEXED BY jobs_serial
                     WHERE serial_group = ?1 AND id < ?2
                       AND state IN ('READY', 'PROCESSING', 'TEMPORARILY_FAILED', 'WAITING')
                     ORDER BY id LIMIT 1",
                    params![group, id],
                    |row| Ok((row.get(0)?, read_state(row, 1)?)),
                )
                .optional()?;
            let running = self
                .conn
                .query_row(
                    // The whole state list, as the index's condition, for SQLite to use it.
                    "SELECT id FROM jobs INDEXED BY jobs_serial
                     WHERE serial_group = ?1 AND id <> ?2
                       AND state IN ('READY', 'PROCESSING', 'TEMPORARILY_FAILED', 'WAITING')
                       AND state = 'PROCESSING'
                     ORDER BY id LIMIT 1",
                    params![group, id],
                    |row| row.get(0),
                )
                .optional()?;
            let failed_blocking = if blocking.is_empty() {
                None
            } else {
                let sql = format!(
                    "SELECT id FROM jobs INDEXED BY jobs_serial_failed
                     WHERE serial_group = ? AND state = 'PERMANENTLY_FAILED'
                       AND callback IN ({}) AND id < ?
                     ORDER BY id LIMIT 1",
                    vec!["?"; blocking.len()].join(", ")
                );
                let mut values: Vec<&dyn rusqlite::ToSql> = vec![&group];
                values.extend(blocking.iter().map(|name| name as &dyn rusqlite::ToSql));
                values.push(&id);
                self.conn
                    .query_row(&sql, params_from_iter(values), |row| row.get(0))
                    .optional()?
            };
            Ok(GroupFacts {
                older_unfinished,
                running,
                failed_blocking,
            })
        })();
        in_database(
            &self.path,
            || format!("read serial group `{group}`"),
            result,
        )
    }

    fn after(&self, id: i64) -> anyhow::Result<Vec<(i64, Option<JobState>)>> {
        let result = (|| -> anyhow::Result<Vec<(i64, Option<JobState>)>> {
            let mut stmt = self.conn.prepare(
            "SELECT d.after_id, coalesce(p.state, c.state) FROM dependencies d
             LEFT JOIN jobs p ON p.id = d.after_id LEFT JOIN cleared_unfinished c ON c.id = d.after_id
             WHERE d.job_id = ?1 ORDER BY d.after_id",
        )?;
            let rows = stmt.query_map([id], |row| {
                let state: Option<String> = row.get(1)?;
                Ok((row.get(0)?, state))
            })?;
            rows.map(|row| {
                let (parent, state) = row?;
                let state = state.map(|state| state.parse::<JobState>()).transpose()?;
                Ok((parent, state))
            })
            .collect()
        })();
        in_database(
            &self.path,
            || format!("read the --after jobs of job {id}"),
            result,
        )
    }

    fn run(&self, run: i64) -> anyhow::Result<Option<RunInfo>> {
        let result = (|| -> anyhow::Result<Option<RunInfo>> {
            let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1");
            Ok(self.conn.query_row(&sql, [run], read_run).optional()?)
        })();
        in_database(&self.path, || format!("read run {run}"), result)
    }

    fn last_run(&self, queue: &str) -> anyhow::Result<Option<RunInfo>> {
        let result = (|| -> anyhow::Result<Option<RunInfo>> {
            let sql =
                format!("SELECT {RUN_COLUMNS} FROM runs WHERE queue = ?1 ORDER BY id DESC LIMIT 1");
            Ok(self.conn.query_row(&sql, [queue], read_run).optional()?)
        })();
        in_database(
            &self.path,
            || format!("read the last run of queue `{queue}`"),
            result,
        )
    }

    fn last_runs(&self) -> anyhow::Result<Vec<RunInfo>> {
        let result = (|| -> anyhow::Result<Vec<RunInfo>> {
            let sql = format!(
                "SELECT {RUN_COLUMNS} FROM runs
             WHERE id IN (SELECT max(id) FROM runs GROUP BY queue) ORDER BY queue"
            );
            let mut stmt = self.conn.prepare(&sql)?;
            let rows = stmt.query_map([], read_run)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })();
        in_database(&self.path, || "read the last runs".to_owned(), result)
    }

    fn state_counts(&self) -> anyhow::Result<Vec<(String, JobState, u64)>> {
        let result = (|| -> anyhow::Result<Vec<(String, JobState, u64)>> {
            let mut stmt = self.conn.prepare_cached(STATE_COUNTS_SQL)?;
            let rows = stmt.query_map([], |row| {
                Ok((row.get(0)?, read_state(row, 1)?, read_count(row, 2)?))
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })();
        in_database(&self.path, || "count jobs".to_owned(), result)
    }

    fn due_jobs(&self, now: Millis) -> anyhow::Result<Vec<DueJobs>> {
        let result = (|| -> anyhow::Result<Vec<DueJobs>> {
            // Two reads, each grouped in its index's order (one read with UNION ALL sorted
            // every due job: 5 ms for 7,000), joined here per queue, oldest by (time, id).
            let mut due: BTreeMap<String, DueJobs> = BTreeMap::new();
            for sql in [DUE_READY_SQL, DUE_SCHEDULED_SQL] {
                let mut stmt = self.conn.prepare_cached(sql)?;
                let rows = stmt.query_map([now], |row| {
                    Ok(DueJobs {
                        queue: row.get(0)?,
                        oldest: row.get(1)?,
                        since: row.get(2)?,
                        count: read_count(row, 3)?,
                    })
                })?;
                for found in rows {
                    let found = found?;
                    match due.get_mut(&found.queue) {
                        None => {
                            due.insert(found.queue.clone(), found);
                        }
                        Some(known) => {
                            known.count += found.count;
                            if (found.since, found.oldest) < (known.since, known.oldest) {
                                (known.since, known.oldest) = (found.since, found.oldest);
                            }
                        }
                    }
                }
            }
            Ok(due.into_values().collect())
        })();
        in_database(&self.path, || "count due jobs".to_owned(), result)
    }

    fn outcomes_since(&self, since: Millis) -> anyhow::Result<Vec<(String, [u64; 3])>> {
        let result = (|| -> anyhow::Result<Vec<(String, [u64; 3])>> {
            let mut stmt = self.conn.prepare(
                "SELECT queue, sum(finished), sum(temporarily_failed), sum(permanently_failed)
             FROM outcomes WHERE minute >= ?1 GROUP BY queue ORDER BY queue",
            )?;
            let rows = stmt.query_map([since / 60_000], |row| {
                Ok((
                    row.get(0)?,
                    [
                        read_count(row, 1)?,
                        read_count(row, 2)?,
                        read_count(row, 3)?,
                    ],
                ))
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })();
        in_database(&self.path, || "count outcomes".to_owned(), result)
    }

    fn waiting_callbacks_not_in(
        &self,
        known: &[&str],
    ) -> anyhow::Result<Vec<(String, String, u64)>> {
        let result = (|| -> anyhow::Result<Vec<(String, String, u64)>> {
            let placeholders = vec!["?"; known.len()].join(", ");
            let sql = format!(
                "SELECT queue, callback, count(*) FROM jobs
             WHERE state != 'FINISHED'
               AND state IN ('READY', 'PROCESSING', 'TEMPORARILY_FAILED', 'WAITING')
               AND callback NOT IN ({placeholders})
             GROUP BY queue, callback ORDER BY queue, callback"
            );
            let mut stmt = self.conn.prepare(&sql)?;
            let rows = stmt.query_map(params_from_iter(known), |row| {
                Ok((row.get(0)?, row.get(1)?, read_count(row, 2)?))
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })();
        in_database(
            &self.path,
            || "count jobs of unknown callbacks".to_owned(),
            result,
        )
    }

    fn change(
        &mut self,
        selection: &Selection<'_>,
        change: &Change,
        dry_run: bool,
        decide: &mut dyn FnMut(&JobBrief) -> anyhow::Result<bool>,
    ) -> anyhow::Result<Vec<(JobBrief, bool)>> {
        let result = (|| -> anyhow::Result<Vec<(JobBrief, bool)>> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let briefs = select_briefs(&tx, selection, &self.path)?;
            let mut decided = Vec::with_capacity(briefs.len());
            for brief in briefs {
                let apply = decide(&brief)?;
                decided.push((brief, apply));
            }
            if dry_run {
                return Ok(decided);
            }
            for (brief, _) in decided.iter().filter(|(_, apply)| *apply) {
                apply_change(&tx, brief.id, change)?;
            }
            tx.commit()?;
            Ok(decided)
        })();
        let what = || match change {
            Change::Retry { .. } => "retry jobs".to_owned(),
            Change::Cancel { .. } => "cancel jobs".to_owned(),
        };
        in_database(&self.path, what, result)
    }

    fn pending_notices(&self, queue: &str) -> anyhow::Result<Vec<PendingNotice>> {
        let result = (|| -> anyhow::Result<Vec<PendingNotice>> {
            let mut stmt = self.conn.prepare(
                "SELECT id, job_id, kind, reason, output FROM notices INDEXED BY notices_queue
             WHERE queue = ?1 ORDER BY id",
            )?;
            let rows = stmt.query_map([queue], |row| {
                let kind: String = row.get(2)?;
                Ok(PendingNotice {
                    id: row.get(0)?,
                    job_id: row.get(1)?,
                    kind: kind.parse().unwrap_or(NoticeKind::Failed),
                    reason: row.get(3)?,
                    output: row.get::<_, Option<Vec<u8>>>(4)?.unwrap_or_default(),
                    job: None,
                })
            })?;
            let mut notices: Vec<PendingNotice> = rows.collect::<Result<_, _>>()?;
            for notice in &mut notices {
                notice.job = self.record(notice.job_id)?;
            }
            Ok(notices)
        })();
        in_database(
            &self.path,
            || format!("read the notices of queue `{queue}`"),
            result,
        )
    }

    fn delete_notices(&mut self, ids: &[i64]) -> anyhow::Result<()> {
        let result = (|| -> anyhow::Result<()> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            for id in ids {
                tx.prepare_cached("DELETE FROM notices WHERE id = ?1")?
                    .execute([id])?;
            }
            tx.commit()?;
            Ok(())
        })();
        in_database(&self.path, || "delete sent notices".to_owned(), result)
    }

    fn new_batch(&mut self, batch: &NewBatch, now: Millis) -> anyhow::Result<i64> {
        let result = (|| -> anyhow::Result<i64> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let (on_complete, complete_params) = split_callback(&batch.on_complete);
            let (on_success, success_params) = split_callback(&batch.on_success);
            let id = tx.query_row(
                "INSERT INTO batches (queue, description, on_complete, on_complete_params,
                                      on_success, on_success_params, created_at, changed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7) RETURNING id",
                params![
                    batch.queue,
                    batch.description,
                    on_complete,
                    complete_params,
                    on_success,
                    success_params,
                    now
                ],
                |row| row.get(0),
            )?;
            tx.commit()?;
            Ok(id)
        })();
        in_database(&self.path, || "open a batch".to_owned(), result)
    }

    fn seal_batch(&mut self, id: i64, now: Millis) -> anyhow::Result<Sealed> {
        let result = (|| -> anyhow::Result<Sealed> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let sealed: Option<Option<Millis>> = tx
                .query_row("SELECT sealed_at FROM batches WHERE id = ?1", [id], |row| {
                    row.get(0)
                })
                .optional()?;
            match sealed {
                None => {
                    return Err(crate::error::usage(format!(
                        "no batch {id} in {}",
                        self.path.display()
                    )));
                }
                Some(Some(_)) => return Ok(Sealed::Already),
                Some(None) => {}
            }
            // The trigger batches_complete completes it here when nothing is unfinished.
            tx.execute(
                "UPDATE batches SET sealed_at = ?2, changed_at = ?2 WHERE id = ?1",
                params![id, now],
            )?;
            let complete: bool = tx.query_row(
                "SELECT completed_at IS NOT NULL FROM batches WHERE id = ?1",
                [id],
                |row| row.get(0),
            )?;
            tx.commit()?;
            Ok(Sealed::Now { complete })
        })();
        in_database(&self.path, || format!("seal batch {id}"), result)
    }

    fn batch(&self, id: i64) -> anyhow::Result<Option<BatchInfo>> {
        let result = (|| -> anyhow::Result<Option<BatchInfo>> {
            Ok(self
                .conn
                .prepare_cached(&format!(
                    "SELECT {BATCH_COLUMNS} FROM batches WHERE id = ?1"
                ))?
                .query_row([id], read_batch)
                .optional()?)
        })();
        in_database(&self.path, || format!("read batch {id}"), result)
    }

    fn batches(&self, open_only: bool, limit: usize) -> anyhow::Result<Vec<BatchInfo>> {
        let result = (|| -> anyhow::Result<Vec<BatchInfo>> {
            let condition = if open_only {
                "INDEXED BY batches_open WHERE completed_at IS NULL"
            } else {
                ""
            };
            let mut stmt = self.conn.prepare(&format!(
                "SELECT {BATCH_COLUMNS} FROM batches {condition} ORDER BY id DESC LIMIT ?1"
            ))?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = stmt.query_map([limit], read_batch)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })();
        in_database(&self.path, || "read the batches".to_owned(), result)
    }

    fn batch_completed_by(&self, id: i64) -> anyhow::Result<Option<BatchInfo>> {
        let result = (|| -> anyhow::Result<Option<BatchInfo>> {
            // Completion jobs are few and batches a small table: no index for this.
            Ok(self
                .conn
                .prepare_cached(&format!(
                    "SELECT {BATCH_COLUMNS} FROM batches
                     WHERE complete_job = ?1 OR success_job = ?1"
                ))?
                .query_row([id], read_batch)
                .optional()?)
        })();
        in_database(&self.path, || format!("read the batch of job {id}"), result)
    }

    fn prune_batches(&mut self) -> anyhow::Result<usize> {
        let result = (|| -> anyhow::Result<usize> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let pruned = tx.execute(
                "DELETE FROM batches WHERE completed_at IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM jobs j INDEXED BY jobs_batch
                                   WHERE j.batch_id = batches.id)",
                [],
            )?;
            tx.commit()?;
            Ok(pruned)
        })();
        in_database(&self.path, || "prune complete batches".to_owned(), result)
    }
}

/// A batch's callback and its `params`, as two columns.
fn split_callback(callback: &Option<(String, Option<String>)>) -> (Option<&str>, Option<&str>) {
    match callback {
        Some((name, params)) => (Some(name.as_str()), params.as_deref()),
        None => (None, None),
    }
}

/// The columns `read_batch` reads.
const BATCH_COLUMNS: &str = "id, queue, description, on_complete, on_complete_params, on_success,
    on_success_params, created_at, sealed_at, completed_at, complete_job, success_job,
    unfinished, finished, failed, cancelled";

/// A `BatchInfo` from the `BATCH_COLUMNS`.
fn read_batch(row: &Row<'_>) -> rusqlite::Result<BatchInfo> {
    let callback = |name: Option<String>, params: Option<String>| name.map(|name| (name, params));
    Ok(BatchInfo {
        id: row.get(0)?,
        queue: row.get(1)?,
        description: row.get(2)?,
        on_complete: callback(row.get(3)?, row.get(4)?),
        on_success: callback(row.get(5)?, row.get(6)?),
        created_at: row.get(7)?,
        sealed_at: row.get(8)?,
        completed_at: row.get(9)?,
        complete_job: row.get(10)?,
        success_job: row.get(11)?,
        unfinished: read_count(row, 12)?,
        finished: read_count(row, 13)?,
        failed: read_count(row, 14)?,
        cancelled: read_count(row, 15)?,
    })
}

/// Refuses (a usage error, so nothing is stored) a publish into `batch` unless it is open to
/// this publisher: it exists, has not completed, and is not sealed, or the publisher is one of
/// its running jobs (SPEC section 11).
fn check_batch_open(conn: &Connection, batch: BatchTarget, database: &Path) -> anyhow::Result<()> {
    let found: Option<(Option<Millis>, Option<Millis>)> = conn
        .prepare_cached("SELECT sealed_at, completed_at FROM batches WHERE id = ?1")?
        .query_row([batch.id], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let member_running = || -> anyhow::Result<bool> {
        let Some(publisher) = batch.publisher else {
            return Ok(false);
        };
        Ok(conn
            .prepare_cached(
                "SELECT 1 FROM jobs WHERE id = ?1 AND batch_id = ?2 AND state = 'PROCESSING'",
            )?
            .query_row([publisher, batch.id], |_| Ok(()))
            .optional()?
            .is_some())
    };
    let refusal = match found {
        None => format!("--batch: no batch {} in {}", batch.id, database.display()),
        Some((_, Some(_))) => format!("--batch: batch {} is complete", batch.id),
        Some((Some(_), None)) if !member_running()? => format!(
            "--batch: batch {} is sealed: only its running jobs add to it",
            batch.id
        ),
        Some(_) => return Ok(()),
    };
    Err(crate::error::usage(refusal))
}

/// Writes the counts `tally` holds and empties it.
fn write_tally_to(tally: &mut Tally, conn: &Connection) -> anyhow::Result<()> {
    for ((queue, minute), [finished, temporarily, permanently]) in tally.take() {
        conn.prepare_cached(
            "INSERT INTO outcomes
                 (queue, minute, finished, temporarily_failed, permanently_failed)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (queue, minute) DO UPDATE SET
                 finished = finished + excluded.finished,
                 temporarily_failed = temporarily_failed + excluded.temporarily_failed,
                 permanently_failed = permanently_failed + excluded.permanently_failed",
        )?
        .execute(params![queue, minute, finished, temporarily, permanently])?;
    }
    Ok(())
}

fn prune_outcomes(conn: &Connection, queue: &str, now: Millis) -> anyhow::Result<()> {
    conn.prepare_cached("DELETE FROM outcomes WHERE queue = ?1 AND minute < ?2")?
        .execute(params![queue, now / 60_000 - OUTCOMES_KEPT_MINUTES])?;
    Ok(())
}

/// Stores how a run ended, counts its outcome and stores its notice. A job that `bgq cancel
/// --kill` asked to stop becomes CANCELLED, uncounted and unnoticed, unless its callback got
/// through anyway (FINISHED is the truth; a retry would repeat it).
fn complete(conn: &Connection, done: &Completion, tally: &mut Tally) -> anyhow::Result<Applied> {
    let finished_at = (done.state == JobState::Finished).then_some(done.ended_at);
    let stored: Option<(String, String, Option<Millis>)> = conn
        .prepare_cached(
            "UPDATE jobs SET state = ?2, run_at = ?3, due = ?4,
                    attempts = attempts - ?5, output = ?6, finished_at = ?7,
                    notified = notified OR ?8, state_changed_at = ?9, cancel_requested = 0
             WHERE id = ?1 AND state = 'PROCESSING' AND claimed_run = ?10 AND attempts = ?11
               AND (cancel_requested = 0 OR ?2 = 'FINISHED')
             RETURNING queue, callback, started_at",
        )?
        .query_row(
            params![
                done.id,
                done.state.as_str(),
                done.run_at,
                done.due_now,
                i64::from(done.uncount_attempt),
                done.output,
                finished_at,
                done.notified,
                done.ended_at,
                done.fence.run,
                done.fence.attempt
            ],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .optional()?;
    let Some((queue, callback, started_at)) = stored else {
        let cancelled: Option<(String, String, Option<Millis>)> = conn
            .prepare_cached(concat!(
                end_cancel_sql!(),
                " RETURNING queue, callback, started_at"
            ))?
            .query_row(
                params![
                    done.id,
                    done.output,
                    done.ended_at,
                    done.fence.run,
                    done.fence.attempt
                ],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()?;
        // Otherwise no longer ours (recovered meanwhile, maybe claimed again): not a word of
        // this run may reach the job, not even its output.
        let Some((queue, callback, started_at)) = cancelled else {
            return Ok(Applied::Stale);
        };
        count_run(conn, &queue, &callback, JobState::Cancelled)?;
        let ended = AttemptEnd {
            outcome: AttemptOutcome::Cancelled,
            ..done.ended
        };
        record_attempt(conn, done, ended, started_at)?;
        return Ok(Applied::Cancelled);
    };
    record_attempt(conn, done, done.ended, started_at)?;
    tally.count(&queue, done.ended_at, done.state);
    count_run(conn, &queue, &callback, done.state)?;
    if done.state == JobState::Finished && conn.prepare_cached(UNBLOCK_SQL)?.execute([done.id])? > 0
    {
        // Due from now, not from when it was published: `status` must not call it late.
        conn.prepare_cached(
            "UPDATE jobs SET run_at = ?2
             WHERE id IN (SELECT job_id FROM dependencies WHERE after_id = ?1)
               AND blocked_by = 0 AND due = 0 AND state = 'READY' AND run_at < ?2",
        )?
        .execute(params![done.id, done.ended_at])?;
    }
    if let Some((kind, reason)) = &done.notice {
        conn.prepare_cached(
            "INSERT INTO notices (queue, job_id, kind, reason, output, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            queue,
            done.id,
            kind.as_str(),
            reason,
            done.output,
            done.ended_at
        ])?;
    }
    Ok(Applied::Stored)
}

/// Counts one run of a job in `run_totals`, in the transaction that stores its outcome.
fn count_run(
    conn: &Connection,
    queue: &str,
    callback: &str,
    state: JobState,
) -> anyhow::Result<()> {
    conn.prepare_cached(
        "INSERT INTO run_totals (queue, callback, outcome, total) VALUES (?1, ?2, ?3, 1)
         ON CONFLICT (queue, callback, outcome) DO UPDATE SET total = total + 1",
    )?
    .execute(params![queue, callback, super::run_outcome(state)])?;
    Ok(())
}

/// The callbacks paused in `queue` ('' for every callback).
fn paused_callbacks(conn: &Connection, queue: &str) -> anyhow::Result<Vec<String>> {
    let mut stmt =
        conn.prepare_cached("SELECT callback FROM pauses WHERE queue = '' OR queue = ?1")?;
    let rows = stmt.query_map([queue], |row| row.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The state job `id` was deleted in by `clear --state`, if it was.
/// Adds the jobs just stored, READY, to `job_counts`: once per (queue, callback), not per row
/// (see schema.sql).
fn count_published(conn: &Connection, jobs: &[NewJob]) -> anyhow::Result<()> {
    let mut added: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for job in jobs {
        *added.entry((&job.queue, &job.callback)).or_default() += 1;
    }
    let mut count = conn.prepare_cached(
        "INSERT INTO job_counts (queue, callback, state, jobs) VALUES (?1, ?2, 'READY', ?3)
         ON CONFLICT (queue, callback, state) DO UPDATE SET jobs = jobs + excluded.jobs",
    )?;
    for ((queue, callback), jobs) in added {
        count.execute(params![queue, callback, jobs])?;
    }
    Ok(())
}

fn cleared_unfinished(conn: &Connection, id: i64) -> anyhow::Result<Option<JobState>> {
    Ok(conn
        .prepare_cached("SELECT state FROM cleared_unfinished WHERE id = ?1")?
        .query_row([id], |row| read_state(row, 0))
        .optional()?)
}

fn read_pause(row: &Row<'_>) -> rusqlite::Result<Pause> {
    let queue: String = row.get(0)?;
    let callback: String = row.get(1)?;
    Ok(Pause {
        queue: (!queue.is_empty()).then_some(queue),
        callback: (!callback.is_empty()).then_some(callback),
        since: row.get(2)?,
    })
}

/// Adds the run `done` ended (`ended`, started at `started_at`) to its job's history, and
/// deletes what is older than the newest `done.history` rows: one index probe past them
/// (attempts_job), so the cost per run does not grow with the history.
fn record_attempt(
    conn: &Connection,
    done: &Completion,
    ended: AttemptEnd,
    started_at: Option<Millis>,
) -> anyhow::Result<()> {
    let run = Ran {
        id: done.id,
        fence: done.fence,
        started_at,
        ended_at: done.ended_at,
        output: &done.output,
        history: done.history,
    };
    insert_attempt(conn, &run, ended)
}

/// One run of a job, as its history keeps it.
struct Ran<'a> {
    id: i64,
    fence: Fence,
    started_at: Option<Millis>,
    ended_at: Millis,
    output: &'a [u8],
    history: u32,
}

/// Adds `run`, which ended as `ended`, to its job's history (see `record_attempt`).
fn insert_attempt(conn: &Connection, run: &Ran<'_>, ended: AttemptEnd) -> anyhow::Result<()> {
    if run.history == 0 {
        return Ok(());
    }
    conn.prepare_cached(
        "INSERT INTO attempts (job_id, attempt, run_id, started_at, ended_at, outcome, exit_code,
                               signal, output)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        run.id,
        run.fence.attempt,
        run.fence.run,
        run.started_at.unwrap_or(run.ended_at),
        run.ended_at,
        ended.outcome.as_str(),
        ended.exit_code,
        ended.signal,
        run.output
    ])?;
    conn.prepare_cached(PRUNE_ATTEMPTS_SQL)?
        .execute(params![run.id, run.history])?;
    Ok(())
}

/// The kept attempts of job `id`, oldest first.
fn attempts_of(conn: &Connection, id: i64) -> anyhow::Result<Vec<AttemptRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT attempt, run_id, started_at, ended_at, outcome, exit_code, signal, output
         FROM attempts WHERE job_id = ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map([id], |row| {
        let outcome: String = row.get(4)?;
        let output: Option<Vec<u8>> = row.get(7)?;
        Ok((
            AttemptRecord {
                attempt: row.get(0)?,
                run: row.get(1)?,
                started_at: row.get(2)?,
                ended_at: row.get(3)?,
                ended: AttemptEnd {
                    outcome: AttemptOutcome::Finished,
                    exit_code: row.get(5)?,
                    signal: row.get(6)?,
                },
                output: output.unwrap_or_default(),
            },
            outcome,
        ))
    })?;
    rows.map(|row| {
        let (mut record, outcome) = row?;
        record.ended.outcome = AttemptOutcome::parse(&outcome)
            .with_context(|| format!("job {id} has an attempt of unknown outcome {outcome:?}"))?;
        Ok(record)
    })
    .collect()
}

fn claim_one(
    conn: &Connection,
    claim: &ClaimRequest<'_>,
    callbacks: &[&str],
) -> anyhow::Result<Option<ClaimedJob>> {
    let mut values: Vec<&dyn rusqlite::ToSql> = vec![&claim.queue, &claim.run, &claim.now];
    values.extend(callbacks.iter().map(|name| name as &dyn rusqlite::ToSql));
    values.extend(
        claim
            .blocking
            .iter()
            .map(|name| name as &dyn rusqlite::ToSql),
    );
    let mut stmt = conn.prepare_cached(&claim_sql(callbacks.len(), claim.blocking.len()))?;
    let claimed = stmt
        .query_row(params_from_iter(values), |row| {
            let id: i64 = row.get(0)?;
            let payload: Vec<u8> = row.get(3)?;
            Ok(ClaimedJob {
                id,
                queue: row.get(1)?,
                callback: row.get(2)?,
                // An unreadable payload fails its own job, not the whole run.
                payload: Payload::from_msgpack(&payload)
                    .map_err(|err| format!("job {id} has unreadable parameters: {err:#}")),
                attempts: row.get(4)?,
                serial_group: row.get(5)?,
                identifier: row.get(6)?,
                notified: row.get(7)?,
                fence: Fence {
                    run: claim.run,
                    attempt: row.get(4)?,
                },
                batch: row.get(8)?,
            })
        })
        .optional()?;
    Ok(claimed)
}

/// What bgq was doing, and in which database, when an error happened: SQLite's own messages
/// (`disk I/O error`, `database disk image is malformed`) name neither.
#[derive(Debug)]
struct InDatabase(String);

impl std::fmt::Display for InDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Adds `cannot WHAT in database PATH` to an error, once. An error the user must fix (an
/// unknown `--after` id, a job that `retry` refuses) already says what is wrong in their terms
/// and passes unchanged.
fn in_database<T>(
    path: &Path,
    what: impl FnOnce() -> String,
    result: anyhow::Result<T>,
) -> anyhow::Result<T> {
    result.map_err(|err| {
        let users = err.chain().any(|cause| cause.is::<UsageError>());
        if users || err.downcast_ref::<InDatabase>().is_some() {
            err
        } else {
            err.context(InDatabase(format!(
                "cannot {} in database {}",
                what(),
                path.display()
            )))
        }
    })
}

/// Whether `err` is SQLite's "database is locked" (or "busy").
fn is_busy(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<rusqlite::Error>()
            .and_then(rusqlite::Error::sqlite_error_code)
            .is_some_and(|code| code == rusqlite::ErrorCode::DatabaseBusy)
    })
}

/// Jobs inserted by one statement.
const INSERT_CHUNK: usize = 100;

/// An INSERT of `rows` jobs: seven values shared by all (?1 now, ?2 run_at, ?3 priority,
/// ?4 blocked_by, ?5 is_unique, ?6 due, ?7 batch_id), then five per job.
fn insert_sql(rows: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|row| {
            let first = 8 + row * 5;
            format!(
                "(?{}, ?{}, ?{}, ?{}, ?{}, ?1, ?2, ?1, ?3, ?4, ?5, ?6, ?7)",
                first,
                first + 1,
                first + 2,
                first + 3,
                first + 4
            )
        })
        .collect();
    format!(
        "INSERT INTO jobs (queue, callback, payload, serial_group, identifier, created_at, run_at,
                           state_changed_at, priority, blocked_by, is_unique, due, batch_id)
         VALUES {}",
        values.join(", ")
    )
}

/// The newest job with `job`'s identifier in its queue that is not FINISHED.
fn unfinished_with_identifier(
    conn: &Connection,
    job: &NewJob,
) -> anyhow::Result<Option<(i64, JobState)>> {
    Ok(conn
        .prepare_cached(
            "SELECT id, state FROM jobs INDEXED BY jobs_identifier
             WHERE identifier = ?1 AND queue = ?2 AND state != 'FINISHED'
             ORDER BY id DESC LIMIT 1",
        )?
        .query_row(params![job.identifier, job.queue], |row| {
            Ok((row.get(0)?, read_state(row, 1)?))
        })
        .optional()?)
}

/// After job ?1 FINISHED: recounts the unfinished `--after` jobs of the jobs waiting for it (a
/// job `clear` deleted had FINISHED, unless it is in cleared_unfinished). Counting again, not
/// subtracting one, keeps the count right however often a job finishes.
const UNBLOCK_SQL: &str = "UPDATE jobs SET blocked_by = (
        SELECT count(*) FROM dependencies d LEFT JOIN jobs p ON p.id = d.after_id
        WHERE d.job_id = jobs.id
          AND (p.state != 'FINISHED' OR (p.id IS NULL
               AND EXISTS (SELECT 1 FROM cleared_unfinished c WHERE c.id = d.after_id))))
    WHERE id IN (SELECT job_id FROM dependencies WHERE after_id = ?1) AND blocked_by > 0";

/// Moves jobs whose time has come into the claim path (?1 queue, ?2 run, ?3 now).
const PROMOTE_SQL: &str = "UPDATE jobs SET due = 1
    WHERE queue = ?1 AND due = 0 AND blocked_by = 0
      AND state IN ('READY', 'TEMPORARILY_FAILED', 'WAITING')
      AND run_at <= ?3 AND claimed_run < ?2";

/// The id of the `?2 + 1`-th job in state ?3 after id ?1: where a `clear` batch ends.
const CLEAR_UPPER_SQL: &str = "SELECT id FROM jobs INDEXED BY jobs_state
    WHERE state = ?3 AND id > ?1 ORDER BY id LIMIT 1 OFFSET ?2";

/// Puts back job ?1, claimed by run ?2 as attempt ?3, whose callback could not be started (at
/// ?4): as it was before the claim, due at once; CANCELLED if `bgq cancel --kill` marked it.
const UNCLAIM_SQL: &str = "UPDATE jobs SET
        state = CASE WHEN cancel_requested = 1 THEN 'CANCELLED'
                     ELSE coalesce(before_claim_state, 'READY') END,
        due = 1 - cancel_requested, attempts = attempts - 1,
        started_at = before_claim_started_at,
        state_changed_at = CASE WHEN cancel_requested = 1 THEN ?4
                                ELSE coalesce(before_claim_changed_at, ?4) END,
        cancel_requested = 0
    WHERE id = ?1 AND state = 'PROCESSING' AND claimed_run = ?2 AND attempts = ?3
    RETURNING queue, callback";

/// Deletes the attempts of job ?1 older than its newest ?2.
const PRUNE_ATTEMPTS_SQL: &str = "DELETE FROM attempts WHERE job_id = ?1 AND id <= (
        SELECT id FROM attempts WHERE job_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)";

/// Deletes the attempts of the jobs with ids in (?1, ?2] that are gone (`clear`).
const CLEAR_ATTEMPTS_SQL: &str = "DELETE FROM attempts WHERE job_id > ?1 AND job_id <= ?2
    AND NOT EXISTS (SELECT 1 FROM jobs WHERE id = attempts.job_id)";

/// How many jobs each queue has in each state: the kept counts, a few rows per callback.
const STATE_COUNTS_SQL: &str = "SELECT queue, state, sum(jobs) FROM job_counts
    GROUP BY queue, state HAVING sum(jobs) > 0";

/// Per queue, the jobs in the claim path (due = 1, so READY, TEMPORARILY_FAILED or WAITING)
/// due by ?1: how many, the oldest and since when, from jobs_ready alone in its order. With
/// DUE_SCHEDULED_SQL, the due jobs of `stats` and `status`: the cost follows the due jobs, not
/// the failed, finished or future ones.
const DUE_READY_SQL: &str =
    "SELECT queue, id, min(run_at), count(*) FROM jobs INDEXED BY jobs_ready
    WHERE due = 1 AND blocked_by = 0 AND run_at <= ?1 GROUP BY queue";

/// Per queue, the jobs due by ?1 that wait for the next run (due = 0): by a range of
/// jobs_schedule per queue (CROSS JOIN keeps the queues outside, so that grouping does not
/// make SQLite walk every scheduled job in the index's order instead).
const DUE_SCHEDULED_SQL: &str = "SELECT s.queue, s.id, min(s.run_at), count(*)
    FROM (SELECT DISTINCT queue FROM job_counts) q
    CROSS JOIN jobs s INDEXED BY jobs_schedule
    WHERE s.queue = q.queue AND s.due = 0 AND s.blocked_by = 0
      AND s.state IN ('READY', 'TEMPORARILY_FAILED', 'WAITING') AND s.run_at <= ?1
    GROUP BY s.queue";

/// Jobs waiting (`--after`) for a job that will never finish, from the jobs that wait at all
/// (jobs_blocked) to their parents: PERMANENTLY_FAILED or CANCELLED, or deleted so by `clear`.
const STUCK_AFTER_SQL: &str = "SELECT j.id, j.queue, d.after_id, p.state, 0
    FROM jobs j INDEXED BY jobs_blocked
    JOIN dependencies d ON d.job_id = j.id JOIN jobs p ON p.id = d.after_id
    WHERE j.blocked_by > 0 AND j.state = 'READY'
      AND p.state IN ('PERMANENTLY_FAILED', 'CANCELLED')
    UNION ALL
    SELECT j.id, j.queue, d.after_id, c.state, 1
    FROM jobs j INDEXED BY jobs_blocked
    JOIN dependencies d ON d.job_id = j.id JOIN cleared_unfinished c ON c.id = d.after_id
    WHERE j.blocked_by > 0 AND j.state = 'READY'
    ORDER BY 1, 3";

/// Deletes the FINISHED jobs with ids in (?2, ?3] that finished before ?1.
const CLEAR_SQL: &str = "DELETE FROM jobs INDEXED BY jobs_state
    WHERE state = 'FINISHED' AND id > ?2 AND id <= ?3 AND finished_at < ?1";

/// Takes the jobs CLEAR_SQL is about to delete out of the kept counts, per (queue, callback) in
/// one statement: `clear` counts what it deletes (see schema.sql).
const UNCOUNT_FINISHED_SQL: &str = "UPDATE job_counts SET jobs = job_counts.jobs - gone.gone
    FROM (SELECT queue, callback, count(*) AS gone FROM jobs INDEXED BY jobs_state
          WHERE state = 'FINISHED' AND id > ?2 AND id <= ?3 AND finished_at < ?1
          GROUP BY queue, callback) gone
    WHERE job_counts.queue = gone.queue AND job_counts.callback = gone.callback
      AND job_counts.state = 'FINISHED'";

/// Picks and marks one job (?1 queue, ?2 run, ?3 now, then one parameter per callback name and
/// one per callback whose failed jobs hold their group): the highest priority first, then the
/// oldest.
///
/// A serial group is held by any older unfinished job of it, by an older PERMANENTLY_FAILED
/// one whose callback says serial_failure = "block" (CANCELLED never holds), and by any running
/// job of it: a job retried by an operator is older than jobs of its group that may be
/// running, and a group never runs two jobs at once (a job cancelled with `--kill` stays
/// PROCESSING until its callback has ended). So priority orders jobs across groups, never
/// within one. This is `queue::eligibility::group_hold` in SQL, for one job among many;
/// `store::conformance::claims_agree_with_the_group_rule` checks that the two agree.
fn claim_sql(callbacks: usize, blocking: usize) -> String {
    let list = |count: usize| vec!["?"; count].join(", ");
    let failed = if blocking == 0 {
        String::new()
    } else {
        format!(
            "AND NOT EXISTS (
                 SELECT 1 FROM jobs f INDEXED BY jobs_serial_failed
                 WHERE f.serial_group = j.serial_group AND f.state = 'PERMANENTLY_FAILED'
                   AND f.callback IN ({}) AND f.id < j.id)",
            list(blocking)
        )
    };
    format!(
        "UPDATE jobs SET before_claim_state = state, before_claim_started_at = started_at,
                before_claim_changed_at = state_changed_at,
                state = 'PROCESSING', due = 0, attempts = attempts + 1,
                started_at = ?3, state_changed_at = ?3, claimed_run = ?2, cancel_requested = 0
         WHERE id = (
             SELECT j.id FROM jobs j INDEXED BY jobs_ready
             WHERE j.queue = ?1 AND j.due = 1 AND j.blocked_by = 0
               AND j.callback IN ({callbacks})
               AND (j.serial_group IS NULL OR (NOT EXISTS (
                   SELECT 1 FROM jobs o INDEXED BY jobs_serial
                   WHERE o.serial_group = j.serial_group
                     AND o.state IN ('READY', 'PROCESSING', 'TEMPORARILY_FAILED', 'WAITING')
                     AND (o.id < j.id OR o.state = 'PROCESSING')) {failed}))
             ORDER BY j.priority DESC, j.id LIMIT 1)
         RETURNING id, queue, callback, payload, attempts, serial_group, identifier, notified,
                   batch_id",
        callbacks = list(callbacks)
    )
}

/// A `ProcessRecord` from three columns (pid, start ticks, boot id) starting at `first`.
fn read_process(row: &Row<'_>, first: usize) -> rusqlite::Result<Option<ProcessRecord>> {
    let pid: Option<i32> = row.get(first)?;
    let started: Option<i64> = row.get(first + 1)?;
    let boot_id: Option<String> = row.get(first + 2)?;
    Ok(match (pid, started, boot_id) {
        (Some(pid), Some(started), Some(boot_id)) => Some(ProcessRecord {
            pid,
            started: u64::try_from(started).unwrap_or_default(),
            boot_id,
        }),
        _ => None,
    })
}

/// When a job's state last changed, as an SQL expression. Jobs stored before schema version 2
/// have no state time (0): their last known time stands in, so that the upgrade need not
/// rewrite every row.
macro_rules! state_changed_at {
    () => {
        "coalesce(nullif(state_changed_at, 0), finished_at, started_at, created_at)"
    };
}
const STATE_CHANGED_AT: &str = state_changed_at!();

/// Remembers the jobs in state ?4 with ids in (?2, ?3] that entered it before ?1, about to be
/// deleted, as cleared at ?5.
const CLEAR_REMEMBER_SQL: &str = concat!(
    "INSERT OR REPLACE INTO cleared_unfinished (id, state, cleared_at)
    SELECT id, state, ?5 FROM jobs INDEXED BY jobs_state
    WHERE state = ?4 AND id > ?2 AND id <= ?3 AND ",
    state_changed_at!(),
    " < ?1"
);

/// Deletes the jobs in state ?4 (not FINISHED) with ids in (?2, ?3] that entered it before ?1.
const CLEAR_UNFINISHED_SQL: &str = concat!(
    "DELETE FROM jobs INDEXED BY jobs_state
    WHERE state = ?4 AND id > ?2 AND id <= ?3 AND ",
    state_changed_at!(),
    " < ?1"
);

/// Takes the jobs CLEAR_UNFINISHED_SQL is about to delete out of the kept counts (see
/// UNCOUNT_FINISHED_SQL).
const UNCOUNT_UNFINISHED_SQL: &str = concat!(
    "UPDATE job_counts SET jobs = job_counts.jobs - gone.gone
    FROM (SELECT queue, callback, count(*) AS gone FROM jobs INDEXED BY jobs_state
          WHERE state = ?4 AND id > ?2 AND id <= ?3 AND ",
    state_changed_at!(),
    " < ?1 GROUP BY queue, callback) gone
    WHERE job_counts.queue = gone.queue AND job_counts.callback = gone.callback
      AND job_counts.state = ?4"
);

/// The columns of a `JobRecord`.
const RECORD_COLUMNS: &str = concat!(
    "id, queue, callback, state, attempts, serial_group, identifier,
     created_at, run_at, started_at, finished_at, ",
    state_changed_at!(),
    " AS state_changed_at, priority, blocked_by, batch_id"
);

fn read_record(row: &Row<'_>) -> rusqlite::Result<JobRecord> {
    read_record_at(row, 0)
}

/// A `JobRecord` from the `RECORD_COLUMNS` starting at column `first`.
fn read_record_at(row: &Row<'_>, first: usize) -> rusqlite::Result<JobRecord> {
    Ok(JobRecord {
        id: row.get(first)?,
        queue: row.get(first + 1)?,
        callback: row.get(first + 2)?,
        state: read_state(row, first + 3)?,
        attempts: row.get(first + 4)?,
        serial_group: row.get(first + 5)?,
        identifier: row.get(first + 6)?,
        created_at: row.get(first + 7)?,
        run_at: row.get(first + 8)?,
        started_at: row.get(first + 9)?,
        finished_at: row.get(first + 10)?,
        state_changed_at: row.get(first + 11)?,
        priority: row.get(first + 12)?,
        blocked_by: row.get(first + 13)?,
        batch: row.get(first + 14)?,
    })
}

/// The state stored in column `index`.
fn read_state(row: &Row<'_>, index: usize) -> rusqlite::Result<JobState> {
    let state: String = row.get(index)?;
    state.parse::<JobState>().map_err(|err| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, err.into())
    })
}

/// A count stored in column `index` (never negative).
fn read_count(row: &Row<'_>, index: usize) -> rusqlite::Result<u64> {
    let count: i64 = row.get(index)?;
    Ok(u64::try_from(count).unwrap_or_default())
}

const RUN_COLUMNS: &str =
    "id, queue, pid, pid_started, boot_id, started_at, finished_at, jobs, failed, error, watch";

fn read_run(row: &Row<'_>) -> rusqlite::Result<RunInfo> {
    let started: i64 = row.get(3)?;
    let runner = ProcessRecord {
        pid: row.get(2)?,
        started: u64::try_from(started).unwrap_or_default(),
        boot_id: row.get(4)?,
    };
    Ok(RunInfo {
        id: row.get(0)?,
        queue: row.get(1)?,
        alive: Local.is_alive(&runner),
        runner,
        started_at: row.get(5)?,
        finished_at: row.get(6)?,
        jobs: read_count(row, 7)?,
        failed: read_count(row, 8)?,
        error: row.get(9)?,
        watch: row.get(10)?,
    })
}

/// The jobs of `selection`, oldest first; an unknown id is a usage error.
fn select_briefs(
    conn: &Connection,
    selection: &Selection<'_>,
    database: &Path,
) -> anyhow::Result<Vec<JobBrief>> {
    let read = |row: &Row<'_>| {
        Ok(JobBrief {
            id: row.get(0)?,
            queue: row.get(1)?,
            callback: row.get(2)?,
            state: read_state(row, 3)?,
            state_changed_at: row.get(4)?,
            claimed_run: row.get(5)?,
            cancel_requested: row.get(6)?,
            attempts: row.get(7)?,
            batch: row.get(8)?,
        })
    };
    let columns = format!(
        "id, queue, callback, state, {STATE_CHANGED_AT}, claimed_run, cancel_requested, attempts,
         batch_id"
    );
    match selection {
        Selection::Ids(ids) => {
            let mut ids = ids.to_vec();
            ids.sort_unstable();
            ids.dedup();
            let mut stmt =
                conn.prepare_cached(&format!("SELECT {columns} FROM jobs WHERE id = ?1"))?;
            let mut briefs = Vec::with_capacity(ids.len());
            for id in ids {
                match stmt.query_row([id], read).optional()? {
                    Some(brief) => briefs.push(brief),
                    None => {
                        return Err(crate::error::usage(format!(
                            "no job {id} in {}",
                            database.display()
                        )));
                    }
                }
            }
            Ok(briefs)
        }
        Selection::Matching {
            states,
            queue,
            callback,
            batch,
        } => {
            let filter = ListFilter {
                states: states.to_vec(),
                queue: queue.map(str::to_owned),
                callback: callback.map(str::to_owned),
                identifiers: Vec::new(),
                batch: *batch,
            };
            let mut sql = format!("SELECT {columns} FROM jobs WHERE 1 = 1");
            let mut values = Vec::new();
            push_filter(&mut sql, &mut values, &filter);
            sql.push_str(" ORDER BY id");
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map(params_from_iter(values.iter()), read)?;
            Ok(rows.collect::<Result<_, _>>()?)
        }
    }
}

/// Applies `change` to job `id`.
fn apply_change(conn: &Connection, id: i64, change: &Change) -> anyhow::Result<()> {
    match change {
        Change::Retry { now, payload } => {
            // Due now, but through promotion (due = 0), which a `process` run does not do for a
            // job it already started: one run starts a job at most once.
            conn.prepare_cached(
                "UPDATE jobs SET state = 'READY', attempts = 0, notified = 0, run_at = ?2,
                        due = 0, state_changed_at = ?2, cancel_requested = 0
                 WHERE id = ?1",
            )?
            .execute(params![id, now])?;
            if let Some(payload) = payload {
                conn.prepare_cached("UPDATE jobs SET payload = ?2 WHERE id = ?1")?
                    .execute(params![id, payload])?;
            }
        }
        Change::Cancel { now } => {
            // A running job stays PROCESSING, holding its serial group, until its callback has
            // ended: see `complete`.
            conn.prepare_cached(
                "UPDATE jobs SET cancel_requested = (state = 'PROCESSING'),
                        state = CASE state WHEN 'PROCESSING' THEN state ELSE 'CANCELLED' END,
                        due = 0,
                        state_changed_at = CASE state WHEN 'PROCESSING' THEN state_changed_at ELSE ?2 END
                 WHERE id = ?1",
            )?
            .execute(params![id, now])?;
        }
    }
    Ok(())
}

/// The `list` query for `filter` and `limit` (a number, written into the SQL), and its values.
///
/// FINISHED jobs are only in the primary key and `jobs_state`, so that `clear` deletes fast;
/// the other jobs are also in `jobs_queue` and `jobs_callback`. So a query by queue or callback
/// reads the two kinds separately, each newest first from its index, and merges the two short
/// lists.
fn list_sql(filter: &ListFilter, limit: usize) -> (String, Vec<String>) {
    if filter.queue.is_none() && filter.callback.is_none() {
        // The primary key, jobs_state or jobs_identifier serve these whatever the state.
        let mut sql = format!("SELECT {RECORD_COLUMNS} FROM jobs WHERE 1 = 1");
        let mut values = Vec::new();
        push_filter(&mut sql, &mut values, filter);
        return (format!("{sql} ORDER BY id DESC LIMIT {limit}"), values);
    }
    let finished = filter.states.is_empty() || filter.states.contains(&JobState::Finished);
    let others: Vec<JobState> = filter
        .states
        .iter()
        .copied()
        .filter(|state| *state != JobState::Finished)
        .collect();
    let mut parts = Vec::new();
    let mut values = Vec::new();
    let rest = ListFilter {
        states: Vec::new(),
        ..filter.clone()
    };
    if filter.states.is_empty() || !others.is_empty() {
        let mut part = format!("SELECT {RECORD_COLUMNS} FROM jobs WHERE state != 'FINISHED'");
        push_filter(
            &mut part,
            &mut values,
            &ListFilter {
                states: others,
                ..rest.clone()
            },
        );
        parts.push(part);
    }
    if finished {
        let mut part = format!("SELECT {RECORD_COLUMNS} FROM jobs WHERE state = 'FINISHED'");
        push_filter(&mut part, &mut values, &rest);
        parts.push(part);
    }
    let sql = parts
        .iter()
        .map(|part| format!("SELECT * FROM ({part} ORDER BY id DESC LIMIT {limit})"))
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    (format!("{sql} ORDER BY id DESC LIMIT {limit}"), values)
}

/// The `list --unfinished` query for `filter`, and its filter values.
fn unfinished_sql(filter: &ListFilter) -> (String, Vec<String>) {
    let mut sql = "SELECT DISTINCT identifier FROM jobs
                   WHERE identifier IS NOT NULL AND state != 'FINISHED'"
        .to_owned();
    let mut values = Vec::new();
    push_filter(&mut sql, &mut values, filter);
    sql.push_str(" ORDER BY identifier");
    (sql, values)
}

/// Appends `filter`'s conditions to a query that already has a WHERE clause.
fn push_filter(sql: &mut String, values: &mut Vec<String>, filter: &ListFilter) {
    let mut any_of = |sql: &mut String, column: &str, items: Vec<String>| {
        if items.is_empty() {
            return;
        }
        let placeholders = vec!["?"; items.len()].join(", ");
        sql.push_str(&format!(" AND {column} IN ({placeholders})"));
        values.extend(items);
    };
    any_of(
        sql,
        "state",
        filter
            .states
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect(),
    );
    any_of(sql, "queue", filter.queue.iter().cloned().collect());
    any_of(sql, "callback", filter.callback.iter().cloned().collect());
    any_of(sql, "identifier", filter.identifiers.clone());
    if let Some(batch) = filter.batch {
        sql.push_str(" AND batch_id = ?");
        values.push(batch.to_string());
    }
}

/// SQLite's own tests: its schema file and upgrades, its query plans, what only its columns
/// show. The store's behaviour, the same for every backend, is checked by the conformance suite
/// (`store::conformance`), invoked here once.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{cancel, claim, job, marked, me, publish};

    /// A fresh, empty database in its own temp dir, in a folder not yet made.
    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store =
            SqliteStore::open(&dir.path().join("sub/db.sqlite"), Durability::Full).expect("open");
        (dir, store)
    }

    crate::store::conformance::conformance_suite!(|| Some(store()));

    /// SQLite's own: `schema.sql` sets the `user_version` the upgrades count from.

    #[test]
    fn schema_file_sets_the_version_the_binary_expects() {
        assert!(
            SCHEMA
                .trim_end()
                .ends_with(&format!("PRAGMA user_version = {SCHEMA_VERSION};"))
        );
    }

    /// SQLite's own: the schema version is SQLite's `user_version`, bumped here by a pragma.
    #[test]
    fn refuses_a_database_from_a_newer_bgq() {
        let (dir, store) = store();
        store
            .conn
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .expect("bump");
        drop(store);
        let err = SqliteStore::open(&dir.path().join("sub/db.sqlite"), Durability::Full)
            .err()
            .expect("refused");
        assert!(
            format!("{err:#}").contains("newer than this bgq knows"),
            "{err:#}"
        );
    }

    /// Columns of every table and the SQL of every index, whitespace collapsed.
    fn shape(store: &SqliteStore) -> Vec<String> {
        let mut shape = Vec::new();
        let mut tables = store
            .conn
            .prepare("SELECT type, name, sql FROM sqlite_schema ORDER BY type, name")
            .expect("schema");
        let rows: Vec<(String, String, Option<String>)> = tables
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("read");
        for (kind, name, sql) in rows {
            if kind == "table" {
                let mut columns = store
                    .conn
                    .prepare(&format!("PRAGMA table_xinfo({name})"))
                    .expect("columns");
                let columns: Vec<String> = columns
                    .query_map([], |row| {
                        Ok(format!(
                            "{name}.{}: {} notnull={} default={:?} pk={}",
                            row.get::<_, String>(1)?,
                            row.get::<_, String>(2)?,
                            row.get::<_, i64>(3)?,
                            row.get::<_, Option<String>>(4)?,
                            row.get::<_, i64>(5)?
                        ))
                    })
                    .expect("rows")
                    .collect::<Result<_, _>>()
                    .expect("read");
                shape.extend(columns);
            } else {
                let sql = sql.unwrap_or_default();
                shape.push(sql.split_whitespace().collect::<Vec<_>>().join(" "));
            }
        }
        shape
    }

    /// A database made with an old schema `old` holding one job (`insert`, its payload ?1),
    /// then opened, and so upgraded, by this bgq: it has the version and the shape of a new one.
    fn upgraded(old: &str, insert: &str) -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("old.sqlite");
        let conn = Connection::open(&path).expect("create");
        conn.execute_batch(old).expect("old schema");
        conn.execute(
            insert,
            [Payload::Json(serde_json::json!({"n": 1}))
                .to_msgpack()
                .expect("encode")],
        )
        .expect("old job");
        drop(conn);
        let upgraded = SqliteStore::open(&path, Durability::Full).expect("upgrade");
        assert_eq!(upgraded.user_version().expect("version"), SCHEMA_VERSION);
        let (_fresh_dir, fresh) = store();
        assert_eq!(shape(&upgraded), shape(&fresh));
        (dir, upgraded)
    }

    /// SQLite's own: an upgrade from the frozen version 2 schema in tests/fixtures/sqlite.
    #[test]
    fn a_version_2_database_is_upgraded_in_place_keeping_its_jobs() {
        let (_dir, mut upgraded) = upgraded(
            include_str!("../../../tests/fixtures/sqlite/schema-v2.sql"),
            "INSERT INTO jobs (queue, callback, payload, created_at, run_at, serial_group)
             VALUES ('general', 'a', ?1, 1000, 1000, 'g')",
        );
        let run = upgraded
            .begin_run("general", &me(), 2000, false)
            .expect("run");
        let claimed = claim(&mut upgraded, "general", run, 2000, &["a"])
            .expect("claim")
            .expect("the old job is in the rebuilt claim index");
        assert_eq!((claimed.id, claimed.attempts), (1, 1));
        assert_eq!(upgraded.record(1).expect("read").expect("kept").priority, 0);
    }

    /// SQLite's own: an upgrade from the frozen version 3 schema in tests/fixtures/sqlite.
    #[test]
    fn a_version_3_database_is_upgraded_in_place_keeping_its_running_jobs() {
        let (_dir, mut upgraded) = upgraded(
            include_str!("../../../tests/fixtures/sqlite/schema-v3.sql"),
            "INSERT INTO jobs (queue, callback, payload, created_at, run_at, state, due, attempts)
             VALUES ('general', 'a', ?1, 1000, 1000, 'PROCESSING', 0, 1)",
        );
        assert!(!marked(&upgraded, 1));
        let orphans = upgraded.orphans("general").expect("orphans");
        assert_eq!(orphans.len(), 1);
        assert!(!orphans[0].cancel_requested);
        cancel(&mut upgraded, 1, 2000);
        assert!(upgraded.orphans("general").expect("orphans")[0].cancel_requested);
    }

    /// SQLite's own: an upgrade from the frozen version 4 schema in tests/fixtures/sqlite.
    #[test]
    fn a_version_4_database_is_upgraded_in_place_keeping_its_jobs() {
        let (_dir, mut upgraded) = upgraded(
            include_str!("../../../tests/fixtures/sqlite/schema-v4.sql"),
            "INSERT INTO jobs (queue, callback, payload, created_at, run_at)
             VALUES ('general', 'a', ?1, 1000, 1000)",
        );
        let run = upgraded
            .begin_run("general", &me(), 2000, false)
            .expect("run");
        let claimed = claim(&mut upgraded, "general", run, 2000, &["a"])
            .expect("claim")
            .expect("the old job");
        assert_eq!((claimed.id, claimed.attempts), (1, 1));
    }

    /// SQLite's own: an upgrade from the frozen version 5 schema in tests/fixtures/sqlite; the
    /// old job joins no batch, and a batch works at once.
    #[test]
    fn a_version_5_database_is_upgraded_in_place_keeping_its_jobs() {
        let (_dir, mut upgraded) = upgraded(
            include_str!("../../../tests/fixtures/sqlite/schema-v5.sql"),
            "INSERT INTO jobs (queue, callback, payload, created_at, run_at)
             VALUES ('general', 'a', ?1, 1000, 1000)",
        );
        let run = upgraded
            .begin_run("general", &me(), 2000, false)
            .expect("run");
        let claimed = claim(&mut upgraded, "general", run, 2000, &["a"])
            .expect("claim")
            .expect("the old job");
        assert_eq!((claimed.id, claimed.batch), (1, None));
        let batch = upgraded
            .new_batch(&crate::store::NewBatch::default(), 3000)
            .expect("a batch");
        assert_eq!(
            upgraded.seal_batch(batch, 3000).expect("seal"),
            Sealed::Now { complete: true }
        );
    }

    /// SQLite's own: an upgrade from the frozen version 5 schema in tests/fixtures/sqlite (through
    /// version 6) fills the kept counts of version 7 from the jobs there are, and the triggers
    /// keep them from then on.
    #[test]
    fn a_version_5_database_is_upgraded_in_place_with_its_jobs_counted() {
        let (_dir, mut upgraded) = upgraded(
            include_str!("../../../tests/fixtures/sqlite/schema-v5.sql"),
            "INSERT INTO jobs (queue, callback, payload, created_at, run_at, state)
             VALUES ('general', 'a', ?1, 1000, 1000, 'FINISHED'),
                    ('general', 'a', ?1, 1000, 1000, 'READY'),
                    ('other', 'b', ?1, 1000, 1000, 'READY')",
        );
        crate::store::conformance::assert_upgraded_counts(&upgraded);
        let run = upgraded
            .begin_run("general", &me(), 2000, false)
            .expect("run");
        claim(&mut upgraded, "general", run, 2000, &["a"])
            .expect("claim")
            .expect("the old job");
        crate::store::conformance::assert_counts_agree(&upgraded);
    }

    /// SQLite's own: an upgrade from the frozen version 1 schema in tests/fixtures/sqlite.
    #[test]
    fn a_version_1_database_is_upgraded_in_place_keeping_its_jobs() {
        let (_dir, mut upgraded) = upgraded(
            include_str!("../../../tests/fixtures/sqlite/schema-v1.sql"),
            "INSERT INTO jobs (queue, callback, payload, created_at, run_at, state, finished_at)
             VALUES ('general', 'a', ?1, 1000, 1000, 'FINISHED', 5000)",
        );
        let detail = upgraded.detail(1).expect("read").expect("kept");
        assert_eq!(detail.record.state, JobState::Finished);
        assert_eq!(detail.record.state_changed_at, 5000);
        let shown = match detail.payload.as_ref().map(StoredPayload::view) {
            Ok(crate::job::PayloadView::Json(view)) => serde_json::to_string(&view).ok(),
            _ => None,
        };
        assert_eq!(shown.as_deref(), Some(r#"{"n":1}"#));
        let ids = publish(&mut upgraded, &[job("a", None)], 6000).expect("publish");
        assert_eq!(ids, [2]);
    }

    /// The query plan of `sql`, one step a line.
    fn plan(store: &SqliteStore, sql: &str) -> String {
        let mut stmt = store
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("plan");
        let unbound = vec![rusqlite::types::Null; stmt.parameter_count()];
        let steps = stmt
            .query_map(params_from_iter(unbound), |row| row.get::<_, String>(3))
            .expect("rows")
            .collect::<Result<Vec<_>, _>>()
            .expect("detail");
        steps.join("\n")
    }

    /// SQLite's own: the query plans of its claim, promote and clear statements.
    #[test]
    fn claim_promote_and_clear_use_their_indexes() {
        let (_dir, store) = store();
        let claim = plan(&store, &claim_sql(2, 0));
        // A group's PERMANENTLY_FAILED jobs are read only for callbacks that block on them.
        assert!(!claim.contains("jobs_serial_failed"), "{claim}");
        let blocking = plan(&store, &claim_sql(2, 1));
        assert!(
            blocking.contains("INDEX jobs_serial_failed (serial_group=? AND callback=? AND id<?)"),
            "{blocking}"
        );
        assert!(!blocking.contains("SCAN"), "{blocking}");
        assert!(claim.contains("USING INDEX jobs_ready"), "{claim}");
        assert!(claim.contains("INDEX jobs_serial"), "{claim}");
        assert!(!claim.contains("TEMP B-TREE"), "{claim}");
        assert!(!claim.contains("SCAN"), "{claim}");
        let promote = plan(&store, PROMOTE_SQL);
        assert!(promote.contains("INDEX jobs_schedule"), "{promote}");
        let clear = plan(&store, CLEAR_SQL);
        assert!(
            clear.contains("INDEX jobs_state (state=? AND id>? AND id<?)"),
            "{clear}"
        );
        let upper = plan(&store, CLEAR_UPPER_SQL);
        assert!(
            upper.contains("COVERING INDEX jobs_state (state=? AND id>?)"),
            "{upper}"
        );
        // The history's bound costs one probe of attempts_job per run, however long the table.
        let prune = plan(&store, PRUNE_ATTEMPTS_SQL);
        assert!(prune.contains("attempts_job (job_id=?"), "{prune}");
        assert!(!prune.contains("SCAN"), "{prune}");
        let history = plan(&store, CLEAR_ATTEMPTS_SQL);
        assert!(
            history.contains("attempts_job (job_id>? AND job_id<?)"),
            "{history}"
        );
    }

    /// `clear` deletes the history of the jobs it deletes, and only theirs.
    #[test]
    fn clear_deletes_the_history_with_its_jobs() {
        let (_dir, mut store) = store();
        let ids = publish(&mut store, &[job("a", None), job("a", None)], 1000).expect("publish");
        let run = store.begin_run("general", &me(), 1000, false).expect("run");
        for (id, state) in ids
            .iter()
            .zip([JobState::Finished, JobState::PermanentlyFailed])
        {
            let claimed = claim(&mut store, "general", run, 1000, &["a"])
                .expect("claim")
                .expect("job");
            assert_eq!(claimed.id, *id);
            let mut done = crate::store::conformance::ended(*id, claimed.fence, state, 1000, b"");
            done.ended = crate::store::conformance::end_of(state);
            store.complete(&done).expect("complete");
        }
        let rows = |store: &SqliteStore| -> Vec<i64> {
            let mut stmt = store
                .conn
                .prepare("SELECT job_id FROM attempts")
                .expect("sql");
            stmt.query_map([], |row| row.get(0))
                .expect("read")
                .collect::<Result<_, _>>()
                .expect("rows")
        };
        assert_eq!(rows(&store), ids);
        assert_eq!(
            store
                .clear_batch(JobState::Finished, 5000, 0, 100)
                .expect("clear")
                .0,
            1
        );
        assert_eq!(rows(&store), [ids[1]]);
    }

    /// SQLite's own: the query plans of its listing statements.
    #[test]
    fn listing_queries_use_their_indexes() {
        let (_dir, store) = store();
        let one = |value: &str| vec![value.to_owned()];
        let cases = [
            (
                ListFilter {
                    states: vec![JobState::Ready],
                    ..ListFilter::default()
                },
                "INDEX jobs_state",
            ),
            (
                ListFilter {
                    queue: Some("q".into()),
                    ..ListFilter::default()
                },
                "INDEX jobs_queue",
            ),
            (
                ListFilter {
                    callback: Some("c".into()),
                    ..ListFilter::default()
                },
                "INDEX jobs_callback",
            ),
            (
                ListFilter {
                    identifiers: one("i"),
                    ..ListFilter::default()
                },
                "INDEX jobs_identifier",
            ),
        ];
        for (filter, index) in cases {
            let listed = plan(&store, &list_sql(&filter, 50).0);
            assert!(listed.contains(index), "{filter:?}: {listed}");
            let unfinished = plan(&store, &unfinished_sql(&filter).0);
            assert!(
                !unfinished.contains("SCAN jobs\n") && !unfinished.ends_with("SCAN jobs"),
                "{filter:?}: {unfinished}"
            );
        }
        // Unfiltered, newest first is the primary key read backwards: no sort, LIMIT rows read.
        let all = plan(&store, &list_sql(&ListFilter::default(), 50).0);
        assert!(!all.contains("TEMP B-TREE"), "{all}");
        let unfinished = plan(&store, &unfinished_sql(&ListFilter::default()).0);
        assert!(unfinished.contains("INDEX jobs_identifier"), "{unfinished}");
        // By queue, FINISHED jobs come from jobs_state, the others from jobs_queue.
        let by_queue = ListFilter {
            queue: Some("q".into()),
            ..ListFilter::default()
        };
        let listed = plan(&store, &list_sql(&by_queue, 50).0);
        assert!(
            listed.contains("INDEX jobs_queue") && listed.contains("INDEX jobs_state"),
            "{listed}"
        );
    }

    /// SQLite's own: what `stats` and `status` read per queue comes from the kept counts and
    /// index ranges of due or waiting jobs, never from a pass over the jobs (the conformance
    /// suite checks what they return).
    #[test]
    fn read_commands_seek_their_indexes() {
        let (_dir, store) = store();
        let counts = plan(&store, STATE_COUNTS_SQL);
        assert!(!counts.contains(" jobs"), "{counts}");
        let ready = plan(&store, DUE_READY_SQL);
        assert!(ready.contains("COVERING INDEX jobs_ready"), "{ready}");
        assert!(!ready.contains("TEMP B-TREE"), "{ready}");
        let scheduled = plan(&store, DUE_SCHEDULED_SQL);
        assert!(
            scheduled.contains("INDEX jobs_schedule (queue=? AND run_at<?)"),
            "{scheduled}"
        );
        let due = format!("{ready}\n{scheduled}");
        let stuck = plan(&store, STUCK_AFTER_SQL);
        assert!(stuck.contains("INDEX jobs_blocked"), "{stuck}");
        // What clear counts out is the range it deletes.
        for uncount in [UNCOUNT_FINISHED_SQL, UNCOUNT_UNFINISHED_SQL] {
            let uncount = plan(&store, uncount);
            assert!(
                uncount.contains("INDEX jobs_state (state=? AND id>? AND id<?)"),
                "{uncount}"
            );
        }
        for (what, plan) in [("due", &due), ("stuck", &stuck)] {
            assert!(
                // Whole passes only over the due jobs, the waiting ones and the kept counts.
                !plan.lines().any(|step| step.starts_with("SCAN")
                    && ![
                        "jobs_ready",
                        "jobs_blocked",
                        "job_counts",
                        "SCAN q",
                        "(subquery"
                    ]
                    .iter()
                    .any(|allowed| step.contains(allowed))),
                "{what}: {plan}"
            );
        }
    }

    /// SQLite's own: its partial unique index refuses a second unfinished unique job with the
    /// same identifier in a queue even to a writer that skips publish's check (the check itself
    /// is `a_unique_job_is_stored_once_while_unfinished` of the conformance suite).
    #[test]
    fn the_unique_index_refuses_a_second_unfinished_unique_job() {
        let (_dir, mut store) = store();
        let unique = Schedule {
            unique: true,
            ..Schedule::default()
        };
        let named = NewJob {
            identifier: Some("x".to_owned()),
            ..job("a", None)
        };
        let Published::Stored { ids, .. } = store
            .publish_with(std::slice::from_ref(&named), &unique, 1000)
            .expect("publish")
        else {
            panic!("not stored");
        };
        let other_queue = NewJob {
            queue: "other".to_owned(),
            ..named.clone()
        };
        assert!(matches!(
            store
                .publish_with(&[other_queue], &unique, 1000)
                .expect("publish"),
            Published::Stored { .. }
        ));
        // The index holds even for a writer that skips the check.
        let err = store
            .conn
            .execute(
                "UPDATE jobs SET is_unique = 1 WHERE id = (SELECT max(id) FROM jobs WHERE queue = 'other')
                   OR id = ?1",
                [ids[0]],
            )
            .and_then(|_| {
                store.conn.execute(
                    "INSERT INTO jobs (queue, callback, payload, identifier, created_at, run_at, is_unique)
                     VALUES ('general', 'a', x'c0', 'x', 1, 1, 1)",
                    [],
                )
            })
            .expect_err("a second unfinished unique job");
        assert_eq!(
            err.sqlite_error_code(),
            Some(rusqlite::ErrorCode::ConstraintViolation)
        );
    }

    /// SQLite's own: the stale marks are written by SQL, as only a database of bgq 3 holds them
    /// (a job not running yet marked for cancelling); no call of the trait leaves one.
    #[test]
    fn a_retry_or_a_claim_clears_a_stale_cancel_mark() {
        let (_dir, mut store) = store();
        let ids = publish(&mut store, &[job("a", None), job("a", None)], 1000).expect("publish");
        // As a `process` of bgq 3 leaves a job it ended after an upgrade: failed, yet marked.
        store
            .conn
            .execute(
                "UPDATE jobs SET state = 'PERMANENTLY_FAILED', cancel_requested = 1 WHERE id = ?1",
                [ids[0]],
            )
            .expect("mark");
        store
            .conn
            .execute(
                "UPDATE jobs SET cancel_requested = 1 WHERE id = ?1",
                [ids[1]],
            )
            .expect("mark");
        store
            .change(
                &Selection::Ids(&ids[..1]),
                &Change::Retry {
                    now: 2000,
                    payload: None,
                },
                false,
                &mut |_: &JobBrief| Ok(true),
            )
            .expect("retry");
        assert!(!marked(&store, ids[0]));
        let run = store.begin_run("general", &me(), 2000, false).expect("run");
        let claimed = claim(&mut store, "general", run, 2000, &["a"])
            .expect("claim")
            .expect("job");
        assert_eq!(claimed.id, ids[1]);
        assert!(!marked(&store, ids[1]));
        assert!(
            store
                .cancels_requested("general", run)
                .expect("read")
                .is_empty()
        );
    }
}
