//! SPEC.md section 6 (`process`): SIGTERM/SIGINT start nothing new, let running callbacks finish, exit 0.

use std::time::Duration;

use crate::support::{TestResult, one_slow_slot_env, read_lines, send_signal, wait_for};

fn stops_gracefully_on(signal: &str) -> TestResult {
    let (env, started, ended) = one_slow_slot_env()?;
    let ids: Vec<i64> = (0..5)
        .map(|i| env.publish("cb", &format!("{{\"i\":{i}}}")))
        .collect::<TestResult<_>>()?;

    let mut run = env.spawn(&["process"])?;
    wait_for(
        "the first callback to start",
        Duration::from_secs(10),
        || !read_lines(&started).is_empty(),
    )?;
    send_signal(run.pid(), signal)?;
    let status = run.wait_exit(Duration::from_secs(10))?;
    assert_eq!(status.code(), Some(0), "SIG{signal}: {}", run.stderr());
    assert_eq!(run.stdout(), "");
    assert_eq!(
        read_lines(&ended),
        [ids[0].to_string()],
        "the running callback finished before bgq exited"
    );
    assert_eq!(
        read_lines(&started),
        [ids[0].to_string()],
        "nothing new started"
    );
    assert_eq!(env.state(ids[0])?, "FINISHED");
    for &id in &ids[1..] {
        let job = env.job(id)?;
        assert_eq!(job["state"], "READY", "job {id}");
        assert_eq!(job["attempts"].as_i64(), Some(0), "job {id}");
    }
    Ok(())
}

#[test]
fn sigterm_lets_the_running_callback_finish_and_starts_nothing_new() -> TestResult {
    stops_gracefully_on("TERM")
}

#[test]
fn sigint_lets_the_running_callback_finish_and_starts_nothing_new() -> TestResult {
    stops_gracefully_on("INT")
}
