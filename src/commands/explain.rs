//! `bgq explain ID`: one line saying why a job is not running now.

use std::io::Write;

use crate::cli::ExplainArgs;
use crate::config::Config;
use crate::escape;
use crate::human::when;
use crate::job::{JobState, Millis, now_millis};
use crate::queue::eligibility::{GroupHold, group_hold};
use crate::store::{Durability, JobDetail, RunInfo, Store};

/// A due job's queue counts as forgotten by cron when its last `process` run is older than this.
const CRON_LATE: Millis = 2 * 60 * 1000;

/// Runs `bgq explain`.
pub fn run(config: &Config, args: &ExplainArgs) -> anyhow::Result<()> {
    let store = crate::store::open(&config.database, Durability::Relaxed)?;
    let detail = super::show::find(&*store, args.id)?;
    let mut line = explain(config, &*store, &detail, now_millis())?;
    line.push_str(&batch_context(&*store, &detail)?);
    let mut out = std::io::stdout().lock();
    writeln!(out, "job {} {line}", args.id)?;
    out.flush()?;
    Ok(())
}

/// What the job is to a batch, if anything, after the explanation: the completion of one
/// (what it completed), or one of its jobs (what the batch waits for).
fn batch_context(store: &dyn Store, detail: &JobDetail) -> anyhow::Result<String> {
    if let Some(batch) = store.batch_completed_by(detail.record.id)? {
        return Ok(format!(
            "; it is the completion of batch {}, published when its {} job(s) had ended ({} FINISHED, {} PERMANENTLY_FAILED, {} CANCELLED)",
            batch.id,
            batch.total(),
            batch.finished,
            batch.failed,
            batch.cancelled
        ));
    }
    let Some(batch) = detail
        .record
        .batch
        .map(|id| store.batch(id))
        .transpose()?
        .flatten()
    else {
        return Ok(String::new());
    };
    Ok(match (batch.sealed_at, batch.completed_at) {
        (_, Some(_)) => format!("; its batch {} is complete", batch.id),
        (Some(_), None) => format!(
            "; batch {} (sealed) completes when its {} unfinished job(s) have ended",
            batch.id, batch.unfinished
        ),
        (None, None) => format!(
            "; batch {} is not sealed: it completes only after `bgq batch seal {}`",
            batch.id, batch.id
        ),
    })
}

/// Why job `detail` is not running now (or that it is), after "job ID ".
fn explain(
    config: &Config,
    store: &dyn Store,
    detail: &JobDetail,
    now: Millis,
) -> anyhow::Result<String> {
    let job = &detail.record;
    let since = when(detail.record.state_changed_at, now);
    // Names as shown: a publisher wrote them (an older bgq stored control characters too).
    let queue = &escape::line(&job.queue);
    match job.state {
        JobState::Finished => {
            return Ok(format!(
                "FINISHED at {}; it does not run again",
                when(
                    job.finished_at.unwrap_or(detail.record.state_changed_at),
                    now
                )
            ));
        }
        JobState::PermanentlyFailed => {
            // The reason its last kept attempt ended: `exit code 3`, `timed out`.
            let reason = detail
                .runs
                .last()
                .map(|run| format!(" ({})", super::show::how_it_ended(&run.ended)))
                .unwrap_or_default();
            return Ok(format!(
                "failed permanently at {since} after {} attempt(s){reason}; only `bgq retry {}` runs it again",
                job.attempts, job.id
            ));
        }
        JobState::Cancelled => {
            return Ok(format!(
                "was cancelled at {since}; only `bgq retry {}` runs it again",
                job.id
            ));
        }
        JobState::Processing => {
            let runner_alive = store.run(detail.claimed_run)?.is_some_and(|run| run.alive);
            return Ok(if runner_alive && detail.cancel_requested {
                "is being cancelled: `bgq cancel --kill` asked its `process` run to stop its callback; it becomes CANCELLED once that has ended (FINISHED if the callback exits 0)".to_owned()
            } else if runner_alive {
                format!("is running since {since} (attempt {})", job.attempts)
            } else if detail.cancel_requested {
                format!(
                    "was left PROCESSING by a `process` run that died; the next run of queue `{queue}` ends it CANCELLED, as `bgq cancel --kill` asked"
                )
            } else {
                format!(
                    "was left PROCESSING by a `process` run that died; the next run of queue `{queue}` recovers it"
                )
            });
        }
        JobState::Ready | JobState::TemporarilyFailed | JobState::Waiting => {}
    }
    if !config.callbacks.contains_key(&job.callback) {
        return Ok(format!(
            "waits for callback `{}`, which {} does not define",
            escape::line(&job.callback),
            config.path.display()
        ));
    }
    if let Some(held) = super::pause::holding(&store.pauses()?, &job.queue, &job.callback) {
        return Ok(format!(
            "is {held}; it stays {} and spends no attempt meanwhile",
            job.state
        ));
    }
    // A parent that needs an operator says more than one that will finish by itself.
    let parent = detail
        .waits_for()
        .find(|(_, state)| matches!(state, JobState::PermanentlyFailed | JobState::Cancelled))
        .or_else(|| detail.waits_for().next());
    match parent {
        Some((parent, state @ (JobState::PermanentlyFailed | JobState::Cancelled))) => {
            return Ok(format!(
                "waits for job {parent}, which is {state}: it runs only after `bgq retry {parent}` and job {parent} finishes"
            ));
        }
        Some((parent, state)) => {
            return Ok(format!(
                "waits for job {parent} ({state}) to finish (--after)"
            ));
        }
        None => {}
    }
    if let Some(group) = &job.serial_group {
        let facts = store.serial_group_facts(group, job.id, &config.blocking_callbacks())?;
        let shown = escape::line(group);
        match group_hold(&facts) {
            Some(GroupHold::Failed(blocker)) => {
                return Ok(format!(
                    "is behind job {blocker} (PERMANENTLY_FAILED) of serial group `{shown}`, which holds the group (serial_failure = \"block\"): `bgq retry {blocker}` or `bgq cancel {blocker}` frees it"
                ));
            }
            Some(GroupHold::Older(blocker, state)) => {
                return Ok(format!(
                    "is behind job {blocker} ({state}) of serial group `{shown}`"
                ));
            }
            Some(GroupHold::Running(blocker)) => {
                return Ok(format!(
                    "waits for job {blocker} of serial group `{shown}`, which is running: a group runs one job at a time"
                ));
            }
            None => {}
        }
    }
    if let Some(broken) = store
        .broken_callbacks()?
        .into_iter()
        .find(|broken| broken.queue == job.queue && broken.callback == job.callback)
    {
        return Ok(format!(
            "waits: its callback `{}` could not be started since {} ({}); fix the deployment and the next run starts it, spending no attempt",
            escape::line(&job.callback),
            when(broken.since, now),
            escape::line(&broken.reason)
        ));
    }
    if job.run_at > now {
        return Ok(if job.state == JobState::TemporarilyFailed {
            let reason = detail
                .runs
                .last()
                .map(|run| format!(" ({})", super::show::how_it_ended(&run.ended)))
                .unwrap_or_default();
            format!(
                "is in backoff until {} after attempt {} failed{reason}",
                when(job.run_at, now),
                job.attempts
            )
        } else if job.state == JobState::Waiting {
            format!(
                "is WAITING until {} (waiting_delay of `process --watch`)",
                when(job.run_at, now)
            )
        } else {
            format!("is delayed until {}", when(job.run_at, now))
        });
    }
    if job.state == JobState::Waiting {
        return Ok(format!(
            "is WAITING until the next `process` run of queue `{queue}`"
        ));
    }
    Ok(due(
        store.last_run(&job.queue)?,
        detail.claimed_run,
        queue,
        now,
    ))
}

/// Why a due job has not run yet: cron, a busy run, or nothing (it runs next time). `queue` is
/// the queue's name as shown.
fn due(last: Option<RunInfo>, claimed_run: i64, queue: &str, now: Millis) -> String {
    let Some(run) = last else {
        return format!("is due, but no `process` has run for queue `{queue}` yet");
    };
    if run.finished_at.is_none() && run.alive {
        if run.watch {
            return format!(
                "is due: the running `process --watch` of queue `{queue}` (pid {}) starts it when a slot is free",
                run.runner.pid
            );
        }
        if run.id == claimed_run {
            // One run starts a job at most once (it was retried after this run ran it).
            return format!(
                "is due: the running `process` of queue `{queue}` (pid {}) already ran it, so it runs on the next run",
                run.runner.pid
            );
        }
        return format!(
            "is due: the running `process` of queue `{queue}` (pid {}) starts it when a slot is free",
            run.runner.pid
        );
    }
    let last_seen = run.last_seen();
    if now - last_seen > CRON_LATE {
        return format!(
            "is due, but cron has not run `process` for queue `{queue}` since {}",
            when(last_seen, now)
        );
    }
    format!("is due: it runs on the next `process` run of queue `{queue}`")
}
