//! Where jobs are kept: the storage contract every backend implements, and the data that
//! crosses it. Commands speak only to [`Store`]; no command names a database library or writes
//! SQL. SQLite ([`sqlite`]) is the first backend.
//!
//! The queue's rules are not here: what an outcome leads to is decided by `queue::outcome` and
//! handed to the store as a [`Completion`]; a backend only stores what it is told, atomically,
//! and answers the questions of the read commands.
//!
//! # The contract
//!
//! A backend must keep these, under any number of concurrent `publish`, `process`, `retry`,
//! `cancel` and `clear` commands, each its own process (and, for a backend that spans machines,
//! on many hosts):
//!
//! - **Every method is one transaction**: it happens whole or not at all, and a method that
//!   returns an error has changed nothing. Concurrent calls behave as if they ran one after the
//!   other, in some order.
//! - **A publish is durable when it returns**, as far as [`Durability`] promises: with `Full`
//!   it survives a power cut. `--jsonl` stores all its jobs or none.
//! - **A claim is atomic**: [`Store::settle_and_claim`] picks and marks in one transaction, so
//!   no job is ever handed to two runs, a serial group never has two jobs PROCESSING, and a
//!   callback never has more jobs PROCESSING for one run than the run's capacity allows.
//! - **An outcome is committed before its slot starts another job**: `settle_and_claim` stores
//!   the runs that ended and claims their successors in the same transaction.
//! - **Cancel versus finish**: a job cancelled while PROCESSING is only marked
//!   (`cancel_requested`); its run ends it. Whichever of the run's outcome and the cancel
//!   commits first wins, and the other changes nothing but the output it carries.
//! - **Nothing is lost, nothing is invented**: a job leaves the store only through `clear`; ids
//!   increase in publish order and are never reused.
//! - **A batch moves with its jobs** (SPEC section 11): every write that moves a job of a batch
//!   into or out of a final state updates the batch's counters in the same transaction, one
//!   row and no count over the batch; a sealed batch left with no unfinished job completes in
//!   that transaction, its completion jobs published once. Both backends keep this with
//!   triggers of their schema, so that no write path can forget it.
//! - **Writes of a `process` run may be lost in a power cut only in ways that re-run a job**
//!   (`Durability::Relaxed`), never in ways that lose one.
//!
//! A backend must never: decide a state itself; run, kill or wait for a process; block a
//! reader behind a long writer for more than one batch (`clear` works in batches); or hold a
//! lock across calls.

#[cfg(test)]
mod conformance;
pub mod postgres;
pub mod sqlite;
pub mod transfer;

use crate::config::Database;
use crate::coord::process_group::ProcessRecord;
use crate::job::{JobRecord, JobState, Millis, NewJob, Payload, StoredPayload};
use crate::notify::NoticeKind;
use crate::queue::eligibility::GroupFacts;

/// How much a connection's commits are synced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every commit survives a power cut (`synchronous = FULL`): publish.
    Full,
    /// Commits survive a crash of bgq; a power cut may undo the latest ones
    /// (`synchronous = NORMAL` in WAL mode): process, where that at worst re-runs a job, and
    /// publish under `durability = "normal"`, where it loses the newest jobs.
    Relaxed,
}

/// Which claim of a job a write comes from: the run that claimed it and the attempt that claim
/// counted. A claim makes a new fence; an outcome or a cancel recorded under a fence that no
/// longer holds the job (the job was recovered, and maybe claimed again, meanwhile) changes
/// nothing: a late word from an old run never overwrites a newer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    /// The `process` run that claimed the job.
    pub run: i64,
    /// The attempt that claim counted.
    pub attempt: u32,
}

/// What recording an outcome did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Stored as decided.
    Stored,
    /// `bgq cancel --kill` had marked the job and the run did not finish it: it ended
    /// CANCELLED instead.
    Cancelled,
    /// Its fence no longer holds the job: nothing changed.
    Stale,
}

/// Opens the store `database` names (created when missing): where a new backend plugs in.
pub fn open(database: &Database, durability: Durability) -> anyhow::Result<Box<dyn Store>> {
    match database {
        Database::Sqlite(path) => Ok(Box::new(sqlite::SqliteStore::open(path, durability)?)),
        Database::Postgres(target) => {
            Ok(Box::new(postgres::PostgresStore::open(target, durability)?))
        }
    }
}

/// Opens the store `database` names if it exists; never creates it (`bgq check`).
pub fn open_existing(database: &Database) -> anyhow::Result<Option<Box<dyn Store>>> {
    match database {
        Database::Sqlite(path) => Ok(sqlite::SqliteStore::open_existing(path)?
            .map(|store| Box::new(store) as Box<dyn Store>)),
        Database::Postgres(target) => Ok(postgres::PostgresStore::open_existing(target)?
            .map(|store| Box::new(store) as Box<dyn Store>)),
    }
}

/// The operations of a bgq store (see the module's contract). Each is one transaction.
pub trait Store {
    /// The database as bgq names it, stable across versions (for SQLite, the canonical path of
    /// its file): lock names are derived from it.
    fn identity(&self) -> &str;

    /// Calls `wake` from another thread whenever something may have been committed by another
    /// connection, until `wake` returns false; an error when the backend cannot watch (the
    /// caller then polls).
    fn on_change(&self, wake: Box<dyn Fn() -> bool + Send>) -> anyhow::Result<()>;

    /// Whether runs of other hosts may serve its queues at once (then a run looks for dead
    /// runs' jobs while it works, and its callbacks die with it), or only runs of this
    /// machine, one per queue under its lock.
    fn spans_hosts(&self) -> bool;

    /// Keeps run `run` known alive to the other runs while this process lives (for a backend
    /// that spans hosts: a session and a heartbeat). When the database cannot be reached for
    /// `coord::fleet::GIVE_UP_AFTER`, calls `on_lost` with the reason, from another thread:
    /// it must stop the run's callbacks before their jobs can be recovered elsewhere.
    fn keep_alive(
        &mut self,
        run: i64,
        on_lost: Box<dyn FnOnce(String) + Send>,
    ) -> anyhow::Result<()>;

    /// Stores `jobs` as `schedule` says, in one durable transaction, all or nothing. An `after`
    /// id that names no job is a usage error.
    fn publish_with(
        &mut self,
        jobs: &[NewJob],
        schedule: &Schedule,
        now: Millis,
    ) -> anyhow::Result<Published>;

    /// Records the start of a `process` run on `queue` by `runner` and returns its number.
    fn begin_run(
        &mut self,
        queue: &str,
        runner: &ProcessRecord,
        now: Millis,
        watch: bool,
    ) -> anyhow::Result<i64>;

    /// Deletes the outcome counts of `queue` that `stats` no longer shows (a long `--watch`
    /// run calls it now and then; other runs prune when they begin).
    fn prune_outcomes(&mut self, queue: &str, now: Millis) -> anyhow::Result<()>;

    /// Records the end of a `process` run: how many jobs it started, how many of them failed,
    /// and the error that ended it, if one did.
    fn end_run(
        &mut self,
        run: i64,
        now: Millis,
        jobs: u64,
        failed: u64,
        error: Option<&str>,
    ) -> anyhow::Result<()>;

    /// Jobs of `queue` left PROCESSING. Only meaningful while holding the queue's lock.
    fn orphans(&mut self, queue: &str) -> anyhow::Result<Vec<Orphan>>;

    /// Moves jobs of `queue` whose time has come into the claim path, except those that run
    /// `started_by` already started (a cron run starts each job at most once; a watch run
    /// passes `None`).
    fn promote_due(
        &mut self,
        queue: &str,
        started_by: Option<i64>,
        now: Millis,
    ) -> anyhow::Result<usize>;

    /// Whether another connection (a `publish`, a `retry`, another run) committed a change
    /// since the last call: a cheap check that reads no table.
    fn changed_elsewhere(&mut self) -> anyhow::Result<bool>;

    /// In one transaction: stores how the runs in `done` ended as `complete` does (counting them
    /// in `tally`, which is written too when `write_tally`), then claims up to `claim.limit` jobs (oldest first,
    /// serial groups free, within each callback's capacity) and marks them PROCESSING for
    /// `claim.run`.
    ///
    /// The counts wait in `tally` so that a run writes them every few seconds, not once per
    /// job: one more page per commit is measurable in a drain of short jobs.
    fn settle_and_claim(
        &mut self,
        done: &[Completion],
        claim: &ClaimRequest<'_>,
        tally: &mut Tally,
        write_tally: bool,
    ) -> anyhow::Result<Settled>;

    /// Due jobs of `queue` whose callback is not among `known`, counted per callback.
    fn due_callbacks_not_in(
        &self,
        queue: &str,
        known: &[&str],
    ) -> anyhow::Result<Vec<(String, i64)>>;

    /// Moves the due times of `queue`'s waiting jobs `by` milliseconds earlier; returns how many.
    fn shift_schedule(&mut self, queue: &str, by: Millis) -> anyhow::Result<usize>;

    /// Stores how a run of a job ended, with its notice, its count for `stats` and a row in the
    /// job's history of attempts (whose oldest rows beyond `done.history` go), if its fence
    /// still holds the job. A job marked by `bgq cancel --kill` whose run did not FINISH ends
    /// CANCELLED instead; under a fence that no longer holds the job nothing changes.
    fn complete(&mut self, done: &Completion) -> anyhow::Result<Applied>;

    /// Puts back job `id`, whose callback could not be started under claim `fence` (SPEC
    /// section 5: a deployment problem, not the job's): it is again as it was before the claim
    /// (state, attempts, times), due at once, and no attempt is recorded; a job that `bgq
    /// cancel --kill` marked meanwhile becomes CANCELLED instead. In the same transaction,
    /// marks its callback broken in its queue for `run` with `reason` (an older mark keeps its
    /// `since`). False, and nothing changed, when `fence` no longer holds the job.
    fn unclaim(&mut self, id: i64, fence: Fence, reason: &str, now: Millis)
    -> anyhow::Result<bool>;

    /// The callbacks marked broken, by queue and callback.
    fn broken_callbacks(&self) -> anyhow::Result<Vec<BrokenCallback>>;

    /// Deletes the broken mark of `callback` in `queue`: a run started it.
    fn callback_started(&mut self, queue: &str, callback: &str) -> anyhow::Result<()>;

    /// Writes the counts `tally` holds (see `settle_and_claim`) and empties it.
    fn write_tally(&mut self, tally: &mut Tally) -> anyhow::Result<()>;

    /// Jobs matching `filter`, newest first, at most `limit`.
    fn list(&self, filter: &ListFilter, limit: usize) -> anyhow::Result<Vec<JobRecord>>;

    /// How many jobs match `filter` (for `list`'s "showing 50 of N", asked only when a list
    /// was cut short, so its cost is paid only then).
    fn count(&self, filter: &ListFilter) -> anyhow::Result<u64>;

    /// The job with `id`, if it exists.
    fn record(&self, id: i64) -> anyhow::Result<Option<JobRecord>>;

    /// The state of job `id`, if it exists.
    fn state_of(&self, id: i64) -> anyhow::Result<Option<JobState>>;

    /// The jobs `run` of `queue` is running that `bgq cancel --kill` asked to stop.
    fn cancels_requested(&self, queue: &str, run: i64) -> anyhow::Result<Vec<i64>>;

    /// Ends the cancel of running job `id` whose run is gone (no run will see its callback
    /// end): it becomes CANCELLED, keeping `output`, and its history gains a `cancelled` row
    /// (keeping the newest `history`). False when `fence` no longer holds it or no cancel is
    /// requested.
    fn end_cancel(
        &mut self,
        id: i64,
        fence: Fence,
        output: &[u8],
        now: Millis,
        history: u32,
    ) -> anyhow::Result<bool>;

    /// Identifiers that still have a job in any state but FINISHED, among those of `filter`.
    fn unfinished_identifiers(&self, filter: &ListFilter) -> anyhow::Result<Vec<String>>;

    /// Deletes the jobs in `state` (FINISHED, PERMANENTLY_FAILED or CANCELLED) that entered it
    /// before `cutoff` among the next `batch` jobs in that state after id `after`, in one short
    /// transaction; returns how many, and the id to continue after (`None` when none are left).
    /// A job deleted without having FINISHED is remembered as such (`after` reports its state),
    /// so that jobs published `--after` it keep waiting instead of counting it FINISHED.
    fn clear_batch(
        &mut self,
        state: JobState,
        cutoff: Millis,
        after: i64,
        batch: usize,
    ) -> anyhow::Result<(usize, Option<i64>)>;

    /// Pauses `queue` (`None`: every queue) for `callback` (`None`: every callback) from `now`:
    /// no claim takes a job it covers until it is lifted. False when that exact pause was
    /// already there (it is left as it was).
    fn pause(
        &mut self,
        queue: Option<&str>,
        callback: Option<&str>,
        now: Millis,
    ) -> anyhow::Result<bool>;

    /// Lifts the pauses of `queue` and `callback` (`None`: of any), waking the `--watch` runs;
    /// returns those it lifted.
    fn resume(&mut self, queue: Option<&str>, callback: Option<&str>)
    -> anyhow::Result<Vec<Pause>>;

    /// Every pause in force, oldest first.
    fn pauses(&self) -> anyhow::Result<Vec<Pause>>;

    /// Runs of jobs counted since the queue began (never decremented, not even by `clear`):
    /// (queue, callback, outcome as `run_outcome` names it, total), in that order.
    fn run_totals(&self) -> anyhow::Result<Vec<(String, String, String, u64)>>;

    /// Jobs waiting for an `--after` job that will never finish (PERMANENTLY_FAILED,
    /// CANCELLED, or deleted by `clear` in one of those states), oldest first: each with one
    /// such parent.
    fn stuck_after(&self) -> anyhow::Result<Vec<StuckAfter>>;

    /// The jobs waiting (`--after`) for any of `parents`, oldest first.
    fn dependents_of(&self, parents: &[i64]) -> anyhow::Result<Vec<(i64, i64)>>;

    /// Everything stored about job `id`, if it exists.
    fn detail(&self, id: i64) -> anyhow::Result<Option<JobDetail>>;

    /// What job `id`'s serial `group` holds, as its claim sees it: the facts of
    /// `queue::eligibility`, with `blocking` the callbacks whose failures hold their group. A
    /// claim must pick a job exactly when `group_hold` of these facts is `None`.
    fn serial_group_facts(
        &self,
        group: &str,
        id: i64,
        blocking: &[&str],
    ) -> anyhow::Result<GroupFacts>;

    /// The jobs job `id` was published `--after`, with their states (`None`: deleted by
    /// `clear` having FINISHED; one deleted in another state keeps that state here).
    fn after(&self, id: i64) -> anyhow::Result<Vec<(i64, Option<JobState>)>>;

    /// The `process` run numbered `run`, if it is still recorded.
    fn run(&self, run: i64) -> anyhow::Result<Option<RunInfo>>;

    /// The latest `process` run of `queue`, if one is recorded.
    fn last_run(&self, queue: &str) -> anyhow::Result<Option<RunInfo>>;

    /// The latest `process` run of each queue that has one.
    fn last_runs(&self) -> anyhow::Result<Vec<RunInfo>>;

    /// How many jobs each queue has in each state (states without jobs left out).
    fn state_counts(&self) -> anyhow::Result<Vec<(String, JobState, u64)>>;

    /// The jobs due by `now` and waiting to run, per queue that has any: how many, and the
    /// oldest.
    fn due_jobs(&self, now: Millis) -> anyhow::Result<Vec<DueJobs>>;

    /// Runs of jobs that ended since `since`, per queue: (finished, temporarily failed,
    /// permanently failed).
    fn outcomes_since(&self, since: Millis) -> anyhow::Result<Vec<(String, [u64; 3])>>;

    /// Jobs that want to run (READY, PROCESSING, TEMPORARILY_FAILED, WAITING) whose callback is
    /// not among `known`: (queue, callback, how many).
    fn waiting_callbacks_not_in(
        &self,
        known: &[&str],
    ) -> anyhow::Result<Vec<(String, String, u64)>>;

    /// In one transaction: reads the jobs of `selection`, asks `decide` about each (an error
    /// refuses the whole change, `false` leaves that job as it is), and applies `change` to the
    /// others unless `dry_run`. Returns every selected job, oldest first, with its decision.
    fn change(
        &mut self,
        selection: &Selection<'_>,
        change: &Change,
        dry_run: bool,
        decide: &mut dyn FnMut(&JobBrief) -> anyhow::Result<bool>,
    ) -> anyhow::Result<Vec<(JobBrief, bool)>>;

    /// The notices of `queue` not yet sent, oldest first, each with its job as it is now (if
    /// the job still exists).
    fn pending_notices(&self, queue: &str) -> anyhow::Result<Vec<PendingNotice>>;

    /// Deletes notices that were sent.
    fn delete_notices(&mut self, ids: &[i64]) -> anyhow::Result<()>;

    /// Opens a batch (SPEC section 11) and returns its id, increasing like job ids.
    fn new_batch(&mut self, batch: &NewBatch, now: Millis) -> anyhow::Result<i64>;

    /// Seals batch `id`: from now on only its running members add jobs to it. When none of its
    /// jobs is unfinished it completes in the same transaction (its completion jobs are
    /// published). An unknown batch is a usage error.
    fn seal_batch(&mut self, id: i64, now: Millis) -> anyhow::Result<Sealed>;

    /// Batch `id` as it is now, if it exists.
    fn batch(&self, id: i64) -> anyhow::Result<Option<BatchInfo>>;

    /// The batches, newest first, at most `limit`; only those not complete when `open_only`.
    fn batches(&self, open_only: bool, limit: usize) -> anyhow::Result<Vec<BatchInfo>>;

    /// The batch whose completion published job `id`, if one did.
    fn batch_completed_by(&self, id: i64) -> anyhow::Result<Option<BatchInfo>>;

    /// Deletes the complete batches none of whose jobs is left (`clear` deleted them all);
    /// returns how many.
    fn prune_batches(&mut self) -> anyhow::Result<usize>;
}

/// A batch to open (`bgq batch new`).
#[derive(Debug, Clone, Default)]
pub struct NewBatch {
    /// The queue of its completion jobs.
    pub queue: String,
    /// Free text, passed to its completion jobs.
    pub description: Option<String>,
    /// Callback published when it completes, with its `params` as compact JSON text.
    pub on_complete: Option<(String, Option<String>)>,
    /// Callback published when it completes with every job FINISHED, with its `params`.
    pub on_success: Option<(String, Option<String>)>,
}

/// What `Store::seal_batch` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sealed {
    /// Sealed now; `complete` when no job of it was unfinished, so it completed too.
    Now {
        /// Whether it completed in the same transaction.
        complete: bool,
    },
    /// It was sealed before: nothing changed.
    Already,
}

/// A batch as `bgq batch show` and `list` see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchInfo {
    /// Batch id.
    pub id: i64,
    /// The queue of its completion jobs.
    pub queue: String,
    /// Its description, if given.
    pub description: Option<String>,
    /// Its on-complete callback and `params` (JSON text).
    pub on_complete: Option<(String, Option<String>)>,
    /// Its on-success callback and `params` (JSON text).
    pub on_success: Option<(String, Option<String>)>,
    /// When it was opened.
    pub created_at: Millis,
    /// When it was sealed, if it was.
    pub sealed_at: Option<Millis>,
    /// When it completed, if it did.
    pub completed_at: Option<Millis>,
    /// The on-complete job its completion published.
    pub complete_job: Option<i64>,
    /// The on-success job its completion published.
    pub success_job: Option<i64>,
    /// Its jobs READY, PROCESSING, TEMPORARILY_FAILED or WAITING.
    pub unfinished: u64,
    /// Its jobs FINISHED.
    pub finished: u64,
    /// Its jobs PERMANENTLY_FAILED.
    pub failed: u64,
    /// Its jobs CANCELLED.
    pub cancelled: u64,
}

impl BatchInfo {
    /// Every job it ever had (jobs deleted by `clear` keep counting).
    pub fn total(&self) -> u64 {
        self.unfinished + self.finished + self.failed + self.cancelled
    }
}

/// The batch a publish adds its jobs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchTarget {
    /// Batch id.
    pub id: i64,
    /// The job publishing, from `BGQ_JOB_ID`: a PROCESSING member may add to a sealed batch.
    pub publisher: Option<i64>,
}

/// A pause of `bgq pause`: no run claims the jobs it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pause {
    /// The queue paused (`None`: every queue).
    pub queue: Option<String>,
    /// The callback paused (`None`: every callback).
    pub callback: Option<String>,
    /// Since when.
    pub since: Millis,
}

impl Pause {
    /// Whether it holds jobs of `callback` in `queue`.
    pub fn covers(&self, queue: &str, callback: &str) -> bool {
        self.queue.as_deref().is_none_or(|paused| paused == queue)
            && self
                .callback
                .as_deref()
                .is_none_or(|paused| paused == callback)
    }

    /// The command that lifts it.
    pub fn resume_command(&self) -> String {
        let mut command = "bgq resume".to_owned();
        if let Some(queue) = &self.queue {
            command.push_str(&format!(" --queue {}", crate::escape::line(queue)));
        }
        if let Some(callback) = &self.callback {
            command.push_str(&format!(" --callback {}", crate::escape::line(callback)));
        }
        command
    }
}

/// The first of `pauses` that holds jobs of `callback` in `queue`.
pub fn paused<'a>(pauses: &'a [Pause], queue: &str, callback: &str) -> Option<&'a Pause> {
    pauses.iter().find(|pause| pause.covers(queue, callback))
}

/// How a stored run of a job counts in `run_totals`: the state it ended in, in lower case, or
/// `cancelled` for a run `bgq cancel --kill` ended.
pub fn run_outcome(state: JobState) -> &'static str {
    match state {
        JobState::Finished => "finished",
        JobState::TemporarilyFailed => "temporarily_failed",
        JobState::Waiting => "waiting",
        JobState::PermanentlyFailed => "permanently_failed",
        JobState::Cancelled => "cancelled",
        JobState::Ready => "ready",
        JobState::Processing => "processing",
    }
}

/// A job waiting for an `--after` job that will never finish (see `Store::stuck_after`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StuckAfter {
    /// The waiting job.
    pub id: i64,
    /// Its queue.
    pub queue: String,
    /// The job it waits for.
    pub parent: i64,
    /// That job's state (PERMANENTLY_FAILED or CANCELLED).
    pub parent_state: JobState,
    /// Whether `clear` deleted that job.
    pub parent_gone: bool,
}

/// A job `claim` marked PROCESSING for this run.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    /// Job id.
    pub id: i64,
    /// Queue.
    pub queue: String,
    /// Callback name.
    pub callback: String,
    /// Parameters, or why they cannot be read.
    pub payload: Result<Payload, String>,
    /// Counted attempts including this run.
    pub attempts: u32,
    /// Serial group, if any.
    pub serial_group: Option<String>,
    /// Identifier, if any.
    pub identifier: Option<String>,
    /// Whether the notify_on_attempts notice already went out.
    pub notified: bool,
    /// This claim of it.
    pub fence: Fence,
    /// Its batch, if any (`BGQ_BATCH_ID`).
    pub batch: Option<i64>,
}

/// A job left PROCESSING by a `process` run that died.
#[derive(Debug, Clone)]
pub struct Orphan {
    /// Job id.
    pub id: i64,
    /// Callback name.
    pub callback: String,
    /// Counted attempts, including the lost one.
    pub attempts: u32,
    /// The `process` run that claimed it, if its record is still kept.
    pub claimed_by: Option<ProcessRecord>,
    /// Whether the notify_on_attempts notice already went out.
    pub notified: bool,
    /// Whether `bgq cancel --kill` asked for it to stop: recovery ends it CANCELLED.
    pub cancel_requested: bool,
    /// The claim the dead run held.
    pub fence: Fence,
    /// What is known of the run that claimed it: only a dead run's jobs are recovered.
    pub liveness: crate::coord::Liveness,
    /// Whether that run ran on this host, so that what its notes name is this host's to stop.
    pub here: bool,
}

/// How a run of a job ended, as the caller decided it.
#[derive(Debug, Clone)]
pub struct Completion {
    /// Job id.
    pub id: i64,
    /// The claim whose run ended: the outcome is stored only while it holds the job.
    pub fence: Fence,
    /// New state.
    pub state: JobState,
    /// When it is next due (for states that run again).
    pub run_at: Millis,
    /// Whether it goes straight back into the claim path (orphans) instead of waiting for
    /// `run_at` in a later run.
    pub due_now: bool,
    /// The run does not count as an attempt (WAITING).
    pub uncount_attempt: bool,
    /// Tail of what the run printed.
    pub output: Vec<u8>,
    /// When the run ended.
    pub ended_at: Millis,
    /// Mark the notify_on_attempts notice as sent.
    pub notified: bool,
    /// A notice to store with the new state, sent with the run's digest.
    pub notice: Option<(NoticeKind, String)>,
    /// How the run ended, for the job's history of attempts.
    pub ended: AttemptEnd,
    /// How many attempts of the job its history keeps (the newest; 0: none).
    pub history: u32,
}

/// How one run of a job ended, as its history keeps it (table `attempts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptEnd {
    /// What it came to.
    pub outcome: AttemptOutcome,
    /// Its exit code, if it exited.
    pub exit_code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
}

/// What a run of a job came to (the values of `attempts.outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// Exit 0.
    Finished,
    /// Exit 75.
    TemporarilyFailed,
    /// Exit 76.
    Waiting,
    /// Any other exit, or a signal.
    PermanentlyFailed,
    /// It ran past its timeout and was killed.
    Timeout,
    /// It was stopped by `bgq cancel --kill`.
    Cancelled,
    /// The `process` running it died; recovered by a later run.
    Recovered,
}

impl AttemptOutcome {
    /// Its name in the database and in `--json`.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Finished => "finished",
            AttemptOutcome::TemporarilyFailed => "temporarily_failed",
            AttemptOutcome::Waiting => "waiting",
            AttemptOutcome::PermanentlyFailed => "permanently_failed",
            AttemptOutcome::Timeout => "timeout",
            AttemptOutcome::Cancelled => "cancelled",
            AttemptOutcome::Recovered => "recovered",
        }
    }

    /// The outcome named `text` (see `as_str`).
    pub fn parse(text: &str) -> Option<AttemptOutcome> {
        [
            AttemptOutcome::Finished,
            AttemptOutcome::TemporarilyFailed,
            AttemptOutcome::Waiting,
            AttemptOutcome::PermanentlyFailed,
            AttemptOutcome::Timeout,
            AttemptOutcome::Cancelled,
            AttemptOutcome::Recovered,
        ]
        .into_iter()
        .find(|outcome| outcome.as_str() == text)
    }
}

/// One kept attempt of a job (`bgq show`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    /// BGQ_ATTEMPT of the run.
    pub attempt: u32,
    /// The `process` run that ran it.
    pub run: i64,
    /// When it was started.
    pub started_at: Millis,
    /// When it ended (or was found dead).
    pub ended_at: Millis,
    /// How it ended.
    pub ended: AttemptEnd,
    /// Tail of what it printed.
    pub output: Vec<u8>,
}

/// A callback whose command could not be started (`bgq status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenCallback {
    /// Queue of the run that could not start it.
    pub queue: String,
    /// Callback name.
    pub callback: String,
    /// Why, in one line.
    pub reason: String,
    /// Since when (the first failure since it last started).
    pub since: Millis,
    /// The run that last failed to start it.
    pub run: i64,
}

/// What `Store::settle_and_claim` did.
#[derive(Debug)]
pub struct Settled {
    /// The jobs it claimed.
    pub claimed: Vec<ClaimedJob>,
    /// How many of the runs it stored failed (a run of a job cancelled meanwhile did not).
    pub failed: u64,
    /// Outcomes dropped because their fence no longer held the job.
    pub stale: Vec<(i64, Fence)>,
}

/// What `settle_and_claim` may claim.
#[derive(Debug, Clone)]
pub struct ClaimRequest<'a> {
    /// Queue to claim from.
    pub queue: &'a str,
    /// The claiming `process` run.
    pub run: i64,
    /// The current time.
    pub now: Millis,
    /// Claim at most this many jobs.
    pub limit: usize,
    /// Callbacks that may be claimed, each with how many more of it this run may start
    /// (`usize::MAX`: no limit).
    pub callbacks: &'a [(&'a str, usize)],
    /// Each callback's own `concurrency`, in the order of `callbacks`: a backend whose runs
    /// span hosts holds it across all of them.
    pub limits: &'a [Option<usize>],
    /// Callbacks whose PERMANENTLY_FAILED jobs hold their serial group (serial_failure = "block").
    pub blocking: &'a [&'a str],
}

/// Which jobs `list` shows.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Any of these states (all when empty).
    pub states: Vec<JobState>,
    /// Only this queue.
    pub queue: Option<String>,
    /// Only this callback.
    pub callback: Option<String>,
    /// Any of these identifiers (all when empty).
    pub identifiers: Vec<String>,
    /// Only jobs of this batch.
    pub batch: Option<i64>,
}

/// Everything stored about one job, for `bgq show` and `bgq explain`.
#[derive(Debug, Clone)]
pub struct JobDetail {
    /// The job as `list` shows it.
    pub record: JobRecord,
    /// Its parameters, or why they cannot be read.
    pub payload: Result<StoredPayload, String>,
    /// Tail of what its last run printed.
    pub output: Vec<u8>,
    /// Whether the notify_on_attempts notice went out.
    pub notified: bool,
    /// The `process` run that started it last (0: none).
    pub claimed_run: i64,
    /// Whether `bgq cancel --kill` is stopping its callback (it is still PROCESSING).
    pub cancel_requested: bool,
    /// Its kept attempts, oldest first.
    pub runs: Vec<AttemptRecord>,
    /// The jobs it runs after (`publish --after`), with their states (`None`: deleted by
    /// `clear`, so it had FINISHED).
    pub after: Vec<(i64, Option<JobState>)>,
}

impl JobDetail {
    /// The jobs it was published `--after` that have not FINISHED, with their states.
    pub fn waits_for(&self) -> impl Iterator<Item = (i64, JobState)> + '_ {
        self.after.iter().filter_map(|(id, state)| match state {
            Some(state) if *state != JobState::Finished => Some((*id, *state)),
            _ => None,
        })
    }
}

/// How runs of jobs ended, per queue and minute, not yet written for `stats`.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// (queue, epoch minute) → finished, temporarily failed, permanently failed.
    counts: std::collections::BTreeMap<(String, i64), [i64; 3]>,
}

impl Tally {
    /// Takes the counts to write: (queue, epoch minute) → finished, temporarily failed,
    /// permanently failed.
    pub fn take(&mut self) -> std::collections::BTreeMap<(String, i64), [i64; 3]> {
        std::mem::take(&mut self.counts)
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Counts one run of a job of `queue` that ended at `at` in `state` (other states than
    /// the three counted are ignored).
    pub fn count(&mut self, queue: &str, at: Millis, state: JobState) {
        let column = match state {
            JobState::Finished => 0,
            JobState::TemporarilyFailed => 1,
            JobState::PermanentlyFailed => 2,
            _ => return,
        };
        self.counts
            .entry((queue.to_owned(), at.div_euclid(60_000)))
            .or_default()[column] += 1;
    }
}

/// A recorded `process` run.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// Run number.
    pub id: i64,
    /// Queue it ran.
    pub queue: String,
    /// The `process` that ran it.
    pub runner: ProcessRecord,
    /// Whether that `process` runs now, as the backend's coordination knows it when the record
    /// was read.
    pub alive: bool,
    /// When it started.
    pub started_at: Millis,
    /// When it ended, if it did.
    pub finished_at: Option<Millis>,
    /// Jobs it started (recorded when it ended).
    pub jobs: u64,
    /// Of those, how many failed.
    pub failed: u64,
    /// Why it could not do its work, if so.
    pub error: Option<String>,
    /// Whether it is a `process --watch` run.
    pub watch: bool,
}

impl RunInfo {
    /// The latest time the run recorded: its end, or its start if it has not ended (or ended
    /// "before" it started, the clock having gone back).
    pub fn last_seen(&self) -> Millis {
        self.finished_at
            .map_or(self.started_at, |end| end.max(self.started_at))
    }
}

/// The due jobs of one queue (see `Store::due_jobs`).
#[derive(Debug, Clone)]
pub struct DueJobs {
    /// Queue.
    pub queue: String,
    /// The job due longest.
    pub oldest: i64,
    /// Since when it is due.
    pub since: Millis,
    /// How many jobs are due.
    pub count: u64,
}

/// A job as `bgq retry` and `bgq cancel` decide about it.
#[derive(Debug, Clone)]
pub struct JobBrief {
    /// Job id.
    pub id: i64,
    /// Queue.
    pub queue: String,
    /// Callback name.
    pub callback: String,
    /// State before the change.
    pub state: JobState,
    /// When that state began.
    pub state_changed_at: Millis,
    /// The `process` run that started it last (0: none).
    pub claimed_run: i64,
    /// Counted attempts.
    pub attempts: u32,
    /// Whether `bgq cancel --kill` is stopping it (it is PROCESSING).
    pub cancel_requested: bool,
    /// Its batch, if any.
    pub batch: Option<i64>,
}

impl JobBrief {
    /// The claim that holds it, when it is PROCESSING.
    pub fn fence(&self) -> Fence {
        Fence {
            run: self.claimed_run,
            attempt: self.attempts,
        }
    }
}

/// Which jobs `Store::change` reads.
#[derive(Debug, Clone)]
pub enum Selection<'a> {
    /// These ids; an unknown one is an error.
    Ids(&'a [i64]),
    /// Every job in one of `states`, of `queue` and `callback` when given.
    Matching {
        /// Any of these states.
        states: &'a [JobState],
        /// Only this queue.
        queue: Option<&'a str>,
        /// Only this callback.
        callback: Option<&'a str>,
        /// Only jobs of this batch.
        batch: Option<i64>,
    },
}

/// What `Store::change` does to each job it applies to.
#[derive(Debug, Clone)]
pub enum Change {
    /// Back to READY, due now, attempts and notice reset; new parameters if given.
    Retry {
        /// The current time.
        now: Millis,
        /// Replacement parameters, as stored (MessagePack).
        payload: Option<Vec<u8>>,
    },
    /// To CANCELLED: it does not run again. A running job is only marked: it ends CANCELLED
    /// when its run sees the callback end.
    Cancel {
        /// The current time.
        now: Millis,
    },
}

/// A notice stored by a run and not yet sent.
#[derive(Debug, Clone)]
pub struct PendingNotice {
    /// Notice number.
    pub id: i64,
    /// The job it is about.
    pub job_id: i64,
    /// What happened.
    pub kind: NoticeKind,
    /// Why, in words.
    pub reason: String,
    /// Tail of what the job's run printed.
    pub output: Vec<u8>,
    /// The job as it is now, unless it was deleted since.
    pub job: Option<JobRecord>,
}

/// How `Store::publish_with` stores its jobs: the same for every job of one publish.
#[derive(Debug, Clone, Default)]
pub struct Schedule {
    /// When the jobs are due (0: at once).
    pub run_at: Millis,
    /// Higher runs first among the due jobs of a queue.
    pub priority: i64,
    /// The jobs run only after all of these FINISHED.
    pub after: Vec<i64>,
    /// Store nothing while a job with the same identifier is unfinished in the queue.
    pub unique: bool,
    /// The batch the jobs join, if any.
    pub batch: Option<BatchTarget>,
}

/// What `Store::publish_with` did.
#[derive(Debug, Clone, PartialEq)]
pub enum Published {
    /// The jobs were stored: their ids in order, and the `after` jobs not yet FINISHED, with
    /// their states.
    Stored {
        /// Ids of the new jobs.
        ids: Vec<i64>,
        /// `after` jobs the new jobs wait for.
        waiting_for: Vec<(i64, JobState)>,
    },
    /// `unique`: this unfinished job has the identifier, so nothing was stored.
    Existing {
        /// Its id.
        id: i64,
        /// Its state.
        state: JobState,
    },
}
