//! `bgq cancel ID...`: jobs that have not started never run; a running one is stopped only
//! with `--kill`.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::cli::CancelArgs;
use crate::config::{Config, DEFAULT_KILL_GRACE};
use crate::error::usage;
use crate::human::when;
use crate::job::{JobState, now_millis};
use crate::lock::process_lock_path;
use crate::process_group::{self, OrphanGroup, ProcessRecord};
use crate::running_log;
use crate::store::{Change, Durability, JobBrief, Selection, Store};

/// How long to wait for a stopped callback group to be gone after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// How long, beyond the callback's `kill_grace`, the running `process` gets to stop the
/// callback and store its end before `cancel` stops it itself.
const RUN_STOP_WAIT: Duration = Duration::from_secs(3);

/// How long to wait for the end to be stored after `cancel` stopped the callback itself.
const SETTLE_WAIT: Duration = Duration::from_secs(2);

/// How often to look whether it has.
const SETTLE_POLL: Duration = Duration::from_millis(20);

/// Runs `bgq cancel`.
pub fn run(config: &Config, args: &CancelArgs) -> anyhow::Result<()> {
    let now = now_millis();
    let mut store = Store::open(&config.database, Durability::Full)?;
    let changed = store.change(
        &Selection::Ids(&args.ids),
        &Change::Cancel { now },
        false,
        |job| match job.state {
            JobState::Finished => Err(usage(format!(
                "job {} is FINISHED; there is nothing to cancel",
                job.id
            ))),
            JobState::Processing if job.cancel_requested && !args.kill => Ok(false),
            JobState::Processing if !args.kill => Err(usage(format!(
                "job {} is running (since {}); use `bgq cancel --kill {}` to stop it",
                job.id,
                when(job.state_changed_at, now),
                job.id
            ))),
            JobState::Cancelled => Ok(false),
            _ => Ok(true),
        },
    )?;
    let mut out = std::io::stdout().lock();
    for (job, applied) in &changed {
        if !applied {
            let already = if job.state == JobState::Processing {
                "is already being cancelled"
            } else {
                "was already CANCELLED"
            };
            writeln!(out, "job {} ({}) {already}", job.id, job.callback)?;
            continue;
        }
        let line = if job.state == JobState::Processing {
            // Marked first, stopped second: the run that ran it then ends it CANCELLED.
            cancel_running(config, &mut store, job)?
        } else {
            format!(
                "cancelled job {} ({}): {} -> CANCELLED",
                job.id, job.callback, job.state
            )
        };
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    Ok(())
}

/// Sees the callback of running `job`, marked for cancelling, stopped and the job ended: by its
/// live `process` run, which looks for marks every 0.1 s and stops the callback as a timeout
/// does; by this command when that run is dead, or does not do it in time (it is stuck, or of a
/// bgq that knows no marks). Says what became of the job.
fn cancel_running(config: &Config, store: &mut Store, job: &JobBrief) -> anyhow::Result<String> {
    let runner = store
        .run(job.claimed_run)?
        .map(|run| run.runner)
        .filter(process_group::is_alive);
    let grace = config
        .callbacks
        .get(&job.callback)
        .map_or(DEFAULT_KILL_GRACE, |callback| callback.kill_grace);
    let (stopped, mut state) = match &runner {
        Some(runner) => match settled_state(store, job.id, grace + RUN_STOP_WAIT)? {
            Some(JobState::Processing) => (
                stop_callback(config, store, job, grace, Some(runner)),
                Some(JobState::Processing),
            ),
            state => (
                format!(
                    "the running `process` (pid {}) stopped its callback",
                    runner.pid
                ),
                state,
            ),
        },
        None => {
            let stopped = stop_callback(config, store, job, grace, None);
            // No run will see the callback end. (When this finds nothing to end, a `process`
            // run recovered the job meanwhile, which ends it CANCELLED too.)
            let output = format!("bgq: cancelled with --kill; {stopped}\n");
            store.end_cancel(job.id, output.as_bytes(), now_millis())?;
            (stopped, store.state_of(job.id)?)
        }
    };
    if state == Some(JobState::Processing) {
        state = settled_state(store, job.id, SETTLE_WAIT)?;
    }
    let cancelled = format!(
        "cancelled job {} ({}): PROCESSING -> CANCELLED",
        job.id, job.callback
    );
    Ok(match state {
        Some(JobState::Cancelled) => format!("{cancelled}; {stopped}"),
        Some(JobState::Processing) => {
            format!("{cancelled} when the `process` running it records its end; {stopped}")
        }
        Some(JobState::Finished) => format!(
            "job {} ({}) is FINISHED, not CANCELLED: its callback exited 0, so its work is done",
            job.id, job.callback
        ),
        other => {
            let other = other.map_or_else(|| "deleted".to_owned(), |state| state.to_string());
            format!(
                "job {} ({}): PROCESSING -> {other}; {stopped}",
                job.id, job.callback
            )
        }
    })
}

/// The state of job `id` once it is no longer PROCESSING, or PROCESSING after `limit`.
fn settled_state(store: &Store, id: i64, limit: Duration) -> anyhow::Result<Option<JobState>> {
    let waited = Instant::now();
    loop {
        let state = store.state_of(id)?;
        if state != Some(JobState::Processing) || waited.elapsed() >= limit {
            return Ok(state);
        }
        std::thread::sleep(SETTLE_POLL);
    }
}

/// Stops the running callback of `job`, found in the lock file of its queue's `process` run
/// (`runner`, when alive); says what became of it.
fn stop_callback(
    config: &Config,
    store: &Store,
    job: &JobBrief,
    grace: Duration,
    runner: Option<&ProcessRecord>,
) -> String {
    let lock = match std::fs::canonicalize(store.path()) {
        Ok(canonical) => process_lock_path(&config.temp_dir, &canonical, &job.queue),
        Err(err) => return format!("its callback could not be looked up: {err}"),
    };
    let recorded = match running_log::read_unlocked(&lock) {
        Ok(mut log) => log.remove(&job.id).unwrap_or_default(),
        Err(err) => return format!("its callback could not be looked up: {err:#}"),
    };
    if let Some(group) = &recorded.group {
        return match process_group::stop_group(group, grace, KILL_WAIT) {
            OrphanGroup::Killed => {
                format!("its callback (process group {}) was stopped", group.pid)
            }
            OrphanGroup::Gone | OrphanGroup::PidReused => {
                "its callback had already ended".to_owned()
            }
        };
    }
    if let Some(runner) = runner {
        // Its group is not recorded (yet): the live run holds that pipe too, so it is not ours
        // to kill; the run stops the callback once it sees the mark.
        return format!(
            "its callback is not recorded yet; the running `process` (pid {}) stops it",
            runner.pid
        );
    }
    // The run that started it died before recording its group: whoever holds its output pipe
    // is the callback.
    match recorded
        .pipe
        .map(|pipe| process_group::kill_pipe_holders(pipe, KILL_WAIT))
    {
        Some(found) if found > 0 => format!("its callback ({found} process(es)) was stopped"),
        Some(_) => "its callback had already ended".to_owned(),
        None => format!(
            "no callback of it is recorded in {} (it had not started, or ran under another temp_dir)",
            lock.display()
        ),
    }
}
