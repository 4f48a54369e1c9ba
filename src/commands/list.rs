//! `bgq list`: the queue as a table, as JSON lines, or the identifiers still unfinished.

use std::io::Write;

use crate::cli::ListArgs;
use crate::config::Config;
use crate::escape;
use crate::human::relative;
use crate::job::{JobRecord, JobState, Millis, now_millis};
use crate::store::{Durability, ListFilter, Pause, paused};
use crate::table::{Cell, Column, Table};
use crate::term::{Paint, Style};

/// Runs `bgq list`.
pub fn run(config: &Config, args: &ListArgs, style: &Style) -> anyhow::Result<()> {
    let filter = ListFilter {
        states: args
            .state
            .iter()
            .map(|state| state.parse::<JobState>())
            .collect::<anyhow::Result<_>>()?,
        queue: args.queue.clone(),
        callback: args.callback.clone(),
        identifiers: args.identifier.clone(),
        batch: args.batch,
    };
    let store = crate::store::open(&config.database, Durability::Relaxed)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.unfinished {
        let unfinished = store.unfinished_identifiers(&filter)?;
        // Asked-for identifiers come back in the order asked, once each.
        let mut shown: Vec<&String> = Vec::new();
        if args.identifier.is_empty() {
            shown.extend(&unfinished);
        } else {
            for wanted in &args.identifier {
                if unfinished.contains(wanted) && !shown.contains(&wanted) {
                    shown.push(wanted);
                }
            }
        }
        for identifier in shown {
            // One line per identifier, even for one an older bgq stored with a newline in it.
            writeln!(out, "{}", escape::line(identifier))?;
        }
    } else {
        // 0 and --all: no limit. One job more than shown tells whether the list was cut short;
        // only then are the jobs counted (a count of a big queue costs a scan of an index).
        let limit = match args.limit {
            _ if args.all => usize::MAX,
            0 => usize::MAX,
            limit => usize::try_from(limit).unwrap_or(usize::MAX),
        };
        let mut jobs = store.list(&filter, limit.saturating_add(1))?;
        let cut = jobs.len() > limit;
        jobs.truncate(limit);
        if args.json {
            for job in &jobs {
                writeln!(out, "{}", serde_json::to_string(job)?)?;
            }
        } else {
            let pauses = store.pauses()?;
            out.write_all(table(&jobs, &pauses, now_millis()).render(style).as_bytes())?;
        }
        if cut {
            // On stderr, so that stdout stays the jobs alone for a script, table or JSON.
            out.flush()?;
            let total = store.count(&filter)?;
            crate::diagnostic!(
                "bgq: showing {} of {total} jobs, newest first; --limit N or --all shows more",
                jobs.len()
            );
        }
    }
    out.flush()?;
    Ok(())
}

/// The columns of the table; names may be shortened to fit, numbers, states and times not.
const COLUMNS: [Column; 9] = [
    Column {
        header: "ID",
        shrinks: false,
    },
    Column {
        header: "STATE",
        shrinks: false,
    },
    Column {
        header: "QUEUE",
        shrinks: true,
    },
    Column {
        header: "CALLBACK",
        shrinks: true,
    },
    Column {
        header: "ATTEMPTS",
        shrinks: false,
    },
    Column {
        header: "SERIAL_GROUP",
        shrinks: true,
    },
    Column {
        header: "IDENTIFIER",
        shrinks: true,
    },
    Column {
        header: "CREATED",
        shrinks: false,
    },
    Column {
        header: "WHEN",
        shrinks: false,
    },
];

/// The jobs as a table; its cells show control characters in names escaped.
fn table(jobs: &[JobRecord], pauses: &[Pause], now: Millis) -> Table {
    let mut table = Table::new(&COLUMNS);
    let or_dash = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".to_owned());
    for job in jobs {
        // A job that wants to run but that `bgq pause` holds says so: `READY (paused)`.
        let held = matches!(
            job.state,
            JobState::Ready | JobState::TemporarilyFailed | JobState::Waiting
        ) && paused(pauses, &job.queue, &job.callback).is_some();
        let state = if held {
            format!("{} (paused)", job.state)
        } else {
            job.state.as_str().to_owned()
        };
        table.push(vec![
            Cell::new(job.id.to_string()),
            Cell::painted(state, state_paint(job.state)),
            Cell::new(job.queue.clone()),
            Cell::new(job.callback.clone()),
            Cell::new(job.attempts.to_string()),
            Cell::new(or_dash(&job.serial_group)),
            Cell::new(or_dash(&job.identifier)),
            Cell::new(relative(job.created_at, now)),
            Cell::new(when(job, now)),
        ]);
    }
    table
}

/// The colour of a state: green done, yellow retrying, red failed, cyan running.
fn state_paint(state: JobState) -> Paint {
    match state {
        JobState::Ready => Paint::Bold,
        JobState::Processing => Paint::Cyan,
        JobState::Finished => Paint::Green,
        JobState::TemporarilyFailed => Paint::Yellow,
        JobState::Waiting => Paint::Magenta,
        JobState::PermanentlyFailed => Paint::Red,
        JobState::Cancelled => Paint::Dim,
    }
}

/// The time that matters for a job in its state, e.g. `retry in 2 min`, `finished 3 min ago`.
fn when(job: &JobRecord, now: Millis) -> String {
    match job.state {
        JobState::Ready if job.blocked_by > 0 => "after other jobs".to_owned(),
        JobState::Ready if job.run_at > now => format!("due {}", relative(job.run_at, now)),
        JobState::Ready => "due".to_owned(),
        JobState::Processing => {
            let started = job.started_at.unwrap_or(job.run_at);
            match crate::human::span(now.abs_diff(started)) {
                Some(span) => format!("running for {span}"),
                None => "running".to_owned(),
            }
        }
        JobState::Finished => format!(
            "finished {}",
            relative(job.finished_at.unwrap_or(job.state_changed_at), now)
        ),
        JobState::TemporarilyFailed if job.run_at > now => {
            format!("retry {}", relative(job.run_at, now))
        }
        JobState::TemporarilyFailed => "retry due".to_owned(),
        // As `explain` says it: after `waiting_delay` under --watch, else the next run.
        JobState::Waiting if job.run_at > now => {
            format!("waiting, due {}", relative(job.run_at, now))
        }
        JobState::Waiting => "due at the next run".to_owned(),
        JobState::PermanentlyFailed => {
            format!("failed {}", relative(job.state_changed_at, now))
        }
        JobState::Cancelled => format!("cancelled {}", relative(job.state_changed_at, now)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(state: JobState, run_at: Millis, finished_at: Option<Millis>) -> JobRecord {
        JobRecord {
            id: 12,
            queue: "general".to_owned(),
            callback: "sendEmail".to_owned(),
            state,
            attempts: 0,
            serial_group: Some("invoice-7".to_owned()),
            identifier: None,
            created_at: 0,
            run_at,
            started_at: None,
            finished_at,
            state_changed_at: run_at,
            priority: 0,
            blocked_by: 0,
            batch: None,
        }
    }

    #[test]
    fn table_aligns_columns_under_the_header() {
        let text = table(&[job(JobState::Ready, 0, None)], &[], 180_000).render(&Style::plain());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0],
            "ID  STATE  QUEUE    CALLBACK   ATTEMPTS  SERIAL_GROUP  IDENTIFIER  CREATED    WHEN"
        );
        assert_eq!(
            lines[1],
            "12  READY  general  sendEmail  0         invoice-7     -           3 min ago  due"
        );
    }

    #[test]
    fn names_with_control_characters_stay_on_their_row() {
        let job = JobRecord {
            queue: "mail\x1b]52;c;SGVsbG8=\x07".to_owned(),
            identifier: Some("sync\n42".to_owned()),
            ..job(JobState::Ready, 0, None)
        };
        let text = table(&[job], &[], 180_000).render(&Style::plain());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[1].starts_with("12  READY  mail\\x1b]52;c;SGVsbG8=\\x07  sendEmail"),
            "{text}"
        );
        assert!(lines[1].contains("  sync\\n42  "), "{text}");
    }

    #[test]
    fn when_says_what_the_state_waits_for() {
        let now = 10_000_000;
        assert_eq!(
            when(&job(JobState::TemporarilyFailed, now + 120_000, None), now),
            "retry in 2 min"
        );
        assert_eq!(
            when(&job(JobState::Finished, 0, Some(now - 7_200_000)), now),
            "finished 2 h ago"
        );
        assert_eq!(
            when(&job(JobState::Ready, now + 5000, None), now),
            "due in 5s"
        );
        let waiting = JobRecord {
            blocked_by: 1,
            ..job(JobState::Ready, now - 5000, None)
        };
        assert_eq!(when(&waiting, now), "after other jobs");
    }
}
