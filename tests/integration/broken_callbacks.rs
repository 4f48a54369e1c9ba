//! SPEC.md section 5: a callback whose command cannot be started (missing, not executable, a
//! missing `#!` interpreter, a missing `working_dir`) is a deployment problem, not the job's:
//! the job stays as it was and spends no attempt, the run starts no more jobs of that callback
//! but keeps running the others, says so once on stderr and exits 1, and `status` reports the
//! callback until a run starts it again. A watch run tries it again every poll.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::support::{TestEnv, TestResult, callback_toml, send_signal, toml_str, wait_for};

/// A script body that records its BGQ_ATTEMPT in `seen` and exits 0.
fn recording(seen: &Path) -> String {
    format!(
        "echo \"$BGQ_JOB_ID $BGQ_ATTEMPT\" >> {}",
        toml_str(&seen.display().to_string())
    )
}

/// One way of breaking the `deploy` callback, and its fix.
struct Breakage {
    name: &'static str,
    /// Breaks it; returns the config lines of its table after `command` and what the error
    /// line must name.
    break_it: fn(&TestEnv, &Path, &Path) -> TestResult<(String, String)>,
    /// Mends it.
    fix: fn(&TestEnv, &Path, &Path) -> TestResult,
}

fn write_script(path: &Path, body: &str, mode: u32) -> TestResult {
    fs::write(path, format!("#!/bin/sh\n{body}\n"))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

const BREAKAGES: [Breakage; 4] = [
    Breakage {
        name: "a missing command",
        break_it: |_, script, _| Ok((String::new(), script.display().to_string())),
        fix: |_, script, seen| write_script(script, &recording(seen), 0o755),
    },
    Breakage {
        name: "a lost execute bit",
        break_it: |_, script, seen| {
            write_script(script, &recording(seen), 0o644)?;
            Ok((String::new(), "Permission denied".to_owned()))
        },
        fix: |_, script, _| {
            Ok(fs::set_permissions(
                script,
                fs::Permissions::from_mode(0o755),
            )?)
        },
    },
    Breakage {
        name: "a missing interpreter",
        break_it: |_, script, seen| {
            fs::write(script, format!("#!/no/such/shell\n{}\n", recording(seen)))?;
            fs::set_permissions(script, fs::Permissions::from_mode(0o755))?;
            Ok((String::new(), "/no/such/shell".to_owned()))
        },
        fix: |_, script, seen| write_script(script, &recording(seen), 0o755),
    },
    Breakage {
        name: "a missing working_dir",
        break_it: |env, script, seen| {
            write_script(script, &recording(seen), 0o755)?;
            let dir = env.path("releases/current");
            Ok((
                format!("working_dir = {}", toml_str(&dir.display().to_string())),
                dir.display().to_string(),
            ))
        },
        fix: |env, _, _| Ok(fs::create_dir_all(env.path("releases/current"))?),
    },
];

/// The config: the `deploy` callback (broken or not) and a healthy `other`.
fn config(_env: &TestEnv, script: &Path, extra: &str, other: &Path) -> String {
    format!(
        "{}{}",
        callback_toml("deploy", script, extra),
        callback_toml("other", other, "")
    )
}

fn status(env: &TestEnv) -> TestResult<(i32, String)> {
    let out = env.bgq().arg("status").output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

#[test]
fn a_callback_that_cannot_start_leaves_its_jobs_as_they_were_until_fixed() -> TestResult {
    for breakage in &BREAKAGES {
        let env = TestEnv::new("")?;
        let seen = env.path("seen");
        let script: PathBuf = env.path("bin/deploy.sh");
        fs::create_dir_all(env.path("bin"))?;
        let other = env.script("other.sh", &recording(&seen))?;
        let (extra, named) = (breakage.break_it)(&env, &script, &seen)?;
        env.write_config(&config(&env, &script, &extra, &other))?;
        let ids = [
            env.publish("deploy", "{}")?,
            env.publish("deploy", "{}")?,
            env.publish("other", "{}")?,
        ];
        let (code, stdout, stderr) = env.process_output(&[])?;
        let what = breakage.name;
        assert_eq!((code, stdout.as_str()), (1, ""), "{what}: {stderr}");
        // Other callbacks keep running.
        assert_eq!(env.state(ids[2])?, "FINISHED", "{what}");
        for id in &ids[..2] {
            let job = env.job(*id)?;
            assert_eq!(job["state"], "READY", "{what}: job {id}");
            assert_eq!(job["attempts"], 0, "{what}: job {id} spent no attempt");
        }
        // Said once, in one line naming the callback, the command and the reason.
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|line| line.contains("callback `deploy`"))
            .collect();
        assert_eq!(lines.len(), 1, "{what}: said once: {stderr}");
        assert!(lines[0].starts_with("bgq: error: "), "{what}: {stderr}");
        assert!(lines[0].contains(&named), "{what}: names {named}: {stderr}");
        assert!(
            lines[0].contains(&script.display().to_string()),
            "{what}: names the command: {stderr}"
        );
        assert!(
            !stderr.contains("notice"),
            "{what}: no job failed: {stderr}"
        );
        // No attempt in the history either.
        let show = env
            .bgq()
            .args(["show", "--json", &ids[0].to_string()])
            .output()?;
        let shown: serde_json::Value = serde_json::from_slice(&show.stdout)?;
        assert_eq!(shown["runs"], serde_json::json!([]), "{what}");
        // status reports it, and so does explain.
        let (code, out) = status(&env)?;
        assert_eq!(code, 1, "{what}: {out}");
        assert!(
            out.lines().any(
                |line| line.starts_with("broken: queue `general`: callback `deploy`")
                    && line.contains(&named)
            ),
            "{what}: {out}"
        );
        let explain = env.bgq().args(["explain", &ids[0].to_string()]).output()?;
        let explain = String::from_utf8_lossy(&explain.stdout);
        assert!(
            explain.contains("could not be started"),
            "{what}: {explain}"
        );
        // Another run still cannot: still exit 1, the jobs still as they were.
        let (code, _, stderr) = env.process_output(&[])?;
        assert_eq!(code, 1, "{what}: {stderr}");
        assert_eq!(env.job(ids[0])?["attempts"], 0, "{what}");
        // Fixed: the next run runs them as first attempts, and the mark goes.
        (breakage.fix)(&env, &script, &seen)?;
        let (code, _, stderr) = env.process_output(&[])?;
        assert_eq!(code, 0, "{what}: {stderr}");
        for id in &ids[..2] {
            assert_eq!(env.state(*id)?, "FINISHED", "{what}: job {id}");
            assert_eq!(env.job(*id)?["attempts"], 1, "{what}: job {id}");
        }
        let seen = fs::read_to_string(&seen)?;
        for id in &ids[..2] {
            assert!(
                seen.lines().any(|line| line == format!("{id} 1")),
                "{what}: job {id} ran as attempt 1: {seen}"
            );
        }
        let (code, out) = status(&env)?;
        assert!(!out.contains("broken"), "{what}: {out}");
        assert_eq!(code, 0, "{what}: {out}");
    }
    Ok(())
}

#[test]
fn a_job_that_had_failed_keeps_its_state_and_attempts_when_its_callback_cannot_start() -> TestResult
{
    let env = TestEnv::new("")?;
    let script = env.script("flaky.sh", "exit 75")?;
    env.write_config(&format!(
        "[retry]\ndelay = \"0s\"\njitter = 0.0\n{}",
        callback_toml("flaky", &script, "")
    ))?;
    let id = env.publish("flaky", "{}")?;
    env.process(&[])?;
    let before = env.job(id)?;
    assert_eq!(
        (before["state"].as_str(), before["attempts"].as_u64()),
        (Some("TEMPORARILY_FAILED"), Some(1))
    );
    fs::set_permissions(&script, fs::Permissions::from_mode(0o644))?;
    let (code, _, stderr) = env.process_output(&[])?;
    assert_eq!(code, 1, "{stderr}");
    let after = env.job(id)?;
    for field in ["state", "attempts", "started_at", "run_at"] {
        assert_eq!(after[field], before[field], "{field}: {stderr}");
    }
    Ok(())
}

#[test]
fn a_watcher_keeps_running_other_callbacks_and_retries_a_broken_one_each_poll() -> TestResult {
    let env = TestEnv::new("")?;
    let seen = env.path("seen");
    let script = env.path("deploy.sh");
    let other = env.script("other.sh", &recording(&seen))?;
    env.write_config(&config(&env, &script, "", &other))?;
    let broken = env.publish("deploy", "{}")?;
    let mut watcher = env.spawn(&["process", "--watch", "--poll", "200ms"])?;
    wait_for(
        "the broken callback is reported",
        Duration::from_secs(20),
        || watcher.stderr().contains("callback `deploy`"),
    )?;
    let healthy = env.publish("other", "{}")?;
    wait_for("the other callback runs", Duration::from_secs(20), || {
        env.state(healthy).is_ok_and(|state| state == "FINISHED")
    })?;
    // Each poll claims the job and puts it back when the start fails: read it between two.
    let mut between_polls = Value::Null;
    wait_for(
        "the broken job read between polls",
        Duration::from_secs(20),
        || {
            env.job(broken).is_ok_and(|job| {
                let settled = job["state"] != "PROCESSING";
                between_polls = job;
                settled
            })
        },
    )?;
    assert_eq!(
        (&between_polls["state"], &between_polls["attempts"]),
        (&Value::from("READY"), &Value::from(0)),
        "{between_polls}"
    );
    write_script(&script, &recording(&seen), 0o755)?;
    wait_for("the mended callback runs", Duration::from_secs(20), || {
        env.state(broken).is_ok_and(|state| state == "FINISHED")
    })?;
    wait_for("it says so", Duration::from_secs(20), || {
        watcher
            .stderr()
            .contains("callback `deploy` of queue `general` starts again")
    })?;
    let stderr = watcher.stderr();
    assert_eq!(
        stderr.matches("cannot be started").count(),
        1,
        "said once, retried silently: {stderr}"
    );
    assert_eq!(env.job(broken)?["attempts"], 1);
    let (_, out) = status(&env)?;
    assert!(!out.contains("broken"), "{out}");
    send_signal(watcher.pid(), "TERM")?;
    let status = watcher.wait_exit(Duration::from_secs(20))?;
    assert_eq!(
        status.code(),
        Some(0),
        "mended before it stopped: {}",
        watcher.stderr()
    );
    Ok(())
}

#[test]
fn a_watcher_stopped_while_a_callback_is_broken_exits_1() -> TestResult {
    let env = TestEnv::new("")?;
    let script = env.path("deploy.sh");
    let other = env.script("other.sh", "exit 0")?;
    env.write_config(&config(&env, &script, "", &other))?;
    let id = env.publish("deploy", "{}")?;
    let mut watcher = env.spawn(&["process", "--watch", "--poll", "100ms"])?;
    wait_for(
        "the broken callback is reported",
        Duration::from_secs(20),
        || watcher.stderr().contains("callback `deploy`"),
    )?;
    send_signal(watcher.pid(), "TERM")?;
    let status = watcher.wait_exit(Duration::from_secs(20))?;
    assert_eq!(status.code(), Some(1), "{}", watcher.stderr());
    let job = env.job(id)?;
    assert_eq!(
        (job["state"].as_str(), job["attempts"].as_u64()),
        (Some("READY"), Some(0))
    );
    Ok(())
}
