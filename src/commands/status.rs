//! `bgq status`: a health check for monitoring. Exit 0 when every queue checked is healthy; 1
//! with one line per problem when `process` has not run, a run has held the lock, a due job
//! has waited longer than `--stale-after`, a callback could not be started (until a run starts
//! it again), or a job waits (`--after`) for one that will never finish. Pauses in force are
//! said, not counted unhealthy.

use std::io::Write;

use crate::cli::StatusArgs;
use crate::config::Config;
use crate::escape;
use crate::human::{relative, when};
use crate::job::{Millis, now_millis};
use crate::store::{DueJobs, Durability, RunInfo};

/// Runs `bgq status`.
pub fn run(config: &Config, args: &StatusArgs) -> anyhow::Result<()> {
    let store = crate::store::open(&config.database, Durability::Relaxed)?;
    let now = now_millis();
    let stale_after = Millis::try_from(args.stale_after.as_millis()).unwrap_or(Millis::MAX);
    let due_jobs = store.due_jobs(now)?;
    let queues = if args.queue.is_empty() {
        // Every queue `stats` shows: a forgotten cron line of another queue is found too.
        super::stats::queues(config, &*store, now, &due_jobs)?
    } else {
        args.queue.clone()
    };
    let broken = store.broken_callbacks()?;
    let mut healthy = true;
    let mut out = std::io::stdout().lock();
    for queue in &queues {
        let due = due_jobs.iter().find(|due| &due.queue == queue);
        let last_run = store.last_run(queue)?;
        let problems = problems(last_run.as_ref(), due, now, stale_after);
        // A monitor reads one line per problem; a queue name must not make two (or a command).
        let shown = escape::line(queue);
        let callbacks_broken = broken.iter().any(|broken| &broken.queue == queue);
        if problems.is_empty() && !callbacks_broken {
            let count = due.map_or(0, |due| due.count);
            let runs = match last_run {
                Some(run) if watching(&run) => format!(
                    "`process --watch` (pid {}) running since {}",
                    run.runner.pid,
                    when(run.started_at, now)
                ),
                Some(run) => format!("last `process` run {}", relative(run.last_seen(), now)),
                None => "last `process` run never".to_owned(),
            };
            let due = crate::human::count(count, "due job");
            writeln!(out, "ok: queue `{shown}`: {runs}, {due}")?;
        }
        for problem in &problems {
            healthy = false;
            writeln!(out, "stale: queue `{shown}`: {problem}")?;
        }
        for broken in broken.iter().filter(|broken| &broken.queue == queue) {
            healthy = false;
            writeln!(
                out,
                "broken: queue `{shown}`: callback `{}` cannot be started since {}: {}; its jobs wait, spending no attempt, until a run starts it",
                escape::line(&broken.callback),
                when(broken.since, now),
                escape::line(&broken.reason)
            )?;
        }
    }
    // Pauses are an operator's choice, said but not counted unhealthy (their jobs still go
    // stale by `--stale-after`); jobs that wait for a job that will never finish need one.
    for pause in store.pauses()? {
        if pause
            .queue
            .as_ref()
            .is_some_and(|queue| !queues.contains(queue))
        {
            continue;
        }
        writeln!(
            out,
            "paused: {} since {}; `{}` lifts it",
            super::pause::described(pause.queue.as_deref(), pause.callback.as_deref()),
            when(pause.since, now),
            pause.resume_command()
        )?;
    }
    for stuck in store.stuck_after()? {
        if !queues.contains(&stuck.queue) {
            continue;
        }
        healthy = false;
        let gone = if stuck.parent_gone {
            ", and was deleted by `bgq clear`"
        } else {
            ""
        };
        let fix = if stuck.parent_gone {
            format!("`bgq cancel {}`", stuck.id)
        } else {
            format!("`bgq retry {}` or `bgq cancel {}`", stuck.parent, stuck.id)
        };
        writeln!(
            out,
            "stuck: queue `{}`: job {} waits (--after) for job {}, which is {}{gone}: it will never run; {fix}",
            escape::line(&stuck.queue),
            stuck.id,
            stuck.parent,
            stuck.parent_state
        )?;
    }
    out.flush()?;
    if healthy {
        Ok(())
    } else {
        Err(crate::error::Unhealthy.into())
    }
}

/// Whether `run` is a `process --watch` that still runs: it holds the lock for as long as it
/// lives, so that is no sign of a hung run.
fn watching(run: &RunInfo) -> bool {
    run.watch && run.finished_at.is_none() && run.alive
}

/// What is wrong with a queue whose last run is `last_run` and due jobs `due`, one line each.
fn problems(
    last_run: Option<&RunInfo>,
    due: Option<&DueJobs>,
    now: Millis,
    stale_after: Millis,
) -> Vec<String> {
    let mut problems = Vec::new();
    match last_run {
        None => problems.push("no `process` run has been recorded".to_owned()),
        Some(run) if watching(run) => {}
        Some(run) if run.finished_at.is_none() && run.alive => {
            if now - run.started_at > stale_after {
                problems.push(format!(
                    "a `process` run (pid {}) has held the lock since {}",
                    run.runner.pid,
                    when(run.started_at, now)
                ));
            }
        }
        Some(run) => {
            let last = run.last_seen();
            if now - last > stale_after {
                problems.push(format!("`process` has not run since {}", when(last, now)));
            }
        }
    }
    if let Some(due) = due
        && now - due.since > stale_after
    {
        problems.push(format!(
            "job {} has been due since {}",
            due.oldest,
            when(due.since, now)
        ));
    }
    problems
}
