//! On-demand runs for quiet queues: `publish --process` and `process_on_publish = true` start a
//! detached `process` run of the job's queue. Publish does not wait for it (only the id on
//! stdout, at once) nor keeps the caller's files open, runs started in quick succession share the
//! lock and run each job once, and a plain publish starts no run.

use std::time::{Duration, Instant};

use crate::support::{
    TIMED_BY_PAYLOAD, TestEnv, TestResult, callback_toml, describe, env_recording_runs,
    env_with_callbacks, intervals, max_overlap, sorted_ids, timed_body, timed_env, wait_for,
    wait_state,
};

/// Publishes one job of `slow` (a 3-second callback logging with `timed_body`) with `args`, and
/// checks publish returned at once with only the id, and the job then ran once by itself.
fn publish_starts_a_detached_run(env: &TestEnv, args: &[&str]) -> TestResult {
    let start = Instant::now();
    let out = env
        .bgq()
        .args(["publish", "slow", "--json", "{}"])
        .args(args)
        .output()?;
    let took = start.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = String::from_utf8(out.stdout.clone())?;
    let id: i64 = stdout.trim_end_matches('\n').parse()?;
    let state = env.state(id)?;
    assert_eq!(stdout, format!("{id}\n"), "only the id on stdout");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "",
        "publish's stderr stays empty"
    );
    assert!(
        took < Duration::from_millis(2500),
        "publish waited for the 3-second job: {took:?}"
    );
    assert!(
        state == "READY" || state == "PROCESSING",
        "right after publish the job is {state}, expected READY or PROCESSING"
    );

    wait_state(env, id, "FINISHED", Duration::from_secs(15))?;
    let runs = intervals(&env.path("log"))?;
    assert_eq!(
        runs.iter().map(|run| run.0).collect::<Vec<_>>(),
        [id],
        "the job ran once"
    );
    Ok(())
}

/// A [`TestEnv`] with callback `slow` (3 s, logged to `log`) and `top` settings.
fn env_with_slow_callback(top: &str) -> TestResult<TestEnv> {
    let env = TestEnv::new("")?;
    let slow = env.script("slow.sh", &timed_body(&env.path("log"), "3"))?;
    env.write_config(&format!("{top}\n{}", callback_toml("slow", &slow, "")))?;
    Ok(env)
}

/// `publish --process` prints only the id, returns before the job ran, and the job is run
/// without anyone running `process`.
#[test]
fn publish_process_runs_the_job_without_waiting_for_it() -> TestResult {
    let env = env_with_slow_callback("")?;
    publish_starts_a_detached_run(&env, &["--process"])
}

/// `process_on_publish = true` makes a plain publish do what `--process` does.
#[test]
fn process_on_publish_runs_every_published_job() -> TestResult {
    let env = env_with_slow_callback("process_on_publish = true")?;
    publish_starts_a_detached_run(&env, &[])
}

/// Without `--process` (and `process_on_publish` off by default) nothing runs the job.
#[test]
fn plain_publish_starts_no_run() -> TestResult {
    let env = env_recording_runs("", "")?;
    let id = env.publish("cb", "{}")?;
    // A run that publish started would be under way before publish exited. One started later by
    // `publish --process`, of another queue (it runs only its own), shows when such a run has
    // had its time: once its job has finished, the first one must not have run.
    let later = env.publish_with("cb", "{}", &["--queue", "other", "--process"])?;
    wait_state(&env, later, "FINISHED", Duration::from_secs(10))?;
    assert_eq!(env.state(id)?, "READY");
    assert_eq!(
        sorted_ids(&env.path("runs"))?,
        [later],
        "only the job of the later run ran"
    );
    Ok(())
}

/// `publish --queue Q --process` runs the job of queue Q.
#[test]
fn publish_process_runs_the_jobs_own_queue() -> TestResult {
    let env = env_recording_runs("", "")?;
    let id = env.publish_with("cb", "{}", &["--queue", "other", "--process"])?;
    wait_state(&env, id, "FINISHED", Duration::from_secs(10))?;
    assert_eq!(env.job(id)?["queue"], "other");
    assert_eq!(sorted_ids(&env.path("runs"))?, [id]);
    Ok(())
}

/// Five `publish --process` in quick succession: every job runs exactly once, and with
/// `concurrency = 1` never two at the same time (the detached runs share the lock).
#[test]
fn publish_process_in_quick_succession_runs_each_job_once() -> TestResult {
    let (env, log) = timed_env(1, "0.3")?;
    let ids: Vec<i64> = (0..5)
        .map(|i| env.publish_with("cb", &format!("{{\"i\":{i}}}"), &["--process"]))
        .collect::<TestResult<_>>()?;
    for &id in &ids {
        wait_state(&env, id, "FINISHED", Duration::from_secs(20))?;
    }
    let runs = intervals(&log)?;
    let mut ran: Vec<i64> = runs.iter().map(|run| run.0).collect();
    ran.sort_unstable();
    assert_eq!(ran, ids, "each job ran exactly once");
    assert_eq!(max_overlap(&runs), 1, "never two at once: {runs:?}");
    Ok(())
}

// ---- what the detached run holds open

/// A detached `publish --process` run does not keep the caller's other open files: a caller
/// reading a pipe it handed to publish (as `$(...)` or PHP's `shell_exec` do) sees its end as
/// soon as publish exits, not when the job is done.
#[test]
fn publish_process_does_not_hold_the_callers_files_open() -> TestResult {
    let env = env_with_callbacks("", &[("cb", TIMED_BY_PAYLOAD)])?;
    let script = format!(
        "'{}' --config '{}' publish cb --json '{{\"sleep\": \"3\"}}' --process 9>&1 >/dev/null | cat",
        env!("CARGO_BIN_EXE_bgq"),
        env.config_path().display()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .output()?;
    assert!(out.status.success(), "{}", describe(&out));
    let id = env
        .jobs()?
        .first()
        .and_then(|job| job["id"].as_i64())
        .ok_or("no job")?;
    assert_ne!(
        env.state(id)?,
        "FINISHED",
        "the pipe stayed open until the detached run had finished the job"
    );
    wait_for("the job to finish", Duration::from_secs(15), || {
        env.state(id).is_ok_and(|state| state == "FINISHED")
    })
}
