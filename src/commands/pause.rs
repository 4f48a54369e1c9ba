//! `bgq pause` and `bgq resume`: a queue, a callback, one callback of one queue, or everything
//! stops being claimed, and starts again. Paused jobs stay due and spend no attempt; a job
//! running when the pause comes finishes normally. Each says what it did in one line.

use std::io::Write;

use crate::cli::PauseArgs;
use crate::config::Config;
use crate::escape;
use crate::job::now_millis;
use crate::store::{Durability, Pause, paused};

/// Runs `bgq pause`.
pub fn pause(config: &Config, args: &PauseArgs) -> anyhow::Result<()> {
    warn_unknown_callback(config, args);
    let mut store = crate::store::open(&config.database, Durability::Full)?;
    let queue = args.queue.as_deref();
    let callback = args.callback.as_deref();
    let added = store.pause(queue, callback, now_millis())?;
    let what = described(queue, callback);
    let line = if added {
        format!(
            "paused {what}: no run starts its jobs until `{}`",
            resume_command(queue, callback)
        )
    } else {
        format!("{what} was already paused")
    };
    writeln!(std::io::stdout().lock(), "{line}")?;
    Ok(())
}

/// Runs `bgq resume`.
pub fn resume(config: &Config, args: &PauseArgs) -> anyhow::Result<()> {
    warn_unknown_callback(config, args);
    let mut store = crate::store::open(&config.database, Durability::Full)?;
    let queue = args.queue.as_deref();
    let callback = args.callback.as_deref();
    let lifted = store.resume(queue, callback)?;
    let mut out = std::io::stdout().lock();
    if lifted.is_empty() {
        writeln!(out, "{} was not paused", described(queue, callback))?;
    } else {
        let names: Vec<String> = lifted
            .iter()
            .map(|pause| described(pause.queue.as_deref(), pause.callback.as_deref()))
            .collect();
        writeln!(out, "resumed {}", names.join(", "))?;
    }
    // A broader pause may still hold what was named: say which, and how to lift it.
    if queue.is_some() || callback.is_some() {
        let left = store.pauses()?;
        let still = left.iter().find(|pause| {
            pause.queue.as_deref().is_none_or(|q| Some(q) == queue)
                && pause
                    .callback
                    .as_deref()
                    .is_none_or(|c| Some(c) == callback)
        });
        if let Some(pause) = still {
            writeln!(
                out,
                "{} is still paused by `{}`: `{}` lifts it",
                described(queue, callback),
                pause_command(pause),
                pause.resume_command()
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

/// What a pause of `queue` and `callback` holds, in words.
pub fn described(queue: Option<&str>, callback: Option<&str>) -> String {
    match (queue, callback) {
        (None, None) => "every queue and callback".to_owned(),
        (Some(queue), None) => format!("queue `{}`", escape::line(queue)),
        (None, Some(callback)) => format!("callback `{}`", escape::line(callback)),
        (Some(queue), Some(callback)) => format!(
            "callback `{}` in queue `{}`",
            escape::line(callback),
            escape::line(queue)
        ),
    }
}

/// The `bgq resume` that lifts the pause of `queue` and `callback`.
fn resume_command(queue: Option<&str>, callback: Option<&str>) -> String {
    Pause {
        queue: queue.map(str::to_owned),
        callback: callback.map(str::to_owned),
        since: 0,
    }
    .resume_command()
}

/// The `bgq pause` that made `pause`.
fn pause_command(pause: &Pause) -> String {
    pause
        .resume_command()
        .replacen("bgq resume", "bgq pause", 1)
}

/// How a job held by `pauses` is described by the read commands (`list`, `explain`, `stats`,
/// `status`): the pause's scope and the command that lifts it, if one holds it.
pub fn holding(pauses: &[Pause], queue: &str, callback: &str) -> Option<String> {
    paused(pauses, queue, callback).map(|pause| {
        format!(
            "paused ({}): `{}` lifts it",
            described(pause.queue.as_deref(), pause.callback.as_deref()),
            pause.resume_command()
        )
    })
}

/// As `retry` does for the jobs it puts back: a callback the config does not define is taken,
/// with a warning.
fn warn_unknown_callback(config: &Config, args: &PauseArgs) {
    if let Some(callback) = &args.callback
        && !config.callbacks.contains_key(callback)
    {
        crate::diagnostic!(
            "bgq: warning: callback `{}` is not defined in {}",
            escape::line(callback),
            config.path.display()
        );
    }
}
