//! `publish --unique --identifier I`: while a job with identifier I in the same queue is
//! unfinished (any state but FINISHED, so PERMANENTLY_FAILED and CANCELLED count), no new job is
//! stored: publish prints the existing job's id and says so on stderr. Other queues and finished
//! jobs do not count, and concurrent publishers store one job between them.

use std::fs;
use std::process::Stdio;

use crate::support::{
    TestResult, assert_contains, assert_no_jobs, cb_env, describe, expect_refused, operate,
    printed_id, publish_out,
};

/// `--unique` without `--identifier` is a usage error (exit 2) and stores nothing.
#[test]
fn unique_requires_an_identifier() -> TestResult {
    let env = cb_env()?;
    let out = publish_out(&env, "{}", &["--unique"])?;
    expect_refused(&out, &[2])?;
    assert_no_jobs(&env, "--unique without --identifier")
}

/// `--unique` with `--jsonl` is refused (exit 2) and stores nothing.
#[test]
fn unique_is_refused_with_jsonl() -> TestResult {
    let env = cb_env()?;
    let lines = env.path("jobs.jsonl");
    fs::write(&lines, "{}\n{}\n")?;
    let out = env
        .bgq()
        .args(["publish", "cb", "--jsonl"])
        .arg(&lines)
        .args(["--unique", "--identifier", "X"])
        .output()?;
    expect_refused(&out, &[2])?;
    assert_no_jobs(&env, "--unique with --jsonl")
}

/// A `--unique` publish while a READY job has the identifier prints the existing (newest) id,
/// exits 0, notes it on stderr with its state and `no new job`, and stores nothing.
#[test]
fn unique_duplicate_prints_the_existing_id_and_stores_nothing() -> TestResult {
    let env = cb_env()?;
    let unique = ["--unique", "--identifier", "X"];
    let first = publish_out(&env, "{}", &unique)?;
    let first_id = printed_id(&first)?;
    assert!(
        !String::from_utf8_lossy(&first.stderr).contains("no new job"),
        "the first publish stores a job: {}",
        describe(&first)
    );

    let out = publish_out(&env, "{\"again\":1}", &unique)?;
    assert_eq!(printed_id(&out)?, first_id);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.lines().count(),
        1,
        "one note line: {}",
        describe(&out)
    );
    assert_contains(&stderr, &[&first_id.to_string(), "READY", "no new job"])?;
    assert_eq!(env.jobs()?.len(), 1, "no second job");

    // A plain publish with the identifier stores a job; `--unique` then names the newest.
    let plain = printed_id(&publish_out(&env, "{}", &["--identifier", "X"])?)?;
    let out = publish_out(&env, "{}", &unique)?;
    assert_eq!(printed_id(&out)?, plain, "the newest such job");
    assert_contains(
        &String::from_utf8_lossy(&out.stderr),
        &[&plain.to_string(), "no new job"],
    )?;
    assert_eq!(env.jobs()?.len(), 2);
    Ok(())
}

/// A PERMANENTLY_FAILED or CANCELLED job still holds its identifier for `--unique`.
#[test]
fn unique_counts_failed_and_cancelled_jobs() -> TestResult {
    let env = cb_env()?;
    let failed = printed_id(&publish_out(&env, "\"fail\"", &["--identifier", "F"])?)?;
    env.process(&[])?;
    assert_eq!(env.state(failed)?, "PERMANENTLY_FAILED");
    let cancelled = printed_id(&publish_out(&env, "{}", &["--identifier", "C"])?)?;
    operate(&env, "cancel", cancelled)?;

    for (id, identifier, state) in [
        (failed, "F", "PERMANENTLY_FAILED"),
        (cancelled, "C", "CANCELLED"),
    ] {
        let out = publish_out(&env, "{}", &["--unique", "--identifier", identifier])?;
        assert_eq!(printed_id(&out)?, id);
        assert_contains(
            &String::from_utf8_lossy(&out.stderr),
            &[&id.to_string(), state, "no new job"],
        )?;
    }
    assert_eq!(env.jobs()?.len(), 2, "no new job stored");
    Ok(())
}

/// A job with the identifier in another queue does not count for `--unique`.
#[test]
fn unique_ignores_other_queues() -> TestResult {
    let env = cb_env()?;
    let elsewhere = printed_id(&publish_out(
        &env,
        "{}",
        &["--queue", "other", "--identifier", "X"],
    )?)?;
    let out = publish_out(&env, "{}", &["--unique", "--identifier", "X"])?;
    let here = printed_id(&out)?;
    assert_ne!(here, elsewhere, "a new job in queue `general`");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("no new job"),
        "{}",
        describe(&out)
    );
    assert_eq!(env.jobs()?.len(), 2);
    let out = publish_out(
        &env,
        "{}",
        &["--queue", "other", "--unique", "--identifier", "X"],
    )?;
    assert_eq!(printed_id(&out)?, elsewhere, "same queue: the existing job");
    assert_eq!(env.jobs()?.len(), 2);
    Ok(())
}

/// Once the job holding the identifier FINISHED, `--unique` stores a new job.
#[test]
fn unique_stores_a_new_job_once_the_old_one_finished() -> TestResult {
    let env = cb_env()?;
    let unique = ["--unique", "--identifier", "X"];
    let first = printed_id(&publish_out(&env, "{}", &unique)?)?;
    env.process(&[])?;
    assert_eq!(env.state(first)?, "FINISHED");
    let out = publish_out(&env, "{}", &unique)?;
    let second = printed_id(&out)?;
    assert!(second > first, "a new job: {second} after {first}");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("no new job"),
        "{}",
        describe(&out)
    );
    assert_eq!(env.jobs()?.len(), 2);
    assert_eq!(env.state(second)?, "READY");
    Ok(())
}

/// Eight concurrent `publish --unique --identifier X` store exactly one job and all print its
/// id; the seven that stored nothing say so.
#[test]
fn unique_holds_under_concurrent_publishers() -> TestResult {
    let env = cb_env()?;
    let children = (0..8)
        .map(|n| {
            std::process::Command::new(env!("CARGO_BIN_EXE_bgq"))
                .current_dir(env.root())
                .env_remove("BGQ_CONFIG")
                .arg("--config")
                .arg(env.config_path())
                .args(["publish", "cb", "--json", &format!("{{\"n\":{n}}}")])
                .args(["--unique", "--identifier", "X"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = children
        .into_iter()
        .map(std::process::Child::wait_with_output)
        .collect::<Result<Vec<_>, _>>()?;
    let ids = outputs
        .iter()
        .map(printed_id)
        .collect::<TestResult<Vec<i64>>>()?;
    let jobs = env.jobs()?;
    assert_eq!(jobs.len(), 1, "exactly one job stored: {jobs:?}");
    let stored = jobs[0]["id"].as_i64().ok_or("no id")?;
    assert!(
        ids.iter().all(|&id| id == stored),
        "all print {stored}: {ids:?}"
    );
    let noted = outputs
        .iter()
        .filter(|out| String::from_utf8_lossy(&out.stderr).contains("no new job"))
        .count();
    assert_eq!(noted, 7, "seven publishers stored nothing");
    Ok(())
}
