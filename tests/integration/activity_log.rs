//! SPEC.md section 12: `process -v` writes a line per job start and end to stderr, and
//! `--log-format json` (with or without `-v`) the same as JSON lines, each with the job's id;
//! neither stops the queue when stderr cannot be written.

use std::fs;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::support::{TestEnv, TestResult, callback_toml, send_signal, wait_for};

/// The JSON lines of `stderr`, each parsed (a line that is not JSON fails the test).
fn events(stderr: &str) -> TestResult<Vec<Value>> {
    stderr
        .lines()
        .map(|line| {
            serde_json::from_str(line).map_err(|err| format!("not JSON ({err}): {line}").into())
        })
        .collect()
}

fn two_callbacks(env: &TestEnv) -> TestResult<(i64, i64)> {
    let ok = env.script("ok.sh", "echo fine")?;
    let three = env.script("three.sh", "exit 3")?;
    env.write_config(&format!(
        "{}{}",
        callback_toml("ok", &ok, ""),
        callback_toml("three", &three, "")
    ))?;
    Ok((env.publish("ok", "{}")?, env.publish("three", "{}")?))
}

#[test]
fn verbose_writes_a_line_per_start_and_end() -> TestResult {
    let env = TestEnv::new("")?;
    let (ok, three) = two_callbacks(&env)?;
    let out = env.bgq().args(["-v", "process"]).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let has = |prefix: &str, suffix: &str| {
        stderr
            .lines()
            .any(|line| line.starts_with(prefix) && line.ends_with(suffix))
    };
    assert!(
        has(&format!("bgq: job {ok} (ok) attempt 1 started"), ""),
        "{stderr}"
    );
    assert!(
        has(
            &format!("bgq: job {ok} (ok) attempt 1 finished (exit code 0) after "),
            ": FINISHED"
        ),
        "{stderr}"
    );
    assert!(
        has(&format!("bgq: job {three} (three) attempt 1 started"), ""),
        "{stderr}"
    );
    assert!(
        has(
            &format!("bgq: job {three} (three) attempt 1 permanently failed (exit code 3) after "),
            ": PERMANENTLY_FAILED"
        ),
        "{stderr}"
    );
    // Without -v: quiet, as before (the notice of the failure aside).
    let env = TestEnv::new("")?;
    two_callbacks(&env)?;
    let (_, _, stderr) = env.process_output(&[])?;
    assert!(!stderr.contains("attempt 1 started"), "{stderr}");
    Ok(())
}

#[test]
fn json_lines_carry_each_start_and_end_with_the_job_id() -> TestResult {
    for verbose in [false, true] {
        let env = TestEnv::new("")?;
        let (ok, three) = two_callbacks(&env)?;
        let mut args = vec!["process", "--log-format", "json"];
        if verbose {
            args.insert(0, "-v");
        }
        let out = env.bgq().args(&args).output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        // The notice of the failed job is not JSON: only the activity lines are.
        let lines: String = stderr
            .lines()
            .filter(|line| line.starts_with('{'))
            .map(|line| format!("{line}\n"))
            .collect();
        let events = events(&lines)?;
        assert_eq!(events.len(), 4, "{stderr}");
        for (id, callback, outcome, exit) in [
            (ok, "ok", "finished", 0),
            (three, "three", "permanently_failed", 3),
        ] {
            let of: Vec<&Value> = events.iter().filter(|event| event["id"] == id).collect();
            assert_eq!(of.len(), 2, "{stderr}");
            let (start, end) = (of[0], of[1]);
            assert_eq!(start["event"], "start");
            assert_eq!(end["event"], "end");
            for event in [start, end] {
                assert_eq!(event["callback"], callback);
                assert_eq!(event["queue"], "general");
                assert_eq!(event["attempt"], 1);
                let time = event["time"].as_str().ok_or("no time")?;
                chrono::DateTime::parse_from_rfc3339(time)?;
            }
            assert_eq!(end["outcome"], outcome);
            assert_eq!(end["exit_code"], exit);
            assert!(
                end["duration_ms"].as_i64().is_some_and(|ms| ms >= 0),
                "{end}"
            );
        }
    }
    Ok(())
}

#[test]
fn a_watcher_logs_as_jobs_come_and_reports_a_callback_that_cannot_start() -> TestResult {
    let env = TestEnv::new("")?;
    let ok = env.script("ok.sh", "exit 0")?;
    env.write_config(&format!(
        "{}{}",
        callback_toml("ok", &ok, ""),
        callback_toml("gone", &env.path("missing.sh"), "")
    ))?;
    let mut watcher = env.spawn(&["process", "--watch", "--log-format", "json"])?;
    let id = env.publish("ok", "{}")?;
    let gone = env.publish("gone", "{}")?;
    let ended = |stderr: &str, id: i64, event: &str| {
        stderr.lines().any(|line| {
            serde_json::from_str::<Value>(line)
                .is_ok_and(|value| value["id"] == id && value["event"] == event)
        })
    };
    wait_for("the end of the job", Duration::from_secs(20), || {
        ended(&watcher.stderr(), id, "end")
    })?;
    wait_for(
        "the job that could not start",
        Duration::from_secs(20),
        || ended(&watcher.stderr(), gone, "not_started"),
    )?;
    send_signal(watcher.pid(), "TERM")?;
    watcher.wait_exit(Duration::from_secs(20))?;
    let stderr = watcher.stderr();
    let not_started = stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|value| value["event"] == "not_started")
        .ok_or("no not_started event")?;
    assert_eq!(not_started["callback"], "gone");
    assert!(
        not_started["reason"]
            .as_str()
            .is_some_and(|why| why.contains("missing.sh")),
        "{not_started}"
    );
    Ok(())
}

#[test]
fn an_unwritable_stderr_does_not_stop_the_log_or_the_queue() -> TestResult {
    let env = TestEnv::new("")?;
    let (ok, _) = two_callbacks(&env)?;
    let full: Stdio = fs::OpenOptions::new().write(true).open("/dev/full")?.into();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bgq"))
        .current_dir(env.root())
        .env_remove("BGQ_CONFIG")
        .arg("--config")
        .arg(env.config_path())
        .args(["-v", "process", "--log-format", "json"])
        .stdin(Stdio::null())
        .stderr(full)
        .output()?;
    // Its lines were lost: exit 1, but every job ran.
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(env.state(ok)?, "FINISHED");
    Ok(())
}
