//! `process` when the wall clock jumps. A jump back must not starve a job that is due (bgq
//! notices that the clock went back since its last run and moves scheduled jobs back with it,
//! with a warning); a jump forward runs what falls due, and the return to the real time leaves
//! sane schedules. The clock moves with `faketime` (see `support.rs`); the
//! monotonic clock is left alone, as a real jump would leave it.

use crate::support::{
    TestEnv, TestResult, callback_toml, describe, faketime_available, read_lines,
};

/// Runs `bgq process` under `faketime -f OFFSET` (e.g. `-1d`); checks exit 0, returns stderr.
fn process_at(env: &TestEnv, offset: &str) -> TestResult<String> {
    let out = env.bgq_at(offset).arg("process").output()?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() || stderr.contains("panicked") {
        return Err(format!("faketime {offset} bgq process: {}", describe(&out)).into());
    }
    Ok(stderr)
}

/// A callback `NAME` that appends `$BGQ_JOB_ID $BGQ_ATTEMPT` to `runs` and exits with the code
/// of its run: the first with `first`, every later one with `later`.
fn env_with(first: i32, later: i32, retry: &str) -> TestResult<TestEnv> {
    let env = TestEnv::new("")?;
    let runs = env.path("runs");
    let cb = env.script(
        "cb.sh",
        &format!(
            "echo \"$BGQ_JOB_ID $BGQ_ATTEMPT\" >> {r}\n\
             if [ -e {r}.$BGQ_JOB_ID ]; then exit {later}; fi\n\
             touch {r}.$BGQ_JOB_ID\nexit {first}",
            r = runs.display()
        ),
    )?;
    env.write_config(&format!("{retry}\n{}", callback_toml("cb", &cb, "")))?;
    Ok(env)
}

/// How many times job `id`'s callback ran.
fn runs_of(env: &TestEnv, id: i64) -> usize {
    read_lines(&env.path("runs"))
        .iter()
        .filter(|line| line.split_whitespace().next() == Some(&id.to_string()))
        .count()
}

/// Epoch milliseconds of an RFC 3339 time from `list --json`.
fn millis(value: &serde_json::Value) -> TestResult<i64> {
    let text = value
        .as_str()
        .ok_or_else(|| format!("not a time: {value}"))?;
    Ok(chrono::DateTime::parse_from_rfc3339(text)
        .map_err(|err| format!("{text:?}: {err}"))?
        .timestamp_millis())
}

fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

const DAY: i64 = 86_400_000;
const HOUR: i64 = 3_600_000;

#[test]
fn a_retry_due_now_runs_when_the_clock_went_back_a_day() -> TestResult {
    if !faketime_available()? {
        return Ok(());
    }
    let env = env_with(75, 0, "[retry]\ndelay = \"0s\"\njitter = 0.0")?;
    let id = env.publish("cb", "{}")?;
    env.process(&[])?;
    assert_eq!(env.state(id)?, "TEMPORARILY_FAILED");
    assert_eq!(runs_of(&env, id), 1);

    let stderr = process_at(&env, "-1d")?;
    assert!(
        stderr.contains("bgq: warning: the clock went back"),
        "the jump is reported: {stderr:?}"
    );
    assert_eq!(
        runs_of(&env, id),
        2,
        "the retry, due at once, ran in the first run after the clock went back a day"
    );
    assert_eq!(env.state(id)?, "FINISHED");
    Ok(())
}

#[test]
fn a_waiting_job_runs_at_the_next_run_when_the_clock_went_back_a_day() -> TestResult {
    if !faketime_available()? {
        return Ok(());
    }
    let env = env_with(76, 0, "")?;
    let id = env.publish("cb", "{}")?;
    env.process(&[])?;
    assert_eq!(env.state(id)?, "WAITING");

    process_at(&env, "-1d")?;
    assert_eq!(
        runs_of(&env, id),
        2,
        "WAITING runs at the next run, whatever the clock says"
    );
    assert_eq!(env.state(id)?, "FINISHED");
    Ok(())
}

#[test]
fn a_forward_jump_runs_what_falls_due_and_the_return_is_harmless() -> TestResult {
    if !faketime_available()? {
        return Ok(());
    }
    // Always asks for a retry, an hour later.
    let env = env_with(
        75,
        75,
        "[retry]\ndelay = \"1h\"\nmultiplier = 1.0\njitter = 0.0",
    )?;
    let id = env.publish("cb", "{}")?;
    env.process(&[])?;
    assert_eq!(runs_of(&env, id), 1);
    env.process(&[])?;
    assert_eq!(runs_of(&env, id), 1, "not due for an hour");

    process_at(&env, "+2d")?;
    assert_eq!(runs_of(&env, id), 2, "two days later the retry is due");

    // Back at the real time: no crash, no panic, and every time still a sane one.
    let stderr = env.process(&[])?;
    assert!(!stderr.contains("bgq: error"), "{stderr}");
    let now = now_millis();
    for job in env.jobs()? {
        for field in ["created_at", "run_at"] {
            let at = millis(&job[field])?;
            assert!(
                at > now - DAY && at < now + 3 * DAY,
                "{field} {} is absurd: {job}",
                job[field]
            );
        }
        let run_at = millis(&job["run_at"])?;
        let created_at = millis(&job["created_at"])?;
        assert!(run_at >= created_at, "run_at before created_at: {job}");
    }
    Ok(())
}

#[test]
fn after_a_forward_jump_and_back_a_retry_is_not_put_off_by_the_jump() -> TestResult {
    if !faketime_available()? {
        return Ok(());
    }
    let env = env_with(
        75,
        75,
        "[retry]\ndelay = \"1h\"\nmultiplier = 1.0\njitter = 0.0",
    )?;
    let id = env.publish("cb", "{}")?;
    // The first run happens while the clock is two days ahead: its retry is "an hour later"
    // by that clock.
    process_at(&env, "+2d")?;
    assert_eq!(runs_of(&env, id), 1);

    // The clock is put right. The retry must not wait two days and an hour.
    let stderr = env.process(&[])?;
    assert!(
        stderr.contains("bgq: warning: the clock went back"),
        "the jump back is reported: {stderr:?}"
    );
    let run_at = millis(&env.job(id)?["run_at"])?;
    let now = now_millis();
    assert!(
        run_at <= now + HOUR + 60_000,
        "the retry is put off by the jump: due in {} min",
        (run_at - now) / 60_000
    );
    Ok(())
}
