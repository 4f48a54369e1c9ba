//! Notices for operators: a job that keeps failing or failed for good. They go to the `notify`
//! command as JSON on stdin, or to stderr, which cron mails.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::job::JobRecord;

/// How long the notify command may take.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(30);

/// One notice about one job.
#[derive(Debug, Clone)]
pub struct Notice {
    /// The job as `list --json` shows it.
    pub job: JobRecord,
    /// Tail of what its last run printed.
    pub output: Vec<u8>,
    /// Why it is notified, e.g. "failed 5 attempts".
    pub reason: String,
}

impl Notice {
    /// The notice as one JSON object: the job's `list --json` fields, "output" and "notice".
    pub fn to_json(&self) -> String {
        let mut value = serde_json::to_value(&self.job).unwrap_or_default();
        if let Some(object) = value.as_object_mut() {
            object.insert(
                "output".to_owned(),
                String::from_utf8_lossy(&self.output).into_owned().into(),
            );
            object.insert("notice".to_owned(), self.reason.clone().into());
        }
        value.to_string()
    }
}

/// Sends `notice` to `command`, or to stderr without one. A failing command does not lose the
/// notice: it is printed to stderr with the reason the command failed.
pub fn send(command: Option<&[String]>, notice: &Notice) {
    let json = notice.to_json();
    let stderr_line = format!(
        "bgq: notice: job {} ({}) {}: {json}",
        notice.job.id, notice.job.callback, notice.reason
    );
    let Some(argv) = command else {
        eprintln!("{stderr_line}");
        return;
    };
    if let Err(why) = run_notify(argv, &json) {
        eprintln!(
            "bgq: error: notify command `{}` failed: {why}",
            argv.join(" ")
        );
        eprintln!("{stderr_line}");
    }
}

fn run_notify(argv: &[String], json: &str) -> Result<(), String> {
    let (program, args) = argv.split_first().ok_or("empty command")?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|err| format!("cannot start it: {err}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its stdin is its own business; only its exit counts.
        let _ = stdin.write_all(format!("{json}\n").as_bytes());
    }
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(status.to_string()),
            Ok(None) if started.elapsed() > NOTIFY_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "no exit after {}",
                    crate::duration::format(NOTIFY_TIMEOUT)
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(err) => return Err(err.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobState;

    #[test]
    fn json_has_the_job_fields_output_and_reason() {
        let notice = Notice {
            job: JobRecord {
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
            },
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
        assert!(!notice.to_json().contains('\n'));
    }
}
