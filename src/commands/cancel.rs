//! `bgq cancel ID...` (or `--state S` with `--queue`, `--callback`, as `retry` selects): jobs
//! that have not started never run; a running one is stopped only with `--kill`. Jobs left
//! waiting (`--after`) for a cancelled one are named on stderr: they will never run.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::cli::CancelArgs;
use crate::config::{Config, DEFAULT_KILL_GRACE};
use crate::coord::process_group::{self, OrphanGroup, ProcessRecord};
use crate::coord::running_log::{self, Started};
use crate::error::usage;
use crate::escape;
use crate::human::when;
use crate::job::{JobState, now_millis};
use crate::store::{Change, Durability, JobBrief, Store};

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
    let states = super::retry::parse_states(&args.state, |state| match state {
        JobState::Finished | JobState::Cancelled => {
            Some(format!("a {state} job cannot be cancelled"))
        }
        JobState::Processing if !args.kill => Some(format!(
            "--state {state}: running jobs are cancelled only with --kill, which stops their callbacks"
        )),
        _ => None,
    })?;
    // --batch: the members that have not ended (with --kill, the running ones too).
    let states = match args.batch {
        Some(_) => {
            let mut unstarted = vec![
                JobState::Ready,
                JobState::TemporarilyFailed,
                JobState::Waiting,
            ];
            if args.kill {
                unstarted.push(JobState::Processing);
            }
            unstarted
        }
        None => states,
    };
    let selection = super::retry::selection(
        &args.ids,
        &states,
        args.queue.as_deref(),
        args.callback.as_deref(),
        args.batch,
    );
    let mut store = crate::store::open(&config.database, Durability::Full)?;
    if let Some(batch) = args.batch {
        super::batch::existing(&*store, batch)?;
    }
    let changed = store.change(
        &selection,
        &Change::Cancel { now },
        args.dry_run,
        &mut |job: &JobBrief| match job.state {
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
    if args.dry_run {
        for (job, applied) in &changed {
            if *applied {
                writeln!(
                    out,
                    "would cancel job {} ({}): {} -> CANCELLED",
                    job.id,
                    escape::line(&job.callback),
                    job.state
                )?;
            }
        }
        out.flush()?;
        drop(out);
        return warn_dependents(&*store, &changed, true);
    }
    for (job, applied) in &changed {
        if !applied {
            let already = if job.state == JobState::Processing {
                "is already being cancelled"
            } else {
                "was already CANCELLED"
            };
            writeln!(
                out,
                "job {} ({}) {already}",
                job.id,
                escape::line(&job.callback)
            )?;
            continue;
        }
        let line = if job.state == JobState::Processing {
            // Marked first, stopped second: the run that ran it then ends it CANCELLED.
            cancel_running(config, &mut *store, job)?
        } else {
            format!(
                "cancelled job {} ({}): {} -> CANCELLED",
                job.id,
                escape::line(&job.callback),
                job.state
            )
        };
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    drop(out);
    warn_dependents(&*store, &changed, false)
}

/// Beyond this many, the jobs left waiting are counted, not listed.
const DEPENDENTS_LISTED: usize = 10;

/// Says on stderr which jobs wait (`--after`) for the jobs `changed` cancels (or would): they
/// will never run unless the cancelled job is retried.
fn warn_dependents(
    store: &dyn Store,
    changed: &[(JobBrief, bool)],
    dry_run: bool,
) -> anyhow::Result<()> {
    let cancelled: Vec<i64> = changed
        .iter()
        .filter(|(_, applied)| *applied)
        .map(|(job, _)| job.id)
        .collect();
    if cancelled.is_empty() {
        return Ok(());
    }
    // Those cancelled too are not left waiting.
    let waiting: Vec<(i64, i64)> = store
        .dependents_of(&cancelled)?
        .into_iter()
        .filter(|(child, _)| !cancelled.contains(child))
        .collect();
    let is = if dry_run { "would be" } else { "are" };
    if waiting.len() > DEPENDENTS_LISTED {
        let mut children: Vec<i64> = waiting.iter().map(|(child, _)| *child).collect();
        children.dedup();
        crate::diagnostic!(
            "bgq: warning: {} job(s) wait (--after) for jobs that {is} CANCELLED and will never run (`bgq status` lists them); cancel them too, or retry the jobs they wait for",
            children.len()
        );
        return Ok(());
    }
    for (child, parent) in waiting {
        crate::diagnostic!(
            "bgq: warning: job {child} waits (--after) for job {parent}, which {}: it will never run; cancel it too (`bgq cancel {child}`), or `bgq retry {parent}`",
            if dry_run {
                "would be CANCELLED"
            } else {
                "is CANCELLED"
            }
        );
    }
    Ok(())
}

/// Sees the callback of running `job`, marked for cancelling, stopped and the job ended: by its
/// live `process` run, which looks for marks every 0.1 s and stops the callback as a timeout
/// does; by this command when that run is dead, or does not do it in time (it is stuck, or of a
/// bgq that knows no marks). Says what became of the job.
fn cancel_running(
    config: &Config,
    store: &mut dyn Store,
    job: &JobBrief,
) -> anyhow::Result<String> {
    let run = store.run(job.claimed_run)?;
    let runner = run.as_ref().map(|run| run.runner.clone());
    let grace = config
        .callbacks
        .get(&job.callback)
        .map_or(DEFAULT_KILL_GRACE, |callback| callback.kill_grace);
    let mut state = Some(JobState::Processing);
    if run.as_ref().is_some_and(|run| run.alive) {
        state = settled_state(store, job.id, grace + RUN_STOP_WAIT)?;
    }
    // What this command did itself, when the run did not.
    let mut stop = None;
    if state == Some(JobState::Processing) {
        // Looked at again: the run may have died while we waited.
        let alive_now = store.run(job.claimed_run)?.is_some_and(|run| run.alive);
        let live_runner = runner.as_ref().filter(|_| alive_now);
        let stopped = stop_callback(config, store, job, grace, runner.as_ref(), live_runner);
        if live_runner.is_none() && stopped.gone {
            // No run will see the callback end. (When this finds nothing to end, a `process`
            // run recovered the job meanwhile, which ends it CANCELLED too.)
            let output = format!("bgq: cancelled with --kill; {}\n", stopped.said);
            store.end_cancel(
                job.id,
                job.fence(),
                output.as_bytes(),
                now_millis(),
                config.history,
            )?;
        }
        state = settled_state(store, job.id, SETTLE_WAIT)?;
        stop = Some((stopped, live_runner.is_some()));
    }
    let callback = escape::line(&job.callback);
    let cancelled = format!(
        "cancelled job {} ({callback}): PROCESSING -> CANCELLED",
        job.id
    );
    let said = stop
        .as_ref()
        .map_or("its callback has ended", |(stopped, _)| {
            stopped.said.as_str()
        });
    Ok(match (state, &stop) {
        (Some(JobState::Cancelled), _) => format!("{cancelled}; {said}"),
        (Some(JobState::Finished), _) => format!(
            "job {} ({callback}) is FINISHED, not CANCELLED: its callback reported success (exit 0)",
            job.id
        ),
        (Some(JobState::Processing), Some((_, false))) => format!(
            "job {} ({callback}) stays PROCESSING, marked for cancelling: {said}; the next `process` run of queue `{}` under the temp_dir of the run that started it stops its callback and ends it CANCELLED",
            job.id,
            escape::line(&job.queue)
        ),
        (Some(JobState::Processing), _) => {
            format!("{cancelled} when the `process` running it records its end; {said}")
        }
        (other, _) => {
            let other = other.map_or_else(|| "deleted".to_owned(), |state| state.to_string());
            format!("job {} ({callback}): PROCESSING -> {other}; {said}", job.id)
        }
    })
}

/// The state of job `id` once it is no longer PROCESSING, or PROCESSING after `limit`.
fn settled_state(store: &dyn Store, id: i64, limit: Duration) -> anyhow::Result<Option<JobState>> {
    let waited = Instant::now();
    loop {
        let state = store.state_of(id)?;
        if state != Some(JobState::Processing) || waited.elapsed() >= limit {
            return Ok(state);
        }
        std::thread::sleep(SETTLE_POLL);
    }
}

/// What `stop_callback` did.
struct Stopped {
    /// Said to the user.
    said: String,
    /// Whether the callback is known to be gone (stopped, ended, or never started).
    gone: bool,
}

/// Stops the running callback of `job`, found in the lock file of its queue's `process` run
/// (`claimed_by`; `runner` when it is alive), giving it `grace` between SIGTERM and SIGKILL.
fn stop_callback(
    config: &Config,
    store: &dyn Store,
    job: &JobBrief,
    grace: Duration,
    claimed_by: Option<&ProcessRecord>,
    runner: Option<&ProcessRecord>,
) -> Stopped {
    let unknown = |said: String| Stopped { said, gone: false };
    let lock = config
        .lock_folder
        .process_lock_path(store.identity(), &job.queue);
    if !lock.exists() {
        return unknown(format!(
            "its callback could not be looked up: there is no lock file {} (did its `process` run with another temp_dir?)",
            lock.display()
        ));
    }
    // Notes are acted on only from a folder and file no one else could have written.
    let notes = config
        .lock_folder
        .verify()
        .and_then(|_| running_log::read_unlocked(&lock));
    let started = match notes {
        Ok(notes) => notes.of(job.id, claimed_by),
        Err(err) => return unknown(format!("its callback could not be looked up: {err:#}")),
    };
    let started_never = started == Started::Never;
    let recorded = match started {
        Started::Noted(recorded) => recorded,
        Started::Never | Started::Unknown => Default::default(),
    };
    let gone = |said: String| Stopped { said, gone: true };
    if let Some(group) = &recorded.group {
        return gone(match process_group::stop_group(group, grace, KILL_WAIT) {
            OrphanGroup::Killed => {
                format!("its callback (process group {}) was stopped", group.pid)
            }
            OrphanGroup::Gone | OrphanGroup::PidReused => {
                "its callback had already ended".to_owned()
            }
        });
    }
    if let Some(runner) = runner {
        // Its group is not recorded (yet): the live run holds that pipe too, so it is not ours
        // to kill; the run stops the callback once it sees the mark.
        return unknown(format!(
            "its callback is not recorded yet; the running `process` (pid {}) stops it",
            runner.pid
        ));
    }
    // The run that started it died before recording its group: whoever holds its output pipe
    // is the callback.
    gone(
        match recorded
            .pipe
            .map(|pipe| process_group::kill_pipe_holders(pipe, KILL_WAIT))
        {
            Some(found) if found > 0 => format!("its callback ({found} process(es)) was stopped"),
            Some(_) => "its callback had already ended".to_owned(),
            None if started_never => format!(
                "no callback of it is recorded in {}: it had not started",
                lock.display()
            ),
            None => {
                return unknown(format!(
                    "its callback could not be looked up: {} has no notes of the run that started it",
                    lock.display()
                ));
            }
        },
    )
}
