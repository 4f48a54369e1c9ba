//! `bgq publish`: validates the job against the config, then stores it durably and prints its id.
//! Everything is checked before the database is opened, and what needs the database (`--after`
//! ids) inside the storing transaction, so a refused publish writes nothing.

use std::io::{BufRead, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::Stdio;

use anyhow::Context;

use crate::cli::PublishArgs;
use crate::config::{Config, PublishDurability};
use crate::duration;
use crate::error::{StoredButUnprinted, usage};
use crate::escape;
use crate::job::{JobState, Millis, NewJob, Payload, now_millis};
use crate::store::{BatchTarget, Durability, Published, Schedule};

/// Runs `bgq publish`.
pub fn run(config: &Config, args: &PublishArgs) -> anyhow::Result<()> {
    config.callback(&args.callback)?;
    let (queue, queue_source) = match &args.queue {
        Some(queue) => (queue.clone(), "--queue"),
        None => (config.queue.clone(), "the config's queue"),
    };
    printable(queue_source, &queue)?;
    if let Some(group) = &args.serial_group {
        printable("--serial-group", group)?;
    }
    if let Some(identifier) = &args.identifier {
        printable("--identifier", identifier)?;
    }
    let now = now_millis();
    let furthest = now.saturating_add(Millis::try_from(duration::MAX.as_millis()).unwrap_or(0));
    let run_at = match (&args.delay, &args.at) {
        // The parser refused a delay beyond duration::MAX.
        (Some(delay), _) => {
            now.saturating_add(Millis::try_from(delay.as_millis()).unwrap_or(Millis::MAX))
        }
        (None, Some(at)) => {
            let run_at = parse_at(at)?;
            if run_at > furthest {
                return Err(usage(format!(
                    "--at `{at}` is more than {} from now, the furthest bgq accepts",
                    duration::MAX_TEXT
                )));
            }
            run_at
        }
        (None, None) => now,
    };
    let payloads = read_payloads(config, args)?;
    let jobs: Vec<NewJob> = payloads
        .into_iter()
        .map(|payload| NewJob {
            queue: queue.clone(),
            callback: args.callback.clone(),
            payload,
            serial_group: args.serial_group.clone(),
            identifier: args.identifier.clone(),
        })
        .collect();
    let schedule = Schedule {
        run_at,
        priority: args.priority,
        after: args.after.clone(),
        unique: args.unique,
        batch: args.batch.map(|id| BatchTarget {
            id,
            // A running job of the batch may add to it after the seal (SPEC section 11); the
            // store checks that this job is one.
            publisher: std::env::var("BGQ_JOB_ID")
                .ok()
                .and_then(|job| job.parse().ok()),
        }),
    };
    let durability = match config.durability {
        PublishDurability::Full => Durability::Full,
        PublishDurability::Normal => Durability::Relaxed,
    };
    let mut store = crate::store::open(&config.database, durability)?;
    let published = store.publish_with(&jobs, &schedule, now)?;
    drop(store);
    match published {
        Published::Existing { id, state } => {
            let identifier = args.identifier.as_deref().unwrap_or_default();
            print_stored(&id.to_string(), |err| {
                format!(
                    "job {id} ({state}) already has identifier `{identifier}` in queue `{queue}`, so no new job was stored, but its id could not be printed: {err}"
                )
            })?;
            crate::diagnostic!(
                "bgq: job {id} ({state}) already has identifier `{}` in queue `{}`: no new job stored",
                escape::line(args.identifier.as_deref().unwrap_or_default()),
                escape::line(&queue)
            );
        }
        Published::Stored { ids, waiting_for } => {
            let printed = if args.jsonl.is_some() {
                print_stored(&ids.len().to_string(), |err| lost_count(&ids, err))
            } else {
                let id = ids.first().copied().unwrap_or_default();
                print_stored(&id.to_string(), |err| {
                    format!(
                        "job {id} was stored, but its id could not be printed: {err}; do not publish it again"
                    )
                })
            };
            for (parent, state) in waiting_for {
                if matches!(state, JobState::PermanentlyFailed | JobState::Cancelled) {
                    crate::diagnostic!(
                        "bgq: note: job {parent} is {state}: the new job runs only after `bgq retry {parent}` and job {parent} finishes"
                    );
                }
            }
            // The jobs are stored whether or not their ids reached the caller: run them.
            let started = if (args.process || config.process_on_publish) && run_at <= now {
                start_process(config, &queue)
            } else {
                Ok(())
            };
            if let (Err(_), Err(err)) = (&printed, &started) {
                crate::diagnostic!("bgq: warning: {err:#}");
            }
            printed?;
            started?;
        }
    }
    Ok(())
}

/// Refuses a queue, serial group or identifier (`what`) holding a control character. Stored, it
/// would reach every terminal that lists the job and split the lines of `list --unfinished`; no
/// name needs one. Jobs that an older bgq stored with one are still shown, escaped.
fn printable(what: &str, value: &str) -> anyhow::Result<()> {
    match value.chars().find(|c| escape::is_control(*c)) {
        Some(control) => Err(usage(format!(
            "{what} `{}` holds a control character ({}): queue names, serial groups and identifiers must be printable",
            escape::line(value),
            escape::line(control.encode_utf8(&mut [0; 4]))
        ))),
        None => Ok(()),
    }
}

/// Prints `line` (a job id, or a `--jsonl` count) on stdout. The jobs are stored by now, so a
/// stdout that cannot take it (full, a closed pipe) is not an ordinary failure: a caller that
/// retried on exit 1 would store them twice. It exits 3 with `lost(cause)` instead.
fn print_stored(line: &str, lost: impl FnOnce(&std::io::Error) -> String) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .map_err(|err| anyhow::Error::new(StoredButUnprinted(lost(&err))))
}

/// The exit-3 line of a `--jsonl` publish whose count was lost: how many, and which ids.
fn lost_count(ids: &[i64], err: &std::io::Error) -> String {
    match ids {
        [id] => format!(
            "1 job was stored (id {id}), but its count could not be printed: {err}; do not publish it again"
        ),
        [first, .., last] => format!(
            "{} jobs were stored (ids {first} to {last}), but their count could not be printed: {err}; do not publish them again",
            ids.len()
        ),
        [] => format!("no job was stored, and the count could not be printed: {err}"),
    }
}

/// Starts `bgq process` for `queue` detached from this publish: in its own session, with no
/// terminal and no stdio, so that neither a terminal's hangup nor a caller reading our output
/// to its end waits for it. It takes the queue's lock like any run.
fn start_process(config: &Config, queue: &str) -> anyhow::Result<()> {
    let bgq = std::env::current_exe().context("cannot find the bgq binary to start `process`")?;
    let mut command = std::process::Command::new(bgq);
    command
        .arg("--config")
        .arg(&config.path)
        .args(["process", "--on-demand", "--queue", queue])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid and close_range are async-signal-safe system calls that touch no memory of
    // ours.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // Files the caller left open to us (a web server's listening socket, say) must not
            // stay open for as long as the run lasts: close them on exec. Kernels before 5.11
            // lack the call; the run then keeps them, as any child would.
            const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
            libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                CLOSE_RANGE_CLOEXEC,
            );
            Ok(())
        });
    }
    // Not waited for: it outlives us, and init reaps it.
    command
        .spawn()
        .context("the job is stored, but `process` could not be started")?;
    Ok(())
}

/// The time `--at` names: RFC 3339, or local `YYYY-MM-DD HH:MM` (`:SS` optional).
pub fn parse_at(text: &str) -> anyhow::Result<Millis> {
    use chrono::{Local, NaiveDateTime, TimeZone};
    let invalid = || {
        usage(format!(
            "invalid --at `{text}`: write RFC 3339 (2026-11-24T03:00:00Z) or local time as YYYY-MM-DD HH:MM"
        ))
    };
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(time.timestamp_millis());
    }
    let local = ["%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
        .ok_or_else(invalid)?;
    // In a DST fold the earlier of the two times; in a gap there is no such local time.
    Local
        .from_local_datetime(&local)
        .earliest()
        .map(|time| time.timestamp_millis())
        .ok_or_else(|| {
            usage(format!(
                "invalid --at `{text}`: no such local time (a daylight saving gap)"
            ))
        })
}

fn read_payloads(config: &Config, args: &PublishArgs) -> anyhow::Result<Vec<Vec<u8>>> {
    if let Some(payload) = read_payload(config, args.json.as_deref(), args.raw.as_deref())? {
        return Ok(vec![payload]);
    }
    if let Some(source) = &args.jsonl {
        let limit = Limit::of(config);
        return if source == "-" {
            read_jsonl(std::io::stdin().lock(), &limit, |err| {
                anyhow::Error::new(err).context("cannot read --jsonl from stdin")
            })
        } else {
            let file = open_source(source, "--jsonl")?;
            read_jsonl(std::io::BufReader::new(file), &limit, |err| {
                usage(format!("cannot read --jsonl file {source}: {err}"))
            })
        };
    }
    Err(usage("one of --json, --raw or --jsonl is required"))
}

/// The parameters given by `--json TEXT|@FILE|-` or `--raw FILE|-`, if either is given, as
/// they are stored (MessagePack, see `Payload::to_msgpack`).
pub fn read_payload(
    config: &Config,
    json: Option<&str>,
    raw: Option<&str>,
) -> anyhow::Result<Option<Vec<u8>>> {
    let limit = Limit::of(config);
    if let Some(json) = json {
        let text = match json.strip_prefix('@') {
            Some(path) => read_source(path, "--json", &limit)?,
            None if json == "-" => read_source("-", "--json", &limit)?,
            None if json.len() as u64 > limit.bytes => return Err(limit.exceeded("--json")),
            None => json.as_bytes().to_vec(),
        };
        let stored =
            encode_json(&text).map_err(|err| usage(format!("invalid JSON in --json: {err}")))?;
        return Ok(Some(stored));
    }
    match raw {
        Some(source) => Ok(Some(read_raw(source, &limit)?)),
        None => Ok(None),
    }
}

/// The largest payload `publish` takes (`max_payload`), and how to say that one is larger.
struct Limit {
    /// Bytes.
    bytes: u64,
    /// The config file that sets it, named in the refusal.
    config: std::path::PathBuf,
}

impl Limit {
    fn of(config: &Config) -> Limit {
        Limit {
            bytes: config.max_payload,
            config: config.path.clone(),
        }
    }

    /// The refusal of `what` (`--raw`, `--jsonl line 3`): larger than the limit.
    fn exceeded(&self, what: &str) -> anyhow::Error {
        usage(format!(
            "{what} is larger than {}, the max_payload of {}: nothing stored",
            crate::size::format(self.bytes),
            self.config.display()
        ))
    }
}

/// Opens a `--json @FILE`, `--raw` or `--jsonl` file; a missing one is the user's to fix.
fn open_source(source: &str, flag: &str) -> anyhow::Result<std::fs::File> {
    std::fs::File::open(source)
        .map_err(|err| usage(format!("cannot read {flag} file {source}: {err}")))
}

/// Appends a file, or stdin for `-`, to `bytes`: at most one byte more than the limit, so that
/// an endless or huge input is refused without being read whole.
fn read_bounded(
    source: &str,
    flag: &str,
    limit: &Limit,
    bytes: &mut Vec<u8>,
) -> anyhow::Result<()> {
    let most = limit.bytes.saturating_add(1);
    if source == "-" {
        std::io::stdin()
            .lock()
            .take(most)
            .read_to_end(bytes)
            .with_context(|| format!("cannot read {flag} from stdin"))?;
    } else {
        let mut file = open_source(source, flag)?;
        // The file's size, when it has one, saves the doublings of a growing buffer.
        let size = file.metadata().map_or(0, |meta| meta.len()).min(most);
        bytes.reserve(usize::try_from(size).unwrap_or(0));
        (&mut file)
            .take(most)
            .read_to_end(bytes)
            .map_err(|err| usage(format!("cannot read {flag} file {source}: {err}")))?;
    }
    Ok(())
}

/// Reads a `--json @FILE` or `--json -` within the limit.
fn read_source(source: &str, flag: &str, limit: &Limit) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    read_bounded(source, flag, limit, &mut bytes)?;
    if bytes.len() as u64 > limit.bytes {
        return Err(limit.exceeded(&format!("{flag} input")));
    }
    Ok(bytes)
}

/// MessagePack `bin 32` header: a marker and a big-endian length.
const BIN32_HEADER: usize = 5;

/// Reads `--raw FILE|-` within the limit, and returns it as stored (a MessagePack `bin`). The
/// bytes are read behind room for the header, so that a large payload is never copied whole.
fn read_raw(source: &str, limit: &Limit) -> anyhow::Result<Vec<u8>> {
    let mut stored = vec![0; BIN32_HEADER];
    read_bounded(source, "--raw", limit, &mut stored)?;
    let length = stored.len() - BIN32_HEADER;
    if length as u64 > limit.bytes {
        return Err(limit.exceeded("--raw input"));
    }
    // From 64 KiB on, MessagePack writes a bin 32 header, exactly the room left for it.
    match u32::try_from(length) {
        Ok(length32) if length > usize::from(u16::MAX) => {
            stored[0] = 0xc6;
            stored[1..BIN32_HEADER].copy_from_slice(&length32.to_be_bytes());
            Ok(stored)
        }
        _ => Payload::Raw(stored.split_off(BIN32_HEADER)).to_msgpack(),
    }
}

/// One JSON value per line, from `reader`; a trailing newline ends the last line. Any bad line
/// (or one larger than the limit) refuses all. Each line is read and stored on its own, so that
/// no more than one line's text is held at a time.
fn read_jsonl(
    mut reader: impl BufRead,
    limit: &Limit,
    read_failed: impl Fn(std::io::Error) -> anyhow::Error,
) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut jobs = Vec::new();
    let mut line = Vec::new();
    for number in 1u64.. {
        line.clear();
        // The line, its `\r\n`, and one byte more to tell a line that is too long.
        let most = limit.bytes.saturating_add(3);
        (&mut reader)
            .take(most)
            .read_until(b'\n', &mut line)
            .map_err(&read_failed)?;
        if line.is_empty() {
            break;
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.len() as u64 > limit.bytes {
            return Err(limit.exceeded(&format!("--jsonl line {number}")));
        }
        if text.iter().all(u8::is_ascii_whitespace) {
            // A lone newline is an empty input, as a file holding just "\n" is.
            if number == 1 && line == b"\n" && reader.fill_buf().is_ok_and(<[u8]>::is_empty) {
                break;
            }
            return Err(usage(format!("--jsonl line {number} is empty")));
        }
        let stored = encode_json(text)
            .map_err(|err| usage(format!("invalid JSON on --jsonl line {number}: {err}")))?;
        jobs.push(stored);
    }
    if jobs.is_empty() {
        return Err(usage("--jsonl input holds no jobs"));
    }
    Ok(jobs)
}

/// [`read_jsonl`] on bytes in memory, with no limit.
pub fn parse_jsonl(bytes: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
    let limit = Limit {
        bytes: u64::MAX,
        config: std::path::PathBuf::new(),
    };
    read_jsonl(bytes, &limit, anyhow::Error::new)
}

/// Checks and stores one whole JSON value (nothing may follow it) as [`parse_json`] reads it,
/// straight to MessagePack (see `job::json_to_msgpack`).
pub fn encode_json(bytes: &[u8]) -> Result<Vec<u8>, String> {
    check_depth(bytes)?;
    let mut parser = serde_json::Deserializer::from_slice(bytes);
    // serde_json's own limit refuses 128 levels already; check_depth bounds the recursion.
    parser.disable_recursion_limit();
    let stored = crate::job::json_to_msgpack(&mut parser).map_err(|err| err.to_string())?;
    parser.end().map_err(|err| err.to_string())?;
    Ok(stored)
}

/// The deepest nesting of arrays and objects a payload may have: 128 levels are accepted, 129
/// refused (README, "The callback protocol").
pub const MAX_DEPTH: usize = 128;

/// Parses one whole JSON value (nothing may follow it), nested at most [`MAX_DEPTH`] levels.
pub fn parse_json(bytes: &[u8]) -> Result<serde_json::Value, String> {
    use serde::Deserialize;
    check_depth(bytes)?;
    let mut parser = serde_json::Deserializer::from_slice(bytes);
    // serde_json's own limit refuses 128 levels already; check_depth bounds the recursion.
    parser.disable_recursion_limit();
    let value = serde_json::Value::deserialize(&mut parser).map_err(|err| err.to_string())?;
    parser.end().map_err(|err| err.to_string())?;
    Ok(value)
}

/// Refuses JSON nested deeper than [`MAX_DEPTH`], before the parser recurses that deep. It
/// splits strings from the rest as the parser does, so any input it lets through the parser
/// reads with at most that many levels open.
fn check_depth(bytes: &[u8]) -> Result<(), String> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let (mut line, mut column) = (1usize, 0usize);
    for &byte in bytes {
        column += 1;
        if byte == b'\n' {
            line += 1;
            column = 0;
        }
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(format!(
                        "nested deeper than {MAX_DEPTH} levels at line {line} column {column}"
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn at_reads_rfc3339_and_local_minutes() {
        assert_eq!(
            parse_at("2026-11-24T03:00:00Z").expect("utc"),
            1_795_489_200_000
        );
        assert_eq!(
            parse_at("2026-11-24T04:00:00+01:00").expect("offset"),
            1_795_489_200_000
        );
        let local = parse_at("2026-11-24 03:00").expect("local");
        let expected = chrono::Local
            .with_ymd_and_hms(2026, 11, 24, 3, 0, 0)
            .earliest()
            .expect("exists")
            .timestamp_millis();
        assert_eq!(local, expected);
        for bad in [
            "tomorrow",
            "2026-11-24",
            "2026-13-01 10:00",
            "24.11.2026 03:00",
            "",
        ] {
            let err = parse_at(bad).expect_err(bad);
            assert_eq!(crate::error::exit_code(&err), 2);
            assert!(err.to_string().starts_with("invalid --at"), "{err}");
        }
    }

    #[test]
    fn names_with_control_characters_are_refused_and_shown_escaped() {
        for (value, control) in [
            ("sync\n42", "\\n"),
            ("mail\x1b]52;c;SGVsbG8=\x07", "\\x1b"),
            ("a\tb", "\\t"),
            ("del\x7f", "\\x7f"),
            ("csi\u{9b}2J", "\\u{9b}"),
        ] {
            let err = printable("--identifier", value).expect_err(value);
            assert_eq!(crate::error::exit_code(&err), 2);
            let message = err.to_string();
            assert!(!message.chars().any(escape::is_control), "{message:?}");
            let expected = format!(
                "--identifier `{}` holds a control character ({control}):",
                escape::line(value)
            );
            assert!(message.starts_with(&expected), "{message}");
        }
        for fine in ["sendEmail-7", "invoice 7", "café ☕", "C:\\jobs"] {
            assert!(printable("--queue", fine).is_ok(), "{fine}");
        }
    }

    #[test]
    fn jsonl_reads_one_job_per_line() {
        let jobs = parse_jsonl(b"{\"a\":1}\n[2]\r\n\"three\"\n").expect("valid");
        let stored = |value| Payload::Json(value).to_msgpack().expect("encodes");
        assert_eq!(
            jobs,
            vec![
                stored(serde_json::json!({"a": 1})),
                stored(serde_json::json!([2])),
                stored(serde_json::json!("three")),
            ]
        );
    }

    #[test]
    fn jsonl_names_the_bad_line() {
        let err = parse_jsonl(b"{}\n{}\n{oops}\n{}\n").expect_err("invalid");
        assert!(
            err.to_string()
                .starts_with("invalid JSON on --jsonl line 3:"),
            "{err}"
        );
        let err = parse_jsonl(b"{}\n\n{}\n").expect_err("blank line");
        assert_eq!(err.to_string(), "--jsonl line 2 is empty");
        assert!(parse_jsonl(b"").is_err());
        assert!(parse_jsonl(b"\n").is_err());
    }

    #[test]
    fn json_must_be_one_whole_value() {
        assert!(parse_json(b"{} {}").is_err());
        assert!(parse_json(b"{\"a\":1} trailing").is_err());
        assert!(parse_json(b"\xff").is_err());
        assert!(parse_json(b"\"nul\x00\"").is_err());
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(parse_json(deep.as_bytes()).is_err());
    }

    #[test]
    fn raw_payloads_are_read_as_stored() {
        let dir = tempfile::tempdir().expect("temp dir");
        let limit = Limit {
            bytes: 1 << 20,
            config: dir.path().join("bgq.toml"),
        };
        for size in [0, 1, 255, 256, 65_535, 65_536, 100_000] {
            let bytes: Vec<u8> = (0..size).map(|n: u32| n.to_le_bytes()[0]).collect();
            let path = dir.path().join("raw");
            std::fs::write(&path, &bytes).expect("write");
            let stored = read_raw(&path.display().to_string(), &limit).expect("read");
            let expected = Payload::Raw(bytes).to_msgpack().expect("encode");
            assert!(stored == expected, "{size} bytes");
        }
    }

    #[test]
    fn json_nested_128_levels_is_accepted_and_129_refused() {
        let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        assert!(parse_json(nested(128).as_bytes()).is_ok());
        let err = parse_json(nested(129).as_bytes()).expect_err("too deep");
        assert_eq!(err, "nested deeper than 128 levels at line 1 column 129");
        let objects = |depth: usize| format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
        assert!(parse_json(objects(128).as_bytes()).is_ok());
        assert!(parse_json(objects(129).as_bytes()).is_err());
        // Brackets inside strings, escaped quotes included, are not nesting.
        let quoted = format!("[\"\\\"{}\"]", "[".repeat(500));
        assert!(parse_json(quoted.as_bytes()).is_ok(), "{quoted}");
    }
}
