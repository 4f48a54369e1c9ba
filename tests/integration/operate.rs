//! Operating a queue through an incident (SPEC section 12): `pause` and `resume` (cron runs,
//! `--watch`, `publish --process`), `cancel` by filters with `--dry-run` and its warning about
//! jobs left waiting `--after` a cancelled one, `clear --state` and `14d`, `status` on jobs that
//! wait for a job that will never finish, and the `_total` counters of `stats --prometheus`.

use std::time::Duration;

use serde_json::Value;

use crate::support::{
    Spawned, TestEnv, TestResult, describe, env_with_callbacks, wait_for, wait_for_watcher,
    wait_state, wait_state_checked,
};

/// Callbacks `ok` (exit 0), `other` (exit 0) and `bad` (exit 1: PERMANENTLY_FAILED).
fn env() -> TestResult<TestEnv> {
    env_with_callbacks(
        "",
        &[
            ("ok", "cat > /dev/null"),
            ("other", "cat > /dev/null"),
            ("bad", "exit 1"),
        ],
    )
}

/// Runs `bgq ARGS`, asserts exit `code`, returns (stdout, stderr).
fn run(env: &TestEnv, args: &[&str], code: i32) -> TestResult<(String, String)> {
    let out = env.bgq().args(args).output()?;
    assert_eq!(
        out.status.code(),
        Some(code),
        "bgq {args:?}: {}",
        describe(&out)
    );
    Ok((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn attempts(env: &TestEnv, id: i64) -> TestResult<i64> {
    Ok(env.job(id)?["attempts"].as_i64().ok_or("no attempts")?)
}

#[test]
fn a_paused_callback_stays_ready_with_no_attempt_until_resumed() -> TestResult {
    let env = env()?;
    let (out, _) = run(&env, &["pause", "--callback", "ok"], 0)?;
    assert_eq!(
        out,
        "paused callback `ok`: no run starts its jobs until `bgq resume --callback ok`\n"
    );
    let (out, _) = run(&env, &["pause", "--callback", "ok"], 0)?;
    assert_eq!(out, "callback `ok` was already paused\n");
    let held = env.publish("ok", "{}")?;
    let free = env.publish("other", "{}")?;
    env.process(&[])?;
    assert_eq!(env.state(free)?, "FINISHED", "other callbacks still run");
    assert_eq!(env.state(held)?, "READY");
    assert_eq!(attempts(&env, held)?, 0, "a paused job spends no attempt");

    let (list, _) = run(&env, &["list"], 0)?;
    assert!(list.contains("READY (paused)"), "{list}");
    let (explain, _) = run(&env, &["explain", &held.to_string()], 0)?;
    assert!(
        explain.contains("is paused (callback `ok`): `bgq resume --callback ok` lifts it"),
        "{explain}"
    );
    let (stats, _) = run(&env, &["stats"], 0)?;
    assert!(stats.contains("paused: callback `ok` since"), "{stats}");
    let (stats, _) = run(&env, &["stats", "--json"], 0)?;
    let stats: Value = serde_json::from_str(&stats)?;
    assert_eq!(stats["pauses"][0]["callback"], "ok");
    let (status, _) = run(&env, &["status"], 0)?;
    assert!(status.contains("paused: callback `ok` since"), "{status}");

    let (out, _) = run(&env, &["resume", "--callback", "ok"], 0)?;
    assert_eq!(out, "resumed callback `ok`\n");
    let (out, _) = run(&env, &["resume", "--callback", "ok"], 0)?;
    assert_eq!(out, "callback `ok` was not paused\n");
    env.process(&[])?;
    assert_eq!(env.state(held)?, "FINISHED");
    assert_eq!(attempts(&env, held)?, 1);
    Ok(())
}

#[test]
fn pausing_everything_or_a_queue_holds_every_callback_of_it() -> TestResult {
    let env = env()?;
    let general = env.publish("ok", "{}")?;
    let elsewhere = env.publish_with("ok", "{}", &["--queue", "other"])?;
    run(&env, &["pause", "--queue", "other"], 0)?;
    env.process(&["--queue", "other"])?;
    assert_eq!(env.state(elsewhere)?, "READY");
    run(&env, &["pause"], 0)?;
    env.process(&[])?;
    assert_eq!(
        env.state(general)?,
        "READY",
        "pause with no option holds every queue"
    );
    // Lifting the queue's pause leaves the pause of everything, and says so.
    let (out, _) = run(&env, &["resume", "--queue", "other"], 0)?;
    assert_eq!(
        out,
        "resumed queue `other`\nqueue `other` is still paused by `bgq pause`: `bgq resume` lifts it\n"
    );
    env.process(&["--queue", "other"])?;
    assert_eq!(env.state(elsewhere)?, "READY");
    let (out, _) = run(&env, &["resume"], 0)?;
    assert_eq!(out, "resumed every queue and callback\n");
    env.process(&[])?;
    env.process(&["--queue", "other"])?;
    assert_eq!(env.state(general)?, "FINISHED");
    assert_eq!(env.state(elsewhere)?, "FINISHED");
    Ok(())
}

#[test]
fn a_watch_run_stops_starting_a_paused_callback_and_resumes_without_restart() -> TestResult {
    let env = env()?;
    // A poll too slow for this test: the resume must wake the watcher (the database's change
    // counter on SQLite, NOTIFY on PostgreSQL).
    let watcher: Spawned = env.spawn(&["process", "--watch", "--poll", "1m"])?;
    wait_for_watcher(&env)?;
    run(&env, &["pause", "--callback", "ok"], 0)?;
    let held = env.publish("ok", "{}")?;
    // Published after it, of a callback not paused: once it has run, the watcher has seen both.
    let after = env.publish("other", "{}")?;
    wait_state(&env, after, "FINISHED", Duration::from_secs(10))?;
    assert_eq!(env.state(held)?, "READY");
    assert_eq!(attempts(&env, held)?, 0);
    run(&env, &["resume", "--callback", "ok"], 0)?;
    wait_state_checked(&env, held, "FINISHED", Duration::from_secs(5), || {
        if watcher.stderr().contains("error") {
            return Err(format!("the watcher failed: {}", watcher.stderr()).into());
        }
        Ok(())
    })?;
    Ok(())
}

#[test]
fn publish_process_starts_no_paused_job() -> TestResult {
    let env = env()?;
    run(&env, &["pause", "--queue", "general"], 0)?;
    let out = env
        .bgq()
        .args(["publish", "ok", "--json", "{}", "--process"])
        .output()?;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let id: i64 = String::from_utf8(out.stdout)?.trim().parse()?;
    // The run it started has ended when its end is recorded.
    wait_for("the on-demand run to end", Duration::from_secs(15), || {
        env.bgq()
            .args(["stats", "--json"])
            .output()
            .ok()
            .and_then(|out| serde_json::from_slice::<Value>(&out.stdout).ok())
            .is_some_and(|stats| {
                stats["queues"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|queue| !queue["last_run"]["finished_at"].is_null())
            })
    })?;
    assert_eq!(env.state(id)?, "READY");
    assert_eq!(attempts(&env, id)?, 0);
    Ok(())
}

#[test]
fn cancel_takes_retrys_filters_and_dry_run() -> TestResult {
    let env = env()?;
    let first = env.publish("ok", "{}")?;
    let second = env.publish("ok", "{}")?;
    let elsewhere = env.publish_with("ok", "{}", &["--queue", "other"])?;
    let other = env.publish("other", "{}")?;
    let (out, _) = run(
        &env,
        &[
            "cancel",
            "--state",
            "READY",
            "--callback",
            "ok",
            "--queue",
            "general",
            "--dry-run",
        ],
        0,
    )?;
    assert_eq!(
        out,
        format!(
            "would cancel job {first} (ok): READY -> CANCELLED\nwould cancel job {second} (ok): READY -> CANCELLED\n"
        )
    );
    assert_eq!(env.state(first)?, "READY", "--dry-run changes nothing");
    run(
        &env,
        &[
            "cancel",
            "--state",
            "READY",
            "--callback",
            "ok",
            "--queue",
            "general",
        ],
        0,
    )?;
    assert_eq!(env.state(first)?, "CANCELLED");
    assert_eq!(env.state(second)?, "CANCELLED");
    assert_eq!(env.state(elsewhere)?, "READY");
    assert_eq!(env.state(other)?, "READY");
    let (_, err) = run(&env, &["cancel", "--state", "FINISHED"], 2)?;
    assert!(err.starts_with("bgq: error: "), "{err}");
    let (_, err) = run(&env, &["cancel", "--state", "PROCESSING"], 2)?;
    assert!(err.contains("--kill"), "{err}");
    run(&env, &["cancel", "--callback", "ok"], 2)?;
    Ok(())
}

#[test]
fn cancelling_a_parent_warns_about_its_dependents_and_status_reports_them() -> TestResult {
    let env = env()?;
    let parent = env.publish("ok", "{}")?;
    let child = env.publish_with("ok", "{}", &["--after", &parent.to_string()])?;
    let (_, err) = run(&env, &["cancel", &parent.to_string()], 0)?;
    assert_eq!(
        err,
        format!(
            "bgq: warning: job {child} waits (--after) for job {parent}, which is CANCELLED: it will never run; cancel it too (`bgq cancel {child}`), or `bgq retry {parent}`\n"
        )
    );
    let (status, _) = run(&env, &["status"], 1)?;
    assert!(
        status.contains(&format!(
            "stuck: queue `general`: job {child} waits (--after) for job {parent}, which is CANCELLED: it will never run"
        )),
        "{status}"
    );
    Ok(())
}

#[test]
fn clear_state_deletes_exactly_the_states_given_and_takes_14d() -> TestResult {
    let env = env()?;
    let finished = env.publish("ok", "{}")?;
    let failed = env.publish("bad", "{}")?;
    let cancelled = env.publish("other", "{}")?;
    let ready = env.publish("other", "{}")?;
    run(&env, &["cancel", &cancelled.to_string()], 0)?;
    run(&env, &["pause", "--callback", "other"], 0)?;
    env.process(&[])?;
    assert_eq!(env.state(failed)?, "PERMANENTLY_FAILED");
    let (_, err) = run(&env, &["clear", "--state", "READY"], 2)?;
    assert!(err.starts_with("bgq: error: --state READY"), "{err}");
    let (out, _) = run(&env, &["clear", "--state", "PERMANENTLY_FAILED", "14d"], 0)?;
    assert_eq!(out, "0\n", "nothing failed 14 days ago");
    let out = env
        .bgq_at("+15d")
        .args(["clear", "--state", "PERMANENTLY_FAILED", "14d"])
        .output()?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1\n",
        "{}",
        describe(&out)
    );
    let left: Vec<i64> = env
        .jobs()?
        .iter()
        .filter_map(|job| job["id"].as_i64())
        .collect();
    assert_eq!(left, [finished, cancelled, ready]);
    let (out, _) = run(
        &env,
        &["clear", "--state", "CANCELLED", "--state", "FINISHED"],
        0,
    )?;
    assert_eq!(out, "2\n");
    let (out, _) = run(&env, &["clear"], 0)?;
    assert_eq!(out, "0\n");
    assert_eq!(env.state(ready)?, "READY");
    Ok(())
}

#[test]
fn clearing_a_failed_parent_does_not_free_its_dependents() -> TestResult {
    let env = env()?;
    let failed = env.publish("bad", "{}")?;
    env.process(&[])?;
    let child = env.publish_with("ok", "{}", &["--after", &failed.to_string()])?;
    let (out, _) = run(&env, &["clear", "--state", "PERMANENTLY_FAILED"], 0)?;
    assert_eq!(out, "1\n");
    // A job published --after the cleared one waits too, as it would for the failed job.
    let late = env.publish_with("ok", "{}", &["--after", &failed.to_string()])?;
    env.process(&[])?;
    for id in [child, late] {
        assert_eq!(env.state(id)?, "READY", "job {id}");
        assert_eq!(attempts(&env, id)?, 0, "job {id}");
    }
    let (status, _) = run(&env, &["status"], 1)?;
    assert!(
        status.contains(&format!(
            "stuck: queue `general`: job {child} waits (--after) for job {failed}, which is PERMANENTLY_FAILED, and was deleted by `bgq clear`: it will never run; `bgq cancel {child}`"
        )),
        "{status}"
    );
    // Clearing FINISHED jobs still frees: a gone FINISHED parent counts as FINISHED.
    let parent = env.publish("ok", "{}")?;
    env.process(&[])?;
    run(&env, &["clear"], 0)?;
    let freed = env.publish_with("ok", "{}", &["--after", &parent.to_string()])?;
    env.process(&[])?;
    assert_eq!(env.state(freed)?, "FINISHED");
    Ok(())
}

#[test]
fn a_second_parent_finishing_does_not_free_a_job_whose_first_was_cleared_failed() -> TestResult {
    let env = env()?;
    let failed = env.publish("bad", "{}")?;
    env.process(&[])?;
    run(&env, &["pause", "--callback", "other"], 0)?;
    let second = env.publish("other", "{}")?;
    let child = env.publish_with(
        "ok",
        "{}",
        &[
            "--after",
            &failed.to_string(),
            "--after",
            &second.to_string(),
        ],
    )?;
    run(&env, &["clear", "--state", "PERMANENTLY_FAILED"], 0)?;
    run(&env, &["resume"], 0)?;
    env.process(&[])?;
    assert_eq!(env.state(second)?, "FINISHED");
    env.process(&[])?;
    assert_eq!(
        env.state(child)?,
        "READY",
        "the cleared failed parent never finished"
    );
    Ok(())
}

/// The sample of `bgq_job_runs_total` for `callback` and `outcome` in `text`.
fn total(text: &str, callback: &str, outcome: &str) -> Option<u64> {
    let prefix = format!(
        "bgq_job_runs_total{{queue=\"general\",callback=\"{callback}\",outcome=\"{outcome}\"}} "
    );
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.parse().ok())
}

#[test]
fn prometheus_counters_grow_across_runs_and_survive_clear() -> TestResult {
    let env = env()?;
    env.publish("ok", "{}")?;
    env.publish("bad", "{}")?;
    env.process(&[])?;
    let (text, _) = run(&env, &["stats", "--prometheus"], 0)?;
    assert!(
        text.contains("# HELP bgq_job_runs_total ")
            && text.contains("# TYPE bgq_job_runs_total counter"),
        "{text}"
    );
    assert_eq!(total(&text, "ok", "finished"), Some(1), "{text}");
    assert_eq!(total(&text, "bad", "permanently_failed"), Some(1), "{text}");
    env.publish("ok", "{}")?;
    env.process(&[])?;
    run(&env, &["clear"], 0)?;
    run(&env, &["clear", "--state", "PERMANENTLY_FAILED"], 0)?;
    run(&env, &["pause", "--callback", "ok"], 0)?;
    let (text, _) = run(&env, &["stats", "--prometheus"], 0)?;
    assert_eq!(total(&text, "ok", "finished"), Some(2), "{text}");
    assert_eq!(total(&text, "bad", "permanently_failed"), Some(1), "{text}");
    assert!(
        text.contains("bgq_paused{queue=\"\",callback=\"ok\"} 1"),
        "{text}"
    );
    promtool_check(&env, &text)
}

/// `promtool check metrics` on `text`, where promtool is installed (Debian's `prometheus`).
fn promtool_check(env: &TestEnv, text: &str) -> TestResult {
    let Ok(promtool) = which("promtool") else {
        if std::env::var("CI").as_deref() == Ok("true") {
            return Err("promtool is not installed, and CI must check the metrics with it".into());
        }
        eprintln!("promtool not installed: the exposition format is not checked by it");
        return Ok(());
    };
    let path = env.path("metrics.prom");
    std::fs::write(&path, text)?;
    let out = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&path)?)
        .output()?;
    assert!(out.status.success(), "promtool: {}", describe(&out));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(said.trim(), "", "promtool found problems:\n{said}");
    Ok(())
}

fn which(name: &str) -> TestResult<std::path::PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .ok_or_else(|| format!("{name} not found").into())
}
