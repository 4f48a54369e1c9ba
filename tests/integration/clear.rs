//! `bgq clear [DAYS]` (SPEC.md section 6): deletes FINISHED jobs, all or the old ones, and prints
//! how many; ids are never reused afterwards.

use crate::support::{TestEnv, TestResult, describe, env_with_callbacks, faketime_available};

fn env() -> TestResult<TestEnv> {
    env_with_callbacks("", &[("ok", "exit 0"), ("bad", "exit 3")])
}

/// Runs `bgq clear ARGS`, checks exit 0 and a quiet stderr, returns stdout.
fn clear(env: &TestEnv, args: &[&str]) -> TestResult<String> {
    let out = env.bgq().arg("clear").args(args).output()?;
    if !out.status.success() || !out.stderr.is_empty() {
        return Err(format!("clear {args:?}: {}", describe(&out)).into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Runs `bgq ARGS` under `faketime -f OFFSET` (e.g. `-20d`), checks exit 0, returns stdout.
fn faked(env: &TestEnv, offset: &str, args: &[&str]) -> TestResult<String> {
    let out = env.bgq_at(offset).args(args).output()?;
    if !out.status.success() {
        return Err(format!("faketime {offset} bgq {args:?}: {}", describe(&out)).into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn ids(env: &TestEnv) -> TestResult<Vec<i64>> {
    Ok(env
        .jobs()?
        .iter()
        .filter_map(|job| job["id"].as_i64())
        .collect())
}

#[test]
fn clear_deletes_every_finished_job_and_keeps_the_rest() -> TestResult {
    let env = env()?;
    for _ in 0..3 {
        env.publish("ok", "{}")?;
    }
    let failed = env.publish("bad", "{}")?;
    env.process(&[])?;
    let ready = env.publish("ok", "{}")?;

    assert_eq!(clear(&env, &[])?, "3\n");
    assert_eq!(ids(&env)?, [failed, ready]);
    assert_eq!(env.state(failed)?, "PERMANENTLY_FAILED");
    assert_eq!(env.state(ready)?, "READY");
    assert_eq!(clear(&env, &[])?, "0\n");
    assert_eq!(ids(&env)?, [failed, ready]);
    Ok(())
}

#[test]
fn clear_days_keeps_recently_finished_jobs() -> TestResult {
    if !faketime_available()? {
        return Ok(());
    }
    let env = env()?;
    assert_eq!(
        faked(&env, "-20d", &["publish", "ok", "--json", "{}"])?,
        "1\n"
    );
    faked(&env, "-20d", &["process"])?;
    assert_eq!(
        faked(&env, "-10d", &["publish", "ok", "--json", "{}"])?,
        "2\n"
    );
    faked(&env, "-10d", &["process"])?;
    let recent = env.publish("ok", "{}")?;
    env.process(&[])?;
    assert_eq!(env.state(1)?, "FINISHED");
    assert_eq!(env.state(2)?, "FINISHED");
    assert_eq!(env.state(recent)?, "FINISHED");
    let finished_at = |id| -> TestResult<String> {
        Ok(env.job(id)?["finished_at"]
            .as_str()
            .ok_or("no finished_at")?
            .to_owned())
    };
    assert!(
        finished_at(1)? < finished_at(2)? && finished_at(2)? < finished_at(recent)?,
        "faketime moved finished_at back"
    );

    assert_eq!(clear(&env, &["30"])?, "0\n");
    assert_eq!(clear(&env, &["14"])?, "1\n");
    assert_eq!(ids(&env)?, [2, recent]);
    assert_eq!(clear(&env, &["5"])?, "1\n");
    assert_eq!(ids(&env)?, [recent]);
    Ok(())
}

#[test]
fn ids_are_not_reused_after_clear() -> TestResult {
    let env = env()?;
    env.publish("ok", "{}")?;
    env.publish("ok", "{}")?;
    env.process(&[])?;
    assert_eq!(clear(&env, &[])?, "2\n");
    assert!(ids(&env)?.is_empty());
    let out = env.bgq().args(["publish", "ok", "--json", "{}"]).output()?;
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        String::from_utf8(out.stdout)?,
        "3\n",
        "job ids keep increasing in publish order"
    );
    Ok(())
}
