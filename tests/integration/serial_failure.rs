//! The per-callback `serial_failure` setting: by default (`skip`) a PERMANENTLY_FAILED job does
//! not hold its serial group back; with `block` the group waits (and `explain` says why) until
//! `bgq retry` of the failed job (which then runs first) or `bgq cancel` of it. The failed job's
//! callback decides; an invalid value is refused.

use crate::support::{
    SQLITE_FILE, TestEnv, TestResult, assert_contains, cb_env, expect_error, explain, flip_env,
    mend, operate, printed_id, publish_out, ran,
};

/// By default (`skip`) a PERMANENTLY_FAILED job does not hold its serial group.
#[test]
fn serial_failure_skip_is_the_default() -> TestResult {
    let env = cb_env()?;
    let failed = printed_id(&publish_out(&env, "\"fail\"", &["--serial-group", "G"])?)?;
    let younger = printed_id(&publish_out(&env, "{}", &["--serial-group", "G"])?)?;
    env.process(&[])?;
    assert_eq!(env.state(failed)?, "PERMANENTLY_FAILED");
    assert_eq!(ran(&env)?, [failed, younger]);
    assert_eq!(env.state(younger)?, "FINISHED");
    Ok(())
}

/// A `block` env: callback `cb` with `serial_failure = "block"`, a failed job B and a younger
/// job of its group, after three `process` runs (checked: the younger job is held and
/// `explain` says why). Returns (env, B, younger).
fn blocked_group() -> TestResult<(TestEnv, i64, i64)> {
    let env = flip_env("", &[("cb", "serial_failure = \"block\"")])?;
    let failed = printed_id(&publish_out(&env, "\"fail\"", &["--serial-group", "G"])?)?;
    let younger = printed_id(&publish_out(&env, "{}", &["--serial-group", "G"])?)?;
    env.process(&[])?;
    env.process(&[])?;
    env.process(&[])?;
    assert_eq!(env.state(failed)?, "PERMANENTLY_FAILED");
    assert_eq!(ran(&env)?, [failed], "the younger job is held");
    assert_eq!(env.state(younger)?, "READY");
    assert_contains(
        &explain(&env, younger)?,
        &[
            &format!("is behind job {failed} (PERMANENTLY_FAILED)"),
            "serial_failure",
            &format!("bgq retry {failed}"),
            &format!("bgq cancel {failed}"),
        ],
    )?;
    Ok((env, failed, younger))
}

/// `serial_failure = "block"`: the failed job holds its group through several runs; `bgq cancel`
/// of it lets the younger job run in the next run.
#[test]
fn serial_failure_block_holds_the_group_until_cancel() -> TestResult {
    let (env, failed, younger) = blocked_group()?;
    operate(&env, "cancel", failed)?;
    env.process(&[])?;
    assert_eq!(ran(&env)?, [failed, younger]);
    assert_eq!(env.state(younger)?, "FINISHED");
    assert_eq!(env.state(failed)?, "CANCELLED");
    Ok(())
}

/// `serial_failure = "block"`: after `bgq retry` of the failed job (now succeeding), it runs
/// first and the younger job follows.
#[test]
fn serial_failure_block_retry_runs_the_failed_job_first() -> TestResult {
    let (env, failed, younger) = blocked_group()?;
    mend(&env)?;
    operate(&env, "retry", failed)?;
    env.process(&[])?;
    assert_eq!(ran(&env)?, [failed, failed, younger]);
    assert_eq!(env.state(failed)?, "FINISHED");
    assert_eq!(env.state(younger)?, "FINISHED");
    Ok(())
}

/// The setting of the FAILED job's callback decides: a `block` job holds a younger job of
/// another callback; a `skip` job does not hold a younger `block` job.
#[test]
fn serial_failure_follows_the_failed_jobs_callback() -> TestResult {
    let env = flip_env("", &[("cb", "serial_failure = \"block\""), ("loose", "")])?;
    let publish = |callback: &str, payload: &str, group: &str| -> TestResult<i64> {
        env.publish_with(callback, payload, &["--serial-group", group])
    };
    let blocking = publish("cb", "\"fail\"", "A")?;
    let held = publish("loose", "{}", "A")?;
    let skipping = publish("loose", "\"fail\"", "B")?;
    let free = publish("cb", "{}", "B")?;
    env.process(&[])?;
    env.process(&[])?;
    assert_eq!(env.state(blocking)?, "PERMANENTLY_FAILED");
    assert_eq!(env.state(skipping)?, "PERMANENTLY_FAILED");
    assert_eq!(env.state(held)?, "READY", "held by a `block` job");
    assert_eq!(env.state(free)?, "FINISHED", "a `skip` job holds nothing");
    assert!(!ran(&env)?.contains(&held));
    Ok(())
}

/// An invalid `serial_failure` value is refused with exit 2 naming the file, line and key.
#[test]
fn an_invalid_serial_failure_is_refused() -> TestResult {
    let env = TestEnv::new("")?;
    env.write_raw_config(
        "database = \"bgq.sqlite\"\n[callbacks.cb]\ncommand = [\"/bin/true\"]\nserial_failure = \"maybe\"\n",
    )?;
    let out = env.bgq().args(["publish", "cb", "--json", "{}"]).output()?;
    let place = format!("{}:4: ", env.config_path().display());
    expect_error(&out, 2, &[&place, "serial_failure"])?;
    assert!(
        !env.path(SQLITE_FILE).exists(),
        "a refused config stores nothing"
    );
    Ok(())
}
