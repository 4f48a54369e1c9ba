//! SPEC.md sections 4 and 5: TEMPORARILY_FAILED / WAITING retries, max_attempts, notices and timeouts.

use std::time::{Duration, Instant};

use crate::support::{
    TestEnv, TestResult, alive, callback_toml, notices, notify_line, read_lines, wait_for,
};

/// `[retry]` with no delay, so the next `process` run picks a failed job up again.
const RETRY_NOW: &str = "[retry]\ndelay = \"0s\"\njitter = 0.0\n";

#[test]
fn temp_failure_runs_again_in_the_next_run_with_the_next_attempt() -> TestResult {
    let env = TestEnv::new("")?;
    let log = env.path("attempts");
    let cb = env.script(
        "cb.sh",
        &format!(
            "echo $BGQ_ATTEMPT >> {}\n[ \"$BGQ_ATTEMPT\" -ge 2 ] && exit 0\nexit 75",
            log.display()
        ),
    )?;
    env.write_config(&format!("{RETRY_NOW}{}", callback_toml("flaky", &cb, "")))?;
    let id = env.publish("flaky", "{}")?;

    env.process(&[])?;
    assert_eq!(
        read_lines(&log),
        ["1"],
        "run once per process run, not retried at once"
    );
    let job = env.job(id)?;
    assert_eq!(job["state"], "TEMPORARILY_FAILED");
    assert_eq!(job["attempts"].as_i64(), Some(1));

    env.process(&[])?;
    assert_eq!(read_lines(&log), ["1", "2"]);
    let job = env.job(id)?;
    assert_eq!(job["state"], "FINISHED");
    assert_eq!(job["attempts"].as_i64(), Some(2));

    env.process(&[])?;
    assert_eq!(
        read_lines(&log),
        ["1", "2"],
        "a FINISHED job never runs again"
    );
    Ok(())
}

#[test]
fn temp_failure_waits_for_its_backoff() -> TestResult {
    let env = TestEnv::new("")?;
    let log = env.path("attempts");
    let cb = env.script(
        "cb.sh",
        &format!("echo $BGQ_ATTEMPT >> {}\nexit 75", log.display()),
    )?;
    env.write_config(&format!(
        "[retry]\ndelay = \"1h\"\njitter = 0.0\n{}",
        callback_toml("slow", &cb, "")
    ))?;
    let id = env.publish("slow", "{}")?;
    env.process(&[])?;
    env.process(&[])?;
    assert_eq!(read_lines(&log), ["1"], "not due for an hour");
    assert_eq!(env.state(id)?, "TEMPORARILY_FAILED");
    Ok(())
}

#[test]
fn waiting_runs_again_with_the_same_attempt() -> TestResult {
    let env = TestEnv::new("")?;
    let log = env.path("attempts");
    let marker = env.path("waited");
    let cb = env.script(
        "cb.sh",
        &format!(
            "echo $BGQ_ATTEMPT >> {log}\nif [ ! -e {m} ]; then touch {m}; exit 76; fi\nexit 0",
            log = log.display(),
            m = marker.display()
        ),
    )?;
    env.write_config(&format!("{RETRY_NOW}{}", callback_toml("later", &cb, "")))?;
    let id = env.publish("later", "{}")?;

    env.process(&[])?;
    assert_eq!(
        read_lines(&log),
        ["1"],
        "WAITING does not run again in the same run"
    );
    let job = env.job(id)?;
    assert_eq!(job["state"], "WAITING");
    assert_eq!(job["attempts"].as_i64(), Some(0), "WAITING does not count");

    env.process(&[])?;
    assert_eq!(read_lines(&log), ["1", "1"]);
    let job = env.job(id)?;
    assert_eq!(job["state"], "FINISHED");
    assert_eq!(job["attempts"].as_i64(), Some(1));
    Ok(())
}

#[test]
fn max_attempts_ends_in_permanent_failure_with_a_notice() -> TestResult {
    let env = TestEnv::new("")?;
    let log = env.path("attempts");
    let cb = env.script(
        "cb.sh",
        &format!("echo $BGQ_ATTEMPT >> {}\nexit 75", log.display()),
    )?;
    env.write_config(&format!(
        "[retry]\ndelay = \"0s\"\njitter = 0.0\nmax_attempts = 3\n{}",
        callback_toml("doomed", &cb, "")
    ))?;
    let id = env.publish("doomed", "{}")?;
    let notice = format!("bgq: notice: job {id} (doomed)");

    for run in 1..=2 {
        let stderr = env.process(&[])?;
        assert!(!stderr.contains("bgq: notice:"), "run {run}: {stderr}");
        let job = env.job(id)?;
        assert_eq!(job["state"], "TEMPORARILY_FAILED", "run {run}");
        assert_eq!(job["attempts"].as_i64(), Some(run));
    }
    let stderr = env.process(&[])?;
    let job = env.job(id)?;
    assert_eq!(job["state"], "PERMANENTLY_FAILED");
    assert_eq!(job["attempts"].as_i64(), Some(3));
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with(&notice)).collect();
    assert_eq!(lines.len(), 1, "one notice line: {stderr}");
    // The notice ends with the job as JSON.
    let json_start = lines[0].find('{').ok_or("no JSON in the notice")?;
    let value: serde_json::Value = serde_json::from_str(&lines[0][json_start..])?;
    assert_eq!(value["id"].as_i64(), Some(id));
    assert_eq!(value["state"], "PERMANENTLY_FAILED");

    let stderr = env.process(&[])?;
    assert_eq!(read_lines(&log), ["1", "2", "3"]);
    assert!(!stderr.contains("bgq: notice:"), "{stderr}");
    Ok(())
}

#[test]
fn notify_on_attempts_sends_exactly_one_notice() -> TestResult {
    let env = TestEnv::new("")?;
    let notify = notify_line(&env)?;
    let cb = env.script("cb.sh", "echo \"output of attempt $BGQ_ATTEMPT\"\nexit 75")?;
    env.write_config(&format!(
        "notify_on_attempts = 2\n{notify}\n{RETRY_NOW}{}",
        callback_toml("nag", &cb, "")
    ))?;
    let id = env.publish_with("nag", "{}", &["--identifier", "nag-1"])?;
    let sent = env.path("notices.jsonl");

    let stderr = env.process(&[])?;
    assert!(
        notices(&sent)?.is_empty(),
        "no notice after 1 failed attempt"
    );
    assert!(!stderr.contains("bgq: notice:"), "{stderr}");

    let stderr = env.process(&[])?;
    let got = notices(&sent)?;
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        !stderr.contains("bgq: notice:"),
        "with `notify`, the notice is not on stderr: {stderr}"
    );
    let n = &got[0];
    assert_eq!(n["id"].as_i64(), Some(id));
    assert_eq!(n["state"], "TEMPORARILY_FAILED");
    assert_eq!(n["attempts"].as_i64(), Some(2));
    assert_eq!(n["callback"], "nag");
    assert_eq!(n["identifier"], "nag-1");
    assert!(n.get("notice").is_some(), "{n}");
    let output = n["output"].as_str().ok_or("no output")?;
    assert!(output.contains("output of attempt 2"), "{output:?}");

    env.process(&[])?;
    env.process(&[])?;
    assert_eq!(env.job(id)?["attempts"].as_i64(), Some(4));
    assert_eq!(notices(&sent)?.len(), 1, "notified once only");
    Ok(())
}

#[test]
fn per_callback_retry_overrides_max_attempts() -> TestResult {
    let env = TestEnv::new("")?;
    let cb = env.script("cb.sh", "exit 75")?;
    env.write_config(&format!(
        "[retry]\ndelay = \"0s\"\njitter = 0.0\nmax_attempts = 25\n{}[callbacks.short.retry]\nmax_attempts = 2\n{}",
        callback_toml("short", &cb, ""),
        callback_toml("long", &cb, "")
    ))?;
    let short = env.publish("short", "{}")?;
    let long = env.publish("long", "{}")?;
    env.process(&[])?;
    assert_eq!(env.state(short)?, "TEMPORARILY_FAILED");
    env.process(&[])?;
    assert_eq!(env.state(short)?, "PERMANENTLY_FAILED");
    assert_eq!(env.job(short)?["attempts"].as_i64(), Some(2));
    assert_eq!(env.state(long)?, "TEMPORARILY_FAILED");
    assert_eq!(env.job(long)?["attempts"].as_i64(), Some(2));
    Ok(())
}

#[test]
fn timeout_is_a_temporary_failure_and_kills_grandchildren() -> TestResult {
    let env = TestEnv::new("")?;
    let pidfile = env.path("grandchild.pid");
    let marker = env.path("grandchild-survived");
    let cb = env.script(
        "cb.sh",
        &format!(
            "sh -c 'sleep 30; touch {m}' &\necho $! > {p}.tmp\nmv {p}.tmp {p}\nsleep 30",
            m = marker.display(),
            p = pidfile.display()
        ),
    )?;
    env.write_config(&format!(
        "{RETRY_NOW}{}",
        callback_toml("hang", &cb, "timeout = \"1s\"")
    ))?;
    let id = env.publish("hang", "{}")?;
    let start = Instant::now();
    env.process(&[])?;
    let took = start.elapsed();
    assert!(took < Duration::from_secs(6), "took {took:?}");
    assert!(took >= Duration::from_millis(900), "took {took:?}");
    let job = env.job(id)?;
    assert_eq!(job["state"], "TEMPORARILY_FAILED");
    assert_eq!(job["attempts"].as_i64(), Some(1));

    let pid: i32 = std::fs::read_to_string(&pidfile)?.trim().parse()?;
    wait_for(
        "the grandchild to be killed",
        Duration::from_secs(3),
        || !alive(pid),
    )?;
    Ok(())
}

#[test]
fn timeout_kills_a_callback_that_ignores_sigterm() -> TestResult {
    let env = TestEnv::new("")?;
    let pidfile = env.path("cb.pid");
    let cb = env.script(
        "cb.sh",
        &format!(
            "trap '' TERM\necho $$ > {p}.tmp\nmv {p}.tmp {p}\nsleep 30\nsleep 30",
            p = pidfile.display()
        ),
    )?;
    env.write_config(&format!(
        "{RETRY_NOW}{}",
        callback_toml("stubborn", &cb, "timeout = \"1s\"\nkill_grace = \"500ms\"")
    ))?;
    let id = env.publish("stubborn", "{}")?;
    let start = Instant::now();
    env.process(&[])?;
    let took = start.elapsed();
    assert!(took < Duration::from_secs(6), "took {took:?}");
    assert_eq!(env.state(id)?, "TEMPORARILY_FAILED");
    let pid: i32 = std::fs::read_to_string(&pidfile)?.trim().parse()?;
    wait_for("the callback to be killed", Duration::from_secs(3), || {
        !alive(pid)
    })?;
    Ok(())
}
