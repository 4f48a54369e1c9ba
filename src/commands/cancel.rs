//! `bgq cancel ID...`: jobs that have not started never run; a running one is stopped only
//! with `--kill`.

use std::io::Write;
use std::time::Duration;

use crate::cli::CancelArgs;
use crate::config::Config;
use crate::error::usage;
use crate::human::when;
use crate::job::{JobState, now_millis};
use crate::lock::process_lock_path;
use crate::process_group::{self, OrphanGroup};
use crate::running_log;
use crate::store::{Change, Durability, JobBrief, Selection, Store};

/// How long to wait for a stopped callback group to be gone after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);

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
        let mut line = format!(
            "cancelled job {} ({}): {} -> CANCELLED",
            job.id, job.callback, job.state
        );
        if job.state == JobState::Processing {
            // Marked first, stopped second: the run that ran it then keeps it CANCELLED.
            line.push_str(&format!("; {}", stop_callback(config, &store, job)));
        }
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    Ok(())
}

/// Stops the running callback of `job`, found in the lock file of its queue's `process` run;
/// says what became of it.
fn stop_callback(config: &Config, store: &Store, job: &JobBrief) -> String {
    let runner = match store.run(job.claimed_run) {
        Ok(run) => run.map(|run| run.runner),
        Err(err) => return format!("its callback could not be looked up: {err:#}"),
    };
    let runner_alive = runner.as_ref().is_some_and(process_group::is_alive);
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
    if let Some(runner) = runner.filter(|_| runner_alive) {
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
