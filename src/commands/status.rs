//! `bgq status`: a health check for monitoring. Exit 0 when every queue checked is healthy; 1
//! with one line per problem when `process` has not run, a run has held the lock, or a due job
//! has waited longer than `--stale-after`.

use std::io::Write;

use crate::cli::StatusArgs;
use crate::config::Config;
use crate::human::{relative, when};
use crate::job::{Millis, now_millis};
use crate::process_group;
use crate::store::{Durability, Store};

/// Runs `bgq status`.
pub fn run(config: &Config, args: &StatusArgs) -> anyhow::Result<()> {
    let store = Store::open(&config.database, Durability::Relaxed)?;
    let now = now_millis();
    let stale_after = Millis::try_from(args.stale_after.as_millis()).unwrap_or(Millis::MAX);
    let queues = if args.queue.is_empty() {
        vec![config.queue.clone()]
    } else {
        args.queue.clone()
    };
    let oldest_due = store.oldest_due(now)?;
    let mut healthy = true;
    let mut out = std::io::stdout().lock();
    for queue in &queues {
        let due = oldest_due.iter().find(|(q, _, _)| q == queue);
        let problems = problems(
            &store,
            queue,
            due.map(|(_, id, at)| (*id, *at)),
            now,
            stale_after,
        )?;
        if problems.is_empty() {
            let last = store
                .last_run(queue)?
                .map(|run| run.finished_at.unwrap_or(run.started_at))
                .map_or_else(|| "never".to_owned(), |at| relative(at, now));
            let due_count = store.due_count(queue, now)?;
            writeln!(
                out,
                "ok: queue `{queue}`: last `process` run {last}, {due_count} due job(s)"
            )?;
        }
        for problem in &problems {
            healthy = false;
            writeln!(out, "stale: queue `{queue}`: {problem}")?;
        }
    }
    out.flush()?;
    if healthy {
        Ok(())
    } else {
        Err(crate::error::Unhealthy.into())
    }
}

/// What is wrong with `queue`, one line each.
fn problems(
    store: &Store,
    queue: &str,
    oldest_due: Option<(i64, Millis)>,
    now: Millis,
    stale_after: Millis,
) -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    match store.last_run(queue)? {
        None => problems.push("no `process` run has been recorded".to_owned()),
        Some(run) if run.finished_at.is_none() && process_group::is_alive(&run.runner) => {
            if now - run.started_at > stale_after {
                problems.push(format!(
                    "a `process` run (pid {}) has held the lock since {}",
                    run.runner.pid,
                    when(run.started_at, now)
                ));
            }
        }
        Some(run) => {
            let last = run.finished_at.unwrap_or(run.started_at);
            if now - last > stale_after {
                problems.push(format!("`process` has not run since {}", when(last, now)));
            }
        }
    }
    if let Some((id, since)) = oldest_due
        && now - since > stale_after
    {
        problems.push(format!("job {id} has been due since {}", when(since, now)));
    }
    Ok(problems)
}
