//! A stderr that cannot be written (a full log disk, a closed pipe) never crashes bgq and never
//! stops a queue: what cannot be said is dropped, the work is done, and the exit code says that
//! something went wrong (SPEC section 8).

use std::fs;
use std::process::Stdio;
use std::time::Duration;

use crate::support::*;

/// A stderr on a full disk.
fn full_disk() -> TestResult<Stdio> {
    Ok(fs::OpenOptions::new().write(true).open("/dev/full")?.into())
}

/// A stderr that is a pipe no one reads any more.
fn closed_pipe() -> TestResult<Stdio> {
    let (reader, writer) = std::io::pipe()?;
    drop(reader);
    Ok(writer.into())
}

/// `bgq --config ... ARGS` with `stderr`, run to its end.
fn bgq_with_stderr(
    env: &TestEnv,
    args: &[&str],
    stderr: Stdio,
) -> TestResult<std::process::Output> {
    Ok(std::process::Command::new(env!("CARGO_BIN_EXE_bgq"))
        .current_dir(env.root())
        .env_remove("BGQ_CONFIG")
        .arg("--config")
        .arg(env.config_path())
        .args(args)
        .stdin(Stdio::null())
        .stderr(stderr)
        .output()?)
}

/// A job PROCESSING under a dead run, whose callback hangs on its first attempt (killed with
/// the run here) and exits 0 on the next.
fn orphan_that_succeeds_next_time(env: &TestEnv) -> TestResult<i64> {
    let pidfile = env.path("first.pid");
    let script = env.script(
        "once.sh",
        &format!(
            "if [ \"$BGQ_ATTEMPT\" = 1 ]; then echo $$ > {p}.tmp; mv {p}.tmp {p}; exec sleep 30; fi",
            p = pidfile.display()
        ),
    )?;
    env.write_config(&callback_toml("once", &script, ""))?;
    let id = env.publish("once", "{}")?;
    let mut run = env.spawn(&["process"])?;
    wait_for("the callback to start", Duration::from_secs(15), || {
        pidfile.exists()
    })?;
    wait_for_group_record(env, id)?;
    send_signal(run.pid(), "KILL")?;
    run.wait_exit(Duration::from_secs(10))?;
    assert_eq!(env.state(id)?, "PROCESSING");
    Ok(id)
}

#[test]
fn a_run_whose_stderr_is_full_still_recovers_and_runs_its_jobs() -> TestResult {
    let env = TestEnv::new("")?;
    let id = orphan_that_succeeds_next_time(&env)?;
    // Its recovery line cannot be written: the recovery happens all the same.
    let out = bgq_with_stderr(&env, &["process"], full_disk()?)?;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(env.state(id)?, "FINISHED");
    // With nothing to say, a full stderr is no failure.
    let next = env.publish("once", "{}")?;
    let out = bgq_with_stderr(&env, &["process"], full_disk()?)?;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(env.state(next)?, "FINISHED");
    Ok(())
}

#[test]
fn a_run_whose_stderr_pipe_is_closed_still_records_its_outcomes() -> TestResult {
    let env = TestEnv::new("")?;
    let fail = env.script("fail.sh", "echo broken; exit 3")?;
    env.write_config(&callback_toml("fail", &fail, ""))?;
    let id = env.publish("fail", "{}")?;
    // A permanent failure sends a notice to stderr, which no one reads.
    let out = bgq_with_stderr(&env, &["process"], closed_pipe()?)?;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(env.state(id)?, "PERMANENTLY_FAILED");
    Ok(())
}

#[test]
fn a_refused_command_with_an_unwritable_stderr_keeps_its_exit_code() -> TestResult {
    let env = TestEnv::new("")?;
    let done = env.script("done.sh", "exit 0")?;
    env.write_config(&callback_toml("done", &done, ""))?;
    for stderr in [full_disk()?, closed_pipe()?] {
        let out = bgq_with_stderr(&env, &["publish", "nope", "--json", "{}"], stderr)?;
        assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    }
    // No such job: exit 2 as with a readable stderr.
    let out = bgq_with_stderr(&env, &["show", "999"], full_disk()?)?;
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(env.jobs()?.is_empty());
    Ok(())
}

/// A publish whose job was stored exits 0 even when its note on stderr is lost: exit 1 says
/// nothing was stored, and a caller would publish the job again.
#[test]
fn a_stored_publish_whose_note_is_lost_still_exits_0() -> TestResult {
    let env = TestEnv::new("")?;
    let done = env.script("done.sh", "exit 0")?;
    env.write_config(&callback_toml("done", &done, ""))?;
    let first = env.publish_with("done", "{}", &["--identifier", "x", "--unique"])?;
    // The same unique publish again: it prints the existing id and a note on stderr.
    let out = bgq_with_stderr(
        &env,
        &[
            "publish",
            "done",
            "--json",
            "{}",
            "--identifier",
            "x",
            "--unique",
        ],
        full_disk()?,
    )?;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        first.to_string()
    );
    assert_eq!(env.jobs()?.len(), 1);
    Ok(())
}
