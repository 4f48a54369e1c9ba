//! Copying a whole queue into a bgq schema for `bgq migrate`: every row a [`Source`] hands
//! over, in one transaction that commits only once what the schema holds has been counted and
//! found equal to what was sent (see `store::transfer::Census`).
//!
//! Job ids are kept (the `jobs` identity is `BY DEFAULT` for this), and every sequence is moved
//! past the highest id copied, so that the next publish gets a larger id than any copied job.
//! A schema that holds jobs is refused and left as it was. Runs and notices already in the
//! schema (an empty queue that `process` already ran on) are kept: the copied ones are numbered
//! after them, and the jobs' `claimed_run` follows. Rows go in batches of many rows per
//! statement (`unnest` of one array per column), so a large queue costs few round trips.

use std::collections::BTreeMap;

use anyhow::Context;
use postgres::Transaction;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{ToSql, Type};

use super::{PostgresStore, in_schema};
use crate::store::transfer::{
    AttemptRow, BATCH_ROW_COLUMNS, BatchRow, Census, DependencyRow, JobRow, NoticeRow, OutcomeRow,
    RunRow, Source, StateRow,
};

/// Rows per statement, at most.
const BATCH_ROWS: usize = 2000;
/// Bytes of payloads and outputs per statement, at most: a batch of large jobs stays small.
const BATCH_BYTES: usize = 16 << 20;
/// How long the copy waits for the schema's writers (a `process` of an empty queue, a
/// `publish`) before it gives up.
const LOCK_TIMEOUT: &str = "10s";

/// What `PostgresStore::import` found in the schema before it wrote anything.
struct Before {
    /// The highest run number in the schema: copied runs are numbered after it.
    run_offset: i64,
    /// The highest notice number in the schema: copied notices are numbered after it.
    notice_offset: i64,
    /// The highest attempt row number in the schema: copied attempts are numbered after it.
    attempt_offset: i64,
    /// Outcome counts already there, which copied counts of the same minute add to.
    outcomes: BTreeMap<(String, i64), [i64; 3]>,
}

impl PostgresStore {
    /// Copies everything `source` holds into this schema in one transaction, and returns what
    /// was copied. Refuses (changing nothing) a schema that holds jobs or dependencies; rolls
    /// back when the schema, read back, does not hold exactly what was sent.
    pub fn import(&mut self, source: &mut dyn Source) -> anyhow::Result<Census> {
        let schema = self.schema.clone();
        let host_id = self.fleet.host_id.clone();
        let target = format!(
            "schema {schema} of {}",
            super::connect::identity(&self.target.conninfo)
        );
        let result = (|| -> anyhow::Result<Census> {
            let mut tx = self.client.get_mut().transaction()?;
            let before = prepare(&mut tx, &schema, &target)?;
            let mut sent = Census::default();
            let mut copy = Copy {
                tx: &mut tx,
                schema: &schema,
                host_id: &host_id,
                before: &before,
            };
            copy.jobs(source, &mut sent)?;
            copy.dependencies(source, &mut sent)?;
            copy.runs(source, &mut sent)?;
            let sent_outcomes = copy.outcomes(source, &mut sent)?;
            copy.notices(source, &mut sent)?;
            let last_attempt = copy.attempts(source, &mut sent)?;
            copy.state_rows(source, &mut sent)?;
            let last_job = source.last_job_id()?.max(sent.max_job_id);
            let last_run = source.last_run_id()?.max(sent.max_run_id);
            copy.sequences(last_job, last_run, sent.max_notice_id, last_attempt)?;
            let stored = copy.census(&sent_outcomes)?;
            let differences = sent.differences(&stored);
            if !differences.is_empty() {
                return Err(refusal(format!(
                    "what {target} holds after the copy differs from what was sent ({}): rolled back, nothing changed",
                    differences.join("; ")
                )));
            }
            let queues = copy.queues()?;
            let queues: Vec<&str> = queues.iter().map(String::as_str).collect();
            // `process --watch` runs already serving the schema look at once.
            super::notify_queues(&mut tx, &schema, &queues)?;
            tx.commit()?;
            Ok(sent)
        })();
        self.in_database(|| "copy the queue".to_owned(), result)
    }
}

/// A refusal that names the schema and database itself, so that no more context is added.
fn refusal(message: String) -> anyhow::Error {
    anyhow::Error::new(super::InDatabase(message))
}

/// Locks the schema's tables against writers and checks that it may be copied into.
fn prepare(tx: &mut Transaction<'_>, schema: &str, target: &str) -> anyhow::Result<Before> {
    let q = |sql: &str| in_schema(schema, sql);
    tx.batch_execute(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))?;
    // EXCLUSIVE: readers (`list`, `stats`) go on; a publish or a claim waits for the commit, so
    // no id is handed out, and no job stored, behind the copy's back.
    tx.batch_execute(&q(
        "LOCK TABLE @.meta, @.jobs, @.dependencies, @.runs, @.outcomes, @.notices, @.attempts,
                   @.pauses, @.run_totals, @.cleared_unfinished, @.broken_callbacks
         IN EXCLUSIVE MODE",
    ))
    .with_context(|| {
        format!("cannot lock {target} for the copy (is a `process` or `publish` busy with it?)")
    })?;
    let row = tx.query_typed_one(
        &q(
            "SELECT (SELECT count(*) FROM @.jobs), (SELECT count(*) FROM @.dependencies),
                   (SELECT coalesce(max(id), 0) FROM @.runs),
                   (SELECT coalesce(max(id), 0) FROM @.notices),
                   (SELECT coalesce(max(id), 0) FROM @.attempts),
                   (SELECT count(*) FROM @.pauses) + (SELECT count(*) FROM @.run_totals)
                   + (SELECT count(*) FROM @.cleared_unfinished)
                   + (SELECT count(*) FROM @.broken_callbacks)",
        ),
        &[],
    )?;
    let (jobs, dependencies): (i64, i64) = (row.get(0), row.get(1));
    if jobs > 0 {
        return Err(refusal(format!(
            "{target} already holds {jobs} job{}: bgq migrate copies only into a schema without jobs; nothing was changed (choose another with --schema)",
            if jobs == 1 { "" } else { "s" }
        )));
    }
    let state_rows: i64 = row.get(5);
    if state_rows > 0 {
        return Err(refusal(format!(
            "{target} holds no jobs but {state_rows} rows of pauses, run totals, cleared jobs or broken callbacks: bgq migrate copies only into a schema without them; nothing was changed (choose another with --schema)"
        )));
    }
    if dependencies > 0 {
        return Err(refusal(format!(
            "{target} holds no jobs but {dependencies} dependencies: bgq migrate copies only into a schema without them; nothing was changed (choose another with --schema)"
        )));
    }
    let outcomes = tx
        .query_typed(
            &q(
                "SELECT queue, minute, finished, temporarily_failed, permanently_failed
                FROM @.outcomes",
            ),
            &[],
        )?
        .iter()
        .map(|row| {
            (
                (row.get(0), row.get(1)),
                [row.get(2), row.get(3), row.get(4)],
            )
        })
        .collect();
    Ok(Before {
        run_offset: row.get(2),
        notice_offset: row.get(3),
        attempt_offset: row.get(4),
        outcomes,
    })
}

/// A parameter of an unnamed statement, with its type.
type Param<'a> = (&'a (dyn ToSql + Sync), Type);

/// The copy, inside its transaction.
struct Copy<'t, 'c> {
    tx: &'t mut Transaction<'c>,
    schema: &'t str,
    host_id: &'t str,
    before: &'t Before,
}

/// Runs `sql` with the columns `jobs` and `afters`, then empties them.
fn insert_pairs(
    tx: &mut Transaction<'_>,
    sql: &str,
    jobs: &mut Vec<i64>,
    afters: &mut Vec<i64>,
) -> anyhow::Result<()> {
    if !jobs.is_empty() {
        tx.execute_typed(
            sql,
            &[(&*jobs, Type::INT8_ARRAY), (&*afters, Type::INT8_ARRAY)],
        )?;
        jobs.clear();
        afters.clear();
    }
    Ok(())
}

/// A number that PostgreSQL keeps in an `integer` column.
fn int4(value: i64, what: impl FnOnce() -> String) -> anyhow::Result<i32> {
    i32::try_from(value).with_context(|| format!("{} is {value}, too large to copy", what()))
}

/// `id` numbered after the `offset` rows already there (0, "none", stays 0).
fn shifted(id: i64, offset: i64) -> i64 {
    if id == 0 { 0 } else { id + offset }
}

/// `id` as the source numbered it (see `shifted`).
fn unshifted(id: i64, offset: i64) -> i64 {
    if id == 0 { 0 } else { id - offset }
}

/// Jobs waiting to be inserted, one array per column.
#[derive(Default)]
struct JobBatch {
    id: Vec<i64>,
    queue: Vec<String>,
    callback: Vec<String>,
    payload: Vec<Vec<u8>>,
    state: Vec<String>,
    attempts: Vec<i32>,
    serial_group: Vec<Option<String>>,
    identifier: Vec<Option<String>>,
    created_at: Vec<i64>,
    run_at: Vec<i64>,
    due: Vec<bool>,
    started_at: Vec<Option<i64>>,
    finished_at: Vec<Option<i64>>,
    claimed_run: Vec<i64>,
    output: Vec<Option<Vec<u8>>>,
    notified: Vec<bool>,
    state_changed_at: Vec<i64>,
    priority: Vec<i64>,
    blocked_by: Vec<i32>,
    is_unique: Vec<bool>,
    cancel_requested: Vec<bool>,
    batch_id: Vec<Option<i64>>,
    bytes: usize,
}

impl JobBatch {
    fn push(&mut self, row: JobRow, run_offset: i64) -> anyhow::Result<()> {
        let id = row.id;
        self.attempts
            .push(int4(row.attempts, || format!("job {id}'s attempts"))?);
        self.blocked_by
            .push(int4(row.blocked_by, || format!("job {id}'s blocked_by"))?);
        self.bytes += row.payload.len() + row.output.as_ref().map_or(0, Vec::len);
        self.id.push(id);
        self.queue.push(row.queue);
        self.callback.push(row.callback);
        self.payload.push(row.payload);
        self.state.push(row.state);
        self.serial_group.push(row.serial_group);
        self.identifier.push(row.identifier);
        self.created_at.push(row.created_at);
        self.run_at.push(row.run_at);
        self.due.push(row.due);
        self.started_at.push(row.started_at);
        self.finished_at.push(row.finished_at);
        self.claimed_run.push(shifted(row.claimed_run, run_offset));
        self.output.push(row.output);
        self.notified.push(row.notified);
        self.state_changed_at.push(row.state_changed_at);
        self.priority.push(row.priority);
        self.is_unique.push(row.is_unique);
        self.cancel_requested.push(row.cancel_requested);
        self.batch_id.push(row.batch_id);
        Ok(())
    }

    fn full(&self) -> bool {
        self.id.len() >= BATCH_ROWS || self.bytes >= BATCH_BYTES
    }

    fn flush(&mut self, tx: &mut Transaction<'_>, schema: &str) -> anyhow::Result<()> {
        if self.id.is_empty() {
            return Ok(());
        }
        let sql = in_schema(
            schema,
            "INSERT INTO @.jobs (id, queue, callback, payload, state, attempts, serial_group,
                                 identifier, created_at, run_at, due, started_at, finished_at,
                                 claimed_run, output, notified, state_changed_at, priority,
                                 blocked_by, is_unique, cancel_requested, batch_id)
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bytea[], $5::text[],
                                  $6::integer[], $7::text[], $8::text[], $9::bigint[],
                                  $10::bigint[], $11::boolean[], $12::bigint[], $13::bigint[],
                                  $14::bigint[], $15::bytea[], $16::boolean[], $17::bigint[],
                                  $18::bigint[], $19::integer[], $20::boolean[], $21::boolean[],
                                  $22::bigint[])",
        );
        let params: [Param<'_>; 22] = [
            (&self.id, Type::INT8_ARRAY),
            (&self.queue, Type::TEXT_ARRAY),
            (&self.callback, Type::TEXT_ARRAY),
            (&self.payload, Type::BYTEA_ARRAY),
            (&self.state, Type::TEXT_ARRAY),
            (&self.attempts, Type::INT4_ARRAY),
            (&self.serial_group, Type::TEXT_ARRAY),
            (&self.identifier, Type::TEXT_ARRAY),
            (&self.created_at, Type::INT8_ARRAY),
            (&self.run_at, Type::INT8_ARRAY),
            (&self.due, Type::BOOL_ARRAY),
            (&self.started_at, Type::INT8_ARRAY),
            (&self.finished_at, Type::INT8_ARRAY),
            (&self.claimed_run, Type::INT8_ARRAY),
            (&self.output, Type::BYTEA_ARRAY),
            (&self.notified, Type::BOOL_ARRAY),
            (&self.state_changed_at, Type::INT8_ARRAY),
            (&self.priority, Type::INT8_ARRAY),
            (&self.blocked_by, Type::INT4_ARRAY),
            (&self.is_unique, Type::BOOL_ARRAY),
            (&self.cancel_requested, Type::BOOL_ARRAY),
            (&self.batch_id, Type::INT8_ARRAY),
        ];
        tx.execute_typed(&sql, &params)?;
        *self = JobBatch::default();
        Ok(())
    }
}

impl Copy<'_, '_> {
    fn q(&self, sql: &str) -> String {
        in_schema(self.schema, sql)
    }

    fn jobs(&mut self, source: &mut dyn Source, sent: &mut Census) -> anyhow::Result<()> {
        let mut batch = JobBatch::default();
        let offset = self.before.run_offset;
        source.jobs(&mut |row| {
            sent.add_job(&row);
            batch.push(row, offset)?;
            if batch.full() {
                batch.flush(self.tx, self.schema)?;
            }
            Ok(())
        })?;
        batch.flush(self.tx, self.schema)
    }

    fn dependencies(&mut self, source: &mut dyn Source, sent: &mut Census) -> anyhow::Result<()> {
        let sql = self.q("INSERT INTO @.dependencies (job_id, after_id)
             SELECT * FROM unnest($1::bigint[], $2::bigint[])");
        let (mut jobs, mut afters) = (Vec::new(), Vec::new());
        source.dependencies(&mut |row| {
            sent.add_dependency(&row);
            jobs.push(row.job_id);
            afters.push(row.after_id);
            // Two numbers a row: many more per statement than jobs.
            if jobs.len() >= BATCH_ROWS * 5 {
                insert_pairs(self.tx, &sql, &mut jobs, &mut afters)?;
            }
            Ok(())
        })?;
        insert_pairs(self.tx, &sql, &mut jobs, &mut afters)
    }

    fn runs(&mut self, source: &mut dyn Source, sent: &mut Census) -> anyhow::Result<()> {
        // At most a hundred runs per queue are kept: one statement takes them all.
        let mut rows = Vec::new();
        source.runs(&mut |row| {
            sent.add_run(&row);
            rows.push(row);
            Ok(())
        })?;
        if rows.is_empty() {
            return Ok(());
        }
        let offset = self.before.run_offset;
        let ids: Vec<i64> = rows.iter().map(|row| shifted(row.id, offset)).collect();
        let queues: Vec<&str> = rows.iter().map(|row| row.queue.as_str()).collect();
        let pids = rows
            .iter()
            .map(|row| int4(row.pid, || format!("run {}'s pid", row.id)))
            .collect::<anyhow::Result<Vec<i32>>>()?;
        let pid_started: Vec<i64> = rows.iter().map(|row| row.pid_started).collect();
        let boot_ids: Vec<&str> = rows.iter().map(|row| row.boot_id.as_str()).collect();
        let started: Vec<i64> = rows.iter().map(|row| row.started_at).collect();
        let finished: Vec<Option<i64>> = rows.iter().map(|row| row.finished_at).collect();
        let jobs: Vec<i64> = rows.iter().map(|row| row.jobs).collect();
        let failed: Vec<i64> = rows.iter().map(|row| row.failed).collect();
        let errors: Vec<Option<&str>> = rows.iter().map(|row| row.error.as_deref()).collect();
        let watch: Vec<bool> = rows.iter().map(|row| row.watch).collect();
        // The runs ran on this machine, which holds the SQLite file: they carry its host id.
        // Their heartbeat is their last recorded moment, so that no host takes a copied run,
        // which has no session, for one that lost its session a moment ago.
        let sql = self.q(
            "INSERT INTO @.runs (id, queue, host_id, pid, pid_started, boot_id, started_at,
                                 finished_at, jobs, failed, error, watch, heartbeat_at)
             OVERRIDING SYSTEM VALUE
             SELECT i, q, $12, p, ps, b, s, f, j, fl, e, w,
                    to_timestamp(greatest(s, coalesce(f, s)) / 1000.0)
             FROM unnest($1::bigint[], $2::text[], $3::integer[], $4::bigint[], $5::text[],
                         $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::text[],
                         $11::boolean[]) AS t (i, q, p, ps, b, s, f, j, fl, e, w)",
        );
        let host_id = self.host_id;
        self.tx.execute_typed(
            &sql,
            &[
                (&ids, Type::INT8_ARRAY),
                (&queues, Type::TEXT_ARRAY),
                (&pids, Type::INT4_ARRAY),
                (&pid_started, Type::INT8_ARRAY),
                (&boot_ids, Type::TEXT_ARRAY),
                (&started, Type::INT8_ARRAY),
                (&finished, Type::INT8_ARRAY),
                (&jobs, Type::INT8_ARRAY),
                (&failed, Type::INT8_ARRAY),
                (&errors, Type::TEXT_ARRAY),
                (&watch, Type::BOOL_ARRAY),
                (&host_id, Type::TEXT),
            ],
        )?;
        Ok(())
    }

    /// Copies the outcome counts (two days' worth at most: one statement), adding them to
    /// those of the same minute already there; returns them by queue and minute.
    fn outcomes(
        &mut self,
        source: &mut dyn Source,
        sent: &mut Census,
    ) -> anyhow::Result<BTreeMap<(String, i64), [i64; 3]>> {
        let mut rows = BTreeMap::new();
        source.outcomes(&mut |row| {
            sent.add_outcome(&row);
            rows.insert(
                (row.queue, row.minute),
                [row.finished, row.temporarily_failed, row.permanently_failed],
            );
            Ok(())
        })?;
        if rows.is_empty() {
            return Ok(rows);
        }
        let queues: Vec<&str> = rows.keys().map(|(queue, _)| queue.as_str()).collect();
        let minutes: Vec<i64> = rows.keys().map(|(_, minute)| *minute).collect();
        let column = |n: usize| -> Vec<i64> { rows.values().map(|counts| counts[n]).collect() };
        let (finished, temporarily, permanently) = (column(0), column(1), column(2));
        let sql = self.q(
            "INSERT INTO @.outcomes AS o (queue, minute, finished, temporarily_failed,
                                          permanently_failed)
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[],
                                  $5::bigint[])
             ON CONFLICT (queue, minute) DO UPDATE SET
                 finished = o.finished + EXCLUDED.finished,
                 temporarily_failed = o.temporarily_failed + EXCLUDED.temporarily_failed,
                 permanently_failed = o.permanently_failed + EXCLUDED.permanently_failed",
        );
        self.tx.execute_typed(
            &sql,
            &[
                (&queues, Type::TEXT_ARRAY),
                (&minutes, Type::INT8_ARRAY),
                (&finished, Type::INT8_ARRAY),
                (&temporarily, Type::INT8_ARRAY),
                (&permanently, Type::INT8_ARRAY),
            ],
        )?;
        Ok(rows)
    }

    fn notices(&mut self, source: &mut dyn Source, sent: &mut Census) -> anyhow::Result<()> {
        let mut rows = Vec::new();
        source.notices(&mut |row| {
            sent.add_notice(&row);
            rows.push(row);
            Ok(())
        })?;
        let offset = self.before.notice_offset;
        for chunk in rows.chunks(BATCH_ROWS) {
            let ids: Vec<i64> = chunk.iter().map(|row| row.id + offset).collect();
            let queues: Vec<&str> = chunk.iter().map(|row| row.queue.as_str()).collect();
            let jobs: Vec<i64> = chunk.iter().map(|row| row.job_id).collect();
            let kinds: Vec<&str> = chunk.iter().map(|row| row.kind.as_str()).collect();
            let reasons: Vec<&str> = chunk.iter().map(|row| row.reason.as_str()).collect();
            let outputs: Vec<Option<&[u8]>> =
                chunk.iter().map(|row| row.output.as_deref()).collect();
            let created: Vec<i64> = chunk.iter().map(|row| row.created_at).collect();
            // created_by 0: no run's own, so whichever run finds them sends them.
            let sql = self.q(
                "INSERT INTO @.notices (id, queue, job_id, kind, reason, output, created_at)
                 OVERRIDING SYSTEM VALUE
                 SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[],
                                      $5::text[], $6::bytea[], $7::bigint[])",
            );
            self.tx.execute_typed(
                &sql,
                &[
                    (&ids, Type::INT8_ARRAY),
                    (&queues, Type::TEXT_ARRAY),
                    (&jobs, Type::INT8_ARRAY),
                    (&kinds, Type::TEXT_ARRAY),
                    (&reasons, Type::TEXT_ARRAY),
                    (&outputs, Type::BYTEA_ARRAY),
                    (&created, Type::INT8_ARRAY),
                ],
            )?;
        }
        Ok(())
    }

    /// Copies the kept attempts, numbered after those already there, their runs as the runs
    /// were numbered; returns the highest row number sent (0: none).
    fn attempts(&mut self, source: &mut dyn Source, sent: &mut Census) -> anyhow::Result<i64> {
        let mut rows = Vec::new();
        source.attempts(&mut |row| {
            sent.add_attempt(&row);
            rows.push(row);
            Ok(())
        })?;
        let (offset, run_offset) = (self.before.attempt_offset, self.before.run_offset);
        for chunk in rows.chunks(BATCH_ROWS) {
            let ids: Vec<i64> = chunk.iter().map(|row| row.id + offset).collect();
            let jobs: Vec<i64> = chunk.iter().map(|row| row.job_id).collect();
            let attempts: Vec<i64> = chunk.iter().map(|row| row.attempt).collect();
            let runs: Vec<i64> = chunk
                .iter()
                .map(|row| shifted(row.run_id, run_offset))
                .collect();
            let started: Vec<i64> = chunk.iter().map(|row| row.started_at).collect();
            let ended: Vec<i64> = chunk.iter().map(|row| row.ended_at).collect();
            let outcomes: Vec<&str> = chunk.iter().map(|row| row.outcome.as_str()).collect();
            let exits: Vec<Option<i64>> = chunk.iter().map(|row| row.exit_code).collect();
            let signals: Vec<Option<i64>> = chunk.iter().map(|row| row.signal).collect();
            let outputs: Vec<Option<&[u8]>> =
                chunk.iter().map(|row| row.output.as_deref()).collect();
            let sql = self.q(
                "INSERT INTO @.attempts (id, job_id, attempt, run_id, started_at, ended_at,
                                         outcome, exit_code, signal, output)
                 OVERRIDING SYSTEM VALUE
                 SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]::integer[],
                                      $4::bigint[], $5::bigint[], $6::bigint[], $7::text[],
                                      $8::bigint[]::integer[], $9::bigint[]::integer[],
                                      $10::bytea[])",
            );
            self.tx.execute_typed(
                &sql,
                &[
                    (&ids, Type::INT8_ARRAY),
                    (&jobs, Type::INT8_ARRAY),
                    (&attempts, Type::INT8_ARRAY),
                    (&runs, Type::INT8_ARRAY),
                    (&started, Type::INT8_ARRAY),
                    (&ended, Type::INT8_ARRAY),
                    (&outcomes, Type::TEXT_ARRAY),
                    (&exits, Type::INT8_ARRAY),
                    (&signals, Type::INT8_ARRAY),
                    (&outputs, Type::BYTEA_ARRAY),
                ],
            )?;
        }
        Ok(rows.iter().map(|row| row.id).max().unwrap_or(0))
    }

    /// Copies the rows of pauses, run totals, jobs cleared unfinished and broken callbacks (a
    /// few; the schema had none), a broken callback's run as the runs were numbered.
    fn state_rows(&mut self, source: &mut dyn Source, sent: &mut Census) -> anyhow::Result<()> {
        let mut rows = Vec::new();
        source.state_rows(&mut |row| {
            sent.add_state_row(&row);
            rows.push(row);
            Ok(())
        })?;
        let run_offset = self.before.run_offset;
        let runs: Vec<i64> = rows
            .iter()
            .map(|row| match row {
                StateRow::BrokenCallback { run_id, .. } => shifted(*run_id, run_offset),
                _ => 0,
            })
            .collect();
        for (row, run) in rows.iter().zip(&runs) {
            if let StateRow::Batch(batch) = row {
                // After the jobs it counts: their copies fired no counting trigger on a batch
                // not yet there, and its counters arrive as the source kept them.
                self.tx.execute_typed(
                    &self.q("INSERT INTO @.batches (id, queue, description, on_complete,
                             on_complete_params, on_success, on_success_params, created_at,
                             sealed_at, completed_at, changed_at, complete_job, success_job,
                             unfinished, finished, failed, cancelled)
                         VALUES ($1, $2, $3, $4, $5::json, $6, $7::json, $8, $9, $10, $11, $12,
                                 $13, $14, $15, $16, $17)"),
                    &[
                        (&batch.id, Type::INT8),
                        (&batch.queue, Type::TEXT),
                        (&batch.description, Type::TEXT),
                        (&batch.on_complete, Type::TEXT),
                        (&batch.on_complete_params, Type::TEXT),
                        (&batch.on_success, Type::TEXT),
                        (&batch.on_success_params, Type::TEXT),
                        (&batch.created_at, Type::INT8),
                        (&batch.sealed_at, Type::INT8),
                        (&batch.completed_at, Type::INT8),
                        (&batch.changed_at, Type::INT8),
                        (&batch.complete_job, Type::INT8),
                        (&batch.success_job, Type::INT8),
                        (&batch.unfinished, Type::INT8),
                        (&batch.finished, Type::INT8),
                        (&batch.failed, Type::INT8),
                        (&batch.cancelled, Type::INT8),
                    ],
                )?;
                continue;
            }
            let (sql, params): (&str, Vec<Param<'_>>) = match row {
                StateRow::Pause {
                    queue,
                    callback,
                    paused_at,
                } => (
                    "INSERT INTO @.pauses (queue, callback, paused_at) VALUES ($1, $2, $3)",
                    vec![
                        (queue, Type::TEXT),
                        (callback, Type::TEXT),
                        (paused_at, Type::INT8),
                    ],
                ),
                StateRow::RunTotal {
                    queue,
                    callback,
                    outcome,
                    total,
                } => (
                    "INSERT INTO @.run_totals (queue, callback, outcome, total)
                     VALUES ($1, $2, $3, $4)",
                    vec![
                        (queue, Type::TEXT),
                        (callback, Type::TEXT),
                        (outcome, Type::TEXT),
                        (total, Type::INT8),
                    ],
                ),
                StateRow::ClearedUnfinished {
                    id,
                    state,
                    cleared_at,
                } => (
                    "INSERT INTO @.cleared_unfinished (id, state, cleared_at) VALUES ($1, $2, $3)",
                    vec![
                        (id, Type::INT8),
                        (state, Type::TEXT),
                        (cleared_at, Type::INT8),
                    ],
                ),
                // Stored above.
                StateRow::Batch(_) => continue,
                StateRow::BrokenCallback {
                    queue,
                    callback,
                    reason,
                    since,
                    ..
                } => (
                    "INSERT INTO @.broken_callbacks (queue, callback, reason, since, run_id)
                     VALUES ($1, $2, $3, $4, $5)",
                    vec![
                        (queue, Type::TEXT),
                        (callback, Type::TEXT),
                        (reason, Type::TEXT),
                        (since, Type::INT8),
                        (run, Type::INT8),
                    ],
                ),
            };
            self.tx.execute_typed(&self.q(sql), &params)?;
        }
        Ok(())
    }

    /// Moves each sequence past the highest id the source handed out, never back, and records
    /// that every job id up to the source's last that names no job had FINISHED (and was
    /// cleared), as the source's AUTOINCREMENT counter said.
    fn sequences(
        &mut self,
        last_job: i64,
        last_run: i64,
        last_notice: i64,
        last_attempt: i64,
    ) -> anyhow::Result<()> {
        let offset_run = shifted(last_run, self.before.run_offset);
        let offset_notice = shifted(last_notice, self.before.notice_offset);
        let offset_attempt = shifted(last_attempt, self.before.attempt_offset);
        // Batch ids were copied as they are, into a schema that had none.
        let last_batch: i64 = self
            .tx
            .query_typed_one(&self.q("SELECT coalesce(max(id), 0) FROM @.batches"), &[])?
            .get(0);
        for (table, last) in [
            ("jobs", last_job),
            ("runs", offset_run),
            ("notices", offset_notice),
            ("attempts", offset_attempt),
            ("batches", last_batch),
        ] {
            let table = format!("{}.{table}", self.schema);
            let sequence: Option<String> = self
                .tx
                .query_typed_one(
                    "SELECT pg_get_serial_sequence($1, 'id')",
                    &[(&table, Type::TEXT)],
                )?
                .get(0);
            let sequence = sequence.with_context(|| format!("{table}.id has no sequence"))?;
            // The name comes from the catalog, quoted as it needs to be. last_value is the
            // last id handed out once is_called.
            let row = self.tx.query_typed_one(
                &format!("SELECT last_value, is_called FROM {sequence}"),
                &[],
            )?;
            let handed_out: i64 = if row.get(1) { row.get(0) } else { 0 };
            let next_after = last.max(handed_out);
            if next_after > 0 {
                self.tx.query_typed(
                    "SELECT setval($1::regclass, $2)",
                    &[(&sequence, Type::TEXT), (&next_after, Type::INT8)],
                )?;
            }
        }
        let sql = self.q(
            "UPDATE @.meta SET value = greatest(value::bigint, $1)::text WHERE key = 'cleared_up_to'",
        );
        self.tx.execute_typed(&sql, &[(&last_job, Type::INT8)])?;
        Ok(())
    }

    /// The queues the copied jobs are in.
    fn queues(&mut self) -> anyhow::Result<Vec<String>> {
        let sql = self.q("SELECT DISTINCT queue FROM @.jobs");
        Ok(self
            .tx
            .query_typed(&sql, &[])?
            .iter()
            .map(|row| row.get(0))
            .collect())
    }

    /// What the schema holds of the copy, read back and numbered as the source numbered it.
    fn census(
        &mut self,
        sent_outcomes: &BTreeMap<(String, i64), [i64; 3]>,
    ) -> anyhow::Result<Census> {
        let mut stored = Census::default();
        let (run_offset, notice_offset) = (self.before.run_offset, self.before.notice_offset);
        let sql = self.q(
            "SELECT id, queue, callback, coalesce(payload, ''::bytea), state, attempts::bigint,
                    serial_group, identifier, created_at, run_at, due, started_at, finished_at,
                    claimed_run, output, notified, state_changed_at, priority,
                    blocked_by::bigint, is_unique, cancel_requested, batch_id
             FROM @.jobs",
        );
        let mut rows = self
            .tx
            .query_typed_raw(&sql, std::iter::empty::<Param<'_>>())?;
        while let Some(row) = rows.next()? {
            stored.add_job(&JobRow {
                id: row.get(0),
                queue: row.get(1),
                callback: row.get(2),
                payload: row.get(3),
                state: row.get(4),
                attempts: row.get(5),
                serial_group: row.get(6),
                identifier: row.get(7),
                created_at: row.get(8),
                run_at: row.get(9),
                due: row.get(10),
                started_at: row.get(11),
                finished_at: row.get(12),
                claimed_run: unshifted(row.get(13), run_offset),
                output: row.get(14),
                notified: row.get(15),
                state_changed_at: row.get(16),
                priority: row.get(17),
                blocked_by: row.get(18),
                is_unique: row.get(19),
                cancel_requested: row.get(20),
                batch_id: row.get(21),
            });
        }
        drop(rows);
        let sql = self.q("SELECT job_id, after_id FROM @.dependencies");
        for row in self.tx.query_typed(&sql, &[])? {
            stored.add_dependency(&DependencyRow {
                job_id: row.get(0),
                after_id: row.get(1),
            });
        }
        let sql = self.q(
            "SELECT id, queue, pid::bigint, pid_started, boot_id, started_at, finished_at, jobs,
                    failed, error, watch
             FROM @.runs WHERE id > $1",
        );
        for row in self.tx.query_typed(&sql, &[(&run_offset, Type::INT8)])? {
            stored.add_run(&RunRow {
                id: unshifted(row.get(0), run_offset),
                queue: row.get(1),
                pid: row.get(2),
                pid_started: row.get(3),
                boot_id: row.get(4),
                started_at: row.get(5),
                finished_at: row.get(6),
                jobs: row.get(7),
                failed: row.get(8),
                error: row.get(9),
                watch: row.get(10),
            });
        }
        // Outcome counts: what each copied minute holds now, less what it held before.
        let sql = self.q(
            "SELECT queue, minute, finished, temporarily_failed, permanently_failed
             FROM @.outcomes",
        );
        for row in self.tx.query_typed(&sql, &[])? {
            let key: (String, i64) = (row.get(0), row.get(1));
            let now: [i64; 3] = [row.get(2), row.get(3), row.get(4)];
            let before = self.before.outcomes.get(&key).copied().unwrap_or_default();
            if now == before && !sent_outcomes.contains_key(&key) {
                continue;
            }
            stored.add_outcome(&OutcomeRow {
                queue: key.0,
                minute: key.1,
                finished: now[0] - before[0],
                temporarily_failed: now[1] - before[1],
                permanently_failed: now[2] - before[2],
            });
        }
        let sql = self.q(
            "SELECT id, job_id, attempt::bigint, run_id, started_at, ended_at, outcome,
                    exit_code::bigint, signal::bigint, output
             FROM @.attempts WHERE id > $1",
        );
        let attempt_offset = self.before.attempt_offset;
        for row in self
            .tx
            .query_typed(&sql, &[(&attempt_offset, Type::INT8)])?
        {
            stored.add_attempt(&AttemptRow {
                id: row.get::<_, i64>(0) - attempt_offset,
                job_id: row.get(1),
                attempt: row.get(2),
                run_id: unshifted(row.get(3), run_offset),
                started_at: row.get(4),
                ended_at: row.get(5),
                outcome: row.get(6),
                exit_code: row.get(7),
                signal: row.get(8),
                output: row.get(9),
            });
        }
        for row in self.tx.query_typed(
            &self.q("SELECT queue, callback, paused_at FROM @.pauses"),
            &[],
        )? {
            stored.add_state_row(&StateRow::Pause {
                queue: row.get(0),
                callback: row.get(1),
                paused_at: row.get(2),
            });
        }
        for row in self.tx.query_typed(
            &self.q("SELECT queue, callback, outcome, total FROM @.run_totals"),
            &[],
        )? {
            stored.add_state_row(&StateRow::RunTotal {
                queue: row.get(0),
                callback: row.get(1),
                outcome: row.get(2),
                total: row.get(3),
            });
        }
        for row in self.tx.query_typed(
            &self.q("SELECT id, state, cleared_at FROM @.cleared_unfinished"),
            &[],
        )? {
            stored.add_state_row(&StateRow::ClearedUnfinished {
                id: row.get(0),
                state: row.get(1),
                cleared_at: row.get(2),
            });
        }
        for row in self.tx.query_typed(
            &self.q(&format!("SELECT {BATCH_ROW_COLUMNS} FROM @.batches")),
            &[],
        )? {
            stored.add_state_row(&StateRow::Batch(BatchRow {
                id: row.get(0),
                queue: row.get(1),
                description: row.get(2),
                on_complete: row.get(3),
                on_complete_params: row.get(4),
                on_success: row.get(5),
                on_success_params: row.get(6),
                created_at: row.get(7),
                sealed_at: row.get(8),
                completed_at: row.get(9),
                changed_at: row.get(10),
                complete_job: row.get(11),
                success_job: row.get(12),
                unfinished: row.get(13),
                finished: row.get(14),
                failed: row.get(15),
                cancelled: row.get(16),
            }));
        }
        for row in self.tx.query_typed(
            &self.q("SELECT queue, callback, reason, since, run_id FROM @.broken_callbacks"),
            &[],
        )? {
            stored.add_state_row(&StateRow::BrokenCallback {
                queue: row.get(0),
                callback: row.get(1),
                reason: row.get(2),
                since: row.get(3),
                run_id: unshifted(row.get(4), run_offset),
            });
        }
        let sql = self.q("SELECT id, queue, job_id, kind, reason, output, created_at
             FROM @.notices WHERE id > $1");
        for row in self.tx.query_typed(&sql, &[(&notice_offset, Type::INT8)])? {
            stored.add_notice(&NoticeRow {
                id: row.get::<_, i64>(0) - notice_offset,
                queue: row.get(1),
                job_id: row.get(2),
                kind: row.get(3),
                reason: row.get(4),
                output: row.get(5),
                created_at: row.get(6),
            });
        }
        Ok(stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_stays_none_when_numbered_after_others() {
        assert_eq!(shifted(0, 7), 0);
        assert_eq!(shifted(3, 7), 10);
        assert_eq!(unshifted(shifted(3, 7), 7), 3);
        assert_eq!(unshifted(0, 7), 0);
    }
}
