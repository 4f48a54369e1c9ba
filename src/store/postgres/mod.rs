//! The PostgreSQL backend of the store (see `store` for the contract it keeps): one schema of a
//! database that any number of hosts share, its schema and upgrades, the SQL of every
//! operation, the sessions that tell live runs from dead ones (`session`), and LISTEN/NOTIFY
//! for `--watch` (`wake`).
//!
//! How it keeps the contract across hosts: every method is one transaction (or one statement);
//! a claim picks with `FOR UPDATE SKIP LOCKED` inside the schema's `claim()` function, one round
//! trip; a serial group's jobs are numbered in commit order (publish takes the group's
//! transaction lock) and never two of them PROCESSING (a unique index); an outcome is stored
//! only under its fence. Statements go out unnamed (`query_typed`): one round trip each, and
//! nothing a transaction-mode pooler could mix up between clients.

mod connect;
mod import;
mod session;
mod settle;
mod tls;
mod wake;

use std::cell::{Cell, RefCell, RefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use postgres::error::SqlState;
use postgres::types::{ToSql, Type};
use postgres::{Client, GenericClient, Row};

use crate::config::PostgresTarget;
use crate::coord::Liveness;
use crate::coord::fleet::{Fleet, SessionFacts};
use crate::coord::process_group::ProcessRecord;
use crate::error::UsageError;
use crate::job::{JobRecord, JobState, Millis, NewJob, StoredPayload};
use crate::notify::NoticeKind;
use crate::queue::eligibility::GroupFacts;
use crate::store::{
    Applied, AttemptEnd, AttemptOutcome, AttemptRecord, BatchInfo, BatchTarget, BrokenCallback,
    Change, ClaimRequest, Completion, DueJobs, Durability, Fence, JobBrief, JobDetail, ListFilter,
    NewBatch, Orphan, Pause, PendingNotice, Published, RunInfo, Schedule, Sealed, Selection,
    Settled, Store, StuckAfter, Tally,
};

pub use connect::{Purpose, connect};

/// The canonical tables, applied to a new schema.
const SCHEMA: &str = include_str!("schema.sql");
/// The upgrade of a schema from the version before each to it, in order.
const UPGRADES: &[(i64, &str)] = &[
    (5, include_str!("upgrades/v5.sql")),
    (6, include_str!("upgrades/v6.sql")),
    (7, include_str!("upgrades/v7.sql")),
];
/// The schema's functions, applied to a new schema and whenever its revision is older.
const FUNCTIONS: &str = include_str!("functions.sql");
/// The revision of functions.sql, in `meta.functions`: 2 added settle() and settle_and_claim();
/// 3 keeps the job before its claim (for a callback that cannot start), the history of attempts,
/// run totals, and leaves paused callbacks unclaimed; 4 keeps batches (their counters and
/// completion, by triggers) and claims return the job's batch; 5 keeps the job counts
/// (triggers on jobs and fold_job_counts()).
const FUNCTIONS_REVISION: i64 = 5;
/// The schema version this binary writes: the same numbers as SQLite's.
pub const SCHEMA_VERSION: i64 = crate::store::sqlite::SCHEMA_VERSION;
/// How long per-minute outcome counts are kept for `stats`.
const OUTCOMES_KEPT_MINUTES: i64 = 2 * 24 * 60;
/// Jobs inserted by one statement.
const INSERT_CHUNK: usize = 5000;

/// Per queue, the jobs due by $1 and waiting to run: how many, the oldest and since when, by
/// index ranges (due_jobs() in functions.sql).
const DUE_JOBS_SQL: &str = "SELECT * FROM @.due_jobs($1)";

/// Jobs waiting (`--after`) for a job that will never finish, from the jobs that wait at all
/// (jobs_blocked) to their parents: PERMANENTLY_FAILED or CANCELLED, or deleted so by `clear`.
pub(crate) const STUCK_AFTER_SQL: &str = "SELECT j.id, j.queue, d.after_id, p.state, false
    FROM @.jobs j JOIN @.dependencies d ON d.job_id = j.id JOIN @.jobs p ON p.id = d.after_id
    WHERE j.blocked_by > 0 AND j.state = 'READY'
      AND p.state IN ('PERMANENTLY_FAILED', 'CANCELLED')
    UNION ALL
    SELECT j.id, j.queue, d.after_id, c.state, true
    FROM @.jobs j JOIN @.dependencies d ON d.job_id = j.id
    JOIN @.cleared_unfinished c ON c.id = d.after_id
    WHERE j.blocked_by > 0 AND j.state = 'READY'
    ORDER BY 1, 3";

/// A parameter of an unnamed statement, with its type.
type Param<'a> = (&'a (dyn ToSql + Sync), Type);

/// An open bgq schema in a PostgreSQL database.
pub struct PostgresStore {
    /// In a cell: the read methods of `Store` take `&self`, and a query needs the client whole.
    client: RefCell<Client>,
    target: PostgresTarget,
    /// The schema's name, as written into SQL (a plain name: see `config::SchemaName`).
    schema: String,
    /// Names the database for lock files and messages (no password).
    identity: String,
    fleet: Fleet,
    /// Set by the `--watch` listener when a notification came.
    notified: Arc<AtomicBool>,
    /// Whether a listener runs (`on_change`).
    listening: Cell<bool>,
    /// The run's session, once `keep_alive` started it.
    session: Option<session::Session>,
    /// The `process` run this store records (`begin_run`), if any.
    run: Option<i64>,
}

impl PostgresStore {
    /// Connects and creates or upgrades bgq's schema.
    pub fn open(target: &PostgresTarget, durability: Durability) -> anyhow::Result<PostgresStore> {
        let mut store = Self::connect_to(target, durability)?;
        store.migrate().with_context(|| {
            format!(
                "cannot set up schema {} in {}",
                store.schema, store.identity
            )
        })?;
        Ok(store)
    }

    /// Connects if bgq's schema exists; never creates it (`bgq check`).
    pub fn open_existing(target: &PostgresTarget) -> anyhow::Result<Option<PostgresStore>> {
        let mut store = Self::connect_to(target, Durability::Relaxed)?;
        match store.version()? {
            None => Ok(None),
            Some(_) => {
                store.migrate()?;
                Ok(Some(store))
            }
        }
    }

    fn connect_to(
        target: &PostgresTarget,
        durability: Durability,
    ) -> anyhow::Result<PostgresStore> {
        // Durability::Relaxed is taken up by `begin_run`: only a run's own commits may be
        // relaxed, and a setting made here would outlive the command on a pooled connection.
        let _ = durability;
        let client = connect(&target.conninfo, Purpose::Command)?;
        Ok(PostgresStore {
            client: RefCell::new(client),
            identity: format!("{}#{}", connect::identity(&target.conninfo), target.schema),
            schema: target.schema.clone(),
            target: target.clone(),
            fleet: Fleet {
                host_id: target.host_id.clone(),
            },
            notified: Arc::new(AtomicBool::new(true)),
            listening: Cell::new(false),
            session: None,
            run: None,
        })
    }

    /// `sql` with `@.` naming bgq's schema.
    fn sql(&self, sql: &str) -> String {
        in_schema(&self.schema, sql)
    }

    /// The connection, for one statement or transaction at a time.
    fn reader(&self) -> RefMut<'_, Client> {
        self.client.borrow_mut()
    }

    /// The schema's version and the revision of its functions (`None` when it has no bgq
    /// tables), in one round trip: every command asks this first.
    fn version(&mut self) -> anyhow::Result<Option<Revisions>> {
        let sql = self.sql(
            "SELECT (SELECT value FROM @.meta WHERE key = 'version'),
                    (SELECT value FROM @.meta WHERE key = 'functions')",
        );
        let row = match self.reader().query_typed_one(&sql, &[]) {
            Ok(row) => row,
            // No meta table: a schema bgq has not set up (yet).
            Err(err) if err.code() == Some(&SqlState::UNDEFINED_TABLE) => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        Revisions::read(row.get(0), row.get(1)).map(Some)
    }

    fn migrate(&mut self) -> anyhow::Result<()> {
        match self.version()? {
            Some(found) if found.version > SCHEMA_VERSION => bail!(
                "schema {} has version {}, newer than this bgq knows ({SCHEMA_VERSION}): upgrade bgq",
                self.schema,
                found.version
            ),
            // Newer functions than ours are fine: a revision keeps what older binaries call.
            Some(found)
                if found.version == SCHEMA_VERSION && found.functions >= FUNCTIONS_REVISION =>
            {
                return Ok(());
            }
            _ => {}
        }
        let schema = self.schema.clone();
        let mut tx = self.client.get_mut().transaction()?;
        // Two hosts upgrading at once: the second waits here, then finds the work done.
        tx.query_typed(
            "SELECT pg_advisory_xact_lock(hashtext($1))",
            &[(&format!("{schema}.migrate"), Type::TEXT)],
        )?;
        // A query of the catalog, not to_regclass(): that may answer from a cache which has not
        // yet heard of the tables another host created while we waited for the lock.
        let exists: bool = tx
            .query_typed_one(
                "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = 'meta')",
                &[(&schema, Type::TEXT)],
            )?
            .get(0);
        if exists {
            let row = tx.query_typed_one(
                &in_schema(
                    &schema,
                    "SELECT (SELECT value FROM @.meta WHERE key = 'version'),
                            (SELECT value FROM @.meta WHERE key = 'functions')",
                ),
                &[],
            )?;
            let found = Revisions::read(row.get(0), row.get(1))?;
            let upgrades: Vec<&(i64, &str)> = UPGRADES
                .iter()
                .filter(|(reached, _)| *reached > found.version)
                .collect();
            if found.version > SCHEMA_VERSION
                || upgrades
                    .first()
                    .is_some_and(|(first, _)| *first != found.version + 1)
            {
                bail!(
                    "schema {schema} has version {}, which this bgq cannot upgrade",
                    found.version
                );
            }
            if !upgrades.is_empty() {
                tx.batch_execute(&format!("SET LOCAL search_path = {schema}"))?;
            }
            for (reached, sql) in upgrades {
                tx.batch_execute(sql).with_context(|| {
                    format!(
                        "cannot upgrade schema {schema} from version {} to {reached}",
                        reached - 1
                    )
                })?;
            }
            if found.functions < FUNCTIONS_REVISION {
                apply_functions(&mut tx, &schema)?;
            }
            return Ok(tx.commit()?);
        }
        let has_tables: bool = tx
            .query_typed_one(
                "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = $1)",
                &[(&schema, Type::TEXT)],
            )?
            .get(0);
        if has_tables {
            bail!(
                "schema {schema} holds tables that are not bgq's: give bgq a schema of its own (`schema` in the config)"
            );
        }
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}; SET LOCAL search_path = {schema}"
        ))
        .with_context(|| format!("cannot create schema {schema}"))?;
        tx.batch_execute(SCHEMA)
            .context("cannot create bgq's tables")?;
        apply_functions(&mut tx, &schema)?;
        tx.commit()?;
        Ok(())
    }

    /// Adds what bgq was doing, and in which database, to an error (once); an error the user
    /// must fix passes unchanged.
    fn in_database<T>(
        &self,
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
                    self.identity
                )))
            }
        })
    }

    fn publish_inner(
        &mut self,
        jobs: &[NewJob],
        schedule: &Schedule,
        now: Millis,
    ) -> anyhow::Result<Published> {
        let schema = self.schema.clone();
        let identity = self.identity.clone();
        let q = |sql: &str| in_schema(&schema, sql);
        let mut after = schedule.after.clone();
        after.sort_unstable();
        after.dedup();
        let mut groups: Vec<&str> = jobs
            .iter()
            .filter_map(|job| job.serial_group.as_deref())
            .collect();
        groups.sort_unstable();
        groups.dedup();
        // The common publish (no --after, no serial group, not unique, one chunk) is one
        // statement in autocommit: one round trip after the connection's start.
        if after.is_empty()
            && groups.is_empty()
            && !schedule.unique
            && schedule.batch.is_none()
            && jobs.len() <= INSERT_CHUNK
        {
            let due = schedule.run_at <= now;
            let client = self.client.get_mut();
            let ids = insert_jobs(client, &schema, jobs, schedule, now, 0, due)?;
            return Ok(Published::Stored {
                ids,
                waiting_for: Vec::new(),
            });
        }
        let mut tx = self.client.get_mut().transaction()?;
        if let Some(batch) = schedule.batch {
            check_batch_open(&mut tx, &schema, batch, &identity)?;
        }
        let mut waiting_for = Vec::new();
        if !after.is_empty() {
            let cleared_up_to: i64 = tx
                .query_typed_one(
                    &q("SELECT value::bigint FROM @.meta WHERE key = 'cleared_up_to'"),
                    &[],
                )?
                .get(0);
            // FOR SHARE: a parent cannot finish (and miss unblocking us) between this read and
            // our commit.
            let rows = tx.query_typed(
                &q("SELECT id, state FROM @.jobs WHERE id = ANY ($1) FOR SHARE"),
                &[(&after, Type::INT8_ARRAY)],
            )?;
            for parent in &after {
                match rows.iter().find(|row| row.get::<_, i64>(0) == *parent) {
                    Some(row) => {
                        let state = parse_state(row.get(1))?;
                        if state != JobState::Finished {
                            waiting_for.push((*parent, state));
                        }
                    }
                    None if let Some(state) = cleared_unfinished(&mut tx, &schema, *parent)? => {
                        waiting_for.push((*parent, state));
                    }
                    None if *parent <= cleared_up_to => {}
                    None => {
                        return Err(crate::error::usage(format!(
                            "--after: no job {parent} in {identity}"
                        )));
                    }
                }
            }
        }
        if !groups.is_empty() {
            // Ids of one serial group are handed out in commit order, so that a claim never
            // sees a younger job of a group before an older one.
            tx.query_typed(
                &q(
                    "SELECT pg_advisory_xact_lock(@.group_lock_space(), hashtext(g))
                    FROM unnest($1::text[]) g ORDER BY g",
                ),
                &[(&groups, Type::TEXT_ARRAY)],
            )?;
        }
        if schedule.unique
            && let Some(job) = jobs.first()
            && let Some((id, state)) = unfinished_with_identifier(&mut tx, &schema, job)?
        {
            return Ok(Published::Existing { id, state });
        }
        let blocked_by = i32::try_from(waiting_for.len()).unwrap_or(i32::MAX);
        let due = blocked_by == 0 && schedule.run_at <= now;
        let mut ids = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(INSERT_CHUNK) {
            let stored = insert_jobs(&mut tx, &schema, chunk, schedule, now, blocked_by, due)?;
            if stored.len() < chunk.len() {
                // Only a unique job can conflict: another publisher stored it first.
                drop(tx);
                return match unfinished_with_identifier(&mut *self.reader(), &schema, &chunk[0])? {
                    Some((id, state)) => Ok(Published::Existing { id, state }),
                    None => bail!("a unique job conflicted with one that is gone: publish again"),
                };
            }
            ids.extend(stored);
        }
        if !after.is_empty() {
            tx.query_typed(
                &q("INSERT INTO @.dependencies (job_id, after_id)
                    SELECT j, a FROM unnest($1::bigint[]) j, unnest($2::bigint[]) a
                    ON CONFLICT DO NOTHING"),
                &[(&ids, Type::INT8_ARRAY), (&after, Type::INT8_ARRAY)],
            )?;
        }
        tx.commit()?;
        Ok(Published::Stored { ids, waiting_for })
    }

    /// The session facts of run `run`, as `run_session()` reports them.
    fn liveness_of(
        &self,
        runner: Option<&ProcessRecord>,
        facts: Option<&SessionFacts>,
    ) -> Liveness {
        self.fleet.liveness(runner, facts)
    }
}

/// The error context naming the database (see `PostgresStore::in_database`).
#[derive(Debug)]
struct InDatabase(String);

impl std::fmt::Display for InDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InDatabase {}

/// What `meta` says of a schema: the version of its tables and the revision of its functions.
struct Revisions {
    version: i64,
    functions: i64,
}

impl Revisions {
    fn read(version: Option<String>, functions: Option<String>) -> anyhow::Result<Revisions> {
        let version = version.context("its meta table has no version")?;
        let version = version
            .parse()
            .with_context(|| format!("its version {version:?} is not a number"))?;
        // The schema of the first PostgreSQL release had no revision: its functions are 1.
        let functions = match functions {
            None => 1,
            Some(text) => text
                .parse()
                .with_context(|| format!("its functions revision {text:?} is not a number"))?,
        };
        Ok(Revisions { version, functions })
    }
}

/// Creates or replaces the schema's functions (functions.sql) inside `tx`, which holds the
/// upgrade lock, and records their revision.
fn apply_functions(tx: &mut postgres::Transaction<'_>, schema: &str) -> anyhow::Result<()> {
    tx.batch_execute(&format!("SET LOCAL search_path = {schema}"))?;
    tx.batch_execute(FUNCTIONS)
        .context("cannot create bgq's functions")?;
    tx.execute_typed(
        &in_schema(
            schema,
            "INSERT INTO @.meta (key, value) VALUES ('functions', $1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        ),
        &[(&FUNCTIONS_REVISION.to_string(), Type::TEXT)],
    )?;
    Ok(())
}

/// `sql` with `@.` naming `schema`.
fn in_schema(schema: &str, sql: &str) -> String {
    sql.replace("@.", &format!("{schema}."))
}

/// Inserts `jobs` (at most INSERT_CHUNK) as `schedule` says, blocked by `blocked_by` parents,
/// and when they are `due` wakes the `--watch` runs of their queues as the transaction
/// commits, in one statement; returns the ids stored, in order (fewer than `jobs` when a
/// unique job conflicted).
fn insert_jobs(
    client: &mut impl GenericClient,
    schema: &str,
    jobs: &[NewJob],
    schedule: &Schedule,
    now: Millis,
    blocked_by: i32,
    due: bool,
) -> anyhow::Result<Vec<i64>> {
    let run_at = schedule.run_at.max(now);
    let queues: Vec<&str> = jobs.iter().map(|job| job.queue.as_str()).collect();
    let callbacks: Vec<&str> = jobs.iter().map(|job| job.callback.as_str()).collect();
    let payloads: Vec<&[u8]> = jobs.iter().map(|job| job.payload.as_slice()).collect();
    let groups: Vec<Option<&str>> = jobs.iter().map(|job| job.serial_group.as_deref()).collect();
    let identifiers: Vec<Option<&str>> = jobs.iter().map(|job| job.identifier.as_deref()).collect();
    // `woken` is joined so that it runs: a CTE that only reads is evaluated when used.
    let sql = in_schema(
        schema,
        "WITH ins AS (
             INSERT INTO @.jobs (queue, callback, payload, serial_group, identifier,
                                 created_at, run_at, state_changed_at, priority,
                                 blocked_by, is_unique, due, batch_id)
             SELECT q, c, p, g, i, $6, $7, $6, $8, $9, $10, $11, $12
             FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], $5::text[])
                  WITH ORDINALITY AS t (q, c, p, g, i, n)
             ORDER BY n
             ON CONFLICT DO NOTHING
             RETURNING id, queue),
         woken AS (
             SELECT count(pg_notify(@.wake_channel(), d.queue)) AS n
             FROM (SELECT DISTINCT queue FROM ins) d WHERE $11)
         SELECT ins.id FROM ins, woken ORDER BY ins.id",
    );
    let rows = client.query_typed(
        &sql,
        &[
            (&queues, Type::TEXT_ARRAY),
            (&callbacks, Type::TEXT_ARRAY),
            (&payloads, Type::BYTEA_ARRAY),
            (&groups, Type::TEXT_ARRAY),
            (&identifiers, Type::TEXT_ARRAY),
            (&now, Type::INT8),
            (&run_at, Type::INT8),
            (&schedule.priority, Type::INT8),
            (&blocked_by, Type::INT4),
            (&schedule.unique, Type::BOOL),
            (&due, Type::BOOL),
            (&schedule.batch.map(|batch| batch.id), Type::INT8),
        ],
    )?;
    Ok(rows.iter().map(|row| row.get::<_, i64>(0)).collect())
}

/// Wakes the `--watch` runs of `queues` when the transaction commits.
fn notify_queues(
    client: &mut impl GenericClient,
    schema: &str,
    queues: &[&str],
) -> anyhow::Result<()> {
    client.query_typed(
        &in_schema(
            schema,
            "SELECT pg_notify(@.wake_channel(), q) FROM unnest($1::text[]) q",
        ),
        &[(&queues, Type::TEXT_ARRAY)],
    )?;
    Ok(())
}

/// The state job `id` was deleted in by `clear --state`, if it was.
fn cleared_unfinished(
    client: &mut impl GenericClient,
    schema: &str,
    id: i64,
) -> anyhow::Result<Option<JobState>> {
    client
        .query_typed_opt(
            &in_schema(
                schema,
                "SELECT state FROM @.cleared_unfinished WHERE id = $1",
            ),
            &[(&id, Type::INT8)],
        )?
        .map(|row| parse_state(row.get(0)))
        .transpose()
}

fn read_pause(row: &Row) -> Pause {
    let queue: String = row.get(0);
    let callback: String = row.get(1);
    Pause {
        queue: (!queue.is_empty()).then_some(queue),
        callback: (!callback.is_empty()).then_some(callback),
        since: row.get(2),
    }
}

/// The newest job with `job`'s identifier in its queue that is not FINISHED.
fn unfinished_with_identifier(
    client: &mut impl GenericClient,
    schema: &str,
    job: &NewJob,
) -> anyhow::Result<Option<(i64, JobState)>> {
    let row = client.query_typed_opt(
        &in_schema(
            schema,
            "SELECT id, state FROM @.jobs
             WHERE identifier = $1 AND queue = $2 AND state <> 'FINISHED'
             ORDER BY id DESC LIMIT 1",
        ),
        &[(&job.identifier, Type::TEXT), (&job.queue, Type::TEXT)],
    )?;
    row.map(|row| Ok((row.get(0), parse_state(row.get(1))?)))
        .transpose()
}

/// The MessagePack of a job's parameters: as stored, or made from the JSON text that the SQL
/// function `publish()` stored.
fn stored_payload(
    payload: Option<Vec<u8>>,
    params_json: Option<String>,
) -> Result<Vec<u8>, String> {
    match (payload, params_json) {
        (Some(payload), _) => Ok(payload),
        (None, Some(text)) => {
            let mut parser = serde_json::Deserializer::from_str(&text);
            parser.disable_recursion_limit();
            crate::job::json_to_msgpack(&mut parser)
                .map_err(|err| format!("its JSON is invalid: {err}"))
        }
        (None, None) => Err("it has no parameters".to_owned()),
    }
}

fn parse_state(text: &str) -> anyhow::Result<JobState> {
    text.parse::<JobState>()
}

/// A non-negative count in column `index`.
fn read_count(row: &Row, index: usize) -> u64 {
    u64::try_from(row.get::<_, i64>(index)).unwrap_or_default()
}

fn read_u32(row: &Row, index: usize) -> u32 {
    u32::try_from(row.get::<_, i32>(index)).unwrap_or_default()
}

/// The columns of a `JobRecord`.
const RECORD_COLUMNS: &str = "id, queue, callback, state, attempts, serial_group, identifier,
     created_at, run_at, started_at, finished_at,
     coalesce(nullif(state_changed_at, 0), finished_at, started_at, created_at), priority, blocked_by,
     batch_id";

/// A `JobRecord` from the `RECORD_COLUMNS` starting at column `first`.
fn read_record_at(row: &Row, first: usize) -> anyhow::Result<JobRecord> {
    Ok(JobRecord {
        id: row.get(first),
        queue: row.get(first + 1),
        callback: row.get(first + 2),
        state: parse_state(row.get(first + 3))?,
        attempts: read_u32(row, first + 4),
        serial_group: row.get(first + 5),
        identifier: row.get(first + 6),
        created_at: row.get(first + 7),
        run_at: row.get(first + 8),
        started_at: row.get(first + 9),
        finished_at: row.get(first + 10),
        state_changed_at: row.get(first + 11),
        priority: row.get(first + 12),
        blocked_by: i64::from(row.get::<_, i32>(first + 13)),
        batch: row.get(first + 14),
    })
}

/// The columns of a `RunInfo`, then its session facts.
const RUN_COLUMNS: &str =
    "r.id, r.queue, r.pid, r.pid_started, r.boot_id, r.started_at, r.finished_at,
     r.jobs, r.failed, r.error, r.watch, r.host_id, s.held, s.silent_ms";

/// `RUN_COLUMNS`' FROM clause.
const RUN_FROM: &str = "@.runs r CROSS JOIN LATERAL @.run_session(r.id) s";

/// A `ProcessRecord` from three columns (pid, start ticks, boot id) starting at `first`.
fn read_process(row: &Row, first: usize) -> Option<ProcessRecord> {
    let pid: Option<i32> = row.get(first);
    let started: Option<i64> = row.get(first + 1);
    let boot_id: Option<String> = row.get(first + 2);
    Some(ProcessRecord {
        pid: pid?,
        started: u64::try_from(started?).unwrap_or_default(),
        boot_id: boot_id?,
    })
}

/// Session facts from three columns (host id, held, silent ms) starting at `first`.
fn read_session(row: &Row, first: usize) -> Option<SessionFacts> {
    let host_id: Option<String> = row.get(first);
    let held: Option<bool> = row.get(first + 1);
    let silent: Option<i64> = row.get(first + 2);
    Some(SessionFacts {
        host_id: host_id?,
        held: held?,
        silent_for: silent?,
    })
}

impl PostgresStore {
    fn read_run(&self, row: &Row) -> anyhow::Result<RunInfo> {
        let runner = read_process(row, 2).context("a run without its process")?;
        let session = read_session(row, 11);
        let finished_at: Option<Millis> = row.get(6);
        let alive = self.liveness_of(Some(&runner), session.as_ref()) == Liveness::Alive;
        Ok(RunInfo {
            id: row.get(0),
            queue: row.get(1),
            alive,
            runner,
            started_at: row.get(5),
            finished_at,
            jobs: read_count(row, 7),
            failed: read_count(row, 8),
            error: row.get(9),
            watch: row.get(10),
        })
    }

    /// The kept attempts of job `id`, oldest first.
    fn attempts_of(&self, id: i64) -> anyhow::Result<Vec<AttemptRecord>> {
        let sql = self.sql(
            "SELECT attempt, run_id, started_at, ended_at, outcome, exit_code, signal, output
             FROM @.attempts WHERE job_id = $1 ORDER BY id",
        );
        let rows = self.reader().query_typed(&sql, &[(&id, Type::INT8)])?;
        rows.iter()
            .map(|row| {
                let outcome: &str = row.get(4);
                let output: Option<Vec<u8>> = row.get(7);
                Ok(AttemptRecord {
                    attempt: read_u32(row, 0),
                    run: row.get(1),
                    started_at: row.get(2),
                    ended_at: row.get(3),
                    ended: AttemptEnd {
                        outcome: AttemptOutcome::parse(outcome).with_context(|| {
                            format!("job {id} has an attempt of unknown outcome {outcome:?}")
                        })?,
                        exit_code: row.get(5),
                        signal: row.get(6),
                    },
                    output: output.unwrap_or_default(),
                })
            })
            .collect()
    }

    fn reader_self(&self) -> &Self {
        self
    }

    fn runs_where(&self, condition: &str, params: &[Param<'_>]) -> anyhow::Result<Vec<RunInfo>> {
        let sql = self.sql(&format!(
            "SELECT {RUN_COLUMNS} FROM {RUN_FROM} WHERE {condition}"
        ));
        let rows = self.reader().query_typed(&sql, params)?;
        rows.iter().map(|row| self.read_run(row)).collect()
    }
}

/// Ends running job `id`, asked to stop by `bgq cancel --kill`, as CANCELLED, if `fence` holds it.
fn end_cancel(
    client: &mut impl GenericClient,
    schema: &str,
    id: i64,
    fence: Fence,
    output: &[u8],
    now: Millis,
    history: u32,
) -> anyhow::Result<bool> {
    let attempt = i32::try_from(fence.attempt).unwrap_or(i32::MAX);
    let history = i32::try_from(history).unwrap_or(i32::MAX);
    // The job's batch first, as settle() and the commands lock them: ending the job moves the
    // batch's counters (a trigger), and taking the two locks in the other order deadlocks with
    // a `cancel --batch` or `retry --batch` that selects this job meanwhile.
    let mut tx = client.transaction()?;
    tx.execute_typed(
        &in_schema(
            schema,
            "SELECT 1 FROM @.batches b
             WHERE b.id = (SELECT j.batch_id FROM @.jobs j WHERE j.id = $1) FOR UPDATE",
        ),
        &[(&id, Type::INT8)],
    )?;
    // The job ended and its history's row, in one statement.
    let changed = tx.query_typed(
        &in_schema(
            schema,
            "WITH job AS (
                 UPDATE @.jobs SET state = 'CANCELLED', due = false, cancel_requested = false,
                        output = $2, state_changed_at = $3
                 WHERE id = $1 AND state = 'PROCESSING' AND cancel_requested
                   AND claimed_run = $4 AND attempts = $5
                 RETURNING started_at)
             SELECT @.record_attempt($1, $5, $4, started_at, $3, 'cancelled', NULL, NULL, $2, $6)::text
             FROM job",
        ),
        &[
            (&id, Type::INT8),
            (&output, Type::BYTEA),
            (&now, Type::INT8),
            (&fence.run, Type::INT8),
            (&attempt, Type::INT4),
            (&history, Type::INT4),
        ],
    )?;
    tx.commit()?;
    Ok(!changed.is_empty())
}

/// Writes the counts `tally` holds and empties it.
fn write_tally_to(
    tally: &mut Tally,
    client: &mut impl GenericClient,
    schema: &str,
) -> anyhow::Result<()> {
    let counts = tally.take();
    if counts.is_empty() {
        return Ok(());
    }
    let mut queues = Vec::new();
    let mut minutes = Vec::new();
    let mut columns: [Vec<i64>; 3] = Default::default();
    for ((queue, minute), values) in counts {
        queues.push(queue);
        minutes.push(minute);
        for (column, value) in columns.iter_mut().zip(values) {
            column.push(value);
        }
    }
    client.query_typed(
        &in_schema(
            schema,
            // The kept counts' deltas are folded at the same pace (every run adds a few per
            // job, and only this and `stats` fold them): without, they would pile up between
            // two `stats` and every read of them would grow.
            "WITH tallied AS (
                 INSERT INTO @.outcomes AS o (queue, minute, finished, temporarily_failed, permanently_failed)
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[])
                 ON CONFLICT (queue, minute) DO UPDATE SET
                     finished = o.finished + excluded.finished,
                     temporarily_failed = o.temporarily_failed + excluded.temporarily_failed,
                     permanently_failed = o.permanently_failed + excluded.permanently_failed)
             SELECT @.fold_job_counts()",
        ),
        &[
            (&queues, Type::TEXT_ARRAY),
            (&minutes, Type::INT8_ARRAY),
            (&columns[0], Type::INT8_ARRAY),
            (&columns[1], Type::INT8_ARRAY),
            (&columns[2], Type::INT8_ARRAY),
        ],
    )?;
    Ok(())
}

fn prune_outcomes(
    client: &mut impl GenericClient,
    schema: &str,
    queue: &str,
    now: Millis,
) -> anyhow::Result<()> {
    let before = now / 60_000 - OUTCOMES_KEPT_MINUTES;
    client.execute_typed(
        &in_schema(
            schema,
            "DELETE FROM @.outcomes WHERE queue = $1 AND minute < $2",
        ),
        &[(&queue, Type::TEXT), (&before, Type::INT8)],
    )?;
    Ok(())
}

/// A filter's conditions, appended to a query that has a WHERE clause, with their values:
/// only the conditions the filter has, so that each query is planned for what it asks.
struct Filter {
    sql: String,
    states: Vec<String>,
    queue: Option<String>,
    callback: Option<String>,
    identifiers: Vec<String>,
    batch: Option<i64>,
}

impl Filter {
    /// Conditions for `filter`, its parameters numbered from `$first`.
    fn new(filter: &ListFilter, first: usize) -> Filter {
        let mut sql = String::new();
        let mut next = first;
        let mut add = |present: bool, condition: &str| {
            if present {
                sql.push_str(&condition.replace('#', &format!("${next}")));
                next += 1;
            }
        };
        add(!filter.states.is_empty(), " AND state = ANY (#)");
        add(filter.queue.is_some(), " AND queue = #");
        add(filter.callback.is_some(), " AND callback = #");
        add(!filter.identifiers.is_empty(), " AND identifier = ANY (#)");
        add(filter.batch.is_some(), " AND batch_id = #");
        Filter {
            sql,
            states: filter
                .states
                .iter()
                .map(|state| state.as_str().to_owned())
                .collect(),
            queue: filter.queue.clone(),
            callback: filter.callback.clone(),
            identifiers: filter.identifiers.clone(),
            batch: filter.batch,
        }
    }

    /// The values of the conditions `new` wrote, in their order.
    fn params(&self) -> Vec<Param<'_>> {
        let mut params: Vec<Param<'_>> = Vec::new();
        if !self.states.is_empty() {
            params.push((&self.states, Type::TEXT_ARRAY));
        }
        if let Some(queue) = &self.queue {
            params.push((queue, Type::TEXT));
        }
        if let Some(callback) = &self.callback {
            params.push((callback, Type::TEXT));
        }
        if !self.identifiers.is_empty() {
            params.push((&self.identifiers, Type::TEXT_ARRAY));
        }
        if let Some(batch) = &self.batch {
            params.push((batch, Type::INT8));
        }
        params
    }
}

/// The `list` query for `filter` with `limit` written into it, and the filter's values.
///
/// As on SQLite, FINISHED jobs are left out of the queue and callback indexes (so that `clear`
/// has less to delete): a query by queue or callback that may include FINISHED jobs reads the
/// two kinds apart, each newest first from its own index, and merges the two short lists.
fn list_sql(schema: &str, filter: &ListFilter, limit: i64) -> (String, Filter) {
    let conditions = Filter::new(filter, 1);
    let finished_too = filter.states.is_empty() || filter.states.contains(&JobState::Finished);
    let sql = if (filter.queue.is_some() || filter.callback.is_some()) && finished_too {
        format!(
            "SELECT * FROM (
                 (SELECT {RECORD_COLUMNS} FROM @.jobs WHERE state <> 'FINISHED' {c}
                  ORDER BY id DESC LIMIT {limit})
                 UNION ALL
                 (SELECT {RECORD_COLUMNS} FROM @.jobs WHERE state = 'FINISHED' {c}
                  ORDER BY id DESC LIMIT {limit})) both_kinds
             ORDER BY 1 DESC LIMIT {limit}",
            c = conditions.sql
        )
    } else {
        format!(
            "SELECT {RECORD_COLUMNS} FROM @.jobs WHERE true {} ORDER BY id DESC LIMIT {limit}",
            conditions.sql
        )
    };
    (in_schema(schema, &sql), conditions)
}

impl Store for PostgresStore {
    fn identity(&self) -> &str {
        &self.identity
    }

    fn spans_hosts(&self) -> bool {
        true
    }

    fn keep_alive(
        &mut self,
        run: i64,
        on_lost: Box<dyn FnOnce(String) + Send>,
    ) -> anyhow::Result<()> {
        let session = session::Session::start(&self.target, run, on_lost);
        let session = self.in_database(|| format!("start the session of run {run}"), session)?;
        self.session = Some(session);
        Ok(())
    }

    fn on_change(&self, wake: Box<dyn Fn() -> bool + Send>) -> anyhow::Result<()> {
        // Set by the listener's thread, read by `changed_elsewhere`.
        let flag = Arc::clone(&self.notified);
        wake::listen(
            &self.target,
            Box::new(move || {
                flag.store(true, Ordering::SeqCst);
                wake()
            }),
        )?;
        self.listening.set(true);
        Ok(())
    }

    fn publish_with(
        &mut self,
        jobs: &[NewJob],
        schedule: &Schedule,
        now: Millis,
    ) -> anyhow::Result<Published> {
        let result = self.publish_inner(jobs, schedule, now);
        self.in_database(
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
        let schema = self.schema.clone();
        let host_id = self.fleet.host_id.clone();
        let result = (|| -> anyhow::Result<i64> {
            // A lost commit of a run re-runs a job at worst (the contract's Relaxed); a run has
            // a session of its own, so the settings stay with it.
            self.client.get_mut().batch_execute(&format!(
                "SET synchronous_commit = off; {}",
                session::SERVER_KEEPALIVES
            ))?;
            let mut tx = self.client.get_mut().transaction()?;
            let started = i64::try_from(runner.started).unwrap_or(i64::MAX);
            let run: i64 = tx
                .query_typed_one(
                    &in_schema(
                        &schema,
                        "INSERT INTO @.runs (queue, host_id, pid, pid_started, boot_id, started_at, watch)
                         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                    ),
                    &[
                        (&queue, Type::TEXT),
                        (&host_id, Type::TEXT),
                        (&runner.pid, Type::INT4),
                        (&started, Type::INT8),
                        (&runner.boot_id, Type::TEXT),
                        (&now, Type::INT8),
                        (&watch, Type::BOOL),
                    ],
                )?
                .get(0);
            // Keep the last hundred runs of a queue, and every run that still has a job.
            tx.execute_typed(
                &in_schema(
                    &schema,
                    "DELETE FROM @.runs r WHERE r.queue = $1 AND r.id <= $2 - 100
                       AND NOT EXISTS (SELECT 1 FROM @.jobs j
                                       WHERE j.state = 'PROCESSING' AND j.claimed_run = r.id)",
                ),
                &[(&queue, Type::TEXT), (&run, Type::INT8)],
            )?;
            prune_outcomes(&mut tx, &schema, queue, now)?;
            tx.commit()?;
            Ok(run)
        })();
        if let Ok(run) = result {
            self.run = Some(run);
        }
        self.in_database(
            || format!("record the start of a run of queue `{queue}`"),
            result,
        )
    }

    fn prune_outcomes(&mut self, queue: &str, now: Millis) -> anyhow::Result<()> {
        let schema = self.schema.clone();
        let result = prune_outcomes(&mut *self.reader(), &schema, queue, now);
        self.in_database(
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
        let sql = self.sql(
            "UPDATE @.runs SET finished_at = $2, jobs = $3, failed = $4, error = $5 WHERE id = $1",
        );
        let jobs = i64::try_from(jobs).unwrap_or(i64::MAX);
        let failed = i64::try_from(failed).unwrap_or(i64::MAX);
        let result = self
            .reader()
            .execute_typed(
                &sql,
                &[
                    (&run, Type::INT8),
                    (&now, Type::INT8),
                    (&jobs, Type::INT8),
                    (&failed, Type::INT8),
                    (&error, Type::TEXT),
                ],
            )
            .map(|_| ())
            .map_err(anyhow::Error::from);
        if let Some(session) = self.session.take() {
            session.end();
        }
        self.in_database(|| format!("record the end of run {run}"), result)
    }

    fn orphans(&mut self, queue: &str) -> anyhow::Result<Vec<Orphan>> {
        let sql = self.sql(
            "SELECT j.id, j.callback, j.attempts, j.notified, j.cancel_requested,
                    r.pid, r.pid_started, r.boot_id, j.claimed_run, r.host_id, s.held, s.silent_ms
             FROM @.jobs j LEFT JOIN @.runs r ON r.id = j.claimed_run
                  LEFT JOIN LATERAL @.run_session(r.id) s ON r.id IS NOT NULL
             WHERE j.queue = $1 AND j.state = 'PROCESSING' ORDER BY j.id",
        );
        let result = (|| -> anyhow::Result<Vec<Orphan>> {
            let rows = self.reader().query_typed(&sql, &[(&queue, Type::TEXT)])?;
            Ok(rows
                .iter()
                .map(|row| {
                    let attempts = read_u32(row, 2);
                    let claimed_by = read_process(row, 5);
                    let session = read_session(row, 9);
                    Orphan {
                        id: row.get(0),
                        callback: row.get(1),
                        attempts,
                        notified: row.get(3),
                        cancel_requested: row.get(4),
                        liveness: self.liveness_of(claimed_by.as_ref(), session.as_ref()),
                        here: session
                            .as_ref()
                            .is_some_and(|session| self.fleet.is_here(session)),
                        claimed_by,
                        fence: Fence {
                            run: row.get(8),
                            attempt: attempts,
                        },
                    }
                })
                .collect())
        })();
        self.in_database(
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
        let sql = self.sql(
            "UPDATE @.jobs SET due = true
             WHERE queue = $1 AND NOT due AND blocked_by = 0
               AND state IN ('READY', 'TEMPORARILY_FAILED', 'WAITING')
               AND run_at <= $3 AND claimed_run < $2",
        );
        let started_by = started_by.unwrap_or(i64::MAX);
        let result = self
            .reader()
            .execute_typed(
                &sql,
                &[
                    (&queue, Type::TEXT),
                    (&started_by, Type::INT8),
                    (&now, Type::INT8),
                ],
            )
            .map(|count| usize::try_from(count).unwrap_or(usize::MAX))
            .map_err(anyhow::Error::from);
        self.in_database(|| format!("look for due jobs of queue `{queue}`"), result)
    }

    fn changed_elsewhere(&mut self) -> anyhow::Result<bool> {
        // Without a listener, every look may find something.
        Ok(!self.listening.get() || self.notified.swap(false, Ordering::SeqCst))
    }

    fn settle_and_claim(
        &mut self,
        done: &[Completion],
        claim: &ClaimRequest<'_>,
        tally: &mut Tally,
        write_tally: bool,
    ) -> anyhow::Result<Settled> {
        let schema = self.schema.clone();
        let run = self.run;
        let client = self.client.get_mut();
        let result = if write_tally {
            // Now and then: the counts go in the same transaction as the outcomes they count.
            (|| -> anyhow::Result<Settled> {
                let mut tx = client.transaction()?;
                let settled = settle::settle_and_claim(&mut tx, &schema, done, claim, tally, run)?;
                write_tally_to(tally, &mut tx, &schema)?;
                tx.commit()?;
                Ok(settled)
            })()
        } else {
            settle::settle_and_claim(client, &schema, done, claim, tally, run)
        };
        self.in_database(
            || format!("store outcomes and claim jobs of queue `{}`", claim.queue),
            result,
        )
    }

    fn due_callbacks_not_in(
        &self,
        queue: &str,
        known: &[&str],
    ) -> anyhow::Result<Vec<(String, i64)>> {
        let sql = self.sql(
            "SELECT callback, count(*) FROM @.jobs
             WHERE queue = $1 AND due AND blocked_by = 0 AND callback <> ALL ($2)
             GROUP BY callback ORDER BY callback",
        );
        let result = self
            .reader()
            .query_typed(&sql, &[(&queue, Type::TEXT), (&known, Type::TEXT_ARRAY)])
            .map(|rows| rows.iter().map(|row| (row.get(0), row.get(1))).collect())
            .map_err(anyhow::Error::from);
        self.in_database(|| format!("count due jobs of queue `{queue}`"), result)
    }

    fn shift_schedule(&mut self, queue: &str, by: Millis) -> anyhow::Result<usize> {
        let sql = self.sql(
            "UPDATE @.jobs SET run_at = run_at - $2
             WHERE queue = $1 AND NOT due AND state IN ('READY', 'TEMPORARILY_FAILED', 'WAITING')",
        );
        let result = self
            .reader()
            .execute_typed(&sql, &[(&queue, Type::TEXT), (&by, Type::INT8)])
            .map(|count| usize::try_from(count).unwrap_or(usize::MAX))
            .map_err(anyhow::Error::from);
        self.in_database(|| format!("move the due times of queue `{queue}`"), result)
    }

    fn complete(&mut self, done: &Completion) -> anyhow::Result<Applied> {
        let schema = self.schema.clone();
        let run = self.run;
        let result = (|| -> anyhow::Result<Applied> {
            let mut tx = self.client.get_mut().transaction()?;
            let mut tally = Tally::default();
            let applied = settle::settle_one(&mut tx, &schema, done, &mut tally, run)?;
            write_tally_to(&mut tally, &mut tx, &schema)?;
            tx.commit()?;
            Ok(applied)
        })();
        self.in_database(|| format!("store the outcome of job {}", done.id), result)
    }

    fn unclaim(
        &mut self,
        id: i64,
        fence: Fence,
        reason: &str,
        now: Millis,
    ) -> anyhow::Result<bool> {
        // One statement, so one transaction: the job put back and its callback marked.
        let sql = self.sql(
            "WITH job AS (
                 UPDATE @.jobs SET
                     state = CASE WHEN cancel_requested THEN 'CANCELLED'
                                  ELSE coalesce(before_claim_state, 'READY') END,
                     due = NOT cancel_requested, attempts = attempts - 1,
                     started_at = before_claim_started_at,
                     state_changed_at = CASE WHEN cancel_requested THEN $4
                                             ELSE coalesce(before_claim_changed_at, $4) END,
                     cancel_requested = false
                 WHERE id = $1 AND state = 'PROCESSING' AND claimed_run = $2 AND attempts = $3
                 RETURNING queue, callback)
             INSERT INTO @.broken_callbacks (queue, callback, reason, since, run_id)
             SELECT queue, callback, $5, $4, $2 FROM job
             ON CONFLICT (queue, callback) DO UPDATE SET
                 reason = excluded.reason, run_id = excluded.run_id
             RETURNING 1",
        );
        let attempt = i32::try_from(fence.attempt).unwrap_or(i32::MAX);
        let result = self
            .reader()
            .query_typed(
                &sql,
                &[
                    (&id, Type::INT8),
                    (&fence.run, Type::INT8),
                    (&attempt, Type::INT4),
                    (&now, Type::INT8),
                    (&reason, Type::TEXT),
                ],
            )
            .map(|rows| !rows.is_empty())
            .map_err(anyhow::Error::from);
        self.in_database(|| format!("put back job {id}"), result)
    }

    fn broken_callbacks(&self) -> anyhow::Result<Vec<BrokenCallback>> {
        let sql = self.sql(
            "SELECT queue, callback, reason, since, run_id FROM @.broken_callbacks
             ORDER BY queue, callback",
        );
        let result = self
            .reader()
            .query_typed(&sql, &[])
            .map(|rows| {
                rows.iter()
                    .map(|row| BrokenCallback {
                        queue: row.get(0),
                        callback: row.get(1),
                        reason: row.get(2),
                        since: row.get(3),
                        run: row.get(4),
                    })
                    .collect()
            })
            .map_err(anyhow::Error::from);
        self.in_database(|| "read broken callbacks".to_owned(), result)
    }

    fn callback_started(&mut self, queue: &str, callback: &str) -> anyhow::Result<()> {
        let sql = self.sql("DELETE FROM @.broken_callbacks WHERE queue = $1 AND callback = $2");
        let result = self
            .reader()
            .execute_typed(&sql, &[(&queue, Type::TEXT), (&callback, Type::TEXT)])
            .map(|_| ())
            .map_err(anyhow::Error::from);
        self.in_database(
            || format!("clear the broken mark of callback `{callback}`"),
            result,
        )
    }

    fn write_tally(&mut self, tally: &mut Tally) -> anyhow::Result<()> {
        let schema = self.schema.clone();
        let result = write_tally_to(tally, &mut *self.reader(), &schema);
        self.in_database(|| "store outcome counts".to_owned(), result)
    }

    fn list(&self, filter: &ListFilter, limit: usize) -> anyhow::Result<Vec<JobRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let (sql, conditions) = list_sql(&self.schema, filter, limit);
        let params = conditions.params();
        let result = (|| -> anyhow::Result<Vec<JobRecord>> {
            let rows = self.reader().query_typed(&sql, &params)?;
            rows.iter().map(|row| read_record_at(row, 0)).collect()
        })();
        self.in_database(|| "list jobs".to_owned(), result)
    }

    fn count(&self, filter: &ListFilter) -> anyhow::Result<u64> {
        let conditions = Filter::new(filter, 1);
        let sql = self.sql(&format!(
            "SELECT count(*) FROM @.jobs WHERE true {}",
            conditions.sql
        ));
        let result = (|| -> anyhow::Result<u64> {
            let row = self.reader().query_typed_one(&sql, &conditions.params())?;
            let count: i64 = row.get(0);
            Ok(u64::try_from(count).unwrap_or(0))
        })();
        self.in_database(|| "count jobs".to_owned(), result)
    }

    fn record(&self, id: i64) -> anyhow::Result<Option<JobRecord>> {
        let sql = self.sql(&format!(
            "SELECT {RECORD_COLUMNS} FROM @.jobs WHERE id = $1"
        ));
        let result = (|| -> anyhow::Result<Option<JobRecord>> {
            let row = self.reader().query_typed_opt(&sql, &[(&id, Type::INT8)])?;
            row.map(|row| read_record_at(&row, 0)).transpose()
        })();
        self.in_database(|| format!("read job {id}"), result)
    }

    fn state_of(&self, id: i64) -> anyhow::Result<Option<JobState>> {
        let sql = self.sql("SELECT state FROM @.jobs WHERE id = $1");
        let result = (|| -> anyhow::Result<Option<JobState>> {
            let row = self.reader().query_typed_opt(&sql, &[(&id, Type::INT8)])?;
            row.map(|row| parse_state(row.get(0))).transpose()
        })();
        self.in_database(|| format!("read job {id}"), result)
    }

    fn cancels_requested(&self, queue: &str, run: i64) -> anyhow::Result<Vec<i64>> {
        let sql = self.sql(
            "SELECT id FROM @.jobs
             WHERE queue = $1 AND state = 'PROCESSING' AND claimed_run = $2 AND cancel_requested",
        );
        let result = self
            .reader()
            .query_typed(&sql, &[(&queue, Type::TEXT), (&run, Type::INT8)])
            .map(|rows| rows.iter().map(|row| row.get(0)).collect())
            .map_err(anyhow::Error::from);
        self.in_database(|| format!("look for cancel requests of run {run}"), result)
    }

    fn end_cancel(
        &mut self,
        id: i64,
        fence: Fence,
        output: &[u8],
        now: Millis,
        history: u32,
    ) -> anyhow::Result<bool> {
        let schema = self.schema.clone();
        let result = end_cancel(
            &mut *self.reader(),
            &schema,
            id,
            fence,
            output,
            now,
            history,
        );
        self.in_database(|| format!("cancel job {id}"), result)
    }

    fn unfinished_identifiers(&self, filter: &ListFilter) -> anyhow::Result<Vec<String>> {
        let conditions = Filter::new(filter, 1);
        let sql = self.sql(&format!(
            "SELECT DISTINCT identifier FROM @.jobs
             WHERE identifier IS NOT NULL AND state <> 'FINISHED' {} ORDER BY identifier",
            conditions.sql
        ));
        let result = self
            .reader()
            .query_typed(&sql, &conditions.params())
            .map(|rows| rows.iter().map(|row| row.get(0)).collect())
            .map_err(anyhow::Error::from);
        self.in_database(|| "list unfinished identifiers".to_owned(), result)
    }

    fn clear_batch(
        &mut self,
        state: JobState,
        cutoff: Millis,
        after: i64,
        batch: usize,
    ) -> anyhow::Result<(usize, Option<i64>)> {
        let schema = self.schema.clone();
        let result = (|| -> anyhow::Result<(usize, Option<i64>)> {
            let offset = i64::try_from(batch.saturating_sub(1)).unwrap_or(0);
            let upper: Option<i64> = self
                .reader()
                .query_typed_opt(
                    &in_schema(
                        &schema,
                        "SELECT id FROM @.jobs WHERE state = $3 AND id > $1
                         ORDER BY id LIMIT 1 OFFSET $2",
                    ),
                    &[
                        (&after, Type::INT8),
                        (&offset, Type::INT8),
                        (&state.as_str(), Type::TEXT),
                    ],
                )?
                .map(|row| row.get(0));
            let upper_id = upper.unwrap_or(i64::MAX);
            let mut tx = self.client.get_mut().transaction()?;
            let deleted = tx.query_typed(
                &in_schema(
                    &schema,
                    // A job deleted without having FINISHED is remembered, in the same
                    // statement: a gone job otherwise counts as FINISHED for `--after`.
                    "WITH gone AS (
                         DELETE FROM @.jobs
                         WHERE state = $4 AND id > $2 AND id <= $3
                           AND CASE WHEN $4 = 'FINISHED' THEN finished_at ELSE state_changed_at END
                               < $1
                         RETURNING id, state, queue, callback),
                     uncounted AS (
                         INSERT INTO @.job_count_deltas (queue, callback, state, jobs)
                         SELECT queue, callback, state, -count(*) FROM gone
                         GROUP BY queue, callback, state),
                     remembered AS (
                         INSERT INTO @.cleared_unfinished (id, state, cleared_at)
                         SELECT id, state, $5 FROM gone WHERE state <> 'FINISHED'
                         ON CONFLICT (id) DO UPDATE SET state = excluded.state),
                     deps AS (DELETE FROM @.dependencies WHERE job_id IN (SELECT id FROM gone)),
                     history AS (DELETE FROM @.attempts WHERE job_id IN (SELECT id FROM gone))
                     SELECT count(*), max(id) FROM gone",
                ),
                &[
                    (&cutoff, Type::INT8),
                    (&after, Type::INT8),
                    (&upper_id, Type::INT8),
                    (&state.as_str(), Type::TEXT),
                    (&crate::job::now_millis(), Type::INT8),
                ],
            )?;
            let count = deleted.first().map_or(0, |row| read_count(row, 0));
            let highest: Option<i64> = deleted.first().and_then(|row| row.get(1));
            if let Some(highest) = highest {
                tx.execute_typed(
                    &in_schema(
                        &schema,
                        "UPDATE @.meta SET value = greatest(value::bigint, $1)::text
                         WHERE key = 'cleared_up_to'",
                    ),
                    &[(&highest, Type::INT8)],
                )?;
            }
            tx.commit()?;
            Ok((usize::try_from(count).unwrap_or(usize::MAX), upper))
        })();
        self.in_database(|| format!("delete {state} jobs"), result)
    }

    fn pause(
        &mut self,
        queue: Option<&str>,
        callback: Option<&str>,
        now: Millis,
    ) -> anyhow::Result<bool> {
        let sql = self.sql(
            "INSERT INTO @.pauses (queue, callback, paused_at) VALUES ($1, $2, $3)
             ON CONFLICT (queue, callback) DO NOTHING",
        );
        let result = self
            .reader()
            .execute_typed(
                &sql,
                &[
                    (&queue.unwrap_or(""), Type::TEXT),
                    (&callback.unwrap_or(""), Type::TEXT),
                    (&now, Type::INT8),
                ],
            )
            .map(|added| added > 0)
            .map_err(anyhow::Error::from);
        self.in_database(|| "pause".to_owned(), result)
    }

    fn resume(
        &mut self,
        queue: Option<&str>,
        callback: Option<&str>,
    ) -> anyhow::Result<Vec<Pause>> {
        let schema = self.schema.clone();
        let result = (|| -> anyhow::Result<Vec<Pause>> {
            let mut tx = self.client.get_mut().transaction()?;
            let rows = tx.query_typed(
                &in_schema(
                    &schema,
                    "DELETE FROM @.pauses
                     WHERE ($1::text IS NULL OR queue = $1) AND ($2::text IS NULL OR callback = $2)
                     RETURNING queue, callback, paused_at",
                ),
                &[(&queue, Type::TEXT), (&callback, Type::TEXT)],
            )?;
            let mut lifted: Vec<Pause> = rows.iter().map(read_pause).collect();
            lifted.sort_by_key(|pause| pause.since);
            if !lifted.is_empty() {
                // `--watch` runs sleep until told: the jobs they left are due at once.
                notify_queues(&mut tx, &schema, &[queue.unwrap_or("")])?;
            }
            tx.commit()?;
            Ok(lifted)
        })();
        self.in_database(|| "resume".to_owned(), result)
    }

    fn pauses(&self) -> anyhow::Result<Vec<Pause>> {
        let sql = self.sql(
            "SELECT queue, callback, paused_at FROM @.pauses ORDER BY paused_at, queue, callback",
        );
        let result = self
            .reader()
            .query_typed(&sql, &[])
            .map(|rows| rows.iter().map(read_pause).collect())
            .map_err(anyhow::Error::from);
        self.in_database(|| "read pauses".to_owned(), result)
    }

    fn run_totals(&self) -> anyhow::Result<Vec<(String, String, String, u64)>> {
        let sql = self.sql(
            "SELECT queue, callback, outcome, total FROM @.run_totals
             ORDER BY queue, callback, outcome",
        );
        let result = self
            .reader()
            .query_typed(&sql, &[])
            .map(|rows| {
                rows.iter()
                    .map(|row| (row.get(0), row.get(1), row.get(2), read_count(row, 3)))
                    .collect()
            })
            .map_err(anyhow::Error::from);
        self.in_database(|| "read run totals".to_owned(), result)
    }

    fn stuck_after(&self) -> anyhow::Result<Vec<StuckAfter>> {
        let sql = self.sql(STUCK_AFTER_SQL);
        let result = (|| -> anyhow::Result<Vec<StuckAfter>> {
            let rows = self.reader().query_typed(&sql, &[])?;
            let mut stuck = rows
                .iter()
                .map(|row| {
                    Ok(StuckAfter {
                        id: row.get(0),
                        queue: row.get(1),
                        parent: row.get(2),
                        parent_state: parse_state(row.get(3))?,
                        parent_gone: row.get(4),
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            stuck.dedup_by_key(|job| job.id);
            Ok(stuck)
        })();
        self.in_database(|| "read jobs waiting for failed jobs".to_owned(), result)
    }

    fn dependents_of(&self, parents: &[i64]) -> anyhow::Result<Vec<(i64, i64)>> {
        let sql = self.sql(
            "SELECT d.job_id, d.after_id FROM @.dependencies d JOIN @.jobs j ON j.id = d.job_id
             WHERE d.after_id = ANY ($1) AND j.state = 'READY' AND j.blocked_by > 0
             ORDER BY 1, 2",
        );
        let result = self
            .reader()
            .query_typed(&sql, &[(&parents, Type::INT8_ARRAY)])
            .map(|rows| rows.iter().map(|row| (row.get(0), row.get(1))).collect())
            .map_err(anyhow::Error::from);
        self.in_database(|| "read waiting jobs".to_owned(), result)
    }

    fn detail(&self, id: i64) -> anyhow::Result<Option<JobDetail>> {
        let sql = self.sql(&format!(
            "SELECT {RECORD_COLUMNS}, payload, params_json::text, output, notified, claimed_run,
                    cancel_requested
             FROM @.jobs WHERE id = $1"
        ));
        let result = (|| -> anyhow::Result<Option<JobDetail>> {
            let Some(row) = self.reader().query_typed_opt(&sql, &[(&id, Type::INT8)])? else {
                return Ok(None);
            };
            let output: Option<Vec<u8>> = row.get(17);
            Ok(Some(JobDetail {
                record: read_record_at(&row, 0)?,
                payload: stored_payload(row.get(15), row.get(16)).and_then(StoredPayload::new),
                output: output.unwrap_or_default(),
                notified: row.get(18),
                claimed_run: row.get(19),
                cancel_requested: row.get(20),
                runs: self.attempts_of(id)?,
                after: self.after(id)?,
            }))
        })();
        self.in_database(|| format!("read job {id}"), result)
    }

    fn serial_group_facts(
        &self,
        group: &str,
        id: i64,
        blocking: &[&str],
    ) -> anyhow::Result<GroupFacts> {
        let sql = self.sql(
            "SELECT
                 (SELECT o.id FROM @.jobs o WHERE o.serial_group = $1 AND o.id < $2
                    AND o.state IN ('READY', 'PROCESSING', 'TEMPORARILY_FAILED', 'WAITING')
                  ORDER BY o.id LIMIT 1),
                 (SELECT o.state FROM @.jobs o WHERE o.serial_group = $1 AND o.id < $2
                    AND o.state IN ('READY', 'PROCESSING', 'TEMPORARILY_FAILED', 'WAITING')
                  ORDER BY o.id LIMIT 1),
                 (SELECT o.id FROM @.jobs o WHERE o.serial_group = $1 AND o.id <> $2
                    AND o.state = 'PROCESSING' ORDER BY o.id LIMIT 1),
                 (SELECT f.id FROM @.jobs f WHERE f.serial_group = $1 AND f.state = 'PERMANENTLY_FAILED'
                    AND f.callback = ANY ($3) AND f.id < $2 ORDER BY f.id LIMIT 1)",
        );
        let result = (|| -> anyhow::Result<GroupFacts> {
            let row = self.reader().query_typed_one(
                &sql,
                &[
                    (&group, Type::TEXT),
                    (&id, Type::INT8),
                    (&blocking, Type::TEXT_ARRAY),
                ],
            )?;
            let older: Option<i64> = row.get(0);
            let older_state: Option<&str> = row.get(1);
            let older_unfinished = match (older, older_state) {
                (Some(id), Some(state)) => Some((id, parse_state(state)?)),
                _ => None,
            };
            Ok(GroupFacts {
                older_unfinished,
                running: row.get(2),
                failed_blocking: row.get(3),
            })
        })();
        self.in_database(|| format!("read serial group `{group}`"), result)
    }

    fn after(&self, id: i64) -> anyhow::Result<Vec<(i64, Option<JobState>)>> {
        let sql = self.sql(
            "SELECT d.after_id, coalesce(p.state, c.state) FROM @.dependencies d
             LEFT JOIN @.jobs p ON p.id = d.after_id
             LEFT JOIN @.cleared_unfinished c ON c.id = d.after_id
             WHERE d.job_id = $1 ORDER BY d.after_id",
        );
        let result = (|| -> anyhow::Result<Vec<(i64, Option<JobState>)>> {
            let rows = self.reader().query_typed(&sql, &[(&id, Type::INT8)])?;
            rows.iter()
                .map(|row| {
                    let state: Option<&str> = row.get(1);
                    Ok((row.get(0), state.map(parse_state).transpose()?))
                })
                .collect()
        })();
        self.in_database(|| format!("read the --after jobs of job {id}"), result)
    }

    fn run(&self, run: i64) -> anyhow::Result<Option<RunInfo>> {
        let result = self
            .reader_self()
            .runs_where("r.id = $1", &[(&run, Type::INT8)])
            .map(|runs| runs.into_iter().next());
        self.in_database(|| format!("read run {run}"), result)
    }

    fn last_run(&self, queue: &str) -> anyhow::Result<Option<RunInfo>> {
        let result = self
            .reader_self()
            .runs_where(
                "r.id = (SELECT max(id) FROM @.runs WHERE queue = $1)",
                &[(&queue, Type::TEXT)],
            )
            .map(|runs| runs.into_iter().next());
        self.in_database(|| format!("read the last run of queue `{queue}`"), result)
    }

    fn last_runs(&self) -> anyhow::Result<Vec<RunInfo>> {
        let result = self.reader_self().runs_where(
            "r.id IN (SELECT max(id) FROM @.runs GROUP BY queue) ORDER BY r.queue",
            &[],
        );
        self.in_database(|| "read the last runs".to_owned(), result)
    }

    fn state_counts(&self) -> anyhow::Result<Vec<(String, JobState, u64)>> {
        let fold = self.sql("SELECT @.fold_job_counts()");
        let sql = self.sql(
            "SELECT queue, state, sum(jobs)::bigint FROM (
                 SELECT queue, state, jobs FROM @.job_counts
                 UNION ALL SELECT queue, state, jobs FROM @.job_count_deltas) counted
             GROUP BY queue, state HAVING sum(jobs) > 0",
        );
        let result = (|| -> anyhow::Result<Vec<(String, JobState, u64)>> {
            // Folding keeps the deltas few; a role that may only read sums them as they are.
            match self.reader().query_typed(&fold, &[]) {
                Err(err)
                    if matches!(
                        err.code(),
                        Some(
                            &SqlState::READ_ONLY_SQL_TRANSACTION
                                | &SqlState::INSUFFICIENT_PRIVILEGE
                        )
                    ) => {}
                other => {
                    other?;
                }
            }
            let rows = self.reader().query_typed(&sql, &[])?;
            rows.iter()
                .map(|row| Ok((row.get(0), parse_state(row.get(1))?, read_count(row, 2))))
                .collect()
        })();
        self.in_database(|| "count jobs".to_owned(), result)
    }

    fn due_jobs(&self, now: Millis) -> anyhow::Result<Vec<DueJobs>> {
        let sql = self.sql(DUE_JOBS_SQL);
        let result = self
            .reader()
            .query_typed(&sql, &[(&now, Type::INT8)])
            .map(|rows| {
                rows.iter()
                    .map(|row| DueJobs {
                        queue: row.get(0),
                        oldest: row.get(1),
                        since: row.get(2),
                        count: read_count(row, 3),
                    })
                    .collect()
            })
            .map_err(anyhow::Error::from);
        self.in_database(|| "count due jobs".to_owned(), result)
    }

    fn outcomes_since(&self, since: Millis) -> anyhow::Result<Vec<(String, [u64; 3])>> {
        let sql = self.sql(
            "SELECT queue, sum(finished)::bigint, sum(temporarily_failed)::bigint,
                    sum(permanently_failed)::bigint
             FROM @.outcomes WHERE minute >= $1 GROUP BY queue ORDER BY queue",
        );
        let minute = since / 60_000;
        let result = self
            .reader()
            .query_typed(&sql, &[(&minute, Type::INT8)])
            .map(|rows| {
                rows.iter()
                    .map(|row| {
                        (
                            row.get(0),
                            [read_count(row, 1), read_count(row, 2), read_count(row, 3)],
                        )
                    })
                    .collect()
            })
            .map_err(anyhow::Error::from);
        self.in_database(|| "count outcomes".to_owned(), result)
    }

    fn waiting_callbacks_not_in(
        &self,
        known: &[&str],
    ) -> anyhow::Result<Vec<(String, String, u64)>> {
        let sql = self.sql(
            "SELECT queue, callback, count(*) FROM @.jobs
             WHERE state <> 'FINISHED'
               AND state IN ('READY', 'PROCESSING', 'TEMPORARILY_FAILED', 'WAITING')
               AND callback <> ALL ($1)
             GROUP BY queue, callback ORDER BY queue, callback",
        );
        let result = self
            .reader()
            .query_typed(&sql, &[(&known, Type::TEXT_ARRAY)])
            .map(|rows| {
                rows.iter()
                    .map(|row| (row.get(0), row.get(1), read_count(row, 2)))
                    .collect()
            })
            .map_err(anyhow::Error::from);
        self.in_database(|| "count jobs of unknown callbacks".to_owned(), result)
    }

    fn change(
        &mut self,
        selection: &Selection<'_>,
        change: &Change,
        dry_run: bool,
        decide: &mut dyn FnMut(&JobBrief) -> anyhow::Result<bool>,
    ) -> anyhow::Result<Vec<(JobBrief, bool)>> {
        let schema = self.schema.clone();
        let identity = self.identity.clone();
        let result = (|| -> anyhow::Result<Vec<(JobBrief, bool)>> {
            let mut tx = self.client.get_mut().transaction()?;
            let briefs = select_briefs(&mut tx, &schema, selection, &identity)?;
            let mut decided = Vec::with_capacity(briefs.len());
            for brief in briefs {
                let apply = decide(&brief)?;
                decided.push((brief, apply));
            }
            if dry_run {
                return Ok(decided);
            }
            let ids: Vec<i64> = decided
                .iter()
                .filter(|(_, apply)| *apply)
                .map(|(brief, _)| brief.id)
                .collect();
            if !ids.is_empty() {
                apply_change(&mut tx, &schema, &ids, change)?;
                if matches!(change, Change::Retry { .. }) {
                    let mut queues: Vec<&str> = decided
                        .iter()
                        .filter(|(_, apply)| *apply)
                        .map(|(brief, _)| brief.queue.as_str())
                        .collect();
                    queues.sort_unstable();
                    queues.dedup();
                    notify_queues(&mut tx, &schema, &queues)?;
                }
            }
            tx.commit()?;
            Ok(decided)
        })();
        let what = || match change {
            Change::Retry { .. } => "retry jobs".to_owned(),
            Change::Cancel { .. } => "cancel jobs".to_owned(),
        };
        self.in_database(what, result)
    }

    fn pending_notices(&self, queue: &str) -> anyhow::Result<Vec<PendingNotice>> {
        // Ours, and those of runs that ended or are dead; those of other live runs are theirs.
        // Liveness is judged as for orphans (`Fleet`), /proc included for this host's runs.
        let sql = self.sql(
            "SELECT n.id, n.job_id, n.kind, n.reason, n.output,
                    r.pid, r.pid_started, r.boot_id, n.created_by, r.host_id, s.held, s.silent_ms,
                    r.id IS NULL OR r.finished_at IS NOT NULL
             FROM @.notices n LEFT JOIN @.runs r ON r.id = n.created_by
                  LEFT JOIN LATERAL @.run_session(r.id) s ON r.id IS NOT NULL
             WHERE n.queue = $1
             ORDER BY n.id",
        );
        let me = self.run.unwrap_or(-1);
        let result = (|| -> anyhow::Result<Vec<PendingNotice>> {
            let rows = self.reader().query_typed(&sql, &[(&queue, Type::TEXT)])?;
            let mut notices = Vec::with_capacity(rows.len());
            for row in &rows {
                let created_by: Option<i64> = row.get(8);
                let ended: bool = row.get(12);
                let theirs = created_by != Some(me)
                    && !ended
                    && self
                        .liveness_of(read_process(row, 5).as_ref(), read_session(row, 9).as_ref())
                        == Liveness::Alive;
                if theirs {
                    continue;
                }
                let kind: &str = row.get(2);
                let output: Option<Vec<u8>> = row.get(4);
                let job_id: i64 = row.get(1);
                notices.push(PendingNotice {
                    id: row.get(0),
                    job_id,
                    kind: kind.parse().unwrap_or(NoticeKind::Failed),
                    reason: row.get(3),
                    output: output.unwrap_or_default(),
                    job: self.record(job_id)?,
                });
            }
            Ok(notices)
        })();
        self.in_database(|| format!("read the notices of queue `{queue}`"), result)
    }

    fn delete_notices(&mut self, ids: &[i64]) -> anyhow::Result<()> {
        let sql = self.sql("DELETE FROM @.notices WHERE id = ANY ($1)");
        let result = self
            .reader()
            .execute_typed(&sql, &[(&ids, Type::INT8_ARRAY)])
            .map(|_| ())
            .map_err(anyhow::Error::from);
        self.in_database(|| "delete sent notices".to_owned(), result)
    }

    fn new_batch(&mut self, batch: &NewBatch, now: Millis) -> anyhow::Result<i64> {
        let sql = self.sql(
            "INSERT INTO @.batches (queue, description, on_complete, on_complete_params,
                                    on_success, on_success_params, created_at, changed_at)
             VALUES ($1, $2, $3, $4::json, $5, $6::json, $7, $7) RETURNING id",
        );
        let (on_complete, complete_params) = split_callback(&batch.on_complete);
        let (on_success, success_params) = split_callback(&batch.on_success);
        let result = self
            .client
            .get_mut()
            .query_typed_one(
                &sql,
                &[
                    (&batch.queue, Type::TEXT),
                    (&batch.description, Type::TEXT),
                    (&on_complete, Type::TEXT),
                    (&complete_params, Type::TEXT),
                    (&on_success, Type::TEXT),
                    (&success_params, Type::TEXT),
                    (&now, Type::INT8),
                ],
            )
            .map(|row| row.get::<_, i64>(0))
            .map_err(anyhow::Error::from);
        self.in_database(|| "open a batch".to_owned(), result)
    }

    fn seal_batch(&mut self, id: i64, now: Millis) -> anyhow::Result<Sealed> {
        let schema = self.schema.clone();
        let identity = self.identity.clone();
        let result = (|| -> anyhow::Result<Sealed> {
            let mut tx = self.client.get_mut().transaction()?;
            let found = tx.query_typed_opt(
                &in_schema(
                    &schema,
                    "SELECT sealed_at FROM @.batches WHERE id = $1 FOR UPDATE",
                ),
                &[(&id, Type::INT8)],
            )?;
            match found.map(|row| row.get::<_, Option<i64>>(0)) {
                None => {
                    return Err(crate::error::usage(format!("no batch {id} in {identity}")));
                }
                Some(Some(_)) => return Ok(Sealed::Already),
                Some(None) => {}
            }
            // The trigger batches_complete completes it here when nothing is unfinished.
            tx.execute_typed(
                &in_schema(
                    &schema,
                    "UPDATE @.batches SET sealed_at = $2, changed_at = $2 WHERE id = $1",
                ),
                &[(&id, Type::INT8), (&now, Type::INT8)],
            )?;
            let complete: bool = tx
                .query_typed_one(
                    &in_schema(
                        &schema,
                        "SELECT completed_at IS NOT NULL FROM @.batches WHERE id = $1",
                    ),
                    &[(&id, Type::INT8)],
                )?
                .get(0);
            tx.commit()?;
            Ok(Sealed::Now { complete })
        })();
        self.in_database(|| format!("seal batch {id}"), result)
    }

    fn batch(&self, id: i64) -> anyhow::Result<Option<BatchInfo>> {
        let sql = self.sql(&format!(
            "SELECT {BATCH_COLUMNS} FROM @.batches WHERE id = $1"
        ));
        let result = self
            .reader()
            .query_typed_opt(&sql, &[(&id, Type::INT8)])
            .map(|row| row.map(|row| read_batch(&row)))
            .map_err(anyhow::Error::from);
        self.in_database(|| format!("read batch {id}"), result)
    }

    fn batches(&self, open_only: bool, limit: usize) -> anyhow::Result<Vec<BatchInfo>> {
        let condition = if open_only {
            "WHERE completed_at IS NULL"
        } else {
            ""
        };
        let sql = self.sql(&format!(
            "SELECT {BATCH_COLUMNS} FROM @.batches {condition} ORDER BY id DESC LIMIT $1"
        ));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let result = self
            .reader()
            .query_typed(&sql, &[(&limit, Type::INT8)])
            .map(|rows| rows.iter().map(read_batch).collect())
            .map_err(anyhow::Error::from);
        self.in_database(|| "read the batches".to_owned(), result)
    }

    fn batch_completed_by(&self, id: i64) -> anyhow::Result<Option<BatchInfo>> {
        // Completion jobs are few and batches a small table: no index for this.
        let sql = self.sql(&format!(
            "SELECT {BATCH_COLUMNS} FROM @.batches WHERE complete_job = $1 OR success_job = $1"
        ));
        let result = self
            .reader()
            .query_typed_opt(&sql, &[(&id, Type::INT8)])
            .map(|row| row.map(|row| read_batch(&row)))
            .map_err(anyhow::Error::from);
        self.in_database(|| format!("read the batch of job {id}"), result)
    }

    fn prune_batches(&mut self) -> anyhow::Result<usize> {
        let sql = self.sql(
            "DELETE FROM @.batches b WHERE b.completed_at IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM @.jobs j WHERE j.batch_id = b.id)",
        );
        let result = self
            .client
            .get_mut()
            .execute_typed(&sql, &[])
            .map(|count| usize::try_from(count).unwrap_or(usize::MAX))
            .map_err(anyhow::Error::from);
        self.in_database(|| "prune complete batches".to_owned(), result)
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
const BATCH_COLUMNS: &str = "id, queue, description, on_complete, on_complete_params::text,
    on_success, on_success_params::text, created_at, sealed_at, completed_at, complete_job,
    success_job, unfinished, finished, failed, cancelled";

/// A `BatchInfo` from the `BATCH_COLUMNS`.
fn read_batch(row: &Row) -> BatchInfo {
    let callback = |name: Option<String>, params: Option<String>| name.map(|name| (name, params));
    BatchInfo {
        id: row.get(0),
        queue: row.get(1),
        description: row.get(2),
        on_complete: callback(row.get(3), row.get(4)),
        on_success: callback(row.get(5), row.get(6)),
        created_at: row.get(7),
        sealed_at: row.get(8),
        completed_at: row.get(9),
        complete_job: row.get(10),
        success_job: row.get(11),
        unfinished: read_count(row, 12),
        finished: read_count(row, 13),
        failed: read_count(row, 14),
        cancelled: read_count(row, 15),
    }
}

/// Refuses (a usage error, so nothing is stored) a publish into `batch` unless it is open to
/// this publisher: it exists, has not completed, and is not sealed, or the publisher is one of
/// its running jobs (SPEC section 11). The batch's row stays locked to the commit, so a seal
/// or completion cannot slip in between.
fn check_batch_open(
    tx: &mut postgres::Transaction<'_>,
    schema: &str,
    batch: BatchTarget,
    identity: &str,
) -> anyhow::Result<()> {
    let found = tx.query_typed_opt(
        &in_schema(
            schema,
            "SELECT sealed_at IS NOT NULL, completed_at IS NOT NULL
             FROM @.batches b WHERE b.id = $1 FOR UPDATE",
        ),
        &[(&batch.id, Type::INT8)],
    )?;
    let refusal = match found.map(|row| (row.get(0), row.get(1))) {
        None => format!("--batch: no batch {} in {identity}", batch.id),
        Some((_, true)) => format!("--batch: batch {} is complete", batch.id),
        Some((true, false)) => {
            // A statement of its own, so that it reads the publisher's state as of now: had it
            // waited for the batch's lock above, its snapshot would predate an outcome of the
            // publisher that committed meanwhile.
            let running: bool = tx
                .query_typed_one(
                    &in_schema(
                        schema,
                        "SELECT EXISTS (SELECT 1 FROM @.jobs j WHERE j.id = $2 AND j.batch_id = $1
                                          AND j.state = 'PROCESSING')",
                    ),
                    &[(&batch.id, Type::INT8), (&batch.publisher, Type::INT8)],
                )?
                .get(0);
            if running {
                return Ok(());
            }
            format!(
                "--batch: batch {} is sealed: only its running jobs add to it",
                batch.id
            )
        }
        Some((false, false)) => return Ok(()),
    };
    Err(crate::error::usage(refusal))
}

/// The jobs of `selection`, oldest first, locked for the change; an unknown id is a usage error.
fn select_briefs(
    tx: &mut postgres::Transaction<'_>,
    schema: &str,
    selection: &Selection<'_>,
    identity: &str,
) -> anyhow::Result<Vec<JobBrief>> {
    let columns = "id, queue, callback, state,
        coalesce(nullif(state_changed_at, 0), finished_at, started_at, created_at),
        claimed_run, cancel_requested, attempts, batch_id";
    let read = |row: &Row| -> anyhow::Result<JobBrief> {
        Ok(JobBrief {
            id: row.get(0),
            queue: row.get(1),
            callback: row.get(2),
            state: parse_state(row.get(3))?,
            state_changed_at: row.get(4),
            claimed_run: row.get(5),
            cancel_requested: row.get(6),
            attempts: read_u32(row, 7),
            batch: row.get(8),
        })
    };
    let rows = match selection {
        Selection::Ids(ids) => {
            let mut ids = ids.to_vec();
            ids.sort_unstable();
            ids.dedup();
            // Their batches first: see below.
            tx.query_typed(
                &in_schema(
                    schema,
                    "SELECT 1 FROM @.batches WHERE id IN (
                         SELECT batch_id FROM @.jobs WHERE id = ANY ($1))
                     ORDER BY id FOR UPDATE",
                ),
                &[(&ids, Type::INT8_ARRAY)],
            )?;
            let rows = tx.query_typed(
                &in_schema(
                    schema,
                    &format!(
                        "SELECT {columns} FROM @.jobs WHERE id = ANY ($1) ORDER BY id FOR UPDATE"
                    ),
                ),
                &[(&ids, Type::INT8_ARRAY)],
            )?;
            if let Some(missing) = ids
                .iter()
                .find(|id| !rows.iter().any(|row| row.get::<_, i64>(0) == **id))
            {
                return Err(crate::error::usage(format!(
                    "no job {missing} in {identity}"
                )));
            }
            rows
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
            let conditions = Filter::new(&filter, 1);
            // Their batches first, in id order, as settle() locks them: a change of a member
            // updates its batch's row, and settle() locks the batch before its jobs.
            tx.query_typed(
                &in_schema(
                    schema,
                    &format!(
                        "SELECT 1 FROM @.batches WHERE id IN (
                             SELECT batch_id FROM @.jobs WHERE batch_id IS NOT NULL {})
                         ORDER BY id FOR UPDATE",
                        conditions.sql
                    ),
                ),
                &conditions.params(),
            )?;
            let sql = in_schema(
                schema,
                &format!(
                    "SELECT {columns} FROM @.jobs WHERE true {} ORDER BY id FOR UPDATE",
                    conditions.sql
                ),
            );
            tx.query_typed(&sql, &conditions.params())?
        }
    };
    rows.iter().map(read).collect()
}

/// Applies `change` to the jobs `ids`.
fn apply_change(
    tx: &mut postgres::Transaction<'_>,
    schema: &str,
    ids: &[i64],
    change: &Change,
) -> anyhow::Result<()> {
    match change {
        Change::Retry { now, payload } => {
            // Due now, through promotion (see the SQLite backend): one run starts a job once.
            tx.execute_typed(
                &in_schema(
                    schema,
                    "UPDATE @.jobs SET state = 'READY', attempts = 0, notified = false, run_at = $2,
                            due = false, state_changed_at = $2, cancel_requested = false,
                            payload = coalesce($3, payload),
                            params_json = CASE WHEN $3 IS NULL THEN params_json END
                     WHERE id = ANY ($1)",
                ),
                &[(&ids, Type::INT8_ARRAY), (now, Type::INT8), (payload, Type::BYTEA)],
            )?;
        }
        Change::Cancel { now } => {
            tx.execute_typed(
                &in_schema(
                    schema,
                    "UPDATE @.jobs SET cancel_requested = (state = 'PROCESSING'),
                            state = CASE state WHEN 'PROCESSING' THEN state ELSE 'CANCELLED' END,
                            due = false,
                            state_changed_at = CASE state WHEN 'PROCESSING' THEN state_changed_at
                                                          ELSE $2 END
                     WHERE id = ANY ($1)",
                ),
                &[(&ids, Type::INT8_ARRAY), (now, Type::INT8)],
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod plans;
#[cfg(test)]
mod races;
#[cfg(test)]
mod tests;
