//! `bgq show ID`: one job, whole: every field, its parameters, its kept attempts (SPEC section
//! 12) and its last output.

use std::io::Write;

use crate::cli::ShowArgs;
use crate::config::Config;
use crate::error::usage;
use crate::escape;
use crate::human::{elapsed, full_time, when};
use crate::job::{JobState, JsonView, PayloadView, StoredPayload, format_utc, now_millis};
use crate::notify::NoticeKind;
use crate::runner::signal_name;
use crate::store::{AttemptEnd, AttemptOutcome, AttemptRecord, Durability, JobDetail, Store};

/// Lines of each attempt's output tail that the text form shows (`--json` has all of it).
const ATTEMPT_OUTPUT_LINES: usize = 5;

/// Bytes of a raw payload shown in hex.
const HEX_PREVIEW: usize = 64;

/// Runs `bgq show`.
pub fn run(config: &Config, args: &ShowArgs) -> anyhow::Result<()> {
    let store = crate::store::open(&config.database, Durability::Relaxed)?;
    let detail = find(&*store, args.id)?;
    // Notices not yet sent: stored with the job's state, deleted once a run sends them.
    let pending: Vec<NoticeKind> = if args.json {
        Vec::new()
    } else {
        store
            .pending_notices(&detail.record.queue)?
            .into_iter()
            .filter(|notice| notice.job_id == args.id)
            .map(|notice| notice.kind)
            .collect()
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.json {
        // Streamed: a large payload is not copied into one more string.
        write_json(&detail, &mut out)?;
        out.write_all(b"\n")?;
    } else {
        out.write_all(describe(config, &detail, &pending, now_millis()).as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

/// Job `id`, or the usage error that it does not exist.
pub fn find(store: &dyn Store, id: i64) -> anyhow::Result<JobDetail> {
    store
        .detail(id)?
        .ok_or_else(|| usage(format!("no job {id} in {}", store.identity())))
}

/// When the job runs next, if it runs again without an operator.
fn next_run_at(detail: &JobDetail) -> Option<i64> {
    detail
        .record
        .state
        .runs_again()
        .then_some(detail.record.run_at)
}

fn write_json(detail: &JobDetail, out: &mut impl Write) -> anyhow::Result<()> {
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
    // The parameters are written from their stored form, not put into `value`: as a
    // serde_json::Value a large payload takes many times its size.
    let parameters = match detail.payload.as_ref().map(StoredPayload::view) {
        Ok(PayloadView::Json(view)) => Parameters::Json(view),
        Ok(PayloadView::Raw(bytes)) => Parameters::Base64(Base64(bytes)),
        Err(why) => Parameters::Error(why),
    };
    let runs: Vec<serde_json::Value> = detail.runs.iter().map(run_json).collect();
    object.insert("runs".into(), runs.into());
    let shown = Shown {
        fields: object,
        parameters,
        output: &String::from_utf8_lossy(&detail.output),
    };
    serde_json::to_writer(out, &shown)?;
    Ok(())
}

/// One kept attempt as `show --json` has it in `runs`.
fn run_json(run: &AttemptRecord) -> serde_json::Value {
    serde_json::json!({
        "attempt": run.attempt,
        "run": run.run,
        "started_at": format_utc(run.started_at),
        "ended_at": format_utc(run.ended_at),
        "duration_ms": (run.ended_at - run.started_at).max(0),
        "outcome": run.ended.outcome.as_str(),
        "exit_code": run.ended.exit_code,
        "signal": run.ended.signal.map(signal_name),
        "output": String::from_utf8_lossy(&run.output),
    })
}

/// How an attempt ended, in words: `exit code 3: failed permanently`, `timed out`.
pub fn how_it_ended(ended: &AttemptEnd) -> String {
    let exit = match (ended.exit_code, ended.signal) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {}", signal_name(signal)),
        (None, None) => "no exit status".to_owned(),
    };
    match ended.outcome {
        AttemptOutcome::Finished => format!("{exit}: finished"),
        AttemptOutcome::TemporarilyFailed => format!("{exit}: temporarily failed"),
        AttemptOutcome::Waiting => format!("{exit}: waiting"),
        AttemptOutcome::PermanentlyFailed => format!("{exit}: failed permanently"),
        AttemptOutcome::Timeout => "timed out (its process group was killed)".to_owned(),
        AttemptOutcome::Cancelled => format!("cancelled by `bgq cancel --kill` ({exit})"),
        AttemptOutcome::Recovered => "recovered after a crash (its `process` run died)".to_owned(),
    }
}

/// The kept attempts, oldest first, each with the end of its output.
fn describe_runs(detail: &JobDetail, now: i64) -> String {
    if detail.runs.is_empty() {
        return "attempts kept: none\n".to_owned();
    }
    let mut text = format!("attempts kept ({}, oldest first):\n", detail.runs.len());
    for run in &detail.runs {
        text.push_str(&format!(
            "  attempt {} (run {}): started {}, ran {}, {}\n",
            run.attempt,
            run.run,
            when(run.started_at, now),
            elapsed(run.ended_at - run.started_at),
            how_it_ended(&run.ended)
        ));
        let output = String::from_utf8_lossy(&run.output);
        let lines: Vec<&str> = output.lines().collect();
        let skipped = lines.len().saturating_sub(ATTEMPT_OUTPUT_LINES);
        if skipped > 0 {
            text.push_str(&format!("    ({skipped} earlier line(s) of output)\n"));
        }
        for line in &lines[skipped..] {
            text.push_str(&format!("    | {}\n", escape::line(line)));
        }
    }
    text
}

/// `show --json`: the fields, then the parameters, then the output.
#[derive(serde::Serialize)]
struct Shown<'a> {
    #[serde(flatten)]
    fields: &'a serde_json::Map<String, serde_json::Value>,
    #[serde(flatten)]
    parameters: Parameters<'a>,
    output: &'a str,
}

/// The parameters: the JSON value, the raw bytes as base64, or why they cannot be read.
#[derive(serde::Serialize)]
enum Parameters<'a> {
    #[serde(rename = "parameters")]
    Json(JsonView<'a>),
    #[serde(rename = "raw_base64")]
    Base64(Base64<'a>),
    #[serde(rename = "parameters_error")]
    Error(&'a str),
}

/// Bytes written as base64 without a copy of them in memory.
struct Base64<'a>(&'a [u8]);

impl serde::Serialize for Base64<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&base64::display::Base64Display::new(
            self.0,
            &base64::engine::general_purpose::STANDARD,
        ))
    }
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

/// Which notices went out about the job (or wait for the next run to send them), in words:
/// `after 5 failed attempts: sent`, `none yet (one after 5 failed attempts)`.
fn notices(config: &Config, detail: &JobDetail, pending: &[NoticeKind]) -> String {
    let n = crate::human::count(config.notify_on_attempts.into(), "failed attempt");
    let sent = |kind: NoticeKind| {
        if pending.contains(&kind) {
            "not sent yet: the next `process` run sends it"
        } else {
            "sent"
        }
    };
    let mut said = Vec::new();
    if detail.notified {
        said.push(format!("after {n}: {}", sent(NoticeKind::Attempts)));
    }
    match detail.record.state {
        JobState::PermanentlyFailed => {
            said.push(format!("failed permanently: {}", sent(NoticeKind::Failed)));
        }
        JobState::Finished if detail.notified || pending.contains(&NoticeKind::Recovered) => {
            said.push(format!("recovered: {}", sent(NoticeKind::Recovered)));
        }
        _ => {}
    }
    if pending.contains(&NoticeKind::Orphan) {
        said.push("recovered from a run that died: not sent yet".to_owned());
    }
    if !said.is_empty() {
        return said.join("; ");
    }
    if detail.record.state.runs_again() {
        format!("none yet (one after {n})")
    } else {
        "none".to_owned()
    }
}

fn describe(config: &Config, detail: &JobDetail, pending: &[NoticeKind], now: i64) -> String {
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
        ("notices", notices(config, detail, pending)),
    ];
    let mut text = format!("job {}: {}\n", job.id, job.state);
    for (key, value) in fields {
        text.push_str(&format!("  {key:<13} {value}\n"));
    }
    match detail.payload.as_ref().map(StoredPayload::view) {
        Ok(PayloadView::Json(view)) => {
            let size = view.compact_len();
            text.push_str(&format!("parameters (JSON, {size} bytes):\n"));
            // Written from the stored form (never a serde_json::Value: see write_json) straight
            // onto the text, not into a string of its own that would then be copied.
            let start = text.len();
            let mut bytes = std::mem::take(&mut text).into_bytes();
            let written = serde_json::to_writer_pretty(&mut bytes, &view);
            text = String::from_utf8(bytes)
                .unwrap_or_else(|err| String::from_utf8_lossy(err.as_bytes()).into_owned());
            // serde_json leaves DEL and C1 raw in strings: shown escaped, as all human output.
            if let std::borrow::Cow::Owned(escaped) = escape::json(&text[start..]) {
                text.truncate(start);
                text.push_str(&escaped);
            }
            if let Err(err) = written {
                text.push_str(&format!("(cannot show them: {err})"));
            }
            text.push('\n');
        }
        Ok(PayloadView::Raw(bytes)) => {
            text.push_str(&format!("parameters (raw, {} bytes):\n", bytes.len()));
            text.push_str(&hex_preview(bytes));
        }
        Err(why) => text.push_str(&format!("parameters: unreadable: {}\n", name(why))),
    }
    text.push_str(&describe_runs(detail, now));
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
