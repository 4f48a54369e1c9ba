//! `bgq show ID [--json]` (every field of one job, its parameters pretty-printed or as a hex
//! preview, the output tail of its last run; `--json` with the exact parameters or the raw bytes in
//! base64) and `bgq explain ID` (one line saying why a job is or is not running), and both refusing
//! unknown or invalid ids.

use std::fs;
use std::time::Duration;

use assert_cmd::Command;
use chrono::{DateTime, FixedOffset, Utc};
use serde_json::Value;

use crate::support::{
    TestEnv, TestResult, callback_toml, describe, expect_error, expect_refused, faketime_available,
    wait_for,
};

/// `[retry]` with an hour's backoff and no jitter, so a failed job stays in backoff during a test.
const RETRY_HOUR: &str = "[retry]\ndelay = \"1h\"\njitter = 0.0\n";

/// The fields `list --json` prints; `show --json` has them all.
const LIST_FIELDS: [&str; 11] = [
    "id",
    "queue",
    "callback",
    "state",
    "attempts",
    "serial_group",
    "identifier",
    "created_at",
    "run_at",
    "started_at",
    "finished_at",
];

/// A [`TestEnv`] whose config is `extra` followed by one callback per `(NAME, BODY, EXTRA)`:
/// `NAME.sh` running `BODY`, with `EXTRA` lines (e.g. its own `[callbacks.NAME.retry]`).
fn env_with(extra: &str, callbacks: &[(&str, &str, &str)]) -> TestResult<TestEnv> {
    let env = TestEnv::new("")?;
    let mut config = format!("{extra}\n");
    for (name, body, more) in callbacks {
        let script = env.script(&format!("{name}.sh"), body)?;
        config.push_str(&callback_toml(name, &script, more));
    }
    env.write_config(&config)?;
    Ok(env)
}

/// Runs `cmd`, checks exit 0 and no panic, returns stdout.
fn stdout_of(mut cmd: Command, what: &str) -> TestResult<String> {
    let out = cmd.output()?;
    if !out.status.success() || String::from_utf8_lossy(&out.stderr).contains("panicked") {
        return Err(format!("{what}: {}", describe(&out)).into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// `bgq show ID`: its stdout.
fn show(env: &TestEnv, id: i64) -> TestResult<String> {
    let mut cmd = env.bgq();
    cmd.args(["show", &id.to_string()]);
    stdout_of(cmd, &format!("show {id}"))
}

/// `bgq show ID --json`: checks it printed exactly one line and returns that object.
fn show_json(env: &TestEnv, id: i64) -> TestResult<Value> {
    let mut cmd = env.bgq();
    cmd.args(["show", &id.to_string(), "--json"]);
    let text = stdout_of(cmd, &format!("show {id} --json"))?;
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() != 1 || !text.ends_with('\n') {
        return Err(format!("show --json must print exactly one line, got {text:?}").into());
    }
    let value: Value = serde_json::from_str(lines[0])?;
    if !value.is_object() {
        return Err(format!("show --json printed no object: {text}").into());
    }
    Ok(value)
}

/// Runs `cmd` (an `explain ID` command), checks exit 0 and exactly one stdout line starting
/// `job ID `; returns that line.
fn explain_with(mut cmd: Command, id: i64) -> TestResult<String> {
    cmd.args(["explain", &id.to_string()]);
    let text = stdout_of(cmd, &format!("explain {id}"))?;
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() != 1 {
        return Err(format!("explain must print exactly one line, got {text:?}").into());
    }
    if !lines[0].starts_with(&format!("job {id} ")) {
        return Err(format!("explain line must start with `job {id} `: {:?}", lines[0]).into());
    }
    Ok(lines[0].to_owned())
}

/// `bgq explain ID`: its one line.
fn explain(env: &TestEnv, id: i64) -> TestResult<String> {
    explain_with(env.bgq(), id)
}

/// The part of `line` between `prefix` and `suffix`, or an error naming all three.
fn between<'a>(line: &'a str, prefix: &str, suffix: &str) -> TestResult<&'a str> {
    line.strip_prefix(prefix)
        .and_then(|rest| rest.strip_suffix(suffix))
        .ok_or_else(|| format!("expected {prefix:?} ... {suffix:?}, got {line:?}").into())
}

/// Parses `YYYY-MM-DD HH:MM:SS +HH:MM (RELATIVE)`; returns the time and the relative text.
fn local_and_relative(text: &str) -> TestResult<(DateTime<FixedOffset>, String)> {
    let (local, rest) = text
        .split_once(" (")
        .ok_or_else(|| format!("no `(relative)` after the local time in {text:?}"))?;
    let relative = rest
        .strip_suffix(')')
        .ok_or_else(|| format!("no `)` closing the relative time in {text:?}"))?;
    if relative.is_empty() {
        return Err(format!("empty relative time in {text:?}").into());
    }
    let time = DateTime::parse_from_str(local, "%Y-%m-%d %H:%M:%S %:z")
        .map_err(|err| format!("local time {local:?} in {text:?}: {err}"))?;
    if time.format("%Y-%m-%d %H:%M:%S %:z").to_string() != local {
        return Err(format!("local time not as `YYYY-MM-DD HH:MM:SS +HH:MM`: {local:?}").into());
    }
    Ok((time, relative.to_owned()))
}

/// Fails unless `time` is within two minutes of `expected`.
fn near(time: DateTime<FixedOffset>, expected: DateTime<Utc>, what: &str) -> TestResult {
    let off = (time.timestamp() - expected.timestamp()).abs();
    if off > 120 {
        return Err(format!("{what}: {time} is {off}s away from {expected}").into());
    }
    Ok(())
}

/// Checks a `show` time value, `LOCAL (RELATIVE), UTC`: the format, UTC ending in `Z` with
/// milliseconds, and the local time being the same instant. Returns the UTC text.
fn show_time(value: &str) -> TestResult<String> {
    let (front, utc) = value
        .rsplit_once(", ")
        .ok_or_else(|| format!("no `, UTC` in the time {value:?}"))?;
    let (local, _) = local_and_relative(front)?;
    let utc_time = DateTime::parse_from_rfc3339(utc)
        .map_err(|err| format!("UTC time {utc:?} in {value:?}: {err}"))?;
    if !utc.ends_with('Z') || utc.len() != "2026-11-23T09:01:02.123Z".len() {
        return Err(format!("UTC time not like 2026-11-23T09:01:02.123Z: {utc:?}").into());
    }
    if (local.timestamp() - utc_time.timestamp()).abs() > 1 {
        return Err(format!("local and UTC times differ in {value:?}").into());
    }
    Ok(utc.to_owned())
}

/// Checks a `show` time field against the `list --json` value of the same time: `-` for null,
/// else a time whose UTC part is that value.
fn same_time(value: &str, listed: &Value, what: &str) -> TestResult {
    match listed.as_str() {
        None if value == "-" => Ok(()),
        None => Err(format!("{what}: expected `-` (listed {listed}), got {value:?}").into()),
        Some(at) => {
            let utc = show_time(value)?;
            if utc == at {
                Ok(())
            } else {
                Err(format!("{what}: UTC {utc} is not the listed {at}").into())
            }
        }
    }
}

/// The value of the `  key  value` line of `show` output, in the lines before the parameters.
fn field<'a>(out: &'a str, key: &str) -> TestResult<&'a str> {
    let values: Vec<&str> = out
        .lines()
        .take_while(|line| !line.starts_with("parameters ("))
        .filter_map(|line| line.trim_start().strip_prefix(key))
        .filter(|rest| rest.starts_with(' '))
        .map(str::trim)
        .collect();
    match values[..] {
        [value] => Ok(value),
        _ => Err(format!("expected one `{key}` line in:\n{out}").into()),
    }
}

/// The lines of `out` after the line starting with `header` up to (not including) the next line
/// starting with `until` (or the end); also returns the header line itself.
fn section<'a>(out: &'a str, header: &str, until: &str) -> TestResult<(&'a str, Vec<&'a str>)> {
    let mut lines = out.lines().skip_while(|line| !line.starts_with(header));
    let head = lines
        .next()
        .ok_or_else(|| format!("no line starting {header:?} in:\n{out}"))?;
    let body = lines
        .take_while(|line| until.is_empty() || !line.starts_with(until))
        .collect();
    Ok((head, body))
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        let sextet = |shift: u32| char::from(ALPHABET[((n >> shift) & 63) as usize]);
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if chunk.len() > 1 { sextet(6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(0) } else { '=' });
    }
    out
}

/// One `hexdump -C` line as (offset, hex bytes, text column), e.g. `("00000010", ["41"], "A")`.
type HexLine = (String, Vec<String>, String);

/// What `hexdump -C` shows for `bytes` starting at `offset`.
fn hexdump_line(offset: usize, bytes: &[u8]) -> HexLine {
    (
        format!("{offset:08x}"),
        bytes.iter().map(|b| format!("{b:02x}")).collect(),
        bytes
            .iter()
            .map(|&b| {
                if (0x20..=0x7e).contains(&b) {
                    char::from(b)
                } else {
                    '.'
                }
            })
            .collect(),
    )
}

/// Splits a printed hex preview line into offset, hex bytes and the text between the `|`s
/// (the spacing between the columns is not compared).
fn parse_hex_line(line: &str) -> TestResult<HexLine> {
    let (left, right) = line
        .split_once('|')
        .ok_or_else(|| format!("no `|text|` column in hex line {line:?}"))?;
    let text = right
        .strip_suffix('|')
        .ok_or_else(|| format!("hex line does not end with `|`: {line:?}"))?;
    let mut tokens = left.split_whitespace().map(str::to_owned);
    let offset = tokens
        .next()
        .ok_or_else(|| format!("empty hex line {line:?}"))?;
    Ok((offset, tokens.collect(), text.to_owned()))
}

/// Publishes the file `name` holding `bytes` with `publish CALLBACK --raw FILE`; returns the id.
fn publish_raw(env: &TestEnv, callback: &str, name: &str, bytes: &[u8]) -> TestResult<i64> {
    fs::write(env.path(name), bytes)?;
    let mut cmd = env.bgq();
    cmd.args(["publish", callback, "--raw"]).arg(env.path(name));
    Ok(stdout_of(cmd, "publish --raw")?.trim().parse()?)
}

// ---------------------------------------------------------------------------------------------
// show

/// `show` of a job that never ran: every field line, pretty JSON parameters in published key
/// order, attempts out of the callback's own max_attempts, and no output.
#[test]
fn show_prints_every_field_of_a_job_that_never_ran() -> TestResult {
    let env = env_with(
        "",
        &[("cb", "exit 0", "[callbacks.cb.retry]\nmax_attempts = 7")],
    )?;
    let params = r#"{"zeta":1,"alpha":{"y":[1,2],"b":"x"},"mid":"é ✓"}"#;
    let id = env.publish_with(
        "cb",
        params,
        &["--serial-group", "invoice-7", "--identifier", "cb-7"],
    )?;
    let listed = env.job(id)?;

    // A time zone other than UTC, when this machine has it, so local and UTC times differ.
    let kolkata = std::path::Path::new("/usr/share/zoneinfo/Asia/Kolkata").exists();
    let mut cmd = env.bgq();
    cmd.args(["show", &id.to_string()]);
    if kolkata {
        cmd.env("TZ", "Asia/Kolkata");
    }
    let out = stdout_of(cmd, "show")?;

    assert_eq!(
        out.lines().next(),
        Some(&*format!("job {id}: READY")),
        "{out}"
    );
    assert_eq!(field(&out, "queue")?, "general");
    assert_eq!(field(&out, "callback")?, "cb");
    assert_eq!(field(&out, "serial group")?, "invoice-7");
    assert_eq!(field(&out, "identifier")?, "cb-7");
    assert_eq!(
        field(&out, "attempts")?,
        "0 of 7",
        "the callback's max_attempts"
    );
    let created = field(&out, "created")?;
    same_time(created, &listed["created_at"], "created")?;
    if kolkata {
        assert!(
            created.contains(" +05:30 ("),
            "local time in the TZ time zone: {created:?}"
        );
    }
    assert_eq!(field(&out, "started")?, "-");
    assert_eq!(field(&out, "finished")?, "-");
    show_time(field(&out, "state since")?)?;
    assert_eq!(field(&out, "next run")?, "at the next `process` run");
    assert_eq!(
        field(&out, "notices")?,
        "none yet (one after 5 failed attempts)"
    );

    let (head, body) = section(&out, "parameters (", "attempts kept")?;
    let size = between(head, "parameters (JSON, ", " bytes):")?;
    assert!(size.parse::<usize>().is_ok(), "a byte count: {head:?}");
    let expected = [
        "{",
        "  \"zeta\": 1,",
        "  \"alpha\": {",
        "    \"y\": [",
        "      1,",
        "      2",
        "    ],",
        "    \"b\": \"x\"",
        "  },",
        "  \"mid\": \"é ✓\"",
        "}",
    ];
    assert_eq!(body, expected, "pretty-printed, keys in published order");
    assert_eq!(
        out.lines().last(),
        Some("output of the last run: none"),
        "{out}"
    );

    // Without a serial group or identifier: "-".
    let plain = env.publish("cb", "{}")?;
    let out = show(&env, plain)?;
    assert_eq!(field(&out, "serial group")?, "-");
    assert_eq!(field(&out, "identifier")?, "-");
    Ok(())
}

/// `show` after a failed run: attempts, start time, next run, notified, and the output tail.
#[test]
fn show_of_a_failed_run_has_its_times_notice_and_output_tail() -> TestResult {
    let env = env_with(
        &format!("notify_on_attempts = 1\n{RETRY_HOUR}"),
        &[(
            "flaky",
            "printf 'smtp timeout\\nsecond line'\nexit 75",
            "[callbacks.flaky.retry]\nmax_attempts = 5",
        )],
    )?;
    let id = env.publish("flaky", "{\"to\":\"a@example.com\"}")?;
    env.process(&[])?;
    let listed = env.job(id)?;
    assert_eq!(listed["state"], "TEMPORARILY_FAILED");

    let out = show(&env, id)?;
    assert_eq!(
        out.lines().next(),
        Some(&*format!("job {id}: TEMPORARILY_FAILED")),
        "{out}"
    );
    assert_eq!(field(&out, "attempts")?, "1 of 5");
    same_time(field(&out, "created")?, &listed["created_at"], "created")?;
    same_time(field(&out, "started")?, &listed["started_at"], "started")?;
    same_time(field(&out, "finished")?, &listed["finished_at"], "finished")?;
    show_time(field(&out, "state since")?)?;
    let next = field(&out, "next run")?;
    same_time(next, &listed["run_at"], "next run")?;
    assert!(next.contains("(in "), "next run is in the future: {next:?}");
    assert_eq!(
        field(&out, "notices")?,
        "after 1 failed attempt: sent",
        "notify_on_attempts = 1"
    );

    let (head, body) = section(&out, "output of the last run", "")?;
    assert_eq!(head, "output of the last run (24 bytes):");
    assert_eq!(body, ["smtp timeout", "second line"]);
    Ok(())
}

/// `show` of a `--raw` job: its size and a `hexdump -C` style preview of the first 64 bytes,
/// then `... N more bytes` only when there are more.
#[test]
fn show_previews_a_raw_payload_as_a_hexdump() -> TestResult {
    let env = env_with("", &[("cb", "cat > /dev/null", "")])?;
    let long: Vec<u8> = (0..100u8)
        .map(|i| i.wrapping_mul(7).wrapping_add(0x70))
        .collect();
    let short = b"hi\x00\xff|there".to_vec();
    let long_id = publish_raw(&env, "cb", "long.bin", &long)?;
    let short_id = publish_raw(&env, "cb", "short.bin", &short)?;

    let out = show(&env, long_id)?;
    let (head, body) = section(&out, "parameters (", "attempts kept")?;
    assert_eq!(head, "parameters (raw, 100 bytes):");
    assert_eq!(
        body.len(),
        5,
        "four lines of 16 bytes, then the rest: {body:?}"
    );
    for (n, line) in body[..4].iter().enumerate() {
        let expected = hexdump_line(n * 16, &long[n * 16..n * 16 + 16]);
        assert_eq!(parse_hex_line(line)?, expected, "line {n}: {line:?}");
    }
    assert_eq!(body[4], "... 36 more bytes");

    let out = show(&env, short_id)?;
    let (head, body) = section(&out, "parameters (", "attempts kept")?;
    assert_eq!(head, "parameters (raw, 10 bytes):");
    assert_eq!(body.len(), 1, "one line, no `more bytes`: {body:?}");
    assert_eq!(parse_hex_line(body[0])?, hexdump_line(0, &short));
    assert_eq!(
        out.lines().last(),
        Some("output of the last run: none"),
        "{out}"
    );
    Ok(())
}

/// `show --json`: one line with every `list --json` field and the new ones; `parameters` is the
/// published value exactly (nesting, unicode, key order); `output` is the text printed.
#[test]
fn show_json_has_every_field_and_the_exact_parameters() -> TestResult {
    let env = env_with("", &[("cb", "printf 'héllo wörld'", "")])?;
    let params = r#"{"z":"日本語 ✓ 😀","a":[1,{"y":null,"b":true}],"n":-42,"s":"quote \" and \\ backslash"}"#;
    let id = env.publish_with("cb", params, &["--serial-group", "g", "--identifier", "i"])?;
    env.process(&[])?;
    let listed = env.job(id)?;
    assert_eq!(listed["state"], "FINISHED");

    let job = show_json(&env, id)?;
    for key in LIST_FIELDS {
        assert_eq!(
            job[key], listed[key],
            "{key} as `list --json` has it: {job}"
        );
    }
    assert_eq!(job["serial_group"], "g");
    assert_eq!(job["identifier"], "i");
    for key in [
        "created_at",
        "run_at",
        "started_at",
        "finished_at",
        "state_changed_at",
    ] {
        let at = job[key]
            .as_str()
            .ok_or_else(|| format!("{key} is no time: {job}"))?;
        assert!(
            at.ends_with('Z') && DateTime::parse_from_rfc3339(at).is_ok(),
            "{key} {at:?} must be RFC 3339 UTC"
        );
    }
    assert_eq!(
        job["next_run_at"],
        Value::Null,
        "a FINISHED job never runs again"
    );
    assert_eq!(job["notified"], Value::Bool(false));
    assert_eq!(
        serde_json::to_string(&job["parameters"])?,
        params,
        "the published value, key order kept"
    );
    assert!(
        job.get("raw_base64").is_none(),
        "no raw_base64 for a JSON job: {job}"
    );
    assert_eq!(job["output"], "héllo wörld");
    Ok(())
}

/// `show --json` of a `--raw` job: `raw_base64` is the exact bytes (all 256 values), with no
/// `parameters` key; a job that never ran has output "" and is due at its run_at.
#[test]
fn show_json_of_a_raw_job_has_the_exact_bytes_in_base64() -> TestResult {
    let env = env_with("", &[("cb", "cat > /dev/null", "")])?;
    let mut bytes: Vec<u8> = (0..=255u8).collect();
    bytes.extend((0..=255u8).rev());
    bytes.push(b'\n');
    let id = publish_raw(&env, "cb", "payload.bin", &bytes)?;

    let job = show_json(&env, id)?;
    assert_eq!(
        job["raw_base64"].as_str(),
        Some(&*base64(&bytes)),
        "standard base64 with padding of the exact bytes"
    );
    assert!(
        job.get("parameters").is_none(),
        "no parameters for a raw job: {job}"
    );
    assert_eq!(job["output"], "", "never ran");
    assert_eq!(job["state"], "READY");
    assert_eq!(
        job["next_run_at"],
        env.job(id)?["run_at"],
        "READY: its run_at"
    );
    Ok(())
}

/// `next_run_at` / `next run`: the run_at of a job that can run again, none for a FINISHED or
/// PERMANENTLY_FAILED one.
#[test]
fn show_next_run_only_while_the_job_can_run_again() -> TestResult {
    let env = env_with(
        RETRY_HOUR,
        &[
            ("ok", "exit 0", ""),
            ("bad", "exit 1", ""),
            ("later", "exit 76", ""),
            ("flaky", "exit 75", ""),
        ],
    )?;
    let ok = env.publish("ok", "{}")?;
    let bad = env.publish("bad", "{}")?;
    let later = env.publish("later", "{}")?;
    let flaky = env.publish("flaky", "{}")?;
    env.process(&[])?;

    for (id, state, runs_again) in [
        (ok, "FINISHED", false),
        (bad, "PERMANENTLY_FAILED", false),
        (later, "WAITING", true),
        (flaky, "TEMPORARILY_FAILED", true),
    ] {
        let listed = env.job(id)?;
        assert_eq!(listed["state"], state);
        let job = show_json(&env, id)?;
        assert_eq!(job["state"], state);
        let at = job["state_changed_at"].as_str().unwrap_or("");
        assert!(at.ends_with('Z'), "{state}: state_changed_at {at:?}");
        if runs_again {
            assert_eq!(job["next_run_at"], listed["run_at"], "{state}: its run_at");
        } else {
            assert_eq!(job["next_run_at"], Value::Null, "{state}: never runs again");
            let out = show(&env, id)?;
            assert_eq!(field(&out, "next run")?, "-", "{state}:\n{out}");
            assert_eq!(
                out.lines().next(),
                Some(&*format!("job {id}: {state}")),
                "{out}"
            );
        }
    }
    assert_eq!(
        field(&show(&env, ok)?, "attempts")?,
        "1 of 25",
        "the default max_attempts"
    );
    Ok(())
}

/// `show` and `explain` of an unknown id: exit 2 and one error line naming the id and the
/// database; ids that are not positive integers: exit 2.
#[test]
fn show_and_explain_refuse_unknown_and_invalid_ids() -> TestResult {
    let env = env_with("", &[("cb", "exit 0", "")])?;
    env.publish("cb", "{}")?;
    let mut fragments = vec!["no job 99 in "];
    // TODO(PostgreSQL issue): how the line names a PostgreSQL database is that issue's to say.
    if env.on_sqlite() {
        fragments.push("bgq.sqlite");
    }
    for args in [
        &["show", "99"][..],
        &["show", "99", "--json"],
        &["explain", "99"],
    ] {
        let out = env.bgq().args(args).output()?;
        expect_error(&out, 2, &fragments).map_err(|err| format!("{args:?}: {err}"))?;
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).lines().count(),
            1,
            "{args:?}: one line: {}",
            describe(&out)
        );
    }
    for command in ["show", "explain"] {
        for id in ["0", "-1", "abc"] {
            let out = env.bgq().args([command, id]).output()?;
            expect_refused(&out, &[2]).map_err(|err| format!("{command} {id}: {err}"))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// explain

/// `explain` of a job that ended: FINISHED does not run again; PERMANENTLY_FAILED runs again
/// only by `bgq retry`.
#[test]
fn explain_a_finished_and_a_permanently_failed_job() -> TestResult {
    let env = env_with("", &[("ok", "exit 0", ""), ("bad", "exit 1", "")])?;
    let ok = env.publish("ok", "{}")?;
    let bad = env.publish("bad", "{}")?;
    env.process(&[])?;

    let line = explain(&env, ok)?;
    let at = between(
        &line,
        &format!("job {ok} FINISHED at "),
        "; it does not run again",
    )?;
    near(local_and_relative(at)?.0, Utc::now(), "finished at")?;

    let line = explain(&env, bad)?;
    let rest = between(
        &line,
        &format!("job {bad} failed permanently at "),
        &format!("; only `bgq retry {bad}` runs it again"),
    )?;
    let (at, count) = rest
        .split_once(" after 1 attempt")
        .ok_or_else(|| format!("no `after 1 attempt` in {line:?}"))?;
    // Then how its last attempt ended.
    assert_eq!(
        count.trim_start_matches("(s)"),
        " (exit code 1: failed permanently)",
        "{line:?}"
    );
    near(local_and_relative(at)?.0, Utc::now(), "failed at")?;
    Ok(())
}

/// `explain` of a TEMPORARILY_FAILED job not yet due: in backoff until when, after which attempt.
#[test]
fn explain_a_job_in_backoff() -> TestResult {
    let env = env_with(RETRY_HOUR, &[("flaky", "exit 75", "")])?;
    let id = env.publish("flaky", "{}")?;
    env.process(&[])?;
    assert_eq!(env.state(id)?, "TEMPORARILY_FAILED");

    let line = explain(&env, id)?;
    let until = between(
        &line,
        &format!("job {id} is in backoff until "),
        " after attempt 1 failed (exit code 75: temporarily failed)",
    )?;
    let (time, relative) = local_and_relative(until)?;
    assert!(relative.starts_with("in "), "in the future: {line:?}");
    near(
        time,
        Utc::now() + chrono::Duration::hours(1),
        "backoff until",
    )?;
    Ok(())
}

/// `explain` of a WAITING job: it waits for the next `process` run of its queue.
#[test]
fn explain_a_waiting_job() -> TestResult {
    let env = env_with("", &[("later", "exit 76", "")])?;
    let id = env.publish("later", "{}")?;
    env.process(&[])?;
    assert_eq!(env.state(id)?, "WAITING");
    assert_eq!(
        explain(&env, id)?,
        format!("job {id} is WAITING until the next `process` run of queue `general`")
    );
    Ok(())
}

/// `explain` of a due job held back by an older unfinished job of its serial group names that job.
#[test]
fn explain_a_job_held_by_its_serial_group() -> TestResult {
    let env = env_with(RETRY_HOUR, &[("flaky", "exit 75", "")])?;
    let first = env.publish_with("flaky", "{}", &["--serial-group", "g"])?;
    let second = env.publish_with("flaky", "{}", &["--serial-group", "g"])?;
    env.process(&[])?;
    assert_eq!(env.state(first)?, "TEMPORARILY_FAILED");
    let held = env.job(second)?;
    assert_eq!(held["state"], "READY");
    assert_eq!(held["attempts"].as_i64(), Some(0), "held back, never ran");

    assert_eq!(
        explain(&env, second)?,
        format!("job {second} is behind job {first} (TEMPORARILY_FAILED) of serial group `g`")
    );
    Ok(())
}

/// `explain` of a job whose callback the config no longer defines says so and names the
/// config; `show` then gives its attempts without an `of N`.
#[test]
fn explain_a_job_whose_callback_is_no_longer_configured() -> TestResult {
    let env = env_with("", &[("gone", "exit 0", ""), ("kept", "exit 0", "")])?;
    let id = env.publish("gone", "{}")?;
    let kept = env.script("kept.sh", "exit 0")?;
    env.write_config(&callback_toml("kept", &kept, ""))?;

    let line = explain(&env, id)?;
    let config = between(
        &line,
        &format!("job {id} waits for callback `gone`, which "),
        " does not define",
    )?;
    assert!(
        config.ends_with("bgq.toml"),
        "names the config file: {line:?}"
    );

    let out = show(&env, id)?;
    assert_eq!(field(&out, "callback")?, "gone");
    assert_eq!(
        field(&out, "attempts")?,
        "0",
        "no max_attempts to show: {out}"
    );
    Ok(())
}

/// `explain` of a due job: no `process` run of its queue yet, or the next run starts it when
/// one ran just now.
#[test]
fn explain_a_due_job_says_whether_process_has_run_for_its_queue() -> TestResult {
    let env = env_with("", &[("ok", "exit 0", "")])?;
    let first = env.publish("ok", "{}")?;
    let mail = env.publish_with("ok", "{}", &["--queue", "mail"])?;
    assert_eq!(
        explain(&env, first)?,
        format!("job {first} is due, but no `process` has run for queue `general` yet")
    );

    env.process(&[])?;
    assert_eq!(env.state(first)?, "FINISHED");
    let second = env.publish("ok", "{}")?;
    assert_eq!(
        explain(&env, second)?,
        format!("job {second} is due: it runs on the next `process` run of queue `general`")
    );
    assert_eq!(
        explain(&env, mail)?,
        format!("job {mail} is due, but no `process` has run for queue `mail` yet"),
        "a run of `general` is no run of `mail`"
    );
    Ok(())
}

/// `explain` of a due job when the last `process` run of its queue was ten minutes ago: cron has
/// not run it since then.
#[test]
fn explain_a_due_job_when_cron_stopped_running_process() -> TestResult {
    if !faketime_available()? {
        return Ok(());
    }
    let env = env_with("", &[("ok", "exit 0", "")])?;
    env.publish("ok", "{}")?;
    env.process(&[])?;
    let ran_at = Utc::now();
    let id = env.publish("ok", "{}")?;

    let line = explain_with(env.bgq_at("+10m"), id)?;
    let since = between(
        &line,
        &format!("job {id} is due, but cron has not run `process` for queue `general` since "),
        "",
    )?;
    let (time, relative) = local_and_relative(since)?;
    assert_eq!(relative, "10 min ago", "{line:?}");
    near(time, ran_at, "the last run")?;
    Ok(())
}

/// `explain` while `process` runs: the running job since when and its attempt; a due job waiting
/// for a slot names the running `process` and its pid.
#[test]
fn explain_a_running_job_and_one_waiting_for_a_slot() -> TestResult {
    let env = TestEnv::new("")?;
    let release = env.path("release");
    // Bounded, so that a failed test leaves no callback behind for long.
    let hold = env.script(
        "hold.sh",
        &format!(
            "i=0\nwhile [ ! -e {} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done",
            release.display()
        ),
    )?;
    env.write_config(&format!(
        "concurrency = 1\n{}",
        callback_toml("hold", &hold, "")
    ))?;
    let running = env.publish("hold", "{}")?;
    let mut process = env.spawn(&["process"])?;
    wait_for("the job to be PROCESSING", Duration::from_secs(20), || {
        env.state(running).is_ok_and(|state| state == "PROCESSING")
    })?;
    let waiting = env.publish("hold", "{}")?;

    let line = explain(&env, running)?;
    let since = between(
        &line,
        &format!("job {running} is running since "),
        " (attempt 1)",
    )?;
    near(local_and_relative(since)?.0, Utc::now(), "running since")?;
    assert_eq!(
        explain(&env, waiting)?,
        format!(
            "job {waiting} is due: the running `process` of queue `general` (pid {}) starts it when a slot is free",
            process.pid()
        )
    );

    fs::write(&release, "")?;
    let status = process.wait_exit(Duration::from_secs(30))?;
    assert!(status.success(), "process: {}", process.stderr());
    assert_eq!(env.state(running)?, "FINISHED");
    Ok(())
}

/// `explain` of a CANCELLED job: when it was cancelled, and that only `bgq retry` runs it again.
#[test]
fn explain_a_cancelled_job() -> TestResult {
    let env = env_with("", &[("cb", "exit 0", "")])?;
    let id = env.publish("cb", "{}")?;
    let out = env.bgq().args(["cancel", &id.to_string()]).output()?;
    assert!(out.status.success(), "cancel: {}", describe(&out));
    assert_eq!(env.state(id)?, "CANCELLED");

    let line = explain(&env, id)?;
    let at = between(
        &line,
        &format!("job {id} was cancelled at "),
        &format!("; only `bgq retry {id}` runs it again"),
    )?;
    near(local_and_relative(at)?.0, Utc::now(), "cancelled at")?;
    Ok(())
}

/// `show` says which notices went out: none for a job that finished without one, a failed
/// job's notice as not sent yet while a run left it to the next (an on-demand run has no
/// stderr anyone reads), then as sent.
#[test]
fn show_says_which_notices_were_sent() -> TestResult {
    let env = env_with("", &[("ok", "exit 0", ""), ("bad", "exit 1", "")])?;
    let ok = env.publish("ok", "{}")?;
    let bad = env.publish("bad", "{}")?;
    let stderr = env.process(&["--on-demand"])?;
    assert!(!stderr.contains("notice"), "left to the next run: {stderr}");
    assert_eq!(field(&show(&env, ok)?, "notices")?, "none");
    assert_eq!(
        field(&show(&env, bad)?, "notices")?,
        "failed permanently: not sent yet: the next `process` run sends it"
    );
    let stderr = env.process(&[])?;
    assert!(stderr.contains(&format!("job {bad} (bad)")), "{stderr}");
    let out = show(&env, bad)?;
    assert_eq!(field(&out, "notices")?, "failed permanently: sent", "{out}");
    Ok(())
}
