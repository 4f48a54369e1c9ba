//! Bad input of every kind (SPEC.md section 6): each is refused with exit 1 or 2, one `bgq: error: `
//! line (or the argument parser's usage error), no panic, and nothing stored.

use std::fs;

use crate::support::{
    SQLITE_FILE, TestEnv, TestResult, describe, env_with_callbacks, expect_error, expect_refused,
    sqlite_only,
};

/// One bad invocation of `bgq --config <env> ARGS`, with optional stdin, and the exit codes SPEC allows.
struct Case {
    args: Vec<String>,
    stdin: Option<Vec<u8>>,
    codes: &'static [i32],
}

fn case(args: &[&str], codes: &'static [i32]) -> Case {
    Case {
        args: args.iter().map(|arg| (*arg).to_owned()).collect(),
        stdin: None,
        codes,
    }
}

fn with_stdin(args: &[&str], stdin: &[u8], codes: &'static [i32]) -> Case {
    Case {
        stdin: Some(stdin.to_vec()),
        ..case(args, codes)
    }
}

#[test]
fn bad_invocations_are_refused_cleanly() -> TestResult {
    let env = env_with_callbacks("", &[("cb", "echo ran >> @ROOT@/ran")])?;
    let kept = env.publish("cb", "{}")?;

    let file = |name: &str, bytes: &[u8]| -> TestResult<String> {
        fs::write(env.path(name), bytes)?;
        Ok(format!("@{}", env.path(name).display()))
    };
    let nul = file("nul.json", b"{\"a\":\"x\0y\"}")?;
    let bad_utf8 = file("bad-utf8.json", b"{\"a\":\"\xff\xfe\"}")?;
    let deep = file(
        "deep.json",
        format!("{}{}", "[".repeat(200), "]".repeat(200)).as_bytes(),
    )?;
    let garbage = file("garbage.json", b"{\"a\":1} trailing")?;

    let cases = [
        case(&["--bogus", "list"], &[2]),
        case(&["list", "--bogus"], &[2]),
        case(&["frobnicate"], &[2]),
        case(&[], &[2]),
        case(&["list", "--limit", "abc"], &[2]),
        case(&["list", "--limit", "-3"], &[2]),
        case(&["list", "--limit", "-1"], &[2]),
        case(&["list", "--state", "BOGUS"], &[2]),
        case(&["process", "--concurrency", "-1"], &[2]),
        case(&["process", "--concurrency", "abc"], &[2]),
        case(&["process", "--max-time", "abc"], &[2]),
        case(&["process", "--max-time", "-5s"], &[2]),
        case(&["process", "--max-time", "5 parsecs"], &[2]),
        case(&["process", "--max-jobs", "x"], &[2]),
        case(&["process", "--queue"], &[2]),
        case(&["clear", "x"], &[2]),
        case(&["clear", "1", "2"], &[2]),
        case(&["publish"], &[2]),
        case(&["publish", "--json", "{}"], &[2]),
        case(&["publish", "nope", "--json", "{}"], &[2]),
        case(&["publish", "cb", "--json", "{\"a\":1} x"], &[2]),
        case(&["publish", "cb", "--json", "{\"a\":1}{\"b\":2}"], &[2]),
        case(&["publish", "cb", "--json", "{'a':1}"], &[2]),
        case(&["publish", "cb", "--json", "{}", "--serial-group"], &[2]),
        case(&["publish", "cb", "--json", &garbage], &[2]),
        case(&["publish", "cb", "--json", &nul], &[2]),
        case(&["publish", "cb", "--json", &bad_utf8], &[2]),
        case(&["publish", "cb", "--json", &deep], &[2]),
        case(
            &["publish", "cb", "--json", "@/nonexistent/p.json"],
            &[1, 2],
        ),
        case(&["publish", "cb", "--raw", "/nonexistent/p.bin"], &[1, 2]),
        case(
            &["publish", "cb", "--jsonl", "/nonexistent/p.jsonl"],
            &[1, 2],
        ),
        with_stdin(&["publish", "cb", "--json", "-"], b"not json", &[2]),
        with_stdin(&["publish", "cb", "--json", "-"], b"{\"a\":\"\xff\"}", &[2]),
        with_stdin(&["publish", "cb", "--jsonl", "-"], b"{}\nnope\n", &[2]),
        with_stdin(&["publish", "cb", "--jsonl", "-"], b"{}\n\0\n", &[2]),
    ];

    let mut failures = Vec::new();
    for case in &cases {
        let mut cmd = env.bgq();
        cmd.args(&case.args);
        if let Some(stdin) = &case.stdin {
            cmd.write_stdin(stdin.clone());
        }
        let out = cmd.output()?;
        if let Err(err) = expect_refused(&out, case.codes) {
            failures.push(format!("bgq {:?}: {err}", case.args));
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
        "{} of {} bad invocations misbehaved:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
    Ok(())
}

/// Writes `text` as the whole config; a publish is refused with exit 2 naming the config file (and
/// `line` when given), and no database is created (the configs name the SQLite file
/// [`SQLITE_FILE`], whatever backend the other tests use).
fn broken_config(text: &str, line: Option<usize>) -> TestResult {
    let env = TestEnv::new("")?;
    env.write_raw_config(text)?;
    let place = match line {
        Some(line) => format!("{}:{line}: ", env.config_path().display()),
        None => env.config_path().display().to_string(),
    };
    let out = env.bgq().args(["publish", "cb", "--json", "{}"]).output()?;
    expect_error(&out, 2, &[&place]).map_err(|err| format!("config\n{text}\n{err}"))?;
    if env.path(SQLITE_FILE).exists() {
        return Err(format!("config\n{text}\nwas refused but created the database").into());
    }
    Ok(())
}

#[test]
fn broken_configs_are_refused() -> TestResult {
    let db = "database = \"bgq.sqlite\"\n";
    let cb = "[callbacks.cb]\ncommand = [\"/bin/true\"]\n";
    broken_config(&format!("{db}this is not toml\n{cb}"), Some(2))?;
    broken_config(&format!("{db}{cb}[callbacks.cb]\n"), Some(4))?;
    broken_config(&format!("{db}concurrency = \"four\"\n{cb}"), Some(2))?;
    broken_config(&format!("{db}{cb}timeout = 10\n"), Some(4))?;
    broken_config(
        &format!("{db}[callbacks.cb]\ncommand = \"/bin/true\"\n"),
        Some(3),
    )?;
    broken_config(&format!("{db}notify = \"/bin/true\"\n{cb}"), Some(2))?;
    broken_config(&format!("database = 5\n{cb}"), Some(1))?;
    broken_config("\u{0}\u{1}binary junk\n", None)
}

#[test]
fn missing_or_unreadable_config_file_is_refused() -> TestResult {
    let env = TestEnv::new("")?;
    let missing = env.path("missing.toml");
    let out = env
        .bgq_bare()
        .arg("--config")
        .arg(&missing)
        .arg("list")
        .output()?;
    expect_refused(&out, &[1, 2])?;
    expect_error(&out, out.status.code().unwrap_or(0), &["missing.toml"])?;

    let out = env
        .bgq_bare()
        .env("BGQ_CONFIG", &missing)
        .arg("list")
        .output()?;
    expect_refused(&out, &[1, 2])?;
    expect_error(&out, out.status.code().unwrap_or(0), &["missing.toml"])?;

    let out = env
        .bgq_bare()
        .arg("--config")
        .arg(env.path("locks"))
        .arg("list")
        .output()?;
    expect_refused(&out, &[1, 2])?;
    // No config was read, so no database of any kind can have been opened.
    assert!(!env.path(SQLITE_FILE).exists());
    Ok(())
}

#[test]
fn database_path_that_is_a_directory_fails() -> TestResult {
    if !sqlite_only()? {
        return Ok(());
    }
    let env = TestEnv::new("")?;
    fs::create_dir(env.path("dbdir"))?;
    env.write_raw_config(&format!(
        "database = \"dbdir\"\ntemp_dir = \"{}\"\n[callbacks.cb]\ncommand = [\"/bin/true\"]\n",
        env.path("locks").display()
    ))?;
    for args in [
        &["publish", "cb", "--json", "{}"][..],
        &["list"],
        &["process"],
        &["clear"],
    ] {
        let out = env.bgq().args(args).output()?;
        expect_error(&out, 1, &[]).map_err(|err| format!("bgq {args:?}: {err}"))?;
    }
    assert_eq!(
        fs::read_dir(env.path("dbdir"))?.count(),
        0,
        "dbdir untouched"
    );
    Ok(())
}

#[test]
fn database_that_is_not_sqlite_fails_and_stays_unchanged() -> TestResult {
    let env = env_with_callbacks("", &[("cb", "exit 0")])?;
    let Some(db) = env.sqlite_file() else {
        return Ok(());
    };
    let garbage: Vec<u8> = b"this is not a database\n"
        .iter()
        .copied()
        .chain((0..4096u32).map(|i| i.wrapping_mul(2_654_435_761).to_be_bytes()[0]))
        .collect();
    fs::write(&db, &garbage)?;
    let opening = format!(
        "cannot open database {}: file is not a database",
        db.display()
    );

    for args in [
        &["publish", "cb", "--json", "{}"][..],
        &["list"],
        &["process"],
        &["clear"],
    ] {
        let out = env.bgq().args(args).output()?;
        expect_error(&out, 1, &[&opening]).map_err(|err| format!("bgq {args:?}: {err}"))?;
        assert_eq!(
            fs::read(&db)?,
            garbage,
            "bgq {args:?} changed the file; {}",
            describe(&out)
        );
    }
    Ok(())
}

/// `--delay` and `--at` reach at most 100 years ahead (README "Shaping work"): beyond, a due
/// time no longer prints as RFC 3339, so they are refused with one line and store nothing.
#[test]
fn delays_and_times_beyond_100_years_are_refused() -> TestResult {
    let env = env_with_callbacks("", &[("cb", "exit 0")])?;
    let id = env.publish_with("cb", "{}", &["--delay", "36500d"])?;
    let run_at = env.job(id)?["run_at"]
        .as_str()
        .ok_or("no run_at")?
        .to_owned();
    let due = chrono::DateTime::parse_from_rfc3339(&run_at)
        .map_err(|err| format!("run_at {run_at:?} is not RFC 3339: {err}"))?;
    // Rounded: a second that passes between the publish and this line is not a year less.
    let years = ((due.timestamp() - chrono::Utc::now().timestamp()) as f64 / (365.0 * 86_400.0))
        .round() as i64;
    assert_eq!(years, 100, "{run_at}");
    for too_far in [
        &["--delay", "18446744073709551615ms"][..],
        &["--delay", "36501d"],
        &["--at", "2300-01-01T00:00:00Z"],
        &["--at", "9999-12-31 23:59"],
    ] {
        let out = env
            .bgq()
            .args(["publish", "cb", "--json", "{}"])
            .args(too_far)
            .output()?;
        if too_far[0] == "--delay" {
            // The argument parser's own refusal, with bgq's reason in it.
            assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains("at most 36500d (100 years)"), "{stderr}");
        } else {
            expect_error(&out, 2, &["more than 36500d (100 years) from now"])?;
        }
    }
    assert_eq!(env.jobs()?.len(), 1, "only the 100-year job is stored");
    Ok(())
}

/// A database whose jobs table is damaged opens (its schema is intact), and then every command
/// meets SQLite's `database disk image is malformed`, a line that by itself names neither the
/// file nor what bgq was doing. Each error line names both, exit 1.
#[test]
fn a_damaged_database_is_named_with_what_bgq_was_doing() -> TestResult {
    let env = env_with_callbacks("", &[("cb", "exit 0")])?;
    let Some(db_file) = env.sqlite_file() else {
        return Ok(());
    };
    env.publish("cb", "{}")?;
    // The root page of the jobs table, and of the counts `stats` reads instead of the jobs.
    for table in ["jobs", "job_counts"] {
        let (root, page_size) = {
            let conn = rusqlite::Connection::open(&db_file)?;
            let root: i64 = conn.query_row(
                "SELECT rootpage FROM sqlite_schema WHERE name = ?1",
                [table],
                |row| row.get(0),
            )?;
            let page_size: i64 = conn.query_row("PRAGMA page_size", [], |row| row.get(0))?;
            (root, page_size)
        };
        let mut bytes = fs::read(&db_file)?;
        let start = usize::try_from((root - 1) * page_size)?;
        let end = start + usize::try_from(page_size)?;
        for (i, byte) in bytes[start..end].iter_mut().enumerate() {
            *byte = (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0];
        }
        fs::write(&db_file, &bytes)?;
    }

    let db = db_file.display().to_string();
    for (args, operation) in [
        (
            &["publish", "cb", "--json", "{}"][..],
            "cannot store the job",
        ),
        (&["list"], "cannot list jobs"),
        (&["show", "1"], "cannot read job 1"),
        (&["retry", "1"], "cannot retry jobs"),
        (&["cancel", "1"], "cannot cancel jobs"),
        (&["stats"], "cannot count due jobs"),
        (&["process"], "cannot "),
    ] {
        let out = env.bgq().args(args).output()?;
        expect_error(
            &out,
            1,
            &[
                operation,
                &format!(" in database {db}: database disk image is malformed"),
            ],
        )
        .map_err(|err| format!("bgq {args:?}: {err}"))?;
    }
    Ok(())
}
