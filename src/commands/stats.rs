//! `bgq stats`: per queue, jobs in each state, the oldest due job, how runs ended in the last
//! hour and day, and the last `process` run; as tables, JSON or Prometheus text.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use serde_json::json;

use crate::cli::StatsArgs;
use crate::config::Config;
use crate::human::{count, relative, span};
use crate::job::{JobState, Millis, format_utc, now_millis};
use crate::store::{DueJobs, Durability, Pause, RunInfo, Store};
use crate::table::{Cell, Column, Table};
use crate::term::Style;

const HOUR: Millis = 3_600_000;
const DAY: Millis = 24 * HOUR;
/// A queue with no jobs and no job run in the last day whose last `process` run is older than
/// this is forgotten: `stats` and `status` leave it out (a `process --queue typo` run once,
/// a queue retired and cleared). The config's own `queue` is always shown.
pub const FORGOTTEN_AFTER: Millis = 7 * DAY;

/// How a `process` run went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// It ended normally.
    Ok,
    /// It is still running.
    Running,
    /// It never ended and its process is gone.
    Died,
    /// bgq could not do its work.
    Error,
}

impl RunOutcome {
    /// How `run` went.
    pub fn of(run: &RunInfo) -> RunOutcome {
        match (run.finished_at, &run.error) {
            (Some(_), Some(_)) => RunOutcome::Error,
            (Some(_), None) => RunOutcome::Ok,
            (None, _) if run.alive => RunOutcome::Running,
            (None, _) => RunOutcome::Died,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Ok => "ok",
            RunOutcome::Running => "running",
            RunOutcome::Died => "died",
            RunOutcome::Error => "error",
        }
    }
}

/// Runs of jobs that ended in a window: finished, temporarily and permanently failed.
type Outcomes = [u64; 3];

/// What `stats` reports of one queue.
#[derive(Debug, Clone, Default)]
struct QueueStats {
    jobs: BTreeMap<&'static str, u64>,
    oldest_due: Option<Millis>,
    last_hour: Outcomes,
    last_day: Outcomes,
    last_run: Option<RunInfo>,
}

/// At most this many open batches are shown, the newest.
const OPEN_BATCHES_SHOWN: usize = 20;

/// Runs `bgq stats`.
pub fn run(config: &Config, args: &StatsArgs, style: &Style) -> anyhow::Result<()> {
    let store = crate::store::open(&config.database, Durability::Relaxed)?;
    let now = now_millis();
    let queues = gather(config, &*store, now, &store.due_jobs(now)?)?;
    let pauses = store.pauses()?;
    // Open batches are few (those not complete), read through batches_open.
    let batches = store.batches(true, OPEN_BATCHES_SHOWN)?;
    let text = if args.json {
        let mut value = to_json(&queues, now);
        value["pauses"] = pauses
            .iter()
            .map(|pause| {
                json!({
                    "queue": pause.queue,
                    "callback": pause.callback,
                    "since": format_utc(pause.since),
                })
            })
            .collect();
        value["open_batches"] = batches
            .iter()
            .map(|batch| {
                json!({
                    "id": batch.id,
                    "sealed": batch.sealed_at.is_some(),
                    "jobs": batch.total(),
                    "unfinished": batch.unfinished,
                })
            })
            .collect();
        format!("{value}\n")
    } else if args.prometheus {
        let mut text = to_prometheus(&queues, now);
        text.push_str(&totals_to_prometheus(&store.run_totals()?, &pauses));
        text
    } else {
        let style = if args.output.is_some() {
            &Style::plain()
        } else {
            style
        };
        let mut text = to_tables(&queues, now, style);
        for pause in &pauses {
            let _ = writeln!(
                text,
                "paused: {} since {}; `{}` lifts it",
                super::pause::described(pause.queue.as_deref(), pause.callback.as_deref()),
                relative(pause.since, now),
                pause.resume_command()
            );
        }
        for batch in &batches {
            let _ = writeln!(
                text,
                "open batch {}{}: {} of {} job(s) unfinished{}",
                batch.id,
                if batch.sealed_at.is_some() {
                    " (sealed)"
                } else {
                    ""
                },
                batch.unfinished,
                batch.total(),
                batch
                    .description
                    .as_deref()
                    .map(|text| format!(" ({})", crate::escape::line(text)))
                    .unwrap_or_default()
            );
        }
        text
    };
    match &args.output {
        Some(path) => write_atomically(path, text.as_bytes()),
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()?;
            Ok(())
        }
    }
}

fn gather(
    config: &Config,
    store: &dyn Store,
    now: Millis,
    due_jobs: &[DueJobs],
) -> anyhow::Result<BTreeMap<String, QueueStats>> {
    let mut queues: BTreeMap<String, QueueStats> = BTreeMap::new();
    entry(&mut queues, &config.queue);
    for (queue, state, count) in store.state_counts()? {
        entry(&mut queues, &queue)
            .jobs
            .insert(state.as_str(), count);
    }
    for due in due_jobs {
        entry(&mut queues, &due.queue).oldest_due = Some(due.since);
    }
    for (queue, counts) in store.outcomes_since(now - HOUR)? {
        entry(&mut queues, &queue).last_hour = counts;
    }
    for (queue, counts) in store.outcomes_since(now - DAY)? {
        entry(&mut queues, &queue).last_day = counts;
    }
    for run in store.last_runs()? {
        let queue = run.queue.clone();
        entry(&mut queues, &queue).last_run = Some(run);
    }
    queues.retain(|queue, stats| *queue == config.queue || !forgotten(stats, now));
    Ok(queues)
}

/// The queues `stats` shows, which `status` checks when no `--queue` is given: the config's
/// queue, every queue that has jobs, and those with a `process` run that is not forgotten
/// (see [`FORGOTTEN_AFTER`]); `due_jobs` as `Store::due_jobs` read them at `now`.
pub fn queues(
    config: &Config,
    store: &dyn Store,
    now: Millis,
    due_jobs: &[DueJobs],
) -> anyhow::Result<Vec<String>> {
    Ok(gather(config, store, now, due_jobs)?.into_keys().collect())
}

/// Whether a queue is [`FORGOTTEN_AFTER`]: no jobs, none ended in the last day, and its last
/// run (if any) older than that and not running.
fn forgotten(stats: &QueueStats, now: Millis) -> bool {
    let no_jobs = stats.jobs.values().all(|&count| count == 0);
    let quiet = stats.last_day.iter().all(|&count| count == 0);
    let old_run = stats.last_run.as_ref().is_none_or(|run| {
        RunOutcome::of(run) != RunOutcome::Running && now - run.last_seen() > FORGOTTEN_AFTER
    });
    no_jobs && quiet && old_run
}

/// The stats of `queue`, every state counted 0 until counts are read.
fn entry<'a>(queues: &'a mut BTreeMap<String, QueueStats>, queue: &str) -> &'a mut QueueStats {
    queues
        .entry(queue.to_owned())
        .or_insert_with(|| QueueStats {
            jobs: JobState::ALL
                .iter()
                .map(|state| (state.as_str(), 0))
                .collect(),
            ..QueueStats::default()
        })
}

fn age_seconds(since: Millis, now: Millis) -> f64 {
    (now - since).max(0) as f64 / 1000.0
}

fn to_json(queues: &BTreeMap<String, QueueStats>, now: Millis) -> serde_json::Value {
    let window = |counts: &Outcomes| {
        json!({
            "finished": counts[0],
            "temporarily_failed": counts[1],
            "permanently_failed": counts[2],
        })
    };
    let queues: Vec<serde_json::Value> = queues
        .iter()
        .map(|(queue, stats)| {
            let jobs: serde_json::Map<String, serde_json::Value> = JobState::ALL
                .iter()
                .map(|state| {
                    let count = stats.jobs.get(state.as_str()).copied().unwrap_or(0);
                    (state.as_str().to_owned(), count.into())
                })
                .collect();
            json!({
                "queue": queue,
                "jobs": jobs,
                "oldest_due_at": stats.oldest_due.map(format_utc),
                "oldest_due_age_seconds": stats.oldest_due.map(|since| age_seconds(since, now)),
                "last_hour": window(&stats.last_hour),
                "last_day": window(&stats.last_day),
                "last_run": stats.last_run.as_ref().map(|run| json!({
                    "started_at": format_utc(run.started_at),
                    "finished_at": run.finished_at.map(format_utc),
                    "outcome": RunOutcome::of(run).as_str(),
                    "error": run.error,
                    "jobs": run.jobs,
                    "failed": run.failed,
                })),
            })
        })
        .collect();
    json!({ "generated_at": format_utc(now), "queues": queues })
}

/// One sample of a metric: its labels and its value, as written.
type Sample = (String, String);

/// A label value as the Prometheus text format writes it.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn to_prometheus(queues: &BTreeMap<String, QueueStats>, now: Millis) -> String {
    let mut text = String::new();
    let mut metric = |name: &str, help: &str, samples: Vec<Sample>| {
        let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, value) in samples {
            let _ = writeln!(text, "{name}{{{labels}}} {value}");
        }
    };
    let each = |sample: &dyn Fn(&str, &QueueStats) -> Vec<Sample>| {
        queues
            .iter()
            .flat_map(|(queue, stats)| sample(&label(queue), stats))
            .collect::<Vec<_>>()
    };
    metric(
        "bgq_jobs",
        "Jobs by queue and state.",
        each(&|queue, stats| {
            JobState::ALL
                .iter()
                .map(|state| {
                    let count = stats.jobs.get(state.as_str()).copied().unwrap_or(0);
                    (
                        format!("queue=\"{queue}\",state=\"{state}\""),
                        count.to_string(),
                    )
                })
                .collect()
        }),
    );
    metric(
        "bgq_oldest_due_job_age_seconds",
        "How long the oldest due job of the queue has waited to run (0 when none is due).",
        each(&|queue, stats| {
            let age = stats
                .oldest_due
                .map_or(0.0, |since| age_seconds(since, now));
            vec![(format!("queue=\"{queue}\""), format!("{age:.3}"))]
        }),
    );
    metric(
        "bgq_job_runs",
        "Runs of jobs that ended in the window, by queue and outcome.",
        each(&|queue, stats| {
            let mut samples = Vec::new();
            for (window, counts) in [("1h", stats.last_hour), ("24h", stats.last_day)] {
                for (outcome, count) in ["finished", "temporarily_failed", "permanently_failed"]
                    .iter()
                    .zip(counts)
                {
                    samples.push((
                        format!("queue=\"{queue}\",outcome=\"{outcome}\",window=\"{window}\""),
                        count.to_string(),
                    ));
                }
            }
            samples
        }),
    );
    metric(
        "bgq_last_run_start_timestamp_seconds",
        "When the last `process` run of the queue started (Unix time).",
        each(&|queue, stats| {
            stats
                .last_run
                .iter()
                .map(|run| {
                    (
                        format!("queue=\"{queue}\""),
                        format!("{:.3}", run.started_at as f64 / 1000.0),
                    )
                })
                .collect()
        }),
    );
    metric(
        "bgq_last_run_ok",
        "1 when the last `process` run of the queue ended well or is running, 0 when it died or failed.",
        each(&|queue, stats| {
            stats
                .last_run
                .iter()
                .map(|run| {
                    let ok = matches!(RunOutcome::of(run), RunOutcome::Ok | RunOutcome::Running);
                    (format!("queue=\"{queue}\""), u8::from(ok).to_string())
                })
                .collect()
        }),
    );
    text
}

/// The counters of runs since the queue began (`run_totals`), which Prometheus can `rate()`,
/// and which pauses are in force.
fn totals_to_prometheus(totals: &[(String, String, String, u64)], pauses: &[Pause]) -> String {
    let mut text = String::new();
    let name = "bgq_job_runs_total";
    let _ = writeln!(
        text,
        "# HELP {name} Runs of jobs that ended since the queue began, by queue, callback and outcome.\n# TYPE {name} counter"
    );
    for (queue, callback, outcome, total) in totals {
        let _ = writeln!(
            text,
            "{name}{{queue=\"{}\",callback=\"{}\",outcome=\"{}\"}} {total}",
            label(queue),
            label(callback),
            label(outcome)
        );
    }
    let name = "bgq_paused";
    let _ = writeln!(
        text,
        "# HELP {name} 1 for each pause in force (`bgq pause`); an empty label stands for every queue or callback.\n# TYPE {name} gauge"
    );
    for pause in pauses {
        let _ = writeln!(
            text,
            "{name}{{queue=\"{}\",callback=\"{}\"}} 1",
            label(pause.queue.as_deref().unwrap_or("")),
            label(pause.callback.as_deref().unwrap_or(""))
        );
    }
    text
}

fn to_tables(queues: &BTreeMap<String, QueueStats>, now: Millis, style: &Style) -> String {
    let states = [
        JobState::Ready,
        JobState::Processing,
        JobState::Waiting,
        JobState::TemporarilyFailed,
        JobState::PermanentlyFailed,
        JobState::Cancelled,
        JobState::Finished,
    ];
    let fixed = |header| Column {
        header,
        shrinks: false,
    };
    let mut columns = vec![Column {
        header: "QUEUE",
        shrinks: true,
    }];
    columns.extend(states.iter().map(|state| fixed(state.as_str())));
    columns.push(fixed("OLDEST_DUE"));
    let mut counts = Table::new(&columns);
    let mut recent = Table::new(&[
        Column {
            header: "QUEUE",
            shrinks: true,
        },
        fixed("FINISHED_1H"),
        fixed("FAILED_1H"),
        fixed("FINISHED_24H"),
        fixed("FAILED_24H"),
        fixed("LAST_RUN"),
        Column {
            header: "OUTCOME",
            shrinks: true,
        },
    ]);
    for (queue, stats) in queues {
        let mut row = vec![Cell::new(queue.clone())];
        row.extend(states.iter().map(|state| {
            Cell::new(
                stats
                    .jobs
                    .get(state.as_str())
                    .copied()
                    .unwrap_or(0)
                    .to_string(),
            )
        }));
        row.push(Cell::new(stats.oldest_due.map_or_else(
            || "-".to_owned(),
            |since| {
                span(u64::try_from(now - since).unwrap_or(0)).unwrap_or_else(|| "0s".to_owned())
            },
        )));
        counts.push(row);
        let (last_run, outcome) = match &stats.last_run {
            None => ("never".to_owned(), "-".to_owned()),
            Some(run) => (relative(run.started_at, now), describe_run(run)),
        };
        recent.push(vec![
            Cell::new(queue.clone()),
            Cell::new(stats.last_hour[0].to_string()),
            Cell::new((stats.last_hour[1] + stats.last_hour[2]).to_string()),
            Cell::new(stats.last_day[0].to_string()),
            Cell::new((stats.last_day[1] + stats.last_day[2]).to_string()),
            Cell::new(last_run),
            Cell::new(outcome),
        ]);
    }
    format!("{}\n{}", counts.render(style), recent.render(style))
}

/// A run's outcome in a few words, e.g. `ok (3 jobs, 1 failed)`.
fn describe_run(run: &RunInfo) -> String {
    match RunOutcome::of(run) {
        RunOutcome::Ok if run.failed > 0 => {
            format!("ok ({}, {} failed)", count(run.jobs, "job"), run.failed)
        }
        RunOutcome::Ok => format!("ok ({})", count(run.jobs, "job")),
        RunOutcome::Error => format!("error: {}", run.error.as_deref().unwrap_or("?")),
        outcome => outcome.as_str().to_owned(),
    }
}

/// Writes `bytes` to `path` so that a reader sees the old file or the new one, never a part:
/// a temporary file in the same folder, synced, then renamed over it.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("--output {} names no file", path.display()))?;
    let temp = path.with_file_name(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if let Err(err) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(anyhow::Error::new(err).context(format!("cannot write {}", path.display())));
    }
    Ok(())
}
