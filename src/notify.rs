//! Notices for operators: a job that keeps failing, failed for good, was recovered from a dead
//! run, or finished after it was notified. Everything one `process` run has to report goes out
//! once, as a digest: to the `notify` command as one JSON object per line on stdin, or to stderr,
//! which cron mails.

use std::process::Stdio;
use std::time::Duration;

use crate::escape;
use crate::job::JobRecord;
use crate::runner::{self, Exit};

/// How long the notify command may take.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(30);

/// What a notice is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    /// The job failed `notify_on_attempts` times and is still retrying.
    Attempts,
    /// The job failed permanently.
    Failed,
    /// The job was recovered from a `process` run that died.
    Orphan,
    /// A job notified earlier has now FINISHED.
    Recovered,
}

impl NoticeKind {
    /// The name stored and sent as `kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::Attempts => "attempts",
            NoticeKind::Failed => "failed",
            NoticeKind::Orphan => "orphan",
            NoticeKind::Recovered => "recovered",
        }
    }
}

impl std::str::FromStr for NoticeKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        [
            NoticeKind::Attempts,
            NoticeKind::Failed,
            NoticeKind::Orphan,
            NoticeKind::Recovered,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == text)
        .ok_or_else(|| format!("unknown notice kind `{text}`"))
    }
}

/// One notice about one job.
#[derive(Debug, Clone)]
pub struct Notice {
    /// The job it is about.
    pub job_id: i64,
    /// The job as `list --json` shows it, unless it was deleted since.
    pub job: Option<JobRecord>,
    /// Tail of what its last run printed.
    pub output: Vec<u8>,
    /// Why it is notified, e.g. "failed 5 attempts".
    pub reason: String,
    /// What it is about.
    pub kind: NoticeKind,
}

impl Notice {
    /// The notice as one JSON object: the job's `list --json` fields, "output", "notice" and
    /// "kind".
    pub fn to_json(&self) -> String {
        let mut value = match &self.job {
            Some(job) => serde_json::to_value(job).unwrap_or_default(),
            None => serde_json::json!({ "id": self.job_id }),
        };
        if let Some(object) = value.as_object_mut() {
            object.insert(
                "output".to_owned(),
                String::from_utf8_lossy(&self.output).into_owned().into(),
            );
            object.insert("notice".to_owned(), self.reason.clone().into());
            object.insert("kind".to_owned(), self.kind.as_str().into());
        }
        value.to_string()
    }

    /// The notice as one stderr line, safe on the terminal that reads cron's mail: names escaped,
    /// and the JSON with DEL and C1 as JSON escapes (`serde_json` escapes only C0), so that it
    /// still parses to the exact job and output.
    fn stderr_line(&self) -> String {
        let callback = self.job.as_ref().map_or("?", |job| job.callback.as_str());
        format!(
            "bgq: notice: job {} ({}) {}: {}",
            self.job_id,
            escape::line(callback),
            escape::line(&self.reason),
            escape::json(&self.to_json())
        )
    }
}

/// Sends a run's `notices` as one digest: to `command` (started once, one JSON object a line on
/// its stdin), or to stderr without one. A failing command does not lose them: they are printed
/// to stderr with the reason the command failed. Orphans are left out on stderr: recovery
/// already reported each there.
pub fn send_digest(command: Option<&[String]>, notices: &[Notice]) {
    if notices.is_empty() {
        return;
    }
    let to_stderr = || {
        for notice in notices.iter().filter(|n| n.kind != NoticeKind::Orphan) {
            crate::diagnostic!("{}", notice.stderr_line());
        }
    };
    let Some(argv) = command else {
        to_stderr();
        return;
    };
    let mut lines = String::new();
    for notice in notices {
        lines.push_str(&notice.to_json());
        lines.push('\n');
    }
    if let Err(why) = run_notify(argv, &lines) {
        crate::diagnostic!(
            "bgq: error: notify command `{}` failed: {why}",
            argv.join(" ")
        );
        to_stderr();
    }
}

/// Runs the notify command through the code callbacks run through (its own group, no shell,
/// stdin fed as it reads, the group killed at the timeout), keeping none of its output: its
/// stderr goes where ours does, to cron's mail.
fn run_notify(argv: &[String], lines: &str) -> Result<(), String> {
    let (program, args) = argv.split_first().ok_or("empty command")?;
    // No grace after the timeout, as before: the end of the run waits on the notifier, and
    // NOTIFY_TIMEOUT was its chance.
    let exit = runner::run_command(
        program,
        args,
        Stdio::null(),
        lines.as_bytes().to_vec(),
        NOTIFY_TIMEOUT,
        Duration::ZERO,
    )
    .map_err(|err| format!("cannot start it: {err}"))?;
    match exit {
        Exit::Code(0) => Ok(()),
        failed => Err(failed.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobState;

    #[test]
    fn json_has_the_job_fields_output_and_reason() {
        let notice = Notice {
            job_id: 7,
            kind: NoticeKind::Attempts,
            job: Some(JobRecord {
                id: 7,
                queue: "general".to_owned(),
                callback: "sendEmail".to_owned(),
                state: JobState::TemporarilyFailed,
                attempts: 5,
                serial_group: None,
                identifier: Some("mail-7".to_owned()),
                created_at: 0,
                run_at: 1000,
                started_at: Some(0),
                finished_at: None,
                state_changed_at: 1000,
                priority: 0,
                blocked_by: 0,
                batch: None,
            }),
            output: b"smtp down\n".to_vec(),
            reason: "failed 5 attempts".to_owned(),
        };
        let value: serde_json::Value = serde_json::from_str(&notice.to_json()).expect("json");
        assert_eq!(value["id"], 7);
        assert_eq!(value["state"], "TEMPORARILY_FAILED");
        assert_eq!(value["identifier"], "mail-7");
        assert_eq!(value["finished_at"], serde_json::Value::Null);
        assert_eq!(value["output"], "smtp down\n");
        assert_eq!(value["notice"], "failed 5 attempts");
        assert_eq!(value["kind"], "attempts");
        assert!(!notice.to_json().contains('\n'));
    }

    #[test]
    fn the_stderr_line_has_no_control_characters_and_the_exact_json() {
        let output = "\x1b]52;c;SGVsbG8=\x07\x1b[2J\rgone\x7f\u{9b}31m\n".to_owned();
        let notice = Notice {
            job_id: 7,
            kind: NoticeKind::Failed,
            job: Some(JobRecord {
                id: 7,
                queue: "mail\x1b[2J".to_owned(),
                callback: "send\u{85}Email".to_owned(),
                state: JobState::PermanentlyFailed,
                attempts: 1,
                serial_group: None,
                identifier: Some("a\nb".to_owned()),
                created_at: 0,
                run_at: 0,
                started_at: Some(0),
                finished_at: None,
                state_changed_at: 0,
                priority: 0,
                blocked_by: 0,
                batch: None,
            }),
            output: output.clone().into_bytes(),
            reason: "failed permanently".to_owned(),
        };
        let line = notice.stderr_line();
        assert!(!line.chars().any(escape::is_control), "{line:?}");
        assert!(
            line.starts_with("bgq: notice: job 7 (send\\u{85}Email) failed permanently: {"),
            "{line}"
        );
        let json = &line[line.find(": {").expect("JSON") + 2..];
        let value: serde_json::Value = serde_json::from_str(json).expect("valid JSON");
        assert_eq!(value["output"], output.as_str());
        assert_eq!(value["queue"], "mail\x1b[2J");
        assert_eq!(value["identifier"], "a\nb");
    }
}
