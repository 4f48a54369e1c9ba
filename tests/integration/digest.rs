//! Notices digested: everything one `process` run has to report goes to the `notify` command once,
//! at the end of the run, one JSON object per line and per job with its `kind` (`failed`,
//! `attempts`, `recovered`, `orphan`); without `notify`, one stderr line per job; a run with
//! nothing to report starts no notify command; notices not yet sent go out on the next run.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::{
    TestEnv, TestResult, alive, callback_toml, hanging_callback, read_lines, send_signal, toml_str,
    wait_for,
};

/// `[retry]` with no delay, so the next `process` run picks a failed job up again.
const RETRY_NOW: &str = "[retry]\ndelay = \"0s\"\njitter = 0.0\n";

/// Writes a notify script that appends its whole stdin to `digest.jsonl` and one line
/// `INVOCATION` to `invocations` per run; returns the `notify = [...]` line.
fn digest_notify(env: &TestEnv) -> TestResult<String> {
    let script = env.script(
        "notify.sh",
        &format!(
            "cat >> {}\necho INVOCATION >> {}",
            env.path("digest.jsonl").display(),
            env.path("invocations").display()
        ),
    )?;
    Ok(format!(
        "notify = [{}]",
        toml_str(&script.display().to_string())
    ))
}

/// The lines the notify command received on stdin so far (all runs together), in order.
fn digest_lines(env: &TestEnv) -> Vec<String> {
    read_lines(&env.path("digest.jsonl"))
}

/// How many times the notify command ran.
fn invocations(env: &TestEnv) -> usize {
    read_lines(&env.path("invocations")).len()
}

/// Parses each line as one JSON object.
fn objects(lines: &[String]) -> TestResult<Vec<Value>> {
    lines
        .iter()
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .map_err(|err| format!("not one JSON object per line: {line:?}: {err}"))?;
            if value.is_object() {
                Ok(value)
            } else {
                Err(format!("not a JSON object: {line}").into())
            }
        })
        .collect()
}

/// The `bgq: notice: ...` lines of `stderr`.
fn notice_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|line| line.starts_with("bgq: notice: "))
        .collect()
}

/// The JSON object at the end of a `bgq: notice: job N (CB) REASON: {json}` line.
fn notice_json(line: &str) -> TestResult<Value> {
    let start = line
        .find(": {")
        .ok_or_else(|| format!("no JSON in {line:?}"))?;
    Ok(serde_json::from_str(&line[start + 2..])?)
}

/// SIGKILLs the pids it holds when dropped, so a failing test leaves no callback behind.
struct KillOnDrop(Vec<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if alive(pid) {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// Waits for `path` (written with a rename) and reads the pid in it.
fn read_pid(path: &Path) -> TestResult<i32> {
    wait_for(
        &format!("{} to be written", path.display()),
        Duration::from_secs(10),
        || path.exists(),
    )?;
    Ok(std::fs::read_to_string(path)?.trim().parse()?)
}

/// Three permanent failures in one run start the notify command once, with three JSON lines.
#[test]
fn permanent_failures_of_one_run_go_out_as_one_digest() -> TestResult {
    let env = TestEnv::new("")?;
    let notify = digest_notify(&env)?;
    let cb = env.script("cb.sh", "echo \"broken $BGQ_JOB_ID\"\nexit 1")?;
    env.write_config(&format!("{notify}\n{}", callback_toml("cb", &cb, "")))?;
    let ids: Vec<i64> = (0..3)
        .map(|i| env.publish("cb", &format!("{{\"i\":{i}}}")))
        .collect::<TestResult<_>>()?;

    let stderr = env.process(&[])?;
    assert_eq!(invocations(&env), 1, "the notify command ran once per run");
    assert!(
        notice_lines(&stderr).is_empty(),
        "with `notify`, notices are not on stderr: {stderr}"
    );
    let lines = digest_lines(&env);
    assert_eq!(lines.len(), 3, "one line per job: {lines:?}");
    let sent = objects(&lines)?;
    let mut got: Vec<i64> = sent.iter().filter_map(|n| n["id"].as_i64()).collect();
    got.sort_unstable();
    assert_eq!(got, ids);
    for n in &sent {
        let id = n["id"].as_i64().ok_or("no id")?;
        assert_eq!(n["state"], "PERMANENTLY_FAILED", "{n}");
        assert_eq!(n["kind"], "failed", "{n}");
        assert_eq!(n["callback"], "cb", "{n}");
        assert!(
            n["notice"].as_str().is_some_and(|text| !text.is_empty()),
            "a notice text: {n}"
        );
        let output = n["output"].as_str().ok_or("no output")?;
        assert!(output.contains(&format!("broken {id}")), "{n}");
    }

    // Nothing new to report: the notify command does not run again.
    env.process(&[])?;
    assert_eq!(invocations(&env), 1);
    Ok(())
}

/// `notify_on_attempts` sends kind `attempts`; when that job later finishes, kind `recovered`.
#[test]
fn a_notified_job_that_finishes_sends_a_recovered_notice() -> TestResult {
    let env = TestEnv::new("")?;
    let notify = digest_notify(&env)?;
    let marker = env.path("fixed");
    let flaky = env.script(
        "flaky.sh",
        &format!(
            "if [ -e {} ]; then echo fine; exit 0; fi\necho \"not yet\"\nexit 75",
            marker.display()
        ),
    )?;
    let ok = env.script("ok.sh", "exit 0")?;
    env.write_config(&format!(
        "notify_on_attempts = 1\n{notify}\n{RETRY_NOW}{}{}",
        callback_toml("flaky", &flaky, ""),
        callback_toml("ok", &ok, "")
    ))?;
    let id = env.publish("flaky", "{}")?;
    let quiet = env.publish("ok", "{}")?;

    env.process(&[])?;
    assert_eq!(env.state(id)?, "TEMPORARILY_FAILED");
    assert_eq!(env.state(quiet)?, "FINISHED");
    assert_eq!(invocations(&env), 1);
    let first = objects(&digest_lines(&env))?;
    assert_eq!(first.len(), 1, "only the failing job: {first:?}");
    assert_eq!(first[0]["id"].as_i64(), Some(id));
    assert_eq!(first[0]["kind"], "attempts", "{}", first[0]);
    assert_eq!(first[0]["state"], "TEMPORARILY_FAILED");

    std::fs::write(&marker, "")?;
    let fresh = env.publish("ok", "{}")?;
    let stderr = env.process(&[])?;
    assert_eq!(env.state(id)?, "FINISHED");
    assert_eq!(env.state(fresh)?, "FINISHED");
    assert!(notice_lines(&stderr).is_empty(), "{stderr}");
    assert_eq!(invocations(&env), 2, "one more digest for the recovery");
    let all = objects(&digest_lines(&env))?;
    let second = &all[first.len()..];
    assert_eq!(
        second.len(),
        1,
        "a job never notified sends nothing when it finishes: {second:?}"
    );
    let n = &second[0];
    assert_eq!(n["id"].as_i64(), Some(id));
    assert_eq!(n["kind"], "recovered", "{n}");
    assert_eq!(n["state"], "FINISHED", "{n}");
    let text = n["notice"].as_str().ok_or("no notice text")?;
    assert!(
        text.starts_with("recovered: FINISHED after 2 attempt"),
        "{text:?}"
    );

    // Recovered once only.
    env.process(&[])?;
    assert_eq!(invocations(&env), 2);
    Ok(())
}

/// Runs with nothing to report (finished jobs, a failure below `notify_on_attempts`, an empty
/// queue) never start the notify command.
#[test]
fn a_run_with_nothing_to_report_starts_no_notify_command() -> TestResult {
    let env = TestEnv::new("")?;
    let notify = digest_notify(&env)?;
    let flaky = env.script(
        "flaky.sh",
        "[ \"$BGQ_ATTEMPT\" -ge 2 ] && exit 0\necho once\nexit 75",
    )?;
    let ok = env.script("ok.sh", "echo done")?;
    env.write_config(&format!(
        "notify_on_attempts = 3\n{notify}\n{RETRY_NOW}{}{}",
        callback_toml("flaky", &flaky, ""),
        callback_toml("ok", &ok, "")
    ))?;
    let flaky_id = env.publish("flaky", "{}")?;
    let ok_id = env.publish("ok", "{}")?;

    for run in 1..=3 {
        let stderr = env.process(&[])?;
        assert!(notice_lines(&stderr).is_empty(), "run {run}: {stderr}");
    }
    assert_eq!(env.state(flaky_id)?, "FINISHED");
    assert_eq!(env.state(ok_id)?, "FINISHED");
    assert!(
        !env.path("invocations").exists(),
        "the notify command never ran"
    );
    Ok(())
}

/// Without `notify`, each notice is one `bgq: notice: job N (cb) ...` stderr line; a job that
/// finished on its first try has none.
#[test]
fn without_notify_each_notice_is_one_stderr_line() -> TestResult {
    let env = TestEnv::new("")?;
    // The parameters say what the callback does: {"exit": N}.
    let cb = env.script(
        "cb.sh",
        "read -r params\ncode=$(printf '%s' \"$params\" | tr -dc 0-9)\necho \"exiting $code\"\nexit \"$code\"",
    )?;
    env.write_config(&format!(
        "notify_on_attempts = 1\n{}",
        callback_toml("cb", &cb, "")
    ))?;
    let failed = env.publish("cb", "{\"exit\":1}")?;
    let again = env.publish("cb", "{\"exit\":75}")?;
    let fine = env.publish("cb", "{\"exit\":0}")?;

    let stderr = env.process(&[])?;
    assert_eq!(env.state(failed)?, "PERMANENTLY_FAILED");
    assert_eq!(env.state(again)?, "TEMPORARILY_FAILED");
    assert_eq!(env.state(fine)?, "FINISHED");
    let lines = notice_lines(&stderr);
    assert_eq!(lines.len(), 2, "one line per notified job: {stderr}");
    for (id, kind) in [(failed, "failed"), (again, "attempts")] {
        let prefix = format!("bgq: notice: job {id} (cb) ");
        let mine: Vec<&&str> = lines.iter().filter(|l| l.starts_with(&prefix)).collect();
        assert_eq!(mine.len(), 1, "one line for job {id}: {stderr}");
        let n = notice_json(mine[0])?;
        assert_eq!(n["id"].as_i64(), Some(id), "{n}");
        assert_eq!(n["kind"], kind, "{n}");
    }
    assert!(
        !stderr.contains(&format!("bgq: notice: job {fine} ")),
        "{stderr}"
    );
    Ok(())
}

/// A job recovered from a killed `process` is reported in the next run's digest as kind `orphan`.
#[test]
fn orphan_recovery_goes_into_the_digest() -> TestResult {
    let env = TestEnv::new("")?;
    let notify = digest_notify(&env)?;
    let (hang, pidfile) = hanging_callback(&env, "hang.sh")?;
    let ok = env.script("ok.sh", "exit 0")?;
    env.write_config(&format!("{notify}\n{}", callback_toml("cb", &hang, "")))?;
    let id = env.publish("cb", "{}")?;

    let mut first = env.spawn(&["process"])?;
    let leftovers = KillOnDrop(vec![read_pid(&pidfile)?]);
    send_signal(first.pid(), "KILL")?;
    first.wait_exit(Duration::from_secs(5))?;
    assert_eq!(env.state(id)?, "PROCESSING");
    assert_eq!(invocations(&env), 0, "the killed run sent nothing");

    env.write_config(&format!("{notify}\n{}", callback_toml("cb", &ok, "")))?;
    let stderr = env.process(&[])?;
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with(&format!("bgq: recovered job {id}"))),
        "{stderr}"
    );
    assert!(notice_lines(&stderr).is_empty(), "{stderr}");
    assert_eq!(invocations(&env), 1, "one digest");
    let sent = objects(&digest_lines(&env))?;
    assert!(
        sent.iter()
            .any(|n| n["id"].as_i64() == Some(id) && n["kind"] == "orphan"),
        "an orphan notice for job {id}: {sent:?}"
    );
    wait_for(
        "recovery to kill the old callback",
        Duration::from_secs(5),
        || leftovers.0.iter().all(|&pid| !alive(pid)),
    )?;
    Ok(())
}

/// Without `notify`, a recovered orphan is reported by the `bgq: recovered job` line only.
#[test]
fn orphan_is_not_repeated_as_a_stderr_notice() -> TestResult {
    let env = TestEnv::new("")?;
    let (hang, pidfile) = hanging_callback(&env, "hang.sh")?;
    // After recovery the job says "not yet" (WAITING), which is never notified.
    let later = env.script("later.sh", "exit 76")?;
    env.write_config(&callback_toml("cb", &hang, ""))?;
    let id = env.publish("cb", "{}")?;

    let mut first = env.spawn(&["process"])?;
    let _leftovers = KillOnDrop(vec![read_pid(&pidfile)?]);
    send_signal(first.pid(), "KILL")?;
    first.wait_exit(Duration::from_secs(5))?;

    env.write_config(&callback_toml("cb", &later, ""))?;
    let stderr = env.process(&[])?;
    let recovered: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with(&format!("bgq: recovered job {id}")))
        .collect();
    assert_eq!(recovered.len(), 1, "{stderr}");
    assert!(notice_lines(&stderr).is_empty(), "{stderr}");
    assert_eq!(env.state(id)?, "WAITING");
    Ok(())
}

/// Notices of a run killed while its notify command ran are sent again by the next run.
#[test]
fn notices_of_a_killed_run_are_sent_by_the_next_run() -> TestResult {
    let env = TestEnv::new("")?;
    let block = env.path("block");
    let notify_pid = env.path("notify.pid");
    // The first notify run saves its stdin, then hangs until killed.
    let notify = env.script(
        "notify.sh",
        &format!(
            "cat >> {d}\necho INVOCATION >> {i}\nif [ -e {b} ]; then echo $$ > {p}.tmp; mv {p}.tmp {p}; exec sleep 30; fi",
            d = env.path("digest.jsonl").display(),
            i = env.path("invocations").display(),
            b = block.display(),
            p = notify_pid.display()
        ),
    )?;
    let cb = env.script("cb.sh", "exit 1")?;
    env.write_config(&format!(
        "notify = [{}]\n{}",
        toml_str(&notify.display().to_string()),
        callback_toml("cb", &cb, "")
    ))?;
    let id = env.publish("cb", "{}")?;
    std::fs::write(&block, "")?;

    let mut first = env.spawn(&["process"])?;
    let _leftovers = KillOnDrop(vec![read_pid(&notify_pid)?]);
    send_signal(first.pid(), "KILL")?;
    first.wait_exit(Duration::from_secs(5))?;
    assert_eq!(env.state(id)?, "PERMANENTLY_FAILED");
    assert_eq!(invocations(&env), 1);
    std::fs::remove_file(&block)?;

    env.process(&[])?;
    assert_eq!(invocations(&env), 2, "the next run sent the notice again");
    let sent = objects(&digest_lines(&env))?;
    assert_eq!(sent.len(), 2, "one line per run: {sent:?}");
    let resent = sent.last().ok_or("nothing sent")?;
    assert_eq!(resent["id"].as_i64(), Some(id), "{resent}");
    assert_eq!(resent["kind"], "failed", "{resent}");

    // Sent now: not again.
    env.process(&[])?;
    assert_eq!(invocations(&env), 2);
    Ok(())
}

/// A notify command that fails is named with how it ended, and the notices it was sent then go
/// to stderr, so that cron still mails them; its stderr is ours, its stdout is dropped.
#[test]
fn a_failing_notify_command_is_reported_and_its_notices_go_to_stderr() -> TestResult {
    let env = TestEnv::new("")?;
    let notify = env.script(
        "notify.sh",
        "cat > /dev/null\necho from-stdout\necho from-stderr >&2\nexit 3",
    )?;
    let cb = env.script("cb.sh", "exit 1")?;
    env.write_config(&format!(
        "notify = [{}]\n{}",
        toml_str(&notify.display().to_string()),
        callback_toml("cb", &cb, "")
    ))?;
    let id = env.publish("cb", "{}")?;

    let out = env.bgq().arg("process").output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "bgq: error: notify command `{}` failed: exit code 3\n",
            notify.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("from-stderr\n"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("from-stdout"));
    let lines = notice_lines(&stderr);
    assert_eq!(lines.len(), 1, "{stderr}");
    assert_eq!(notice_json(lines[0])?["id"].as_i64(), Some(id));
    Ok(())
}
