//! When a job runs, as `publish` sets it: `--delay DURATION` and `--at TIME` (RFC 3339, or local
//! `YYYY-MM-DD HH:MM` in the zone `TZ` names) keep a job READY but not due until then (`run_at`
//! says when, `explain` says `is delayed until`; a time in the past runs at once, an invalid one
//! is refused), and `--priority N` starts higher priorities first among due jobs, equal ones
//! oldest first, without overtaking an older job of its serial group. Both apply to `--raw` and
//! to every job of `--jsonl`.

use std::fs;

use chrono::{DateTime, Duration as ChronoDuration, SecondsFormat, TimeZone, Utc};
use serde_json::Value;

use crate::support::{
    TestEnv, TestResult, assert_contains, assert_no_jobs, cb_env, describe, expect_error,
    expect_refused, explain, faketime_available, flip_env, printed_id, publish_out, ran, show_json,
};

/// `bgq process` under `faketime -f OFFSET`; checks exit 0 and no panic.
fn process_at(env: &TestEnv, offset: &str) -> TestResult {
    let out = env.bgq_at(offset).arg("process").output()?;
    if !out.status.success() || String::from_utf8_lossy(&out.stderr).contains("panicked") {
        return Err(format!("faketime {offset} bgq process: {}", describe(&out)).into());
    }
    Ok(())
}

/// Epoch milliseconds of an RFC 3339 time from `--json` output.
fn millis(value: &Value) -> TestResult<i64> {
    let text = value
        .as_str()
        .ok_or_else(|| format!("not a time: {value}"))?;
    Ok(DateTime::parse_from_rfc3339(text)
        .map_err(|err| format!("{text:?}: {err}"))?
        .timestamp_millis())
}

/// The `run_at` of job `id` from `list --json`, in epoch milliseconds.
fn run_at(env: &TestEnv, id: i64) -> TestResult<i64> {
    millis(&env.job(id)?["run_at"])
}

/// Epoch milliseconds of a UTC date and time.
fn utc_millis(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> TestResult<i64> {
    Ok(Utc
        .with_ymd_and_hms(y, mo, d, h, mi, 0)
        .single()
        .ok_or("no such time")?
        .timestamp_millis())
}

// ---- --delay and --at

/// `--delay 1h`: the job stays READY through `process` runs before it is due (its `run_at` is
/// an hour ahead and `explain` says it is delayed), and runs once the clock is past it.
#[test]
fn a_delayed_job_runs_only_once_it_is_due() -> TestResult {
    let env = cb_env()?;
    let before = Utc::now().timestamp_millis();
    let id = printed_id(&publish_out(&env, "{}", &["--delay", "1h"])?)?;
    let after = Utc::now().timestamp_millis();
    let hour = 3_600_000;
    let due = run_at(&env, id)?;
    assert!(
        (before + hour - 1000..=after + hour + 1000).contains(&due),
        "run_at is the due time, an hour after publish: {due} not in {}..{}",
        before + hour,
        after + hour
    );
    env.process(&[])?;
    assert!(ran(&env)?.is_empty(), "not due yet");
    assert_eq!(env.state(id)?, "READY");
    assert_contains(&explain(&env, id)?, &["is delayed until"])?;

    if !faketime_available()? {
        return Ok(());
    }
    process_at(&env, "+30m")?;
    assert!(ran(&env)?.is_empty(), "half an hour later: not due yet");
    assert_eq!(env.state(id)?, "READY");
    process_at(&env, "+2h")?;
    assert_eq!(ran(&env)?, [id], "two hours later it ran");
    assert_eq!(env.state(id)?, "FINISHED");
    Ok(())
}

/// `--at` in RFC 3339 with `Z`: `run_at` is exactly that time; the job does not run before it
/// and runs after it.
#[test]
fn at_in_rfc3339_utc_is_the_run_at_and_the_job_waits_for_it() -> TestResult {
    let env = cb_env()?;
    let at = Utc::now() + ChronoDuration::hours(2);
    let at_text = at.to_rfc3339_opts(SecondsFormat::Secs, true);
    assert!(at_text.ends_with('Z'), "{at_text}");
    let id = printed_id(&publish_out(&env, "{}", &["--at", &at_text])?)?;
    assert_eq!(
        run_at(&env, id)?,
        at.timestamp() * 1000,
        "run_at is the requested {at_text}"
    );
    env.process(&[])?;
    assert!(ran(&env)?.is_empty(), "not due yet");
    assert_eq!(env.state(id)?, "READY");

    if !faketime_available()? {
        return Ok(());
    }
    process_at(&env, "+1h")?;
    assert!(ran(&env)?.is_empty(), "an hour later: not due yet");
    process_at(&env, "+3h")?;
    assert_eq!(ran(&env)?, [id], "three hours later it ran");
    assert_eq!(env.state(id)?, "FINISHED");
    Ok(())
}

/// `--at` in RFC 3339 with an offset: `run_at` is the same instant in UTC.
#[test]
fn at_in_rfc3339_with_an_offset_is_converted_to_utc() -> TestResult {
    let env = cb_env()?;
    let id = printed_id(&publish_out(
        &env,
        "{}",
        &["--at", "2030-11-24T03:00:00+01:00"],
    )?)?;
    assert_eq!(run_at(&env, id)?, utc_millis(2030, 11, 24, 2, 0)?);
    env.process(&[])?;
    assert!(ran(&env)?.is_empty(), "due in 2030");
    assert_eq!(env.state(id)?, "READY");
    Ok(())
}

/// `--at "YYYY-MM-DD HH:MM"` is local time: with `TZ=UTC`, that time in UTC.
#[test]
fn at_in_local_time_follows_tz_utc() -> TestResult {
    let env = cb_env()?;
    let out = env
        .bgq()
        .env("TZ", "UTC")
        .args(["publish", "cb", "--json", "{}", "--at", "2030-11-24 03:00"])
        .output()?;
    let id = printed_id(&out)?;
    assert_eq!(run_at(&env, id)?, utc_millis(2030, 11, 24, 3, 0)?);
    env.process(&[])?;
    assert!(ran(&env)?.is_empty(), "due in 2030");
    Ok(())
}

/// `--at "YYYY-MM-DD HH:MM"` is local time in the zone TZ names: one hour east of UTC
/// (the POSIX TZ string `XST-1`) is an hour earlier in UTC.
#[test]
fn at_in_local_time_follows_tz_east_of_utc() -> TestResult {
    let env = cb_env()?;
    let out = env
        .bgq()
        .env("TZ", "XST-1")
        .args(["publish", "cb", "--json", "{}", "--at", "2030-11-24 03:00"])
        .output()?;
    let id = printed_id(&out)?;
    assert_eq!(run_at(&env, id)?, utc_millis(2030, 11, 24, 2, 0)?);
    Ok(())
}

/// `--at` a time in the past (either form) is accepted and the job runs at once.
#[test]
fn at_in_the_past_runs_at_once() -> TestResult {
    let env = cb_env()?;
    let rfc = printed_id(&publish_out(&env, "{}", &["--at", "2020-01-01T00:00:00Z"])?)?;
    let out = env
        .bgq()
        .env("TZ", "UTC")
        .args(["publish", "cb", "--json", "{}", "--at", "2020-01-01 00:00"])
        .output()?;
    let local = printed_id(&out)?;
    env.process(&[])?;
    // Both run in one process run, side by side (concurrency 4): any order.
    let mut started = ran(&env)?;
    started.sort_unstable();
    assert_eq!(started, [rfc, local]);
    assert_eq!(env.state(rfc)?, "FINISHED");
    assert_eq!(env.state(local)?, "FINISHED");
    Ok(())
}

/// An invalid `--at` is exit 2 with `bgq: error: invalid --at ...` naming both accepted forms,
/// and stores nothing.
#[test]
fn an_invalid_at_is_refused_and_stores_nothing() -> TestResult {
    let env = cb_env()?;
    for bad in [
        "tomorrow",
        "2030-13-01T00:00:00Z",
        "2030-11-24 25:00",
        "24/11/2030 03:00",
    ] {
        let out = env
            .bgq()
            .env("TZ", "UTC")
            .args(["publish", "cb", "--json", "{}", "--at", bad])
            .output()?;
        expect_error(&out, 2, &["invalid --at", "RFC 3339", "YYYY-MM-DD HH:MM"])
            .map_err(|err| format!("--at {bad:?}: {err}"))?;
    }
    assert_no_jobs(&env, "invalid --at")
}

/// `--delay` with `--at` is a usage error (exit 2) and stores nothing.
#[test]
fn delay_with_at_is_refused() -> TestResult {
    let env = cb_env()?;
    let out = publish_out(
        &env,
        "{}",
        &["--delay", "1h", "--at", "2030-11-24T03:00:00Z"],
    )?;
    expect_refused(&out, &[2])?;
    assert_no_jobs(&env, "--delay with --at")
}

/// The new flags combine with `--raw` and apply to every job of `--jsonl`.
#[test]
fn shaping_flags_apply_to_raw_and_every_jsonl_job() -> TestResult {
    let env = cb_env()?;
    let lines = env.path("jobs.jsonl");
    fs::write(&lines, "{\"n\":1}\n{\"n\":2}\n")?;
    let out = env
        .bgq()
        .args(["publish", "cb", "--jsonl"])
        .arg(&lines)
        .args(["--delay", "1h", "--priority", "3"])
        .output()?;
    assert!(out.status.success(), "{}", describe(&out));
    let raw = env.path("payload.bin");
    fs::write(&raw, b"\x00raw")?;
    let out = env
        .bgq()
        .args(["publish", "cb", "--raw"])
        .arg(&raw)
        .args(["--delay", "1h", "--priority", "-2"])
        .output()?;
    let raw_id = printed_id(&out)?;

    let jobs = env.jobs()?;
    assert_eq!(jobs.len(), 3, "{jobs:?}");
    let soon = Utc::now().timestamp_millis() + 3_000_000;
    for job in &jobs {
        let expected = if job["id"].as_i64() == Some(raw_id) {
            -2
        } else {
            3
        };
        assert_eq!(job["priority"].as_i64(), Some(expected), "{job}");
        assert!(millis(&job["run_at"])? > soon, "delayed an hour: {job}");
    }
    env.process(&[])?;
    assert!(ran(&env)?.is_empty(), "none is due yet");
    Ok(())
}

// ---- --priority

/// With concurrency 1, one `process` run starts higher priorities first, equal priorities
/// oldest first, negative ones after the default 0; `list --json` and `show --json` carry
/// `priority`.
#[test]
fn higher_priority_starts_first_and_equal_priorities_oldest_first() -> TestResult {
    let env = flip_env("concurrency = 1", &[("cb", "")])?;
    let mut ids = Vec::new();
    for priority in [None, Some("-5"), Some("5"), None, Some("5"), Some("-1")] {
        let args = match priority {
            Some(p) => vec!["--priority", p],
            None => vec![],
        };
        ids.push(printed_id(&publish_out(&env, "{}", &args)?)?);
    }
    let [zero1, minus5, five1, zero2, five2, minus1] = ids[..] else {
        return Err("six ids".into());
    };
    for (id, priority) in [
        (zero1, 0),
        (minus5, -5),
        (five1, 5),
        (zero2, 0),
        (five2, 5),
        (minus1, -1),
    ] {
        assert_eq!(env.job(id)?["priority"].as_i64(), Some(priority), "list");
        assert_eq!(
            show_json(&env, id)?["priority"].as_i64(),
            Some(priority),
            "show"
        );
    }
    env.process(&[])?;
    assert_eq!(ran(&env)?, [five1, five2, zero1, zero2, minus1, minus5]);
    Ok(())
}

/// Within a serial group a newer high-priority job never starts before an older job of its
/// group; a job outside the group with a higher priority than the older one goes first.
#[test]
fn priority_does_not_overtake_an_older_job_of_its_serial_group() -> TestResult {
    let env = flip_env("concurrency = 1", &[("cb", "")])?;
    let older = printed_id(&publish_out(&env, "{}", &["--serial-group", "G"])?)?;
    let newer = printed_id(&publish_out(
        &env,
        "{}",
        &["--serial-group", "G", "--priority", "10"],
    )?)?;
    let other = printed_id(&publish_out(&env, "{}", &["--priority", "5"])?)?;
    env.process(&[])?;
    assert_eq!(ran(&env)?, [other, older, newer]);
    Ok(())
}
