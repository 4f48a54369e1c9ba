//! A publish that stored its job but could not print the id (stdout full, or a pipe nobody
//! reads) exits 3 with one line naming what was stored, so that a caller's retry does not store
//! the job twice (SPEC.md section 8; README "Commands").

use std::fs;
use std::process::{Command, Output, Stdio};

use crate::support::{TestEnv, TestResult, describe, env_with_callbacks};

/// `bgq --config ... ARGS` with `stdout` as its stdout, `stdin` on its stdin; stderr captured.
fn publish_to(env: &TestEnv, args: &[&str], stdout: Stdio, stdin: &[u8]) -> TestResult<Output> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bgq"))
        .current_dir(env.root())
        .env_remove("BGQ_CONFIG")
        .arg("--config")
        .arg(env.config_path())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()?;
    let mut input = child.stdin.take().ok_or("no stdin")?;
    std::io::Write::write_all(&mut input, stdin)?;
    drop(input);
    Ok(child.wait_with_output()?)
}

/// A stdout that refuses every write: `/dev/full`.
fn full() -> TestResult<Stdio> {
    Ok(fs::OpenOptions::new().write(true).open("/dev/full")?.into())
}

/// A stdout that is a pipe whose reading end is already closed, so that the first write fails
/// (EPIPE) without any race.
fn closed_pipe() -> TestResult<Stdio> {
    let (reader, writer) = std::io::pipe()?;
    drop(reader);
    Ok(writer.into())
}

/// Checks exit 3 and a last stderr line that starts `bgq: error: ` and holds every fragment.
fn expect_lost(out: &Output, fragments: &[&str]) -> TestResult {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or("");
    if out.status.code() != Some(3)
        || stderr.contains("panicked")
        || !last.starts_with("bgq: error: ")
        || fragments.iter().any(|fragment| !last.contains(fragment))
    {
        return Err(format!("expected exit 3 and {fragments:?}; got {}", describe(out)).into());
    }
    Ok(())
}

fn ids(env: &TestEnv) -> TestResult<Vec<i64>> {
    Ok(env
        .jobs()?
        .iter()
        .filter_map(|job| job["id"].as_i64())
        .collect())
}

#[test]
fn a_publish_to_a_full_stdout_exits_3_naming_the_stored_job() -> TestResult {
    let env = env_with_callbacks("", &[("cb", "exit 0")])?;
    let out = publish_to(&env, &["publish", "cb", "--json", "{}"], full()?, b"")?;
    expect_lost(
        &out,
        &[
            "job 1 was stored, but its id could not be printed",
            "No space left on device",
            "do not publish it again",
        ],
    )?;
    assert_eq!(ids(&env)?, [1], "the job is stored once");
    Ok(())
}

#[test]
fn a_publish_to_a_closed_pipe_exits_3_not_0() -> TestResult {
    let env = env_with_callbacks("", &[("cb", "exit 0")])?;
    let out = publish_to(
        &env,
        &["publish", "cb", "--json", "{}"],
        closed_pipe()?,
        b"",
    )?;
    expect_lost(
        &out,
        &[
            "job 1 was stored, but its id could not be printed",
            "Broken pipe",
        ],
    )?;
    assert_eq!(ids(&env)?, [1]);
    // A closed pipe is still no failure for commands whose output is only for reading.
    let out = publish_to(&env, &["list"], closed_pipe()?, b"")?;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    Ok(())
}

#[test]
fn a_jsonl_publish_whose_count_is_lost_names_the_ids_stored() -> TestResult {
    let env = env_with_callbacks("", &[("cb", "exit 0")])?;
    let out = publish_to(
        &env,
        &["publish", "cb", "--jsonl", "-"],
        full()?,
        b"{}\n{}\n{}\n",
    )?;
    expect_lost(
        &out,
        &[
            "3 jobs were stored (ids 1 to 3)",
            "do not publish them again",
        ],
    )?;
    assert_eq!(ids(&env)?, [1, 2, 3]);
    Ok(())
}

#[test]
fn a_unique_publish_retried_after_a_lost_id_prints_the_same_id() -> TestResult {
    let env = env_with_callbacks("", &[("cb", "exit 0")])?;
    let args = [
        "publish",
        "cb",
        "--json",
        "{}",
        "--identifier",
        "X",
        "--unique",
    ];
    let out = publish_to(&env, &args, full()?, b"")?;
    expect_lost(&out, &["job 1 was stored"])?;
    // The retry a careful caller makes: no second job, the same id.
    let out = env.bgq().args(args).output()?;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(String::from_utf8(out.stdout)?, "1\n");
    // A retry whose output is lost too still says that nothing new was stored.
    let out = publish_to(&env, &args, full()?, b"")?;
    expect_lost(
        &out,
        &["job 1 (READY) already has identifier `X`", "no new job"],
    )?;
    assert_eq!(ids(&env)?, [1], "one job");
    Ok(())
}
