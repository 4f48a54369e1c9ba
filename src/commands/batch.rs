//! `bgq batch new|seal|show|list`: batches (SPEC section 11). A batch is opened, filled by
//! `publish --batch ID` (from outside until its seal, from its running jobs also after), and
//! completes when sealed with nothing unfinished: its store publishes the completion jobs in
//! that same transaction. This module only asks and shows; the rules live in the store.

use std::io::Write;

use serde_json::{Value, json};

use crate::cli::{BatchCommand, BatchListArgs, BatchNewArgs, BatchShowArgs};
use crate::config::Config;
use crate::error::usage;
use crate::escape;
use crate::human;
use crate::job::{JobState, format_utc, now_millis};
use crate::store::{BatchInfo, Durability, ListFilter, NewBatch, Sealed, Store};

/// Runs `bgq batch ...`.
pub fn run(config: &Config, command: &BatchCommand) -> anyhow::Result<()> {
    match command {
        BatchCommand::New(args) => new(config, args),
        BatchCommand::Seal(args) => seal(config, args.id),
        BatchCommand::Show(args) => show(config, args),
        BatchCommand::List(args) => list(config, args),
    }
}

fn new(config: &Config, args: &BatchNewArgs) -> anyhow::Result<()> {
    let callback = |name: &Option<String>, json: &Option<String>, flag: &str| {
        name.as_ref()
            .map(|name| -> anyhow::Result<(String, Option<String>)> {
                config.callback(name)?;
                let params = json.as_deref().map(|text| params(text, flag)).transpose()?;
                Ok((name.clone(), params))
            })
            .transpose()
    };
    let batch = NewBatch {
        queue: args.queue.clone().unwrap_or_else(|| config.queue.clone()),
        description: args.description.clone(),
        on_complete: callback(
            &args.on_complete,
            &args.on_complete_json,
            "--on-complete-json",
        )?,
        on_success: callback(&args.on_success, &args.on_success_json, "--on-success-json")?,
    };
    let mut store = crate::store::open(&config.database, Durability::Full)?;
    let id = store.new_batch(&batch, now_millis())?;
    drop(store);
    let mut out = std::io::stdout().lock();
    writeln!(out, "{id}")?;
    out.flush()?;
    Ok(())
}

/// The `params` of a completion callback, as compact JSON text: `TEXT`, `@FILE` or `-`.
fn params(text: &str, flag: &str) -> anyhow::Result<String> {
    let bytes = match text.strip_prefix('@') {
        Some(path) => std::fs::read(path)
            .map_err(|err| usage(format!("cannot read {flag} file {path}: {err}")))?,
        None if text == "-" => {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
                .map_err(|err| usage(format!("cannot read {flag} from stdin: {err}")))?;
            bytes
        }
        None => text.as_bytes().to_vec(),
    };
    let value = super::publish::parse_json(&bytes)
        .map_err(|err| usage(format!("invalid JSON in {flag}: {err}")))?;
    Ok(value.to_string())
}

fn seal(config: &Config, id: i64) -> anyhow::Result<()> {
    let mut store = crate::store::open(&config.database, Durability::Full)?;
    let sealed = store.seal_batch(id, now_millis())?;
    let mut out = std::io::stdout().lock();
    match sealed {
        Sealed::Now { complete: false } => writeln!(out, "sealed batch {id}")?,
        Sealed::Now { complete: true } => writeln!(
            out,
            "sealed batch {id}: none of its jobs is unfinished, so it is complete"
        )?,
        Sealed::Already => writeln!(out, "batch {id} was already sealed")?,
    }
    out.flush()?;
    Ok(())
}

/// Batch `id`, or a usage error naming the database.
pub(super) fn existing(store: &dyn Store, id: i64) -> anyhow::Result<BatchInfo> {
    store
        .batch(id)?
        .ok_or_else(|| usage(format!("no batch {id} in {}", store.identity())))
}

fn show(config: &Config, args: &BatchShowArgs) -> anyhow::Result<()> {
    let store = crate::store::open(&config.database, Durability::Relaxed)?;
    let batch = existing(&*store, args.id)?;
    let unfinished = unfinished_states(&*store, &batch)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let mut object = summary(&batch);
        let states: serde_json::Map<String, Value> = unfinished
            .iter()
            .map(|(state, count)| (state.as_str().to_owned(), json!(count)))
            .collect();
        object["states"] = Value::Object(states);
        writeln!(out, "{object}")?;
        out.flush()?;
        return Ok(());
    }
    let now = now_millis();
    writeln!(out, "batch {} ({})", batch.id, phase(&batch))?;
    if let Some(description) = &batch.description {
        writeln!(out, "description: {}", escape::line(description))?;
    }
    writeln!(out, "queue:       {}", escape::line(&batch.queue))?;
    let mut states: Vec<String> = unfinished
        .iter()
        .filter(|(_, count)| *count > 0)
        .map(|(state, count)| format!("{count} {state}"))
        .collect();
    for (state, count) in [
        (JobState::Finished, batch.finished),
        (JobState::PermanentlyFailed, batch.failed),
        (JobState::Cancelled, batch.cancelled),
    ] {
        if count > 0 {
            states.push(format!("{count} {state}"));
        }
    }
    writeln!(
        out,
        "jobs:        {}{}",
        human::count(batch.total(), "job"),
        if states.is_empty() {
            String::new()
        } else {
            format!(": {}", states.join(", "))
        }
    )?;
    writeln!(out, "progress:    {}", progress(&batch))?;
    writeln!(
        out,
        "created:     {}",
        human::full_time(batch.created_at, now)
    )?;
    match batch.sealed_at {
        Some(at) => writeln!(out, "sealed:      {}", human::full_time(at, now))?,
        None => writeln!(
            out,
            "sealed:      not yet (`bgq batch seal {}` once every job is published)",
            batch.id
        )?,
    }
    if let Some(at) = batch.completed_at {
        writeln!(out, "completed:   {}", human::full_time(at, now))?;
    }
    for (label, callback, job) in [
        ("on complete", &batch.on_complete, batch.complete_job),
        ("on success", &batch.on_success, batch.success_job),
    ] {
        let Some((name, params)) = callback else {
            continue;
        };
        let params = params
            .as_deref()
            .map(|params| format!(" {}", escape::line(params)))
            .unwrap_or_default();
        let outcome = match (job, batch.completed_at) {
            (Some(job), _) => format!(": job {job}"),
            (None, Some(_)) => ": not published (not every job FINISHED)".to_owned(),
            (None, None) => String::new(),
        };
        writeln!(out, "{label}: {}{params}{outcome}", escape::line(name))?;
    }
    out.flush()?;
    Ok(())
}

/// How many of the batch's unfinished jobs are in each unfinished state (a count over its
/// jobs, for `show` only; nothing when none is unfinished).
fn unfinished_states(store: &dyn Store, batch: &BatchInfo) -> anyhow::Result<Vec<(JobState, u64)>> {
    let states = [
        JobState::Ready,
        JobState::Processing,
        JobState::TemporarilyFailed,
        JobState::Waiting,
    ];
    states
        .into_iter()
        .map(|state| {
            let count = if batch.unfinished == 0 {
                0
            } else {
                store.count(&ListFilter {
                    states: vec![state],
                    batch: Some(batch.id),
                    ..ListFilter::default()
                })?
            };
            Ok((state, count))
        })
        .collect()
}

/// open, sealed or complete.
fn phase(batch: &BatchInfo) -> &'static str {
    match (batch.sealed_at, batch.completed_at) {
        (_, Some(_)) => "complete",
        (Some(_), None) => "sealed",
        (None, None) => "open",
    }
}

/// "1234 of 10000 jobs ended (12%)".
fn progress(batch: &BatchInfo) -> String {
    let ended = batch.total() - batch.unfinished;
    let percent = (ended * 100).checked_div(batch.total()).unwrap_or(100);
    format!("{ended} of {} ended ({percent}%)", batch.total())
}

/// The batch as one JSON object (`show --json`, `list --json`).
fn summary(batch: &BatchInfo) -> Value {
    let callback = |callback: &Option<(String, Option<String>)>, job: Option<i64>| {
        callback.as_ref().map(|(name, params)| {
            let params = params
                .as_deref()
                .and_then(|text| serde_json::from_str::<Value>(text).ok())
                .unwrap_or(Value::Null);
            json!({"callback": name, "params": params, "job": job})
        })
    };
    json!({
        "id": batch.id,
        "queue": batch.queue,
        "description": batch.description,
        "phase": phase(batch),
        "jobs": batch.total(),
        "unfinished": batch.unfinished,
        "counts": {
            "FINISHED": batch.finished,
            "PERMANENTLY_FAILED": batch.failed,
            "CANCELLED": batch.cancelled,
        },
        "created_at": format_utc(batch.created_at),
        "sealed_at": batch.sealed_at.map(format_utc),
        "completed_at": batch.completed_at.map(format_utc),
        "on_complete": callback(&batch.on_complete, batch.complete_job),
        "on_success": callback(&batch.on_success, batch.success_job),
    })
}

fn list(config: &Config, args: &BatchListArgs) -> anyhow::Result<()> {
    let store = crate::store::open(&config.database, Durability::Relaxed)?;
    let limit = match args.limit {
        0 => usize::MAX,
        limit => usize::try_from(limit).unwrap_or(usize::MAX),
    };
    let batches = store.batches(args.open, limit)?;
    let mut out = std::io::stdout().lock();
    for batch in &batches {
        if args.json {
            writeln!(out, "{}", summary(batch))?;
        } else {
            let description = batch
                .description
                .as_deref()
                .map(|text| format!("  {}", escape::line(text)))
                .unwrap_or_default();
            writeln!(
                out,
                "{:>6}  {:<8}  {}{description}",
                batch.id,
                phase(batch),
                progress(batch)
            )?;
        }
    }
    out.flush()?;
    Ok(())
}
