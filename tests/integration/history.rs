//! SPEC.md section 12: `show` lists every kept attempt of a job (start, duration, how it ended,
//! output tail), oldest first; `show --json` has them as `runs`; `explain` of a failed job gives
//! the reason; `retry` keeps the history; `history` bounds it; `clear` deletes it with its job.

use std::fs;
use std::time::Duration;

use serde_json::Value;

use crate::support::{
    HangingJob, TestEnv, TestResult, callback_toml, hanging_job, send_signal, wait_for,
};

/// `[retry]` with no delay, so that each `process` run picks a failed job up again.
const RETRY_NOW: &str = "[retry]\ndelay = \"0s\"\njitter = 0.0\nmax_attempts = 10\n";

/// `show --json ID`.
fn shown(env: &TestEnv, id: i64) -> TestResult<Value> {
    let out = env
        .bgq()
        .args(["show", "--json", &id.to_string()])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// `show ID`, as text.
fn shown_text(env: &TestEnv, id: i64) -> TestResult<String> {
    let out = env.bgq().args(["show", &id.to_string()]).output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// One kept attempt as `show --json` has it: (attempt, outcome, exit_code, signal, output).
type Run = (u64, String, Value, Value, String);

/// The `runs` of `show --json ID`.
fn runs(env: &TestEnv, id: i64) -> TestResult<Vec<Run>> {
    let job = shown(env, id)?;
    let runs = job["runs"].as_array().ok_or("no runs array")?;
    Ok(runs
        .iter()
        .map(|run| {
            (
                run["attempt"].as_u64().unwrap_or(0),
                run["outcome"].as_str().unwrap_or("").to_owned(),
                run["exit_code"].clone(),
                run["signal"].clone(),
                run["output"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect())
}

#[test]
fn each_attempt_is_kept_with_how_it_ended_oldest_first() -> TestResult {
    let env = TestEnv::new("")?;
    let counter = env.path("count");
    // Attempt 1 exits 75, then 76 (not counted), then is killed by SIGKILL... one per run.
    let script = env.script(
        "steps.sh",
        &format!(
            "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}\n\
             echo \"run $n attempt $BGQ_ATTEMPT\"\n\
             case $n in 1) exit 75;; 2) exit 76;; 3) exit 75;; 4) exit 0;; esac",
            c = counter.display()
        ),
    )?;
    env.write_config(&format!(
        "{RETRY_NOW}{}",
        callback_toml("steps", &script, "")
    ))?;
    let id = env.publish("steps", "{}")?;
    for _ in 0..4 {
        env.process(&[])?;
    }
    assert_eq!(env.state(id)?, "FINISHED");
    let job = shown(&env, id)?;
    assert_eq!(job["attempts"], 3, "the count of attempts stays a number");
    let expected = vec![
        (
            1,
            "temporarily_failed",
            Value::from(75),
            "run 1 attempt 1\n",
        ),
        (2, "waiting", Value::from(76), "run 2 attempt 2\n"),
        (
            2,
            "temporarily_failed",
            Value::from(75),
            "run 3 attempt 2\n",
        ),
        (3, "finished", Value::from(0), "run 4 attempt 3\n"),
    ];
    let got = runs(&env, id)?;
    assert_eq!(got.len(), expected.len(), "{got:?}");
    for (run, (attempt, outcome, exit, output)) in got.iter().zip(expected) {
        assert_eq!(
            (run.0, run.1.as_str(), &run.2, &run.3, run.4.as_str()),
            (attempt, outcome, &exit, &Value::Null, output)
        );
    }
    let first = &job["runs"][0];
    let started =
        chrono::DateTime::parse_from_rfc3339(first["started_at"].as_str().ok_or("no start")?)?;
    let ended = chrono::DateTime::parse_from_rfc3339(first["ended_at"].as_str().ok_or("no end")?)?;
    assert!(started <= ended);
    assert!(first["duration_ms"].as_i64().is_some_and(|ms| ms >= 0));
    assert!(first["run"].as_i64().is_some_and(|run| run > 0));
    let text = shown_text(&env, id)?;
    assert!(text.contains("attempts kept (4, oldest first):"), "{text}");
    for fragment in [
        "attempt 1 (run ",
        "exit code 75: temporarily failed",
        "exit code 76: waiting",
        "exit code 0: finished",
        "| run 4 attempt 3",
    ] {
        assert!(text.contains(fragment), "{fragment}: {text}");
    }
    let oldest = text.find("| run 1 attempt 1").ok_or("run 1 shown")?;
    let newest = text.find("| run 4 attempt 3").ok_or("run 4 shown")?;
    assert!(oldest < newest, "oldest first: {text}");
    Ok(())
}

#[test]
fn a_failed_job_says_why_and_a_retry_keeps_its_history() -> TestResult {
    let env = TestEnv::new("")?;
    let script = env.script("three.sh", "echo broken >&2; exit 3")?;
    env.write_config(&callback_toml("three", &script, ""))?;
    let id = env.publish("three", "{}")?;
    env.process(&[])?;
    let explain = env.bgq().args(["explain", &id.to_string()]).output()?;
    let explain = String::from_utf8(explain.stdout)?;
    assert!(explain.contains("exit code 3"), "{explain}");
    let out = env.bgq().args(["retry", &id.to_string()]).output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.process(&[])?;
    let got = runs(&env, id)?;
    assert_eq!(
        got.iter()
            .map(|run| (run.0, run.1.as_str(), run.2.clone()))
            .collect::<Vec<_>>(),
        [
            (1, "permanently_failed", Value::from(3)),
            (1, "permanently_failed", Value::from(3))
        ],
        "{got:?}"
    );
    assert_eq!(got[0].4, "broken\n");
    Ok(())
}

#[test]
fn signals_and_timeouts_are_kept_as_such() -> TestResult {
    let env = TestEnv::new("")?;
    let killed = env.script("killed.sh", "kill -9 $$")?;
    let slow = env.script("slow.sh", "exec sleep 30")?;
    env.write_config(&format!(
        "{}{}",
        callback_toml("killed", &killed, ""),
        callback_toml("slow", &slow, "timeout = \"300ms\"\nkill_grace = \"100ms\"")
    ))?;
    let a = env.publish("killed", "{}")?;
    let b = env.publish("slow", "{}")?;
    env.process(&[])?;
    let killed = runs(&env, a)?;
    assert_eq!(killed.len(), 1);
    assert_eq!(
        (killed[0].1.as_str(), &killed[0].2, &killed[0].3),
        ("permanently_failed", &Value::Null, &Value::from("SIGKILL"))
    );
    let slow = runs(&env, b)?;
    assert_eq!(slow.len(), 1);
    assert_eq!(slow[0].1, "timeout");
    assert!(shown_text(&env, a)?.contains("killed by signal SIGKILL: failed permanently"));
    assert!(shown_text(&env, b)?.contains("timed out"));
    let explain = env.bgq().args(["explain", &a.to_string()]).output()?;
    assert!(String::from_utf8(explain.stdout)?.contains("killed by signal SIGKILL"));
    Ok(())
}

#[test]
fn a_cancelled_run_is_kept_as_cancelled() -> TestResult {
    let env = TestEnv::new("")?;
    let (id, mut run, _pid, _guard) = hanging_job(&env, &HangingJob::default())?;
    let out = env
        .bgq()
        .args(["cancel", "--kill", &id.to_string()])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    run.wait_exit(Duration::from_secs(20))?;
    assert_eq!(env.state(id)?, "CANCELLED");
    let got = runs(&env, id)?;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].1.as_str(), &got[0].3),
        ("cancelled", &Value::from("SIGTERM"))
    );
    assert!(shown_text(&env, id)?.contains("cancelled by `bgq cancel --kill`"));
    Ok(())
}

#[test]
fn a_run_that_died_is_kept_as_recovered() -> TestResult {
    let env = TestEnv::new("")?;
    let (id, mut run, pid, _guard) = hanging_job(&env, &HangingJob::default())?;
    send_signal(run.pid(), "KILL")?;
    run.wait_exit(Duration::from_secs(5))?;
    env.expect_orphans_after_run_died(&[pid])?;
    let ok = env.script("ok.sh", "echo fine")?;
    env.write_config(&callback_toml("hang", &ok, ""))?;
    // On PostgreSQL the dead run's session must be known dead first.
    wait_for(
        "the job to be recovered and run",
        Duration::from_secs(40),
        || {
            let _ = env.bgq().arg("process").output();
            env.state(id).is_ok_and(|state| state == "FINISHED")
        },
    )?;
    let got = runs(&env, id)?;
    assert_eq!(
        got.iter()
            .map(|run| (run.0, run.1.as_str()))
            .collect::<Vec<_>>(),
        [(1, "recovered"), (2, "finished")],
        "{got:?}"
    );
    assert!(
        got[0].4.contains("the `process` run running it died"),
        "{got:?}"
    );
    assert!(shown_text(&env, id)?.contains("recovered after a crash"));
    Ok(())
}

#[test]
fn the_history_keeps_the_newest_attempts_and_goes_with_its_job() -> TestResult {
    let env = TestEnv::new("")?;
    let script = env.script("fail.sh", "echo \"attempt $BGQ_ATTEMPT\"; exit 75")?;
    env.write_config(&format!(
        "history = 3\n{RETRY_NOW}{}",
        callback_toml("fail", &script, "")
    ))?;
    let id = env.publish("fail", "{}")?;
    for _ in 0..5 {
        env.process(&[])?;
    }
    let job = shown(&env, id)?;
    assert_eq!(job["attempts"], 5);
    let got = runs(&env, id)?;
    assert_eq!(
        got.iter()
            .map(|run| (run.0, run.4.as_str()))
            .collect::<Vec<_>>(),
        [(3, "attempt 3\n"), (4, "attempt 4\n"), (5, "attempt 5\n")]
    );
    // history = 0 keeps none.
    env.write_config(&format!(
        "history = 0\n{}",
        callback_toml("fail", &env.script("ok.sh", "exit 0")?, "")
    ))?;
    let other = env.publish("fail", "{}")?;
    env.process(&[])?;
    assert_eq!(env.state(other)?, "FINISHED");
    assert_eq!(shown(&env, other)?["runs"], serde_json::json!([]));
    assert!(shown_text(&env, other)?.contains("attempts kept: none"));
    Ok(())
}

#[test]
fn a_bad_history_setting_is_refused() -> TestResult {
    let env = TestEnv::new("history = -1")?;
    let out = env.bgq().args(["list"]).output()?;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("history"), "{stderr}");
    let _ = fs::metadata(env.config_path())?;
    Ok(())
}
