//! `bgq list`: the queue as a table, as JSON lines, or the identifiers still unfinished.

use std::io::Write;

use crate::cli::ListArgs;
use crate::config::Config;
use crate::job::{JobRecord, JobState, Millis};
use crate::store::{Durability, ListFilter, Store};

/// Runs `bgq list`.
pub fn run(config: &Config, args: &ListArgs) -> anyhow::Result<()> {
    let filter = ListFilter {
        states: args
            .state
            .iter()
            .map(|state| state.parse::<JobState>())
            .collect::<anyhow::Result<_>>()?,
        queue: args.queue.clone(),
        callback: args.callback.clone(),
        identifiers: args.identifier.clone(),
    };
    let store = Store::open(&config.database, Durability::Relaxed)?;
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
            writeln!(out, "{identifier}")?;
        }
    } else {
        let limit = usize::try_from(args.limit).unwrap_or(usize::MAX);
        let jobs = store.list(&filter, limit)?;
        if args.json {
            for job in &jobs {
                writeln!(out, "{}", serde_json::to_string(job)?)?;
            }
        } else {
            write_table(&mut out, &jobs)?;
        }
    }
    out.flush()?;
    Ok(())
}

const HEADER: [&str; 9] = [
    "ID",
    "STATE",
    "QUEUE",
    "CALLBACK",
    "ATTEMPTS",
    "SERIAL_GROUP",
    "IDENTIFIER",
    "CREATED",
    "FINISHED",
];

fn write_table(out: &mut impl Write, jobs: &[JobRecord]) -> std::io::Result<()> {
    let rows: Vec<[String; 9]> = jobs.iter().map(row).collect();
    let mut widths = HEADER.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header = HEADER.map(str::to_owned);
    for cells in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        writeln!(out, "{}", line.join("  ").trim_end())?;
    }
    Ok(())
}

fn row(job: &JobRecord) -> [String; 9] {
    let or_dash = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".to_owned());
    [
        job.id.to_string(),
        job.state.to_string(),
        job.queue.clone(),
        job.callback.clone(),
        job.attempts.to_string(),
        or_dash(&job.serial_group),
        or_dash(&job.identifier),
        local_time(job.created_at),
        job.finished_at.map_or_else(|| "-".to_owned(), local_time),
    ]
}

/// Local time to the second, as an operator reads it next to cron's logs.
fn local_time(millis: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(millis).map_or_else(
        || millis.to_string(),
        |time| {
            time.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_under_the_header() {
        let job = JobRecord {
            id: 12,
            queue: "general".to_owned(),
            callback: "sendEmail".to_owned(),
            state: JobState::Ready,
            attempts: 0,
            serial_group: Some("invoice-7".to_owned()),
            identifier: None,
            created_at: 0,
            run_at: 0,
            started_at: None,
            finished_at: None,
        };
        let mut out = Vec::new();
        write_table(&mut out, &[job]).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0]
                .starts_with("ID  STATE  QUEUE    CALLBACK   ATTEMPTS  SERIAL_GROUP  IDENTIFIER")
        );
        assert!(lines[1].starts_with("12  READY  general  sendEmail  0         invoice-7     -"));
        assert_eq!(lines[0].find("CREATED"), lines[1].find(&local_time(0)));
    }
}
