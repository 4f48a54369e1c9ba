//! `bgq cancel ID...`: jobs that have not started never run; a running one is stopped only
//! with `--kill`.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::cli::CancelArgs;
use crate::config::Config;
use crate::error::usage;
use crate::human::when;
use crate::job::{JobState, now_millis};
use crate::lock::process_lock_path;
use crate::process_group::{self, OrphanGroup, ProcessRecord};
use crate::running_log;
use crate::store::{Change, Durability, JobBrief, Selection, Store};

/// How long to wait for a stopped callback group to be gone after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// How long to wait for the running `process` to store the end of a stopped callback.
const SETTLE_WAIT: Duration = Duration::from_secs(5);

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
            writeln!(
                out,
                "job {} ({}) was already CANCELLED",
                job.id, job.callback
            )?;
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

/// Stops the callback of running `job`, marked for cancelling, and sees it end CANCELLED: by
/// its live `process` run, which stores the end of every callback it started, or here when
/// that run is gone. Says what became of it.
fn cancel_running(config: &Config, store: &mut Store, job: &JobBrief) -> anyhow::Result<String> {
    let runner = store
        .run(job.claimed_run)?
        .map(|run| run.runner)
        .filter(process_group::is_alive);
    let stopped = stop_callback(config, store, job, runner.as_ref());
    let cancelled = format!(
        "cancelled job {} ({}): PROCESSING -> CANCELLED",
        job.id, job.callback
    );
    if runner.is_none() {
        // No run will see the callback end. (When this finds nothing to end, a `process` run
        // recovered the job meanwhile, which ends it CANCELLED too.)
        let output = format!("bgq: cancelled with --kill; {stopped}\n");
        store.end_cancel(job.id, output.as_bytes(), now_millis())?;
    }
    let waited = Instant::now();
    loop {
        match store.state_of(job.id)? {
            Some(JobState::Processing) if waited.elapsed() < SETTLE_WAIT => {
                std::thread::sleep(SETTLE_POLL);
            }
            Some(JobState::Processing) => {
                return Ok(format!(
                    "{cancelled} when its callback has ended; {stopped}"
                ));
            }
            Some(JobState::Cancelled) => return Ok(format!("{cancelled}; {stopped}")),
            Some(JobState::Finished) => {
                return Ok(format!(
                    "job {} ({}) is FINISHED: its callback exited 0 before it could be stopped, so its work is done",
                    job.id, job.callback
                ));
            }
            state => {
                let state = state.map_or_else(|| "deleted".to_owned(), |state| state.to_string());
                return Ok(format!(
                    "job {} ({}): PROCESSING -> {state}; {stopped}",
                    job.id, job.callback
                ));
            }
        }
    }
}

/// Stops the running callback of `job`, found in the lock file of its queue's `process` run
/// (`runner`, when alive); says what became of it.
fn stop_callback(
    config: &Config,
    store: &Store,
    job: &JobBrief,
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
    let grace = config
        .callbacks
        .get(&job.callback)
        .map_or(Duration::from_secs(5), |callback| callback.kill_grace);
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
        // Between its start and the record of its group: the live run holds that pipe too, so
        // it is not ours to kill; the run stops the callback when it records the group.
        return format!(
            "its callback is starting; the running `process` (pid {}) stops it",
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
