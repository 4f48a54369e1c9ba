//! What crosses from one backend to another when `bgq migrate` copies a queue: one plain row
//! per stored row of every table (jobs, dependencies, runs, outcome counts, notices, the history
//! of attempts), read by a
//! [`Source`] in id order and written by the target backend, and the [`Census`] both sides are
//! counted into, so that a copy is committed only when the target holds exactly what the source
//! sent.
//!
//! Rows hold the stored values as they are (a state as its name, the parameters as their
//! MessagePack bytes, times in epoch milliseconds), so that nothing is decoded and re-encoded
//! on the way: a job whose parameters bgq could not read arrives as unreadable as it left.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

/// One job, every column.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JobRow {
    /// Job id, kept.
    pub id: i64,
    /// Queue.
    pub queue: String,
    /// Callback name.
    pub callback: String,
    /// The parameters as stored: MessagePack.
    pub payload: Vec<u8>,
    /// The state's name.
    pub state: String,
    /// Counted runs.
    pub attempts: i64,
    /// Serial group.
    pub serial_group: Option<String>,
    /// Identifier.
    pub identifier: Option<String>,
    /// When it was published.
    pub created_at: i64,
    /// When it is due.
    pub run_at: i64,
    /// Whether it is in the claim path.
    pub due: bool,
    /// When its last run started.
    pub started_at: Option<i64>,
    /// When it finished.
    pub finished_at: Option<i64>,
    /// The run that started it last (0: none).
    pub claimed_run: i64,
    /// Tail of its last run's output.
    pub output: Option<Vec<u8>>,
    /// Whether the notify_on_attempts notice went out.
    pub notified: bool,
    /// When its state last changed (0: not recorded).
    pub state_changed_at: i64,
    /// Priority.
    pub priority: i64,
    /// How many of its `--after` jobs have not FINISHED.
    pub blocked_by: i64,
    /// Published with `--unique`.
    pub is_unique: bool,
    /// `bgq cancel --kill` is stopping it.
    pub cancel_requested: bool,
    /// Its batch, if any.
    pub batch_id: Option<i64>,
}

/// One `--after` edge: `job_id` runs after `after_id` FINISHED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DependencyRow {
    /// The waiting job.
    pub job_id: i64,
    /// The job it waits for.
    pub after_id: i64,
}

/// One recorded `process` run.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunRow {
    /// Run number.
    pub id: i64,
    /// Queue it ran.
    pub queue: String,
    /// Its process id.
    pub pid: i64,
    /// Its process's start time, in clock ticks after boot.
    pub pid_started: i64,
    /// The boot it ran in.
    pub boot_id: String,
    /// When it started.
    pub started_at: i64,
    /// When it ended.
    pub finished_at: Option<i64>,
    /// Jobs it started.
    pub jobs: i64,
    /// Of those, how many failed.
    pub failed: i64,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// A `--watch` run.
    pub watch: bool,
}

/// How runs of jobs of one queue ended in one minute, for `stats`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OutcomeRow {
    /// Queue.
    pub queue: String,
    /// Unix epoch minute.
    pub minute: i64,
    /// Runs that FINISHED.
    pub finished: i64,
    /// Runs that ended TEMPORARILY_FAILED.
    pub temporarily_failed: i64,
    /// Runs that ended PERMANENTLY_FAILED.
    pub permanently_failed: i64,
}

/// A notice not yet sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NoticeRow {
    /// Notice number.
    pub id: i64,
    /// Queue.
    pub queue: String,
    /// The job it is about.
    pub job_id: i64,
    /// Its kind's name (attempts, failed, orphan, recovered).
    pub kind: String,
    /// Why, in words.
    pub reason: String,
    /// Tail of the job's output.
    pub output: Option<Vec<u8>>,
    /// When it was stored.
    pub created_at: i64,
}

/// One kept attempt of a job (table `attempts`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AttemptRow {
    /// Row number (oldest first within a job).
    pub id: i64,
    /// The job.
    pub job_id: i64,
    /// BGQ_ATTEMPT of the run.
    pub attempt: i64,
    /// The `process` run that ran it.
    pub run_id: i64,
    /// When it started.
    pub started_at: i64,
    /// When it ended.
    pub ended_at: i64,
    /// How it ended (finished, timeout, ...).
    pub outcome: String,
    /// Its exit code, if it exited.
    pub exit_code: Option<i64>,
    /// The signal that killed it, if one did.
    pub signal: Option<i64>,
    /// Tail of its output.
    pub output: Option<Vec<u8>>,
}

/// A row of the small tables that hold what operators and runs decided about a queue rather
/// than jobs: pauses, run totals, jobs `clear` deleted unfinished, broken callbacks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StateRow {
    /// A pause in force ('' for every queue or callback).
    Pause {
        queue: String,
        callback: String,
        paused_at: i64,
    },
    /// Runs counted since the queue began, for one callback and outcome.
    RunTotal {
        queue: String,
        callback: String,
        outcome: String,
        total: i64,
    },
    /// A job `clear` deleted without its having FINISHED, which `--after` must not count done.
    ClearedUnfinished {
        id: i64,
        state: String,
        cleared_at: i64,
    },
    /// A batch, with its counters as they are (the jobs it counts are copied as they are).
    Batch(BatchRow),
    /// A callback a run could not start.
    BrokenCallback {
        queue: String,
        callback: String,
        reason: String,
        since: i64,
        run_id: i64,
    },
}

/// One batch (table `batches`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BatchRow {
    /// Batch id.
    pub id: i64,
    /// The queue of its completion jobs.
    pub queue: String,
    /// Its description.
    pub description: Option<String>,
    /// Its on-complete callback.
    pub on_complete: Option<String>,
    /// That callback's `params`, JSON text.
    pub on_complete_params: Option<String>,
    /// Its on-success callback.
    pub on_success: Option<String>,
    /// That callback's `params`, JSON text.
    pub on_success_params: Option<String>,
    /// When it was opened.
    pub created_at: i64,
    /// When it was sealed.
    pub sealed_at: Option<i64>,
    /// When it completed.
    pub completed_at: Option<i64>,
    /// When a job of it last ended (or it was sealed).
    pub changed_at: i64,
    /// The on-complete job its completion published.
    pub complete_job: Option<i64>,
    /// The on-success job its completion published.
    pub success_job: Option<i64>,
    /// Its unfinished jobs.
    pub unfinished: i64,
    /// Its FINISHED jobs.
    pub finished: i64,
    /// Its PERMANENTLY_FAILED jobs.
    pub failed: i64,
    /// Its CANCELLED jobs.
    pub cancelled: i64,
}

/// The columns of `batches` in `BatchRow`'s order (the params as text on PostgreSQL too).
pub const BATCH_ROW_COLUMNS: &str = "id, queue, description, on_complete,
    CAST(on_complete_params AS text), on_success, CAST(on_success_params AS text), created_at,
    sealed_at, completed_at, changed_at, complete_job, success_job, unfinished, finished, failed,
    cancelled";

/// Where rows come from, each table in id (or key) order, all from one consistent snapshot.
/// Each method hands every row to `each` and stops at its first error.
pub trait Source {
    /// Every job.
    fn jobs(&mut self, each: &mut dyn FnMut(JobRow) -> anyhow::Result<()>) -> anyhow::Result<()>;
    /// Every dependency.
    fn dependencies(
        &mut self,
        each: &mut dyn FnMut(DependencyRow) -> anyhow::Result<()>,
    ) -> anyhow::Result<()>;
    /// Every recorded run.
    fn runs(&mut self, each: &mut dyn FnMut(RunRow) -> anyhow::Result<()>) -> anyhow::Result<()>;
    /// Every outcome count.
    fn outcomes(
        &mut self,
        each: &mut dyn FnMut(OutcomeRow) -> anyhow::Result<()>,
    ) -> anyhow::Result<()>;
    /// Every notice not yet sent.
    fn notices(
        &mut self,
        each: &mut dyn FnMut(NoticeRow) -> anyhow::Result<()>,
    ) -> anyhow::Result<()>;
    /// Every kept attempt.
    fn attempts(
        &mut self,
        each: &mut dyn FnMut(AttemptRow) -> anyhow::Result<()>,
    ) -> anyhow::Result<()>;
    /// Every row of the small tables of `StateRow`.
    fn state_rows(
        &mut self,
        each: &mut dyn FnMut(StateRow) -> anyhow::Result<()>,
    ) -> anyhow::Result<()>;
    /// The highest job id ever handed out, those of jobs `clear` deleted included (0: none):
    /// ids are never reused, and an `--after` id up to it that names no job had FINISHED.
    fn last_job_id(&mut self) -> anyhow::Result<i64>;
    /// The highest run number ever handed out (0: none).
    fn last_run_id(&mut self) -> anyhow::Result<i64>;
}

/// What a set of rows holds, counted so that two sides can be compared: rows per table, jobs
/// per state, highest ids, outcome totals, and one digest of every column of every row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Census {
    /// Jobs per state name.
    pub states: BTreeMap<String, u64>,
    /// Jobs.
    pub jobs: u64,
    /// Dependencies.
    pub dependencies: u64,
    /// Runs.
    pub runs: u64,
    /// Outcome counts (queue and minute).
    pub outcomes: u64,
    /// Notices.
    pub notices: u64,
    /// Kept attempts.
    pub attempts: u64,
    /// Rows of pauses, run totals, jobs cleared unfinished and broken callbacks.
    pub state_rows: u64,
    /// The highest job id (0: none).
    pub max_job_id: i64,
    /// The highest run number (0: none).
    pub max_run_id: i64,
    /// The highest notice number (0: none).
    pub max_notice_id: i64,
    /// Totals of the outcome counts: finished, temporarily failed, permanently failed.
    pub outcome_totals: [i64; 3],
    /// The sum (wrapping) of a hash of every row, so that it does not depend on the order the
    /// rows were read in; each table's rows are hashed with the table's name first.
    digest: u64,
}

impl Census {
    fn mix(&mut self, table: &str, row: &impl Hash) {
        // DefaultHasher's keys are fixed, so both sides, counted by this one process, agree.
        let mut hasher = std::hash::DefaultHasher::new();
        table.hash(&mut hasher);
        row.hash(&mut hasher);
        self.digest = self.digest.wrapping_add(hasher.finish());
    }

    /// Counts a job.
    pub fn add_job(&mut self, row: &JobRow) {
        self.jobs += 1;
        *self.states.entry(row.state.clone()).or_default() += 1;
        self.max_job_id = self.max_job_id.max(row.id);
        self.mix("jobs", row);
    }

    /// Counts a dependency.
    pub fn add_dependency(&mut self, row: &DependencyRow) {
        self.dependencies += 1;
        self.mix("dependencies", row);
    }

    /// Counts a run.
    pub fn add_run(&mut self, row: &RunRow) {
        self.runs += 1;
        self.max_run_id = self.max_run_id.max(row.id);
        self.mix("runs", row);
    }

    /// Counts an outcome count.
    pub fn add_outcome(&mut self, row: &OutcomeRow) {
        self.outcomes += 1;
        for (total, count) in self.outcome_totals.iter_mut().zip([
            row.finished,
            row.temporarily_failed,
            row.permanently_failed,
        ]) {
            *total = total.wrapping_add(count);
        }
        self.mix("outcomes", row);
    }

    /// Counts a notice.
    pub fn add_notice(&mut self, row: &NoticeRow) {
        self.notices += 1;
        self.max_notice_id = self.max_notice_id.max(row.id);
        self.mix("notices", row);
    }

    /// Counts a kept attempt.
    pub fn add_attempt(&mut self, row: &AttemptRow) {
        self.attempts += 1;
        self.mix("attempts", row);
    }

    /// Counts a row of the small tables.
    pub fn add_state_row(&mut self, row: &StateRow) {
        self.state_rows += 1;
        self.mix("state", row);
    }

    /// How `other` (what the target holds) differs from this (what was sent), in words; empty
    /// when they are equal.
    pub fn differences(&self, other: &Census) -> Vec<String> {
        let mut found = Vec::new();
        let mut compare = |what: &str, sent: String, stored: String| {
            if sent != stored {
                found.push(format!("{what}: {sent} sent, {stored} stored"));
            }
        };
        compare("jobs", self.jobs.to_string(), other.jobs.to_string());
        compare(
            "jobs per state",
            format!("{:?}", self.states),
            format!("{:?}", other.states),
        );
        compare(
            "dependencies",
            self.dependencies.to_string(),
            other.dependencies.to_string(),
        );
        compare("runs", self.runs.to_string(), other.runs.to_string());
        compare(
            "outcome counts",
            self.outcomes.to_string(),
            other.outcomes.to_string(),
        );
        compare(
            "outcome totals",
            format!("{:?}", self.outcome_totals),
            format!("{:?}", other.outcome_totals),
        );
        compare(
            "notices",
            self.notices.to_string(),
            other.notices.to_string(),
        );
        compare(
            "attempts",
            self.attempts.to_string(),
            other.attempts.to_string(),
        );
        compare(
            "pauses, run totals, cleared jobs and broken callbacks",
            self.state_rows.to_string(),
            other.state_rows.to_string(),
        );
        compare(
            "highest job id",
            self.max_job_id.to_string(),
            other.max_job_id.to_string(),
        );
        compare(
            "highest run number",
            self.max_run_id.to_string(),
            other.max_run_id.to_string(),
        );
        compare(
            "highest notice number",
            self.max_notice_id.to_string(),
            other.max_notice_id.to_string(),
        );
        if found.is_empty() && self.digest != other.digest {
            found.push("the rows' contents differ".to_owned());
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: i64, state: &str) -> JobRow {
        JobRow {
            id,
            queue: "general".to_owned(),
            callback: "cb".to_owned(),
            payload: vec![0x80],
            state: state.to_owned(),
            attempts: 0,
            serial_group: None,
            identifier: None,
            created_at: 1,
            run_at: 1,
            due: true,
            started_at: None,
            finished_at: None,
            claimed_run: 0,
            output: None,
            notified: false,
            state_changed_at: 1,
            priority: 0,
            blocked_by: 0,
            is_unique: false,
            cancel_requested: false,
            batch_id: None,
        }
    }

    #[test]
    fn the_same_rows_in_any_order_count_the_same() {
        let (mut one, mut two) = (Census::default(), Census::default());
        for row in [job(1, "READY"), job(2, "FINISHED")] {
            one.add_job(&row);
        }
        for row in [job(2, "FINISHED"), job(1, "READY")] {
            two.add_job(&row);
        }
        assert_eq!(one, two);
        assert!(one.differences(&two).is_empty());
        assert_eq!(one.states.get("READY"), Some(&1));
        assert_eq!(one.max_job_id, 2);
    }

    #[test]
    fn any_changed_column_is_a_difference() {
        let mut sent = Census::default();
        sent.add_job(&job(1, "READY"));
        let mut stored = Census::default();
        stored.add_job(&JobRow {
            attempts: 1,
            ..job(1, "READY")
        });
        assert_eq!(sent.differences(&stored), ["the rows' contents differ"]);
        let mut fewer = Census::default();
        fewer.add_dependency(&DependencyRow {
            job_id: 2,
            after_id: 1,
        });
        let found = sent.differences(&fewer);
        assert!(found.iter().any(|line| line == "jobs: 1 sent, 0 stored"));
        assert!(
            found
                .iter()
                .any(|line| line == "dependencies: 0 sent, 1 stored")
        );
    }
}
