//! The activity log of `process -v` and `--log-format json` (SPEC section 12): one line on
//! stderr per job start and end, and per callback that could not be started, as text for people
//! or as JSON lines for log shippers. Written through `diagnostic`, so a stderr that cannot take
//! it never stops the queue.

use serde_json::json;

use crate::cli::LogFormat;
use crate::escape;
use crate::job::{JobState, Millis, format_utc};
use crate::runner::signal_name;
use crate::store::AttemptEnd;

/// Where a run's activity goes: nowhere (the default), text lines or JSON lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// Quiet when all is well.
    Off,
    /// `-v`: a line a person reads.
    Text,
    /// `--log-format json`: one JSON object per line.
    Json,
}

/// The job an event is about.
pub struct JobEvent<'a> {
    /// Job id.
    pub id: i64,
    /// Its queue.
    pub queue: &'a str,
    /// Its callback.
    pub callback: &'a str,
    /// BGQ_ATTEMPT of the run.
    pub attempt: u32,
}

impl Activity {
    /// The activity log `-v` (`verbose`) and `--log-format` ask for.
    pub fn new(verbose: bool, format: Option<LogFormat>) -> Activity {
        match format {
            Some(LogFormat::Json) => Activity::Json,
            Some(LogFormat::Text) => Activity::Text,
            None if verbose => Activity::Text,
            None => Activity::Off,
        }
    }

    /// A callback started for `job` at `now`.
    pub fn start(self, job: &JobEvent<'_>, now: Millis) {
        match self {
            Activity::Off => {}
            Activity::Text => crate::diagnostic!("bgq: {} started", describe(job)),
            Activity::Json => write_json(json!({
                "event": "start",
                "time": format_utc(now),
                "id": job.id,
                "queue": job.queue,
                "callback": job.callback,
                "attempt": job.attempt,
            })),
        }
    }

    /// The run of `job` ended at `now` after `duration` milliseconds, as `ended`, leaving the job
    /// in `state`.
    pub fn end(
        self,
        job: &JobEvent<'_>,
        ended: &AttemptEnd,
        state: JobState,
        duration: Millis,
        now: Millis,
    ) {
        match self {
            Activity::Off => {}
            Activity::Text => {
                let how = match (ended.exit_code, ended.signal) {
                    (Some(code), _) => format!(" (exit code {code})"),
                    (None, Some(signal)) => format!(" (killed by {})", signal_name(signal)),
                    (None, None) => String::new(),
                };
                crate::diagnostic!(
                    "bgq: {} {}{how} after {}: {}",
                    describe(job),
                    ended.outcome.as_str().replace('_', " "),
                    crate::human::elapsed(duration),
                    state.as_str()
                );
            }
            Activity::Json => write_json(json!({
                "event": "end",
                "time": format_utc(now),
                "id": job.id,
                "queue": job.queue,
                "callback": job.callback,
                "attempt": job.attempt,
                "outcome": ended.outcome.as_str(),
                "state": state.as_str(),
                "exit_code": ended.exit_code,
                "signal": ended.signal.map(signal_name),
                "duration_ms": duration,
            })),
        }
    }

    /// The callback of `job` could not be started (`reason`); the job was put back. Text lines
    /// leave this to the error line `process` writes anyway.
    pub fn not_started(self, job: &JobEvent<'_>, reason: &str, now: Millis) {
        if self == Activity::Json {
            write_json(json!({
                "event": "not_started",
                "time": format_utc(now),
                "id": job.id,
                "queue": job.queue,
                "callback": job.callback,
                "attempt": job.attempt,
                "reason": reason,
            }));
        }
    }
}

/// `job 12 (sendEmail) attempt 1`, names escaped.
fn describe(job: &JobEvent<'_>) -> String {
    format!(
        "job {} ({}) attempt {}",
        job.id,
        escape::line(job.callback),
        job.attempt
    )
}

/// One JSON line, with the control characters serde_json leaves raw escaped as JSON.
fn write_json(value: serde_json::Value) {
    crate::diagnostic!("{}", escape::json(&value.to_string()));
}
