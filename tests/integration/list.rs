//! `bgq list` (SPEC.md section 6): filters, order, the `--json` fields, the table, `--unfinished`.

use serde_json::Value;

use crate::support::{
    TestEnv, TestResult, describe, env_with_callbacks, expect_refused, listed_ids,
};

/// Eight jobs in known states:
///
/// | id | callback | queue   | identifier | state              |
/// |----|----------|---------|------------|--------------------|
/// | 1  | ok       | general | a          | FINISHED           |
/// | 2  | bad      | general | b          | PERMANENTLY_FAILED |
/// | 3  | ok       | q2      | c          | READY              |
/// | 4  | other    | general | a          | FINISHED           |
/// | 5  | ok       | general | d          | FINISHED           |
/// | 6  | ok       | general | d          | READY              |
/// | 7  | other    | general | (none)     | READY              |
/// | 8  | ok       | q2      | c          | READY              |
fn populated() -> TestResult<TestEnv> {
    let env = env_with_callbacks(
        "",
        &[("ok", "exit 0"), ("bad", "exit 3"), ("other", "exit 0")],
    )?;
    env.publish_with("ok", "{}", &["--identifier", "a"])?;
    env.publish_with("bad", "{}", &["--identifier", "b"])?;
    env.publish_with("ok", "{}", &["--identifier", "c", "--queue", "q2"])?;
    env.publish_with("other", "{}", &["--identifier", "a"])?;
    env.publish_with("ok", "{}", &["--identifier", "d"])?;
    env.process(&[])?;
    env.publish_with("ok", "{}", &["--identifier", "d"])?;
    env.publish("other", "{}")?;
    env.publish_with("ok", "{}", &["--identifier", "c", "--queue", "q2"])?;

    let states: Vec<String> = env
        .jobs()?
        .iter()
        .map(|job| job["state"].as_str().unwrap_or("?").to_owned())
        .collect();
    let expected = [
        "FINISHED",
        "PERMANENTLY_FAILED",
        "READY",
        "FINISHED",
        "FINISHED",
        "READY",
        "READY",
        "READY",
    ];
    if states != expected {
        return Err(format!("setup: states {states:?}, expected {expected:?}").into());
    }
    Ok(env)
}

/// True for an RFC 3339 UTC timestamp like `2026-11-23T15:32:50.123Z`.
fn is_timestamp(value: &Value) -> bool {
    let Some(text) = value.as_str() else {
        return false;
    };
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        bytes
            .get(range)
            .is_some_and(|part| part.iter().all(u8::is_ascii_digit))
    };
    let fraction_ok = match bytes.get(19) {
        Some(b'.') => digits(20..bytes.len() - 1) && bytes.len() > 21,
        Some(b'Z') => bytes.len() == 20,
        _ => false,
    };
    bytes.len() >= 20
        && digits(0..4)
        && bytes[4] == b'-'
        && digits(5..7)
        && bytes[7] == b'-'
        && digits(8..10)
        && bytes[10] == b'T'
        && digits(11..13)
        && bytes[13] == b':'
        && digits(14..16)
        && bytes[16] == b':'
        && digits(17..19)
        && fraction_ok
        && text.ends_with('Z')
}

#[test]
fn newest_first_and_every_filter() -> TestResult {
    let env = populated()?;
    let cases: [(&[&str], &[i64]); 12] = [
        (&[], &[8, 7, 6, 5, 4, 3, 2, 1]),
        (&["--state", "READY"], &[8, 7, 6, 3]),
        (&["--state", "ready"], &[8, 7, 6, 3]),
        (
            &["--state", "FINISHED", "--state", "PERMANENTLY_FAILED"],
            &[5, 4, 2, 1],
        ),
        (&["--state", "WAITING"], &[]),
        (&["--queue", "q2"], &[8, 3]),
        (&["--queue", "general"], &[7, 6, 5, 4, 2, 1]),
        (&["--callback", "other"], &[7, 4]),
        (&["--identifier", "a", "--identifier", "d"], &[6, 5, 4, 1]),
        (&["--limit", "2"], &[8, 7]),
        (&["--state", "FINISHED", "--identifier", "a"], &[4, 1]),
        (
            &["--callback", "ok", "--queue", "general", "--limit", "1"],
            &[6],
        ),
    ];
    for (args, expected) in cases {
        assert_eq!(listed_ids(&env, args)?, expected, "list --json {args:?}");
    }
    Ok(())
}

#[test]
fn json_lines_carry_every_field() -> TestResult {
    let env = populated()?;
    let out = env.bgq().args(["list", "--json"]).output()?;
    assert!(out.status.success(), "{}", describe(&out));
    let jobs: Vec<Value> = String::from_utf8(out.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(jobs.len(), 8);
    for job in &jobs {
        for key in [
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
        ] {
            assert!(job.get(key).is_some(), "no {key} in {job}");
        }
        assert!(is_timestamp(&job["created_at"]), "created_at in {job}");
    }

    let finished = &jobs[7];
    assert_eq!(finished["id"], 1);
    assert_eq!(finished["queue"], "general");
    assert_eq!(finished["callback"], "ok");
    assert_eq!(finished["state"], "FINISHED");
    assert_eq!(finished["attempts"], 1);
    assert!(finished["serial_group"].is_null(), "{finished}");
    assert_eq!(finished["identifier"], "a");
    assert!(is_timestamp(&finished["started_at"]), "{finished}");
    assert!(is_timestamp(&finished["finished_at"]), "{finished}");
    let created = finished["created_at"].as_str().unwrap_or("");
    let started = finished["started_at"].as_str().unwrap_or("");
    let ended = finished["finished_at"].as_str().unwrap_or("");
    assert!(
        created <= started && started <= ended,
        "created <= started <= finished: {finished}"
    );

    let failed = &jobs[6];
    assert_eq!(failed["state"], "PERMANENTLY_FAILED");
    assert_eq!(failed["attempts"], 1);

    let ready = &jobs[0];
    assert_eq!(ready["id"], 8);
    assert_eq!(ready["queue"], "q2");
    assert_eq!(ready["state"], "READY");
    assert_eq!(ready["attempts"], 0);
    assert_eq!(ready["identifier"], "c");
    assert!(is_timestamp(&ready["run_at"]), "{ready}");
    assert!(ready["started_at"].is_null(), "{ready}");
    assert!(ready["finished_at"].is_null(), "{ready}");
    Ok(())
}

#[test]
fn table_has_a_header_and_one_row_per_job() -> TestResult {
    let env = populated()?;
    let out = env.bgq().arg("list").output()?;
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8(out.stdout)?;
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.first().is_some_and(|line| line.starts_with("ID")),
        "header line starting with ID:\n{text}"
    );
    let row_ids: Vec<&str> = lines[1..]
        .iter()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert_eq!(row_ids, ["8", "7", "6", "5", "4", "3", "2", "1"], "{text}");
    assert!(
        lines[7].contains("PERMANENTLY_FAILED") && lines[7].contains("bad"),
        "{text}"
    );
    assert!(
        lines[1].contains("READY") && lines[1].contains("q2"),
        "{text}"
    );

    let out = env.bgq().args(["list", "--limit", "3"]).output()?;
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(String::from_utf8(out.stdout)?.lines().count(), 4);
    Ok(())
}

#[test]
fn unfinished_lists_identifiers_with_work_left() -> TestResult {
    let env = populated()?;
    let unfinished = |args: &[&str]| -> TestResult<Vec<String>> {
        let out = env
            .bgq()
            .args(["list", "--unfinished"])
            .args(args)
            .output()?;
        if !out.status.success() {
            return Err(format!("list --unfinished {args:?}: {}", describe(&out)).into());
        }
        let mut lines: Vec<String> = String::from_utf8(out.stdout)?
            .lines()
            .map(str::to_owned)
            .collect();
        lines.sort();
        Ok(lines)
    };
    // c has two READY jobs and is printed once; a is all FINISHED; job 7 has no identifier.
    assert_eq!(unfinished(&[])?, ["b", "c", "d"]);
    assert_eq!(
        unfinished(&[
            "--identifier",
            "a",
            "--identifier",
            "b",
            "--identifier",
            "zz"
        ])?,
        ["b"]
    );
    assert_eq!(
        unfinished(&["--identifier", "c", "--identifier", "d"])?,
        ["c", "d"]
    );
    assert!(unfinished(&["--identifier", "a"])?.is_empty());
    Ok(())
}

/// `--limit` is a number, 0 or more (0: no limit).
#[test]
fn limit_must_be_a_count() -> TestResult {
    let env = env_with_callbacks("", &[("ok", "exit 0")])?;
    env.publish("ok", "{}")?;
    for limit in ["-1", "x", ""] {
        let out = env.bgq().args(["list", "--limit", limit]).output()?;
        expect_refused(&out, &[2]).map_err(|err| format!("--limit {limit}: {err}"))?;
    }
    assert_eq!(listed_ids(&env, &["--limit", "1"])?, [1]);
    Ok(())
}

/// `--limit 0` and `--all` show every job; a list cut short says `showing N of M` on stderr
/// (stdout stays the jobs alone, for scripts); a list that is whole says nothing.
#[test]
fn list_says_when_it_is_cut_short_and_shows_all_on_request() -> TestResult {
    let env = populated()?;
    let out = env
        .bgq()
        .args(["list", "--json", "--limit", "3"])
        .output()?;
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(String::from_utf8(out.stdout)?.lines().count(), 3);
    assert_eq!(
        String::from_utf8(out.stderr)?,
        "bgq: showing 3 of 8 jobs, newest first; --limit N or --all shows more\n"
    );
    // The count follows the filter.
    let out = env
        .bgq()
        .args(["list", "--state", "READY", "--limit", "1"])
        .output()?;
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        String::from_utf8(out.stdout)?.lines().count(),
        2,
        "a header and a row"
    );
    assert!(
        String::from_utf8(out.stderr)?.starts_with("bgq: showing 1 of 4 jobs"),
        "READY jobs: 3, 6, 7, 8"
    );
    for args in [&["--limit", "0"][..], &["--all"][..], &["--limit", "8"][..]] {
        let out = env.bgq().arg("list").arg("--json").args(args).output()?;
        assert!(out.status.success(), "{args:?}: {}", describe(&out));
        assert!(out.stderr.is_empty(), "{args:?}: {}", describe(&out));
        assert_eq!(
            String::from_utf8(out.stdout)?.lines().count(),
            8,
            "{args:?}"
        );
    }
    let out = env.bgq().args(["list", "--all", "--limit", "3"]).output()?;
    expect_refused(&out, &[2])?;
    Ok(())
}

/// A WAITING job's WHEN says what `explain` says: due at the next run (or, after a watcher's
/// `waiting_delay`, when).
#[test]
fn list_shows_when_a_waiting_job_runs_next() -> TestResult {
    let env = env_with_callbacks("", &[("later", "exit 76")])?;
    let id = env.publish("later", "{}")?;
    env.process(&[])?;
    let out = env.bgq().arg("list").output()?;
    assert!(out.status.success(), "{}", describe(&out));
    let table = String::from_utf8(out.stdout)?;
    let row = table
        .lines()
        .find(|line| line.starts_with(&format!("{id} ")))
        .ok_or(table.clone())?;
    assert!(row.contains(" WAITING "), "{row}");
    assert!(row.ends_with("  due at the next run"), "{row}");
    let explained = env.bgq().args(["explain", &id.to_string()]).output()?;
    assert!(
        String::from_utf8(explained.stdout)?.contains("is WAITING until the next `process` run"),
        "list and explain agree"
    );
    Ok(())
}
