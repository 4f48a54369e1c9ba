//! `bgq stats` (job counts per queue and state, the oldest due job, runs of the last hour and day,
//! the last `process` run; `--json`, `--prometheus`, `--output`, the table) and `bgq status` (is
//! cron still running `process`, with one `ok:` or `stale:` line per queue).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use assert_cmd::Command;
use serde_json::Value;

use crate::support::{
    TestEnv, TestResult, callback_toml, describe, env_with_callbacks, expect_error, expect_refused,
    faketime_available, hanging_callback, read_lines, send_signal, wait_for,
};

/// The seven job states, as `stats` names them.
const STATES: [&str; 7] = [
    "READY",
    "PROCESSING",
    "FINISHED",
    "TEMPORARILY_FAILED",
    "WAITING",
    "PERMANENTLY_FAILED",
    "CANCELLED",
];

/// Runs `cmd`; returns (exit code, stdout, stderr), failing on a panic.
fn run(cmd: &mut Command) -> TestResult<(i32, String, String)> {
    let out = cmd.output()?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if stderr.contains("panicked") {
        return Err(format!("bgq panicked: {}", describe(&out)).into());
    }
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout)?,
        stderr,
    ))
}

/// Runs `cmd` (a `stats --json`), checks exit 0 and exactly one line, returns the parsed object.
fn stats_json(cmd: &mut Command) -> TestResult<Value> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(format!("stats --json: {}", describe(&out)).into());
    }
    let text = String::from_utf8(out.stdout)?;
    if text.lines().count() != 1 || !text.ends_with('\n') {
        return Err(format!("stats --json must print exactly one line, got {text:?}").into());
    }
    Ok(serde_json::from_str(&text)?)
}

/// The entry of `queue` in a `stats --json` object.
fn queue_of<'a>(stats: &'a Value, queue: &str) -> TestResult<&'a Value> {
    stats["queues"]
        .as_array()
        .ok_or_else(|| format!("no `queues` array in {stats}"))?
        .iter()
        .find(|entry| entry["queue"] == queue)
        .ok_or_else(|| format!("queue {queue:?} is not listed in {stats}").into())
}

/// The names of the queues a `stats --json` object lists, sorted.
fn queue_names(stats: &Value) -> TestResult<Vec<String>> {
    let mut names = stats["queues"]
        .as_array()
        .ok_or_else(|| format!("no `queues` array in {stats}"))?
        .iter()
        .map(|entry| entry["queue"].as_str().map(str::to_owned))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| format!("a queue without a name in {stats}"))?;
    names.sort();
    Ok(names)
}

/// Epoch milliseconds of an RFC 3339 UTC time ending in `Z`.
fn millis(value: &Value) -> TestResult<i64> {
    let text = value
        .as_str()
        .ok_or_else(|| format!("not a time: {value}"))?;
    if !text.ends_with('Z') {
        return Err(format!("{text:?} does not end in Z").into());
    }
    Ok(chrono::DateTime::parse_from_rfc3339(text)
        .map_err(|err| format!("{text:?}: {err}"))?
        .timestamp_millis())
}

/// Checks that a job-count object has exactly the seven states, with `expected` counts (others 0).
fn assert_job_counts(jobs: &Value, expected: &[(&str, i64)]) -> TestResult {
    let object = jobs
        .as_object()
        .ok_or_else(|| format!("`jobs` is not an object: {jobs}"))?;
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut states = STATES.to_vec();
    states.sort_unstable();
    assert_eq!(keys, states, "all seven states, no other key: {jobs}");
    for state in STATES {
        let want = expected
            .iter()
            .find(|(name, _)| *name == state)
            .map_or(0, |&(_, n)| n);
        assert_eq!(jobs[state].as_i64(), Some(want), "{state} in {jobs}");
    }
    Ok(())
}

/// One sample of the Prometheus text format: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses `name{label="value",...} value` (labels optional), undoing `\\`, `\"` and `\n`.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let bad = |why: &str| format!("{why} in metric line {line:?}");
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(bad("no metric name"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices();
        loop {
            let mut key = String::new();
            loop {
                match chars.next() {
                    Some((_, '=')) => break,
                    Some((_, c)) if c.is_ascii_alphanumeric() || c == '_' => key.push(c),
                    _ => return Err(bad("bad label name")),
                }
            }
            if key.is_empty() || chars.next().map(|(_, c)| c) != Some('"') {
                return Err(bad("bad label"));
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '"')) => break,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        _ => return Err(bad("bad escape")),
                    },
                    Some((_, '\n')) | None => return Err(bad("unterminated label value")),
                    Some((_, c)) => value.push(c),
                }
            }
            if labels.insert(key, value).is_some() {
                return Err(bad("repeated label"));
            }
            match chars.next() {
                Some((_, ',')) => continue,
                Some((i, '}')) => {
                    rest = &after[i + 1..];
                    break;
                }
                _ => return Err(bad("expected `,` or `}` after a label")),
            }
        }
    }
    let value = rest
        .strip_prefix(' ')
        .ok_or_else(|| bad("no single space before the value"))?;
    if value.is_empty() || value.contains(char::is_whitespace) {
        return Err(bad("expected exactly one value"));
    }
    let value: f64 = value.parse().map_err(|_| bad("value is not a number"))?;
    Ok((name.to_owned(), labels, value))
}

/// The samples of `name` whose labels include every `(key, value)` of `want`.
fn samples<'a>(all: &'a [Sample], name: &str, want: &[(&str, &str)]) -> Vec<&'a Sample> {
    all.iter()
        .filter(|(n, labels, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

/// The value of the one sample of `name` with labels `want`.
fn value_of(all: &[Sample], name: &str, want: &[(&str, &str)]) -> TestResult<f64> {
    match samples(all, name, want)[..] {
        [(_, _, value)] => Ok(*value),
        ref found => Err(format!("expected one {name} {want:?}, found {found:?}").into()),
    }
}

/// The `bgq_jobs` lines of a Prometheus text, in order.
fn bgq_jobs_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|line| line.starts_with("bgq_jobs{"))
        .collect()
}

/// The names of the entries of `dir`, sorted.
fn entries(dir: &Path) -> TestResult<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// SIGKILLs the pid a blocked callback wrote to a file, when dropped (also when a test fails).
struct KillPidFile(PathBuf);

impl Drop for KillPidFile {
    fn drop(&mut self) {
        if let Some(pid) = read_lines(&self.0)
            .first()
            .and_then(|line| line.trim().parse::<u32>().ok())
        {
            let _ = send_signal(pid, "KILL");
        }
    }
}

/// A callback body that runs until `@ROOT@/release` exists (at most 30 s), after noting its start.
const BLOCK_UNTIL_RELEASED: &str = "echo $BGQ_JOB_ID >> @ROOT@/started\n\
     i=0; while [ ! -f @ROOT@/release ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done";

// ---- stats

/// After a run where two jobs finished, one asked for a retry and one failed, `stats --json`
/// counts each state, the runs of the last hour and day, and describes that run.
#[test]
fn stats_json_counts_states_runs_and_the_last_run() -> TestResult {
    let env = env_with_callbacks(
        "",
        &[("ok", "exit 0"), ("flaky", "exit 75"), ("broken", "exit 1")],
    )?;
    env.publish("ok", "{}")?;
    env.publish("ok", "{}")?;
    env.publish("flaky", "{}")?;
    env.publish("broken", "{}")?;
    let before = chrono::Utc::now().timestamp_millis();
    env.process(&[])?;
    let after = chrono::Utc::now().timestamp_millis();

    let stats = stats_json(env.bgq().args(["stats", "--json"]))?;
    millis(&stats["generated_at"])?;
    assert_eq!(queue_names(&stats)?, ["general"], "{stats}");
    let general = queue_of(&stats, "general")?;
    assert_job_counts(
        &general["jobs"],
        &[
            ("FINISHED", 2),
            ("TEMPORARILY_FAILED", 1),
            ("PERMANENTLY_FAILED", 1),
        ],
    )?;
    for window in ["last_hour", "last_day"] {
        let runs = &general[window];
        assert_eq!(runs["finished"].as_i64(), Some(2), "{window}: {runs}");
        assert_eq!(
            runs["temporarily_failed"].as_i64(),
            Some(1),
            "{window}: {runs}"
        );
        assert_eq!(
            runs["permanently_failed"].as_i64(),
            Some(1),
            "{window}: {runs}"
        );
    }
    assert!(
        general["oldest_due_at"].is_null() && general["oldest_due_age_seconds"].is_null(),
        "the retry is not due for a minute, nothing else is due: {general}"
    );

    let last = &general["last_run"];
    assert_eq!(last["outcome"], "ok", "{last}");
    assert!(last["error"].is_null(), "{last}");
    assert_eq!(last["jobs"].as_i64(), Some(4), "jobs it started: {last}");
    assert_eq!(last["failed"].as_i64(), Some(2), "jobs that failed: {last}");
    let started = millis(&last["started_at"])?;
    let finished = millis(&last["finished_at"])?;
    assert!(
        before - 1000 <= started && started <= finished && finished <= after + 1000,
        "the run's times lie within the `process` call: {last}"
    );
    Ok(())
}

/// A job published to another queue gets its own entry; the config's queue is listed even
/// when it has neither jobs nor runs.
#[test]
fn stats_lists_every_queue_with_jobs_and_the_configured_one() -> TestResult {
    let env = env_with_callbacks("", &[("ok", "exit 0")])?;
    env.publish_with("ok", "{}", &["--queue", "mail"])?;

    let stats = stats_json(env.bgq().args(["stats", "--json"]))?;
    assert_eq!(queue_names(&stats)?, ["general", "mail"], "{stats}");
    let mail = queue_of(&stats, "mail")?;
    assert_job_counts(&mail["jobs"], &[("READY", 1)])?;
    assert!(mail["last_run"].is_null(), "no run of `mail`: {mail}");

    let general = queue_of(&stats, "general")?;
    assert_job_counts(&general["jobs"], &[])?;
    assert!(general["last_run"].is_null(), "{general}");
    assert!(general["oldest_due_at"].is_null(), "{general}");
    assert!(general["oldest_due_age_seconds"].is_null(), "{general}");
    for window in ["last_hour", "last_day"] {
        for outcome in ["finished", "temporarily_failed", "permanently_failed"] {
            assert_eq!(
                general[window][outcome].as_i64(),
                Some(0),
                "{window}.{outcome}: {general}"
            );
        }
    }
    Ok(())
}

/// A READY job nobody has run is the oldest due job: its due time is its creation time.
#[test]
fn stats_reports_the_oldest_due_job() -> TestResult {
    let env = env_with_callbacks("", &[("ok", "exit 0")])?;
    let first = env.publish("ok", "{}")?;
    env.publish("ok", "{}")?;
    let created = millis(&env.job(first)?["created_at"])?;

    let stats = stats_json(env.bgq().args(["stats", "--json"]))?;
    let general = queue_of(&stats, "general")?;
    assert_job_counts(&general["jobs"], &[("READY", 2)])?;
    assert_eq!(
        millis(&general["oldest_due_at"])?,
        created,
        "the first job's created_at: {general}"
    );
    let age = general["oldest_due_age_seconds"]
        .as_f64()
        .ok_or_else(|| format!("no age: {general}"))?;
    assert!((0.0..60.0).contains(&age), "age {age}");
    assert!(general["last_run"].is_null(), "{general}");
    Ok(())
}

/// An hour later (faketime) the oldest due job is about 3600 s old.
#[test]
fn stats_oldest_due_age_grows_with_the_clock() -> TestResult {
    if !faketime_available()? {
        return Ok(());
    }
    let env = env_with_callbacks("", &[("ok", "exit 0")])?;
    let id = env.publish("ok", "{}")?;
    let created = millis(&env.job(id)?["created_at"])?;

    let stats = stats_json(env.bgq_at("+1h").args(["stats", "--json"]))?;
    let general = queue_of(&stats, "general")?;
    assert_eq!(millis(&general["oldest_due_at"])?, created, "{general}");
    let age = general["oldest_due_age_seconds"]
        .as_f64()
        .ok_or_else(|| format!("no age: {general}"))?;
    assert!((3590.0..3700.0).contains(&age), "about an hour: {age}");
    Ok(())
}

/// `--prometheus` prints the node_exporter text format: HELP and TYPE for every metric, one
/// parsable sample a line, every state per queue, and escaped label values.
#[test]
fn stats_prometheus_is_valid_text_format() -> TestResult {
    let env = env_with_callbacks("", &[("ok", "exit 0")])?;
    env.publish("ok", "{}")?;
    env.process(&[])?;
    let weird = "we\"ird\\q";
    env.publish_with("ok", "{}", &["--queue", weird])?;

    let (code, text, stderr) = run(env.bgq().args(["stats", "--prometheus"]))?;
    assert_eq!(code, 0, "{stderr}");
    assert!(text.ends_with('\n'), "{text:?}");
    assert!(!text.contains('\x1b'), "{text:?}");

    let mut all = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        all.push(parse_sample(line)?);
    }
    let metrics = [
        "bgq_jobs",
        "bgq_oldest_due_job_age_seconds",
        "bgq_job_runs",
        "bgq_last_run_start_timestamp_seconds",
        "bgq_last_run_ok",
        "bgq_job_runs_total",
        "bgq_paused",
    ];
    for metric in metrics {
        for kind in ["HELP", "TYPE"] {
            let prefix = format!("# {kind} {metric} ");
            let count = text.lines().filter(|l| l.starts_with(&prefix)).count();
            assert_eq!(count, 1, "one `{prefix}...` line:\n{text}");
        }
    }
    for metric in &metrics[..3] {
        assert!(
            text.lines().any(|l| l == format!("# TYPE {metric} gauge")),
            "{metric} is a gauge:\n{text}"
        );
    }
    assert!(
        text.lines()
            .any(|l| l == "# TYPE bgq_job_runs_total counter"),
        "bgq_job_runs_total is a counter:\n{text}"
    );
    for (name, _, _) in &all {
        assert!(metrics.contains(&name.as_str()), "unknown metric {name}");
    }

    assert!(
        text.contains(r#"queue="we\"ird\\q""#),
        "the label value is escaped:\n{text}"
    );
    for queue in ["general", weird] {
        assert_eq!(
            samples(&all, "bgq_jobs", &[("queue", queue)]).len(),
            7,
            "{queue}:\n{text}"
        );
        for state in STATES {
            value_of(&all, "bgq_jobs", &[("queue", queue), ("state", state)])?;
        }
        assert_eq!(
            samples(&all, "bgq_job_runs", &[("queue", queue)]).len(),
            6,
            "three outcomes in two windows for {queue}:\n{text}"
        );
        value_of(&all, "bgq_oldest_due_job_age_seconds", &[("queue", queue)])?;
    }
    let general = [("queue", "general")];
    let jobs = |state| value_of(&all, "bgq_jobs", &[("queue", "general"), ("state", state)]);
    assert_eq!(jobs("FINISHED")?, 1.0);
    assert_eq!(jobs("READY")?, 0.0);
    assert_eq!(
        value_of(&all, "bgq_jobs", &[("queue", weird), ("state", "READY")])?,
        1.0
    );
    for window in ["1h", "24h"] {
        let runs = |outcome| {
            value_of(
                &all,
                "bgq_job_runs",
                &[
                    ("queue", "general"),
                    ("outcome", outcome),
                    ("window", window),
                ],
            )
        };
        assert_eq!(runs("finished")?, 1.0, "{window}");
        assert_eq!(runs("temporarily_failed")?, 0.0, "{window}");
        assert_eq!(runs("permanently_failed")?, 0.0, "{window}");
    }
    assert_eq!(
        value_of(&all, "bgq_oldest_due_job_age_seconds", &general)?,
        0.0,
        "nothing due in general"
    );
    assert_eq!(value_of(&all, "bgq_last_run_ok", &general)?, 1.0);
    let start = value_of(&all, "bgq_last_run_start_timestamp_seconds", &general)?;
    let now = chrono::Utc::now().timestamp() as f64;
    assert!(
        (now - 120.0..=now + 1.0).contains(&start),
        "start {start}, now {now}"
    );
    let weird_label = [("queue", weird)];
    assert!(
        samples(&all, "bgq_last_run_ok", &weird_label).is_empty()
            && samples(&all, "bgq_last_run_start_timestamp_seconds", &weird_label).is_empty(),
        "no last-run metrics for a queue that never ran:\n{text}"
    );
    Ok(())
}

/// `--output PATH` writes what stdout would show into PATH, prints nothing, leaves no temp
/// file behind and replaces an existing file.
#[test]
fn stats_output_writes_the_file_atomically() -> TestResult {
    let env = env_with_callbacks("", &[("ok", "exit 0")])?;
    env.publish("ok", "{}")?;
    let dir = env.path("out");
    fs::create_dir(&dir)?;
    let target = dir.join("bgq.prom");

    let (code, stdout, stderr) = run(env
        .bgq()
        .args(["stats", "--prometheus", "--output"])
        .arg(&target))?;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "", "nothing on stdout with --output");
    assert_eq!(entries(&dir)?, ["bgq.prom"], "no temp file left");
    let written = fs::read_to_string(&target)?;

    let (code, printed, stderr) = run(env.bgq().args(["stats", "--prometheus"]))?;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(bgq_jobs_lines(&written).len(), 7, "{written}");
    assert_eq!(bgq_jobs_lines(&written), bgq_jobs_lines(&printed));
    assert!(
        bgq_jobs_lines(&written)
            .iter()
            .any(|l| l.contains("state=\"READY\"") && l.ends_with(" 1")),
        "one READY job:\n{written}"
    );

    // A second write replaces the first.
    env.publish("ok", "{}")?;
    let (code, stdout, stderr) = run(env
        .bgq()
        .args(["stats", "--prometheus", "--output"])
        .arg(&target))?;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "");
    let rewritten = fs::read_to_string(&target)?;
    assert!(
        bgq_jobs_lines(&rewritten)
            .iter()
            .any(|l| l.contains("state=\"READY\"") && l.ends_with(" 2")),
        "the file now counts two READY jobs:\n{rewritten}"
    );
    assert_eq!(entries(&dir)?, ["bgq.prom"], "no temp file left");

    // The JSON form goes to a file the same way.
    let json_target = dir.join("bgq.json");
    let (code, stdout, stderr) = run(env
        .bgq()
        .args(["stats", "--json", "--output"])
        .arg(&json_target))?;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "");
    let stats: Value = serde_json::from_str(&fs::read_to_string(&json_target)?)?;
    assert_eq!(
        queue_of(&stats, "general")?["jobs"]["READY"].as_i64(),
        Some(2)
    );
    assert_eq!(entries(&dir)?, ["bgq.json", "bgq.prom"]);
    Ok(())
}

/// `--output` into a folder that does not exist fails with one error line and writes nothing.
#[test]
fn stats_output_into_a_missing_folder_fails() -> TestResult {
    let env = env_with_callbacks("", &[("ok", "exit 0")])?;
    env.publish("ok", "{}")?;
    let target = env.path("missing/bgq.prom");
    let out = env
        .bgq()
        .args(["stats", "--prometheus", "--output"])
        .arg(&target)
        .output()?;
    expect_error(&out, 1, &[])?;
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).lines().count(),
        1,
        "one line: {}",
        describe(&out)
    );
    assert!(!target.exists());
    assert!(!env.path("missing").exists(), "the folder is not created");
    Ok(())
}

/// A `process` killed while a callback runs is reported as a run that `died`.
#[test]
fn stats_reports_a_killed_run_as_died() -> TestResult {
    let env = TestEnv::new("")?;
    let (block, pidfile) = hanging_callback(&env, "block.sh")?;
    env.write_config(&callback_toml("block", &block, ""))?;
    let _cleanup = KillPidFile(pidfile.clone());
    env.publish("block", "{}")?;

    let mut process = env.spawn(&["process"])?;
    wait_for("the callback to start", Duration::from_secs(10), || {
        pidfile.exists()
    })?;
    send_signal(process.pid(), "KILL")?;
    process.wait_exit(Duration::from_secs(5))?;

    let stats = stats_json(env.bgq().args(["stats", "--json"]))?;
    let general = queue_of(&stats, "general")?;
    assert_eq!(general["last_run"]["outcome"], "died", "{general}");
    assert_job_counts(&general["jobs"], &[("PROCESSING", 1)])?;
    Ok(())
}

/// The human form is a table with a QUEUE/READY header and a row per queue, without colour
/// when piped.
#[test]
fn stats_table_has_a_header_and_a_row_per_queue() -> TestResult {
    let env = env_with_callbacks("", &[("ok", "exit 0")])?;
    env.publish("ok", "{}")?;
    let (code, stdout, stderr) = run(env.bgq().arg("stats"))?;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        !stdout.contains('\x1b'),
        "no escapes when piped: {stdout:?}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let header = lines
        .iter()
        .position(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            cells.first() == Some(&"QUEUE") && cells.contains(&"READY")
        })
        .ok_or_else(|| format!("no QUEUE ... READY header:\n{stdout}"))?;
    let ready = lines[header]
        .split_whitespace()
        .position(|cell| cell == "READY")
        .ok_or("no READY column")?;
    let row = lines[header + 1..]
        .iter()
        .find(|l| l.split_whitespace().next() == Some("general"))
        .ok_or_else(|| format!("no row for general:\n{stdout}"))?;
    assert_eq!(
        row.split_whitespace().nth(ready),
        Some("1"),
        "one READY job: {row:?}\n{stdout}"
    );
    Ok(())
}

// ---- status

/// Runs `status ARGS` under `cmd`; returns (exit code, stdout lines).
fn status(mut cmd: Command, args: &[&str]) -> TestResult<(i32, Vec<String>)> {
    let (code, stdout, _) = run(cmd.arg("status").args(args))?;
    Ok((code, stdout.lines().map(str::to_owned).collect()))
}

/// On a fresh database no `process` run was ever recorded: stale, exit 1.
#[test]
fn status_of_a_fresh_database_is_stale() -> TestResult {
    let env = env_with_callbacks("", &[("ok", "exit 0")])?;
    let (code, lines) = status(env.bgq(), &[])?;
    assert_eq!(code, 1, "{lines:?}");
    assert_eq!(
        lines,
        ["stale: queue `general`: no `process` run has been recorded"]
    );
    Ok(())
}

/// Right after a `process` run the queue is healthy: one `ok:` line with the due jobs, exit 0.
#[test]
fn status_after_a_run_is_ok() -> TestResult {
    let env = env_with_callbacks("", &[("ok", "exit 0")])?;
    env.process(&[])?;
    env.publish("ok", "{}")?;
    let (code, lines) = status(env.bgq(), &[])?;
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("ok: queue `general`: last `process` run ")
            && lines[0].ends_with(", 1 due job"),
        "{lines:?}"
    );
    Ok(())
}

/// Ten minutes after the last run, `--stale-after 5m` reports it; `--stale-after 1h` does not.
#[test]
fn status_reports_a_run_older_than_stale_after() -> TestResult {
    if !faketime_available()? {
        return Ok(());
    }
    let env = env_with_callbacks("", &[("ok", "exit 0")])?;
    env.process(&[])?;

    let (code, lines) = status(env.bgq_at("+10m"), &["--stale-after", "5m"])?;
    assert_eq!(code, 1, "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("stale: queue `general`: `process` has not run since ")),
        "{lines:?}"
    );
    assert!(!lines.iter().any(|l| l.starts_with("ok:")), "{lines:?}");

    let (code, lines) = status(env.bgq_at("+10m"), &["--stale-after", "1h"])?;
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("ok: queue `general`"), "{lines:?}");
    Ok(())
}

/// A job due for longer than the duration is reported even when `process` runs on time
/// (here its callback is no longer in the config, so the runs leave it READY).
#[test]
fn status_reports_a_job_due_for_too_long() -> TestResult {
    if !faketime_available()? {
        return Ok(());
    }
    let env = TestEnv::new("")?;
    let ok = env.script("ok.sh", "exit 0")?;
    let gone = env.script("gone.sh", "exit 0")?;
    env.write_config(&format!(
        "{}{}",
        callback_toml("ok", &ok, ""),
        callback_toml("gone", &gone, "")
    ))?;
    let id = env.publish("gone", "{}")?;
    env.write_config(&callback_toml("ok", &ok, ""))?;

    let out = env.bgq_at("+10m").arg("process").output()?;
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(env.state(id)?, "READY", "its callback is not configured");

    let (code, lines) = status(env.bgq_at("+10m"), &["--stale-after", "5m"])?;
    assert_eq!(code, 1, "{lines:?}");
    let due = format!("stale: queue `general`: job {id} has been due since ");
    assert!(lines.iter().any(|l| l.starts_with(&due)), "{lines:?}");
    assert!(
        !lines.iter().any(|l| l.contains("has not run since")),
        "the run is recent: {lines:?}"
    );
    Ok(())
}

/// A live `process` holding the lock longer than the duration is reported with its pid.
#[test]
fn status_reports_a_run_holding_the_lock_too_long() -> TestResult {
    if !faketime_available()? {
        return Ok(());
    }
    let env = env_with_callbacks("", &[("slow", BLOCK_UNTIL_RELEASED)])?;
    env.publish("slow", "{}")?;
    let started = env.path("started");
    let mut process = env.spawn(&["process"])?;
    wait_for("the callback to start", Duration::from_secs(10), || {
        !read_lines(&started).is_empty()
    })?;

    let result = status(env.bgq_at("+10m"), &["--stale-after", "5m"]);
    fs::write(env.path("release"), "")?;
    let exit = process.wait_exit(Duration::from_secs(30))?;
    let (code, lines) = result?;
    assert_eq!(code, 1, "{lines:?}");
    let held = format!(
        "stale: queue `general`: a `process` run (pid {}) has held the lock since ",
        process.pid()
    );
    assert!(lines.iter().any(|l| l.starts_with(&held)), "{lines:?}");
    assert!(exit.success(), "{}", process.stderr());
    Ok(())
}

/// `--queue` is repeatable: one line per queue asked for, and only those.
#[test]
fn status_reports_each_queue_on_its_own_line() -> TestResult {
    let env = env_with_callbacks("", &[("ok", "exit 0")])?;
    env.process(&["--queue", "a"])?;
    env.process(&[])?;
    let (code, lines) = status(env.bgq(), &["--queue", "a", "--queue", "b"])?;
    assert_eq!(code, 1, "queue b never ran: {lines:?}");
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with("ok: queue `a`: "), "{lines:?}");
    assert_eq!(
        lines[1],
        "stale: queue `b`: no `process` run has been recorded"
    );
    Ok(())
}

/// `--stale-after` takes a duration like `90s`; one that is not a duration is a usage error.
#[test]
fn status_refuses_a_bad_duration() -> TestResult {
    let env = env_with_callbacks("", &[("ok", "exit 0")])?;
    env.process(&[])?;
    let (code, lines) = status(env.bgq(), &["--stale-after", "90s"])?;
    assert_eq!(code, 0, "a valid duration: {lines:?}");
    let out = env
        .bgq()
        .args(["status", "--stale-after", "abc"])
        .output()?;
    expect_refused(&out, &[2])
}

/// A queue that only an empty `process` run ever touched, more than 7 days ago, is forgotten:
/// `stats` and `status` leave it out; one touched yesterday, or one that has jobs, stays.
#[test]
fn a_queue_touched_once_by_an_empty_run_is_forgotten_after_7_days() -> TestResult {
    if !faketime_available()? {
        return Ok(());
    }
    let env = env_with_callbacks("", &[("ok", "exit 0")])?;
    for (queue, offset) in [("typo", "-8d"), ("recent", "-1d"), ("busy", "-8d")] {
        let out = env
            .bgq_at(offset)
            .args(["process", "--queue", queue])
            .output()?;
        assert!(out.status.success(), "{}", describe(&out));
    }
    env.publish_with("ok", "{}", &["--queue", "busy"])?;
    env.process(&[])?;
    let stats = stats_json(env.bgq().arg("stats").arg("--json"))?;
    assert_eq!(queue_names(&stats)?, ["busy", "general", "recent"]);
    let (_, table, _) = run(env.bgq().arg("stats"))?;
    assert!(!table.contains("typo"), "{table}");
    // status checks what stats lists: `busy` last ran 8 days ago: stale.
    let (code, lines) = status(env.bgq(), &["--stale-after", "2d"])?;
    assert_eq!(code, 1, "{lines:?}");
    let queues: Vec<&str> = lines
        .iter()
        .filter_map(|line| line.split('`').nth(1))
        .collect();
    assert_eq!(queues, ["busy", "general", "recent"], "{lines:?}");
    assert!(lines[0].starts_with("stale: queue `busy`: "), "{lines:?}");
    Ok(())
}

/// `status` without `--queue` checks every queue that has jobs or runs, not just the config's:
/// a queue whose cron line was forgotten is reported.
#[test]
fn status_checks_every_queue_with_jobs_or_runs() -> TestResult {
    let env = env_with_callbacks("", &[("ok", "exit 0")])?;
    env.process(&[])?;
    env.process(&["--queue", "mail"])?;
    env.publish_with("ok", "{}", &["--queue", "reports"])?;
    let (code, lines) = status(env.bgq(), &[])?;
    assert_eq!(code, 1, "queue reports never ran: {lines:?}");
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].starts_with("ok: queue `general`: "), "{lines:?}");
    assert!(lines[1].starts_with("ok: queue `mail`: "), "{lines:?}");
    assert!(lines[1].ends_with(", 0 due jobs"), "{lines:?}");
    assert_eq!(
        lines[2],
        "stale: queue `reports`: no `process` run has been recorded"
    );
    Ok(())
}

/// The table says `1 job` and `2 jobs`, never `1 jobs`.
#[test]
fn stats_table_counts_in_good_grammar() -> TestResult {
    let env = env_with_callbacks("", &[("ok", "exit 0")])?;
    env.publish("ok", "{}")?;
    env.process(&[])?;
    let (_, table, _) = run(env.bgq().arg("stats"))?;
    assert!(table.contains("ok (1 job)"), "{table}");
    env.publish("ok", "{}")?;
    env.publish("ok", "{}")?;
    env.process(&[])?;
    let (_, table, _) = run(env.bgq().arg("stats"))?;
    assert!(table.contains("ok (2 jobs)"), "{table}");
    Ok(())
}
