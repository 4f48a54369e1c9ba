//! `bgq show ID`: one job, whole: every field, its parameters and its last output.

use std::io::Write;

use base64::Engine;

use crate::cli::ShowArgs;
use crate::config::Config;
use crate::error::usage;
use crate::escape;
use crate::human::full_time;
use crate::job::{JobState, Payload, format_utc, now_millis};
use crate::store::{Durability, JobDetail, Store};

/// Bytes of a raw payload shown in hex.
const HEX_PREVIEW: usize = 64;

/// Runs `bgq show`.
pub fn run(config: &Config, args: &ShowArgs) -> anyhow::Result<()> {
    let store = Store::open(&config.database, Durability::Relaxed)?;
    let detail = find(&store, args.id)?;
    let text = if args.json {
        format!("{}\n", to_json(&detail)?)
    } else {
        describe(config, &detail, now_millis())
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Job `id`, or the usage error that it does not exist.
pub fn find(store: &Store, id: i64) -> anyhow::Result<JobDetail> {
    store
        .detail(id)?
        .ok_or_else(|| usage(format!("no job {id} in {}", store.path().display())))
}

/// When the job runs next, if it runs again without an operator.
fn next_run_at(detail: &JobDetail) -> Option<i64> {
    detail
        .record
        .state
        .runs_again()
        .then_some(detail.record.run_at)
}

fn to_json(detail: &JobDetail) -> anyhow::Result<String> {
    let mut value = serde_json::to_value(&detail.record)?;
    let Some(object) = value.as_object_mut() else {
        anyhow::bail!("a job did not serialise to a JSON object");
    };
    object.insert(
        "next_run_at".into(),
        next_run_at(detail).map(format_utc).into(),
    );
    object.insert("notified".into(), detail.notified.into());
    let after: Vec<i64> = detail.after.iter().map(|(id, _)| *id).collect();
    object.insert("after".into(), after.into());
    match &detail.payload {
        Ok(Payload::Json(parameters)) => {
            object.insert("parameters".into(), parameters.clone());
        }
        Ok(Payload::Raw(bytes)) => {
            object.insert(
                "raw_base64".into(),
                base64::engine::general_purpose::STANDARD
                    .encode(bytes)
                    .into(),
            );
        }
        Err(why) => {
            object.insert("parameters_error".into(), why.clone().into());
        }
    }
    object.insert(
        "output".into(),
        String::from_utf8_lossy(&detail.output).into_owned().into(),
    );
    Ok(value.to_string())
}

/// The jobs it runs after, with their states: `5 (FINISHED), 6 (READY)`, or `-`.
fn after(detail: &JobDetail) -> String {
    if detail.after.is_empty() {
        return "-".to_owned();
    }
    detail
        .after
        .iter()
        .map(|(id, state)| {
            format!(
                "{id} ({})",
                state.map_or("FINISHED, cleared", JobState::as_str)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe(config: &Config, detail: &JobDetail, now: i64) -> String {
    let job = &detail.record;
    // Names came from a publisher (or a config): shown escaped, each on its line.
    let name = |value: &str| escape::line(value).into_owned();
    let or_dash = |value: &Option<String>| value.as_deref().map_or_else(|| "-".to_owned(), name);
    let time = |millis: Option<i64>| millis.map_or_else(|| "-".to_owned(), |t| full_time(t, now));
    let attempts = match config.callbacks.get(&job.callback) {
        Some(callback) => format!("{} of {}", job.attempts, callback.retry.max_attempts),
        None => job.attempts.to_string(),
    };
    let waits_for: Vec<String> = detail.waits_for().map(|(id, _)| id.to_string()).collect();
    let next_run = match next_run_at(detail) {
        Some(_) if !waits_for.is_empty() => format!("after job {} finishes", waits_for.join(", ")),
        Some(at) if at > now => full_time(at, now),
        Some(_) => "at the next `process` run".to_owned(),
        None if job.state == JobState::Processing => "running now".to_owned(),
        None => "-".to_owned(),
    };
    let fields = [
        ("queue", name(&job.queue)),
        ("callback", name(&job.callback)),
        ("serial group", or_dash(&job.serial_group)),
        ("identifier", or_dash(&job.identifier)),
        ("priority", job.priority.to_string()),
        ("after", after(detail)),
        ("attempts", attempts),
        ("created", time(Some(job.created_at))),
        ("started", time(job.started_at)),
        ("finished", time(job.finished_at)),
        ("state since", time(Some(detail.record.state_changed_at))),
        ("next run", next_run),
        (
            "notified",
            if detail.notified { "yes" } else { "no" }.to_owned(),
        ),
    ];
    let mut text = format!("job {}: {}\n", job.id, job.state);
    for (key, value) in fields {
        text.push_str(&format!("  {key:<13} {value}\n"));
    }
    match &detail.payload {
        Ok(Payload::Json(value)) => {
            let pretty = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
            let size = serde_json::to_vec(value).map_or(0, |bytes| bytes.len());
            text.push_str(&format!(
                "parameters (JSON, {size} bytes):\n{}\n",
                escape::json(&pretty)
            ));
        }
        Ok(Payload::Raw(bytes)) => {
            text.push_str(&format!("parameters (raw, {} bytes):\n", bytes.len()));
            text.push_str(&hex_preview(bytes));
        }
        Err(why) => text.push_str(&format!("parameters: unreadable: {}\n", name(why))),
    }
    if detail.output.is_empty() {
        text.push_str("output of the last run: none\n");
    } else {
        // Invalid UTF-8 becomes U+FFFD first, so that what is escaped is what would be shown.
        text.push_str(&format!(
            "output of the last run ({} bytes):\n{}",
            detail.output.len(),
            escape::text(&String::from_utf8_lossy(&detail.output))
        ));
        if !detail.output.ends_with(b"\n") {
            text.push('\n');
        }
    }
    text
}

/// The first bytes as `hexdump -C` shows them, and how many more there are.
fn hex_preview(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(HEX_PREVIEW)];
    let mut text = String::new();
    for (line, chunk) in shown.chunks(16).enumerate() {
        let mut hex = String::new();
        for (index, byte) in chunk.iter().enumerate() {
            if index == 8 {
                hex.push(' ');
            }
            hex.push_str(&format!("{byte:02x} "));
        }
        let printable: String = chunk
            .iter()
            .map(|byte| {
                if byte.is_ascii_graphic() || *byte == b' ' {
                    char::from(*byte)
                } else {
                    '.'
                }
            })
            .collect();
        text.push_str(&format!("{:08x}  {hex:<49} |{printable}|\n", line * 16));
    }
    if bytes.len() > HEX_PREVIEW {
        text.push_str(&format!("... {} more bytes\n", bytes.len() - HEX_PREVIEW));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_preview_looks_like_hexdump_c() {
        let bytes: Vec<u8> = (0..20).chain(*b"|AB").collect();
        let text = hex_preview(&bytes);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "00000000  00 01 02 03 04 05 06 07  08 09 0a 0b 0c 0d 0e 0f  |................|"
        );
        assert_eq!(
            lines[1],
            "00000010  10 11 12 13 7c 41 42                              |....|AB|"
        );
        let long = vec![b'x'; 100];
        assert!(hex_preview(&long).ends_with("... 36 more bytes\n"));
    }
}
