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

    /// Decodes what `to_msgpack` stored, or a [`JSON_TEXT`] payload.
    pub fn from_msgpack(bytes: &[u8]) -> anyhow::Result<Payload> {
        const BIN8: u8 = 0xc4;
        const BIN32: u8 = 0xc6;
        match bytes.first() {
            Some(&JSON_TEXT) => Ok(Payload::Json(
                serde_json::from_slice(&bytes[1..])
                    .context("stored JSON text parameters are not valid JSON")?,
            )),
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

/// The MessagePack of the JSON value `parser` reads: the bytes `Payload::Json(value).to_msgpack()`
/// stores, without building the `serde_json::Value` (which takes many times the memory of its
/// text, 32 bytes and more for each number). A key given twice keeps its first place and its
/// last value, as in a `Value`.
pub fn json_to_msgpack<'de, D: serde::Deserializer<'de>>(parser: D) -> Result<Vec<u8>, D::Error> {
    let mut out = Vec::new();
    serde::de::DeserializeSeed::deserialize(Encode(&mut out), parser)?;
    Ok(out)
}

/// Appends the MessagePack of one value to its `Vec`; see [`json_to_msgpack`].
struct Encode<'a>(&'a mut Vec<u8>);

impl<'de> serde::de::DeserializeSeed<'de> for Encode<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, parser: D) -> Result<(), D::Error> {
        parser.deserialize_any(self)
    }
}

/// Maps an error of writing to a `Vec`, which does not happen, into the parser's error type.
fn written<E: serde::de::Error, T, W: fmt::Display>(result: Result<T, W>) -> Result<(), E> {
    result.map(|_| ()).map_err(E::custom)
}

/// Below this many keys a map looks for a repeated key by scanning; from it on, by hashing.
const LINEAR_KEYS: usize = 16;

// Each method writes what rmp_serde writes for the `Value` that serde_json's own visitor builds
// from the same call, so that stored bytes do not depend on which path stored them.
impl<'de> serde::de::Visitor<'de> for Encode<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: serde::de::Error>(self, value: bool) -> Result<(), E> {
        written(rmp::encode::write_bool(self.0, value))
    }

    fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<(), E> {
        match u64::try_from(value) {
            Ok(positive) => self.visit_u64(positive),
            Err(_) => written(rmp::encode::write_sint(self.0, value)),
        }
    }

    fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<(), E> {
        written(rmp::encode::write_uint(self.0, value))
    }

    fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<(), E> {
        if value.is_finite() {
            written(rmp::encode::write_f64(self.0, value))
        } else {
            self.visit_unit()
        }
    }

    fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<(), E> {
        written(rmp::encode::write_str(self.0, value))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        written(rmp::encode::write_nil(self.0))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
        let mut body = Vec::new();
        let mut count: u32 = 0;
        while items.next_element_seed(Encode(&mut body))?.is_some() {
            count = count
                .checked_add(1)
                .ok_or_else(|| serde::de::Error::custom("too many array elements"))?;
        }
        written::<A::Error, _, _>(rmp::encode::write_array_len(self.0, count))?;
        self.0.extend_from_slice(&body);
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut entries: A) -> Result<(), A::Error> {
        // Keys and values as they will be stored, and where each value lies in `body`.
        let mut body = Vec::new();
        let mut keys: Vec<String> = Vec::new();
        let mut values: Vec<std::ops::Range<usize>> = Vec::new();
        let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        while let Some(key) = entries.next_key::<String>()? {
            let seen = if keys.len() < LINEAR_KEYS {
                keys.iter().position(|known| *known == key)
            } else {
                if index.is_empty() {
                    index = keys.iter().cloned().zip(0..).collect();
                }
                index.get(&key).copied()
            };
            match seen {
                None => {
                    written::<A::Error, _, _>(rmp::encode::write_str(&mut body, &key))?;
                    let start = body.len();
                    entries.next_value_seed(Encode(&mut body))?;
                    values.push(start..body.len());
                    if !index.is_empty() {
                        index.insert(key.clone(), keys.len());
                    }
                    keys.push(key);
                }
                Some(at) => {
                    // Rare: the new value replaces the old one where it stands.
                    let mut value = Vec::new();
                    entries.next_value_seed(Encode(&mut value))?;
                    let old = values[at].clone();
                    let grown = value.len().wrapping_sub(old.len());
                    body.splice(old.clone(), value.iter().copied());
                    values[at] = old.start..old.start + value.len();
                    for later in &mut values[at + 1..] {
                        *later = later.start.wrapping_add(grown)..later.end.wrapping_add(grown);
                    }
                }
            }
        }
        let count = u32::try_from(keys.len())
            .map_err(|_| serde::de::Error::custom("too many object keys"))?;
        written::<A::Error, _, _>(rmp::encode::write_map_len(self.0, count))?;
        self.0.extend_from_slice(&body);
        Ok(())
    }
}

/// The first byte of parameters stored as JSON text (the rest) rather than MessagePack: the
/// completion jobs of batches, which SQLite's trigger writes with its own JSON functions. The
/// byte is one MessagePack never uses, so no MessagePack payload starts with it.
pub const JSON_TEXT: u8 = 0xc1;

/// A job's parameters as stored (MessagePack), checked but not decoded: `show` reads them
/// through [`StoredPayload::view`], so that a large payload is held once.
#[derive(Debug, Clone)]
pub struct StoredPayload {
    bytes: Vec<u8>,
    kind: StoredKind,
}

#[derive(Debug, Clone, Copy)]
enum StoredKind {
    Json { compact_len: usize },
    Raw { start: usize },
}

/// What a [`StoredPayload`] holds.
#[derive(Debug, Clone, Copy)]
pub enum PayloadView<'a> {
    /// A JSON value.
    Json(JsonView<'a>),
    /// The exact bytes of a `--raw` job.
    Raw(&'a [u8]),
}

impl StoredPayload {
    /// Checks what `to_msgpack` stored; the error says why it cannot be read.
    pub fn new(bytes: Vec<u8>) -> Result<StoredPayload, String> {
        let bytes = match bytes.first() {
            Some(&JSON_TEXT) => json_to_msgpack(&mut serde_json::Deserializer::from_slice(
                &bytes[1..],
            ))
            .map_err(|err| format!("stored JSON text parameters are not valid JSON: {err}"))?,
            _ => bytes,
        };
        let width = match bytes.first() {
            Some(0xc4) => Some(1),
            Some(0xc5) => Some(2),
            Some(0xc6) => Some(4),
            _ => None,
        };
        let kind = match width {
            Some(width) => {
                let length = bytes
                    .get(1..=width)
                    .map(|header| header.iter().fold(0usize, |n, b| n << 8 | usize::from(*b)));
                if length != Some(bytes.len().saturating_sub(1 + width)) {
                    return Err("stored raw payload is not valid MessagePack".to_owned());
                }
                StoredKind::Raw { start: 1 + width }
            }
            None => StoredKind::Json {
                compact_len: JsonView::new(&bytes)?.compact_len,
            },
        };
        Ok(StoredPayload { bytes, kind })
    }

    /// The parameters, to show.
    pub fn view(&self) -> PayloadView<'_> {
        match self.kind {
            StoredKind::Json { compact_len } => PayloadView::Json(JsonView {
                stored: &self.bytes,
                compact_len,
            }),
            StoredKind::Raw { start } => PayloadView::Raw(&self.bytes[start..]),
        }
    }
}

/// Stored JSON parameters (MessagePack) seen as the JSON value they hold: serialising it writes
/// that value (as `Payload::from_msgpack` would give it) without building a `serde_json::Value`,
/// which takes many times the memory of the stored bytes.
#[derive(Debug, Clone, Copy)]
pub struct JsonView<'a> {
    stored: &'a [u8],
    compact_len: usize,
}

/// Nesting beyond this in stored parameters is refused when shown, as rmp_serde refuses it when
/// decoding (publish stores at most 128 levels).
const VIEW_DEPTH: usize = 1024;

impl<'a> JsonView<'a> {
    /// The view of `stored`, if it holds exactly one JSON value (not a `--raw` payload): the
    /// error says why not. Checked whole, so that serialising it later fails only with its writer.
    pub fn new(stored: &'a [u8]) -> Result<JsonView<'a>, String> {
        let mut rest = std::cell::Cell::new(stored);
        let mut counter = Counter(0);
        serde_json::to_writer(&mut counter, &Next(&rest, 0)).map_err(|err| err.to_string())?;
        if !rest.get_mut().is_empty() {
            return Err("stored parameters have bytes after their value".to_owned());
        }
        Ok(JsonView {
            stored,
            compact_len: counter.0,
        })
    }

    /// The length of the value as compact JSON (what a callback reads, less its newline).
    pub fn compact_len(&self) -> usize {
        self.compact_len
    }
}

impl serde::Serialize for JsonView<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Next(&std::cell::Cell::new(self.stored), 0).serialize(serializer)
    }
}

/// A writer that only counts what it is given.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The next value of the MessagePack in the cell, at a nesting depth; serialising it moves the
/// cell past it.
struct Next<'a, 'c>(&'c std::cell::Cell<&'a [u8]>, usize);

impl serde::Serialize for Next<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeMap, SerializeSeq};
        let Next(cell, depth) = *self;
        let mut input = cell.get();
        let mut take = |count: usize| -> Result<&[u8], S::Error> {
            if input.len() < count {
                return Err(S::Error::custom("stored parameters are cut short"));
            }
            let (taken, rest) = input.split_at(count);
            input = rest;
            Ok(taken)
        };
        let be = |bytes: &[u8]| bytes.iter().fold(0u64, |n, b| n << 8 | u64::from(*b));
        let marker = take(1)?[0];
        // Lengths of strings, arrays and maps: in the marker, or in the next 1, 2 or 4 bytes.
        let mut length = |width: usize| -> Result<usize, S::Error> {
            usize::try_from(be(take(width)?)).map_err(S::Error::custom)
        };
        enum Item {
            Str(usize),
            Array(usize),
            Map(usize),
        }
        let item = match marker {
            0x00..=0x7f => {
                cell.set(input);
                return serializer.serialize_u64(u64::from(marker));
            }
            0xe0..=0xff => {
                cell.set(input);
                return serializer.serialize_i64(i64::from(marker as i8));
            }
            0x80..=0x8f => Item::Map(usize::from(marker & 0x0f)),
            0x90..=0x9f => Item::Array(usize::from(marker & 0x0f)),
            0xa0..=0xbf => Item::Str(usize::from(marker & 0x1f)),
            0xd9 => Item::Str(length(1)?),
            0xda => Item::Str(length(2)?),
            0xdb => Item::Str(length(4)?),
            0xdc => Item::Array(length(2)?),
            0xdd => Item::Array(length(4)?),
            0xde => Item::Map(length(2)?),
            0xdf => Item::Map(length(4)?),
            0xc0 | 0xc2 | 0xc3 | 0xca..=0xd3 => {
                let ok = match marker {
                    0xc0 => serializer.serialize_unit(),
                    0xc2 => serializer.serialize_bool(false),
                    0xc3 => serializer.serialize_bool(true),
                    0xca => {
                        let bits = u32::try_from(be(take(4)?)).map_err(S::Error::custom)?;
                        serializer.serialize_f64(f64::from(f32::from_bits(bits)))
                    }
                    0xcb => serializer.serialize_f64(f64::from_bits(be(take(8)?))),
                    0xcc..=0xcf => {
                        let width = 1 << (marker - 0xcc);
                        serializer.serialize_u64(be(take(width)?))
                    }
                    _ => {
                        let width = 1usize << (marker - 0xd0);
                        let unsigned = be(take(width)?);
                        // Sign-extend from `width` bytes.
                        let shift = 64 - 8 * width as u32;
                        serializer.serialize_i64(((unsigned << shift) as i64) >> shift)
                    }
                };
                cell.set(input);
                return ok;
            }
            _ => return Err(S::Error::custom("stored parameters are not a JSON value")),
        };
        match item {
            Item::Str(size) => {
                let text = std::str::from_utf8(take(size)?).map_err(S::Error::custom)?;
                cell.set(input);
                serializer.serialize_str(text)
            }
            Item::Array(count) | Item::Map(count) if depth >= VIEW_DEPTH => {
                let _ = count;
                Err(S::Error::custom("stored parameters are nested too deep"))
            }
            Item::Array(count) => {
                cell.set(input);
                let mut seq = serializer.serialize_seq(Some(count))?;
                for _ in 0..count {
                    seq.serialize_element(&Next(cell, depth + 1))?;
                }
                seq.end()
            }
            Item::Map(count) => {
                cell.set(input);
                let mut map = serializer.serialize_map(Some(count))?;
                for _ in 0..count {
                    map.serialize_key(&Key(cell))?;
                    map.serialize_value(&Next(cell, depth + 1))?;
                }
                map.end()
            }
        }
    }
}

/// The next map key of the MessagePack in the cell: a string, as JSON keys are.
struct Key<'a, 'c>(&'c std::cell::Cell<&'a [u8]>);

impl serde::Serialize for Key<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.get().first() {
            Some(0xa0..=0xbf | 0xd9..=0xdb) => Next(self.0, 0).serialize(serializer),
            _ => Err(serde::ser::Error::custom(
                "stored parameters have a key that is not a string",
            )),
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
    /// Its parameters as stored: MessagePack, as `Payload::to_msgpack` writes it (encoded when
    /// read, so that a large payload is not held twice until the insert).
    pub payload: Vec<u8>,
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
    /// The batch it belongs to, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<i64>,
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

    /// Parameters stored as JSON text (a batch's completion job on SQLite) read as the JSON
    /// value they hold, for the callback and for `show`; keys keep their order.
    #[test]
    fn json_text_parameters_read_as_their_value() {
        let mut stored = vec![JSON_TEXT];
        stored.extend_from_slice(br#"{"b":1,"a":[true,null]}"#);
        let value = serde_json::json!({"b": 1, "a": [true, null]});
        assert_eq!(
            Payload::from_msgpack(&stored).expect("decodes"),
            Payload::Json(value.clone())
        );
        let shown = StoredPayload::new(stored).expect("checks");
        let PayloadView::Json(view) = shown.view() else {
            panic!("not JSON");
        };
        assert_eq!(serde_json::to_value(view).expect("serialises"), value);
        assert!(Payload::from_msgpack(&[JSON_TEXT, b'{']).is_err());
    }

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
    fn json_is_stored_as_the_bytes_its_value_would_be() {
        let keys = |count: usize| -> String {
            let entries: Vec<String> = (0..count).map(|n| format!("\"k{n}\":{n}")).collect();
            format!("{{{}}}", entries.join(","))
        };
        let many = |count: usize| format!("[{}]", vec!["1"; count].join(","));
        let long = |count: usize| format!("\"{}\"", "x".repeat(count));
        let mut inputs: Vec<String> = [
            "0",
            "127",
            "128",
            "255",
            "256",
            "65535",
            "65536",
            "4294967295",
            "4294967296",
            "18446744073709551615",
            "18446744073709551616",
            "-1",
            "-32",
            "-33",
            "-128",
            "-129",
            "-32768",
            "-32769",
            "-9223372036854775808",
            "-0",
            "0.5",
            "-0.0",
            "1e300",
            "1.5e-300",
            "true",
            "false",
            "null",
            "[]",
            "{}",
            "\"\"",
            "\"é\\u0000😀\"",
            r#"{"a":1,"b":[true,null,{"c":"d"}],"a":2}"#,
            r#"{"x":{"y":1},"x":[1,2,3],"z":0}"#,
        ]
        .iter()
        .map(|text| (*text).to_owned())
        .collect();
        inputs.extend([15, 16, 17, 40].map(keys));
        inputs.extend([15, 16, 65_535, 65_536].map(many));
        inputs.extend([31, 32, 255, 256, 65_535, 65_536].map(long));
        // Repeated keys among many: first place, last value, in a scanned and a hashed map.
        let repeated: Vec<String> = (0..40).map(|n| format!("\"k{}\":{n}", n % 23)).collect();
        inputs.push(format!("{{{}}}", repeated.join(",")));
        for text in inputs {
            let value: serde_json::Value = serde_json::from_str(&text).expect("json");
            let expected = Payload::Json(value).to_msgpack().expect("encode");
            let mut parser = serde_json::Deserializer::from_str(&text);
            let got = json_to_msgpack(&mut parser).expect("transcode");
            assert!(got == expected, "{}", &text[..text.len().min(80)]);
        }
    }

    #[test]
    fn stored_parameters_are_shown_as_their_decoded_value_is() {
        let mut inputs: Vec<String> = [
            "0",
            "255",
            "65536",
            "18446744073709551615",
            "-1",
            "-33",
            "-129",
            "-32769",
            "-9223372036854775808",
            "0.5",
            "-0.0",
            "1e300",
            "true",
            "null",
            "[]",
            "{}",
            "\"é\\u0000😀\\\"\"",
            r#"{"a":1,"b":[true,null,{"c":"d"}],"e":{}}"#,
        ]
        .iter()
        .map(|text| (*text).to_owned())
        .collect();
        inputs.push(format!("[{}]", vec!["[1,{\"k\":-2.5}]"; 70_000].join(",")));
        inputs.push(format!("\"{}\"", "x".repeat(70_000)));
        for text in inputs {
            let value: serde_json::Value = serde_json::from_str(&text).expect("json");
            let stored = Payload::Json(value.clone()).to_msgpack().expect("encode");
            let stored = StoredPayload::new(stored).expect("readable");
            let PayloadView::Json(view) = stored.view() else {
                panic!("not JSON: {text}");
            };
            let compact = serde_json::to_string(&value).expect("compact");
            assert!(
                serde_json::to_string(&view).ok() == Some(compact.clone()),
                "{text:.80}"
            );
            assert_eq!(view.compact_len(), compact.len());
            let pretty = serde_json::to_string_pretty(&value).expect("pretty");
            assert!(
                serde_json::to_string_pretty(&view).ok() == Some(pretty),
                "{text:.80}"
            );
        }
        for bytes in [vec![], vec![1, 2, 3], vec![7; 70_000]] {
            let stored = Payload::Raw(bytes.clone()).to_msgpack().expect("encode");
            let stored = StoredPayload::new(stored).expect("readable");
            assert!(matches!(stored.view(), PayloadView::Raw(raw) if raw == bytes.as_slice()));
        }
        for bad in [
            &[0xc1][..],
            &[0x92, 0x01],
            &[0xa2, 0xff, 0xfe],
            &[0xc4, 0x05, 1],
            &[0x01, 0x02],
        ] {
            assert!(StoredPayload::new(bad.to_vec()).is_err(), "{bad:?}");
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
