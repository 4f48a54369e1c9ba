//! What a job is: its states, its parameters (JSON or raw bytes, stored as MessagePack), and the
//! record that `list` and notices show.

use std::fmt;
use std::str::FromStr;

use anyhow::Context;

use crate::error::usage;

/// The six states of SPEC.md section 4, and CANCELLED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    /// Published, waiting for its turn.
    Ready,
    /// A callback is running it now.
    Processing,
    /// The callback exited 0.
    Finished,
    /// The callback asked for a retry, or timed out.
    TemporarilyFailed,
    /// The callback said "not yet"; runs at the next `process` run.
    Waiting,
    /// Failed for good; runs again only by `bgq retry`.
    PermanentlyFailed,
    /// Stopped by `bgq cancel`; runs again only by `bgq retry`.
    Cancelled,
}

impl JobState {
    /// Every state, in lifecycle order.
    pub const ALL: [JobState; 7] = [
        JobState::Ready,
        JobState::Processing,
        JobState::Finished,
        JobState::TemporarilyFailed,
        JobState::Waiting,
        JobState::PermanentlyFailed,
        JobState::Cancelled,
    ];

    /// The name stored in the database and shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Ready => "READY",
            JobState::Processing => "PROCESSING",
            JobState::Finished => "FINISHED",
            JobState::TemporarilyFailed => "TEMPORARILY_FAILED",
            JobState::Waiting => "WAITING",
            JobState::PermanentlyFailed => "PERMANENTLY_FAILED",
            JobState::Cancelled => "CANCELLED",
        }
    }

    /// Whether a job in this state may still run without an operator's `bgq retry`.
    pub fn runs_again(self) -> bool {
        matches!(
            self,
            JobState::Ready | JobState::TemporarilyFailed | JobState::Waiting
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = anyhow::Error;

    /// Accepts the names in any case, e.g. `permanently_failed`.
    fn from_str(text: &str) -> anyhow::Result<Self> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str().eq_ignore_ascii_case(text))
            .ok_or_else(|| {
                let names: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
                usage(format!(
                    "unknown state `{text}` (states: {})",
                    names.join(", ")
                ))
            })
    }
}

/// A job's parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// A JSON value, delivered as one line of compact JSON.
    Json(serde_json::Value),
    /// Exact bytes from `--raw`, delivered unchanged.
    Raw(Vec<u8>),
}

impl Payload {
    /// Encodes as MessagePack: the JSON value itself, or one `bin` holding the raw bytes.
    ///
    /// JSON never encodes to a top-level `bin`, so the first byte tells the two apart.
    pub fn to_msgpack(&self) -> anyhow::Result<Vec<u8>> {
        match self {
            Payload::Json(value) => {
                rmp_serde::to_vec(value).context("cannot encode parameters as MessagePack")
            }
            Payload::Raw(bytes) => {
                let mut out = Vec::with_capacity(bytes.len() + 5);
                rmp_serde::encode::write(&mut out, serde_bytes::Bytes::new(bytes))
                    .context("cannot encode raw payload as MessagePack")?;
                Ok(out)
            }
        }
    }

    /// Decodes what `to_msgpack` stored.
    pub fn from_msgpack(bytes: &[u8]) -> anyhow::Result<Payload> {
        const BIN8: u8 = 0xc4;
        const BIN32: u8 = 0xc6;
        match bytes.first() {
            Some(BIN8..=BIN32) => {
                let raw: serde_bytes::ByteBuf = rmp_serde::from_slice(bytes)
                    .context("stored raw payload is not valid MessagePack")?;
                Ok(Payload::Raw(raw.into_vec()))
            }
            _ => Ok(Payload::Json(
                rmp_serde::from_slice(bytes)
                    .context("stored parameters are not valid MessagePack")?,
            )),
        }
    }

    /// The bytes a callback reads on stdin: compact JSON and a newline, or the raw bytes.
    pub fn stdin_bytes(&self) -> anyhow::Result<Vec<u8>> {
        match self {
            Payload::Json(value) => {
                let mut line =
                    serde_json::to_vec(value).context("cannot encode parameters as JSON")?;
                line.push(b'\n');
                Ok(line)
            }
            Payload::Raw(bytes) => Ok(bytes.clone()),
        }
    }
}

/// A job about to be stored by `publish`.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Queue it goes to.
    pub queue: String,
    /// Callback name from the config.
    pub callback: String,
    /// Its parameters.
    pub payload: Payload,
    /// Jobs sharing a serial group run one at a time, in publish order.
    pub serial_group: Option<String>,
    /// A free-form name the application chooses (for `list --identifier`).
    pub identifier: Option<String>,
}

/// A stored job as `list` and notices show it (without its parameters).
#[derive(Debug, Clone, serde::Serialize)]
pub struct JobRecord {
    /// Job id.
    pub id: i64,
    /// Queue.
    pub queue: String,
    /// Callback name.
    pub callback: String,
    /// Current state.
    #[serde(serialize_with = "serialize_state")]
    pub state: JobState,
    /// Counted runs so far.
    pub attempts: u32,
    /// Serial group, if any.
    pub serial_group: Option<String>,
    /// Identifier, if any.
    pub identifier: Option<String>,
    /// When it was published.
    #[serde(serialize_with = "serialize_time")]
    pub created_at: Millis,
    /// When it is (or was) due.
    #[serde(serialize_with = "serialize_time")]
    pub run_at: Millis,
    /// When its last run started.
    #[serde(serialize_with = "serialize_opt_time")]
    pub started_at: Option<Millis>,
    /// When it FINISHED.
    #[serde(serialize_with = "serialize_opt_time")]
    pub finished_at: Option<Millis>,
    /// When its state last changed.
    #[serde(serialize_with = "serialize_time")]
    pub state_changed_at: Millis,
    /// Higher runs first among the due jobs of its queue.
    pub priority: i64,
    /// How many of the jobs it was published `--after` have not FINISHED yet.
    #[serde(skip)]
    pub blocked_by: i64,
}

/// Milliseconds since the Unix epoch, as stored.
pub type Millis = i64;

/// The current time in epoch milliseconds.
pub fn now_millis() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

/// RFC 3339 in UTC with milliseconds, e.g. `2026-11-23T15:32:50.123Z`.
pub fn format_utc(millis: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(millis).map_or_else(
        || millis.to_string(),
        |time| time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

fn serialize_state<S: serde::Serializer>(state: &JobState, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(state.as_str())
}

fn serialize_time<S: serde::Serializer>(millis: &Millis, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_utc(*millis))
}

fn serialize_opt_time<S: serde::Serializer>(
    millis: &Option<Millis>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match millis {
        Some(millis) => s.serialize_str(&format_utc(*millis)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_names_in_any_case() {
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse::<JobState>().ok(), Some(state));
            assert_eq!(
                state.as_str().to_lowercase().parse::<JobState>().ok(),
                Some(state)
            );
        }
        let err = "DONE".parse::<JobState>().expect_err("unknown");
        assert_eq!(crate::error::exit_code(&err), 2);
        assert!(
            err.to_string()
                .starts_with("unknown state `DONE` (states: READY,")
        );
    }

    #[test]
    fn json_round_trips_keeping_key_order() {
        let value: serde_json::Value =
            serde_json::from_str(r#"{"z":1,"a":[true,null,"x",1.5,-7],"m":{"k":"v"}}"#)
                .expect("json");
        let payload = Payload::Json(value);
        let stored = payload.to_msgpack().expect("encode");
        let back = Payload::from_msgpack(&stored).expect("decode");
        assert_eq!(back, payload);
        assert_eq!(
            back.stdin_bytes().expect("stdin"),
            b"{\"z\":1,\"a\":[true,null,\"x\",1.5,-7],\"m\":{\"k\":\"v\"}}\n"
        );
    }

    #[test]
    fn raw_bytes_round_trip_exactly() {
        let every_byte: Vec<u8> = (0..=255).collect();
        for bytes in [Vec::new(), every_byte.clone(), every_byte.repeat(300)] {
            let payload = Payload::Raw(bytes.clone());
            let stored = payload.to_msgpack().expect("encode");
            assert_eq!(Payload::from_msgpack(&stored).expect("decode"), payload);
            assert_eq!(payload.stdin_bytes().expect("stdin"), bytes);
        }
    }

    #[test]
    fn json_strings_are_not_taken_for_raw() {
        let payload = Payload::Json(serde_json::json!("text"));
        let stored = payload.to_msgpack().expect("encode");
        assert_eq!(Payload::from_msgpack(&stored).expect("decode"), payload);
    }

    #[test]
    fn times_print_as_utc_with_milliseconds() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_utc(1_795_448_770_123), "2026-11-23T15:46:10.123Z");
    }
}
