//! `bgq publish`: validates the job against the config, then stores it durably and prints its id.
//! Everything is checked before the database is opened, so a refused publish writes nothing.

use std::io::{Read, Write};

use anyhow::Context;

use crate::cli::PublishArgs;
use crate::config::Config;
use crate::error::usage;
use crate::job::{NewJob, Payload, now_millis};
use crate::store::{Durability, Store};

/// Runs `bgq publish`.
pub fn run(config: &Config, args: &PublishArgs) -> anyhow::Result<()> {
    config.callback(&args.callback)?;
    let payloads = read_payloads(args)?;
    let queue = args.queue.clone().unwrap_or_else(|| config.queue.clone());
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
    let mut store = Store::open(&config.database, Durability::Full)?;
    let ids = store
        .publish(&jobs, now_millis())
        .context("cannot store the job")?;
    let mut stdout = std::io::stdout().lock();
    if args.jsonl.is_some() {
        writeln!(stdout, "{}", ids.len())?;
    } else if let Some(id) = ids.first() {
        writeln!(stdout, "{id}")?;
    }
    Ok(())
}

fn read_payloads(args: &PublishArgs) -> anyhow::Result<Vec<Payload>> {
    if let Some(payload) = read_payload(args.json.as_deref(), args.raw.as_deref())? {
        return Ok(vec![payload]);
    }
    if let Some(source) = &args.jsonl {
        return parse_jsonl(&read_source(source, "--jsonl")?);
    }
    Err(usage("one of --json, --raw or --jsonl is required"))
}

/// The parameters given by `--json TEXT|@FILE|-` or `--raw FILE|-`, if either is given.
pub fn read_payload(json: Option<&str>, raw: Option<&str>) -> anyhow::Result<Option<Payload>> {
    if let Some(json) = json {
        let text = match json.strip_prefix('@') {
            Some(path) => read_source(path, "--json")?,
            None if json == "-" => read_source("-", "--json")?,
            None => json.as_bytes().to_vec(),
        };
        let value =
            parse_json(&text).map_err(|err| usage(format!("invalid JSON in --json: {err}")))?;
        return Ok(Some(Payload::Json(value)));
    }
    match raw {
        Some(source) => Ok(Some(Payload::Raw(read_source(source, "--raw")?))),
        None => Ok(None),
    }
}

/// Reads a file, or stdin for `-`.
fn read_source(source: &str, flag: &str) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    if source == "-" {
        std::io::stdin()
            .lock()
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read {flag} from stdin"))?;
    } else {
        bytes = std::fs::read(source)
            .map_err(|err| usage(format!("cannot read {flag} file {source}: {err}")))?;
    }
    Ok(bytes)
}

/// Parses one whole JSON value (nothing may follow it).
pub fn parse_json(bytes: &[u8]) -> Result<serde_json::Value, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// One JSON value per line; a trailing newline ends the last line. Any bad line refuses all.
pub fn parse_jsonl(bytes: &[u8]) -> anyhow::Result<Vec<Payload>> {
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if body.is_empty() {
        return Err(usage("--jsonl input holds no jobs"));
    }
    body.split(|byte| *byte == b'\n')
        .enumerate()
        .map(|(index, line)| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let number = index + 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                return Err(usage(format!("--jsonl line {number} is empty")));
            }
            parse_json(line)
                .map(Payload::Json)
                .map_err(|err| usage(format!("invalid JSON on --jsonl line {number}: {err}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_reads_one_job_per_line() {
        let jobs = parse_jsonl(b"{\"a\":1}\n[2]\r\n\"three\"\n").expect("valid");
        assert_eq!(
            jobs,
            vec![
                Payload::Json(serde_json::json!({"a": 1})),
                Payload::Json(serde_json::json!([2])),
                Payload::Json(serde_json::json!("three")),
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
}
