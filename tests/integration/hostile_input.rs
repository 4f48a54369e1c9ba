//! Hostile invocations, config files and payloads beyond those of `bad_input.rs`. Each is refused
//! with exit 2 or 1 and exactly one `bgq: error: ` line (or the argument parser's usage error, exit
//! 2), never a panic, and nothing is written.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;

use serde_json::Value;

use crate::support::{TestEnv, TestResult, callback_toml, describe, env_with_callbacks};

/// Checks a refusal: exit in `codes`, nothing on stdout, no panic, and stderr either exactly one
/// line starting `bgq: error: ` (holding `fragment`, if given) or, with exit 2, the argument
/// parser's own `error: ...` usage message.
fn refused(out: &std::process::Output, codes: &[i32], fragment: Option<&str>) -> TestResult {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let code = out.status.code();
    let one_bgq_error = lines.len() == 1 && lines[0].starts_with("bgq: error: ");
    let usage_error = code == Some(2) && stderr.starts_with("bgq: error: ");
    let problem = if !code.is_some_and(|code| codes.contains(&code)) {
        Some(format!("expected exit {codes:?}"))
    } else if stderr.contains("panicked") {
        Some("it panicked".to_owned())
    } else if !out.stdout.is_empty() {
        Some("expected nothing on stdout".to_owned())
    } else if !one_bgq_error && !usage_error {
        Some("expected exactly one `bgq: error: ` line, or a usage error".to_owned())
    } else {
        fragment
            .filter(|f| !stderr.contains(f))
            .map(|fragment| format!("expected the error to contain {fragment:?}"))
    };
    match problem {
        Some(problem) => Err(format!("{problem}; got {}", describe(out)).into()),
        None => Ok(()),
    }
}

/// One hostile invocation of `bgq --config <env> ARGS`.
struct Case {
    what: &'static str,
    args: Vec<OsString>,
    stdin: Option<Vec<u8>>,
    codes: &'static [i32],
    fragment: Option<&'static str>,
}

fn case(what: &'static str, args: &[&str], codes: &'static [i32]) -> Case {
    Case {
        what,
        args: args.iter().map(OsString::from).collect(),
        stdin: None,
        codes,
        fragment: None,
    }
}

impl Case {
    fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Case {
        self.stdin = Some(bytes.into());
        self
    }

    fn saying(mut self, fragment: &'static str) -> Case {
        self.fragment = Some(fragment);
        self
    }

    fn raw_args(what: &'static str, args: &[&[u8]], codes: &'static [i32]) -> Case {
        Case {
            what,
            args: args
                .iter()
                .map(|arg| OsStr::from_bytes(arg).to_owned())
                .collect(),
            stdin: None,
            codes,
            fragment: None,
        }
    }
}

#[test]
fn hostile_invocations_and_payloads_are_refused_and_store_nothing() -> TestResult {
    let env = env_with_callbacks("", &[("cb", "echo ran >> @ROOT@/ran")])?;
    let kept = env.publish("cb", "{}")?;
    let file = |name: &str, bytes: &[u8]| -> TestResult<String> {
        fs::write(env.path(name), bytes)?;
        Ok(env.path(name).display().to_string())
    };
    let deep_arrays = file("deep-arrays.json", "[".repeat(100_000).as_bytes())?;
    let deep_objects = "{\"a\":".repeat(100_000);
    let empty = file("empty.jsonl", b"")?;
    let mut long: Vec<u8> = (1..200_000)
        .flat_map(|i| format!("{{\"i\":{i}}}\n").into_bytes())
        .collect();
    long.extend_from_slice(b"{\"i\":\n");
    let long = file("long.jsonl", &long)?;
    let dir = env.path("a-folder");
    fs::create_dir_all(&dir)?;
    let dir = dir.display().to_string();
    let at_dir = format!("@{dir}");

    let cases = [
        case(
            "100k nested arrays",
            &["publish", "cb", "--json", &format!("@{deep_arrays}")],
            &[2],
        ),
        case(
            "100k nested objects on stdin",
            &["publish", "cb", "--json", "-"],
            &[2],
        )
        .stdin(deep_objects.clone()),
        case(
            "100k nested objects in --jsonl",
            &["publish", "cb", "--jsonl", "-"],
            &[2],
        )
        .stdin(format!("{{}}\n{deep_objects}\n")),
        case(
            "an empty --jsonl file",
            &["publish", "cb", "--jsonl", &empty],
            &[2],
        ),
        case(
            "an empty --jsonl on stdin",
            &["publish", "cb", "--jsonl", "-"],
            &[2],
        )
        .stdin(""),
        case(
            "200k --jsonl lines, the last one bad",
            &["publish", "cb", "--jsonl", &long],
            &[2],
        )
        .saying("line 200000"),
        case(
            "--jsonl of one CRLF",
            &["publish", "cb", "--jsonl", "-"],
            &[2],
        )
        .stdin("\r\n"),
        case(
            "--jsonl with spaces only",
            &["publish", "cb", "--jsonl", "-"],
            &[2],
        )
        .stdin("   \n"),
        case(
            "--jsonl with invalid UTF-8",
            &["publish", "cb", "--jsonl", "-"],
            &[2],
        )
        .stdin(&b"{}\n\"\xc3\x28\"\n"[..])
        .saying("line 2"),
        case("--json ''", &["publish", "cb", "--json", ""], &[2]),
        case(
            "--json - with empty stdin",
            &["publish", "cb", "--json", "-"],
            &[2],
        )
        .stdin(""),
        case(
            "a lone surrogate",
            &["publish", "cb", "--json", "\"\\ud800\""],
            &[2],
        ),
        case(
            "a number out of range",
            &["publish", "cb", "--json", "1e400"],
            &[2],
        ),
        case("NaN", &["publish", "cb", "--json", "NaN"], &[2]),
        case(
            "--json @ with no path",
            &["publish", "cb", "--json", "@"],
            &[1, 2],
        ),
        case(
            "--json @FOLDER",
            &["publish", "cb", "--json", &at_dir],
            &[1, 2],
        ),
        case("--raw FOLDER", &["publish", "cb", "--raw", &dir], &[1, 2]),
        case(
            "--jsonl FOLDER",
            &["publish", "cb", "--jsonl", &dir],
            &[1, 2],
        ),
        case(
            "--json and --raw",
            &["publish", "cb", "--json", "{}", "--raw", "-"],
            &[2],
        ),
        case(
            "--queue ''",
            &["publish", "cb", "--json", "{}", "--queue", ""],
            &[2],
        ),
        case(
            "--identifier ''",
            &["publish", "cb", "--json", "{}", "--identifier", ""],
            &[2],
        ),
        case(
            "--serial-group ''",
            &["publish", "cb", "--json", "{}", "--serial-group", ""],
            &[2],
        ),
        case("process --queue ''", &["process", "--queue", ""], &[2]),
        case(
            "process --concurrency 0",
            &["process", "--concurrency", "0"],
            &[2],
        ),
        case(
            "process --concurrency 2^40",
            &["process", "--concurrency", "1099511627776"],
            &[2],
        ),
        case(
            "process --max-jobs 0",
            &["process", "--max-jobs", "0"],
            &[2],
        ),
        case(
            "process --max-time 0",
            &["process", "--max-time", "0"],
            &[2],
        ),
        case(
            "process --max-time too long",
            &["process", "--max-time", "99999999999999999999d"],
            &[2],
        ),
        case(
            "list --limit 10^23",
            &["list", "--limit", "100000000000000000000000"],
            &[2],
        ),
        case("list --state ''", &["list", "--state", ""], &[2]),
        case("clear 2^33 days", &["clear", "8589934592"], &[2]),
        case("clear -1 days", &["clear", "--", "-1"], &[2]),
        case("an unknown command", &["frobnicate", "1"], &[2]),
        case("-v twice", &["-v", "-v", "list"], &[2]),
        case("--config ''", &["--config", "", "list"], &[1, 2]),
        case(
            "--config /dev/null",
            &["--config", "/dev/null", "list"],
            &[2],
        ),
        Case::raw_args(
            "a callback name that is not UTF-8",
            &[b"publish", b"cb\xff", b"--json", b"{}"],
            &[2],
        ),
        Case::raw_args(
            "a queue that is not UTF-8",
            &[b"publish", b"cb", b"--json", b"{}", b"--queue", b"q\xfe"],
            &[2],
        ),
        Case::raw_args(
            "--json text that is not UTF-8",
            &[b"publish", b"cb", b"--json", b"\"\xff\""],
            &[2],
        ),
    ];

    let mut failures = Vec::new();
    for case in &cases {
        let mut cmd = env.bgq();
        cmd.args(&case.args);
        if let Some(stdin) = &case.stdin {
            cmd.write_stdin(stdin.clone());
        }
        let out = cmd.output()?;
        if let Err(err) = refused(&out, case.codes, case.fragment) {
            failures.push(format!("{} (bgq {:?}): {err}", case.what, case.args));
        }
        let jobs = env.jobs()?;
        if jobs.len() != 1 {
            failures.push(format!("{}: stored a job: {jobs:?}", case.what));
            break;
        }
    }
    let jobs = env.jobs()?;
    if jobs.len() != 1 || jobs[0]["id"] != kept || jobs[0]["state"] != "READY" {
        failures.push(format!("expected only job {kept}, READY; got {jobs:?}"));
    }
    if env.path("ran").exists() {
        failures.push("a refused command ran a callback".to_owned());
    }
    assert!(
        failures.is_empty(),
        "{} of {} hostile invocations misbehaved:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
    Ok(())
}

/// Hostile config files: each refused at `publish` with one error line, and no database made.
#[test]
fn hostile_configs_are_refused_and_create_nothing() -> TestResult {
    let db = "database = \"bgq.sqlite\"\n";
    let cb = "[callbacks.cb]\ncommand = [\"/bin/true\"]\n";
    let text = |body: &str| -> Vec<u8> { format!("{db}{body}").into_bytes() };
    let with_cb = |extra: &str| -> Vec<u8> { format!("{db}{cb}{extra}").into_bytes() };
    let cases: Vec<(&str, Vec<u8>, &'static [i32])> = vec![
        ("a NUL byte", format!("{db}\0\n{cb}").into_bytes(), &[2]),
        (
            "invalid UTF-8",
            [&b"database = \"bgq\xff.sqlite\"\n"[..], cb.as_bytes()].concat(),
            &[2],
        ),
        ("an empty file", Vec::new(), &[2]),
        ("only a comment", b"# nothing here\n".to_vec(), &[2]),
        (
            "a duplicate key",
            format!("{db}{db}{cb}").into_bytes(),
            &[2],
        ),
        ("callbacks = 5", text("callbacks = 5\n"), &[2]),
        (
            "a callback that is a string",
            text("[callbacks]\ncb = \"/bin/true\"\n"),
            &[2],
        ),
        ("env = { A = 5 }", with_cb("env = { A = 5 }\n"), &[2]),
        (
            "env with a NUL in a value",
            with_cb("env = { A = \"x\\u0000y\" }\n"),
            &[2],
        ),
        (
            "env with `=` in a name",
            with_cb("env = { \"A=B\" = \"x\" }\n"),
            &[2],
        ),
        (
            "env with an empty name",
            with_cb("env = { \"\" = \"x\" }\n"),
            &[2],
        ),
        (
            "a NUL in command",
            text("[callbacks.cb]\ncommand = [\"/bin/tr\\u0000ue\"]\n"),
            &[2],
        ),
        (
            "a NUL in working_dir",
            with_cb("working_dir = \"a\\u0000b\"\n"),
            &[2],
        ),
        ("working_dir = 5", with_cb("working_dir = 5\n"), &[2]),
        (
            "notify = []",
            format!("{db}notify = []\n{cb}").into_bytes(),
            &[2],
        ),
        (
            "notify = [\"\"]",
            format!("{db}notify = [\"\"]\n{cb}").into_bytes(),
            &[2],
        ),
        (
            "temp_dir = [\"x\"]",
            format!("{db}temp_dir = [\"x\"]\n{cb}").into_bytes(),
            &[2],
        ),
        (
            "queue = \"\"",
            format!("{db}queue = \"\"\n{cb}").into_bytes(),
            &[2],
        ),
        (
            "concurrency = 2^40",
            format!("{db}concurrency = 1099511627776\n{cb}").into_bytes(),
            &[2],
        ),
        (
            "notify_on_attempts = -1",
            format!("{db}notify_on_attempts = -1\n{cb}").into_bytes(),
            &[2],
        ),
        (
            "max_attempts = 0",
            format!("{db}[retry]\nmax_attempts = 0\n{cb}").into_bytes(),
            &[2],
        ),
        (
            "max_attempts = 99999999999",
            format!("{db}[retry]\nmax_attempts = 99999999999\n{cb}").into_bytes(),
            &[2],
        ),
        (
            "multiplier = nan",
            format!("{db}[retry]\nmultiplier = nan\n{cb}").into_bytes(),
            &[2],
        ),
        (
            "jitter = inf",
            format!("{db}[retry]\njitter = inf\n{cb}").into_bytes(),
            &[2],
        ),
        (
            "delay = \"1.5s\"",
            format!("{db}[retry]\ndelay = \"1.5s\"\n{cb}").into_bytes(),
            &[2],
        ),
        (
            "max_delay = \"\"",
            format!("{db}[retry]\nmax_delay = \"\"\n{cb}").into_bytes(),
            &[2],
        ),
        (
            "timeout = \"99999999999999999999d\"",
            with_cb("timeout = \"99999999999999999999d\"\n"),
            &[2],
        ),
        (
            "kill_grace = \"5 s\"",
            with_cb("kill_grace = \"5 s\"\n"),
            &[2],
        ),
        (
            "an unknown key in a callback's retry",
            with_cb("[callbacks.cb.retry]\nfoo = 1\n"),
            &[2],
        ),
        (
            "a NUL in database",
            format!("database = \"bgq\\u0000.sqlite\"\n{cb}").into_bytes(),
            &[1, 2],
        ),
        (
            "database = \"\"",
            format!("database = \"\"\n{cb}").into_bytes(),
            &[1, 2],
        ),
    ];

    let mut failures = Vec::new();
    for (what, text, codes) in &cases {
        let env = TestEnv::new("")?;
        fs::write(env.config_path(), text)?;
        let out = env.bgq().args(["publish", "cb", "--json", "{}"]).output()?;
        if let Err(err) = refused(&out, codes, None) {
            failures.push(format!("config with {what}: {err}"));
        }
        let made: Vec<String> = fs::read_dir(env.root())?
            .filter_map(Result::ok)
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name.contains("sqlite"))
            .collect();
        if !made.is_empty() {
            failures.push(format!("config with {what}: created {made:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} hostile configs misbehaved:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
    Ok(())
}

/// A 20 MiB single-line JSON document, with `max_payload` raised above it (the default, 16 MiB,
/// refuses it: see publish.rs), is published and reaches the callback byte for byte.
#[test]
fn a_20_mib_json_document_is_published_and_delivered_exactly() -> TestResult {
    let env = TestEnv::new("")?;
    let got = env.path("got.json");
    let cb = env.script("cb.sh", &format!("cat > {}", got.display()))?;
    env.write_config(&format!(
        "max_payload = \"32MiB\"\n{}",
        callback_toml("big", &cb, "")
    ))?;
    let value = serde_json::json!({
        "blob": "x".repeat(20 * 1024 * 1024),
        "tail": [1, 2.5, "é", null],
    });
    let compact = serde_json::to_string(&value)?;
    // Pretty-printed on the way in, compact on the way out.
    let file = env.path("big.json");
    fs::write(&file, serde_json::to_string_pretty(&value)?)?;
    let id = env.publish("big", &format!("@{}", file.display()))?;
    env.process(&[])?;
    assert_eq!(env.state(id)?, "FINISHED");
    let delivered = fs::read(&got)?;
    assert!(
        delivered == format!("{compact}\n").into_bytes(),
        "delivered {} bytes, expected {}",
        delivered.len(),
        compact.len() + 1
    );
    let back: Value = serde_json::from_slice(&delivered)?;
    assert_eq!(back, value);
    Ok(())
}

/// A float reaches the callback as the double nearest to what was published (std's
/// `f64::from_str` is correctly rounded; it is the judge). Found by `fuzz/` (target `json`).
#[test]
fn json_floats_arrive_as_the_nearest_double_of_what_was_published() -> TestResult {
    let env = TestEnv::new("")?;
    let got = env.path("got.json");
    let cb = env.script("cb.sh", &format!("cat > {}", got.display()))?;
    env.write_config(&callback_toml("nums", &cb, ""))?;
    let published = [
        "-9.223372054836775e18",
        "9007199254740993.0",
        "0.1",
        "2.2250738585072014e-308",
        "5e-324",
        "1.7976931348623157e308",
        "-9223372054836775808",
        "18446748147419103230",
    ];
    let id = env.publish("nums", &format!("[{}]", published.join(",")))?;
    env.process(&[])?;
    assert_eq!(env.state(id)?, "FINISHED");
    let text = fs::read_to_string(&got)?;
    let delivered: Vec<&str> = text
        .trim_end()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .collect();
    assert_eq!(delivered.len(), published.len(), "{text}");
    let mut wrong = Vec::new();
    for (sent, came) in published.iter().zip(&delivered) {
        let (sent_f, came_f): (f64, f64) = (sent.parse()?, came.parse()?);
        if sent_f.to_bits() != came_f.to_bits() {
            wrong.push(format!("{sent} arrived as {came}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("; "));
    Ok(())
}
