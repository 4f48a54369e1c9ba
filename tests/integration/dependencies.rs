//! `publish --after ID` (repeatable): the job waits, READY, until every named job FINISHED; a
//! chain published at once runs in one `process` run, in order; a PERMANENTLY_FAILED or CANCELLED
//! parent holds its dependent (it never runs on a failed premise) until `bgq retry` of it; an
//! unknown id is refused and stores nothing (also with `--unique`), while a parent `clear`
//! deleted counts as FINISHED; and `status` counts a dependent as due from when its parent
//! finished, not from its own publish.

use std::time::{Duration, Instant};

use crate::support::{
    TIMED_BY_PAYLOAD, TestResult, assert_contains, assert_no_jobs, cb_env, describe,
    env_with_callbacks, expect_error, explain, intervals, logged, mend, operate, printed_id,
    publish_out, ran, show_json, timed_env, wait_for,
};

/// A dependent job waits, READY and not run, while its parent is READY (delayed): `explain`
/// says `waits for job P (READY)`; `show --json` lists `after`.
#[test]
fn a_dependent_waits_while_its_parent_is_ready() -> TestResult {
    let env = cb_env()?;
    let parent = printed_id(&publish_out(&env, "{}", &["--delay", "1h"])?)?;
    let child = printed_id(&publish_out(&env, "{}", &["--after", &parent.to_string()])?)?;
    env.process(&[])?;
    env.process(&[])?;
    assert!(
        ran(&env)?.is_empty(),
        "the parent is not due, the child waits"
    );
    assert_eq!(env.state(child)?, "READY");
    assert_contains(
        &explain(&env, child)?,
        &[&format!("waits for job {parent}"), "READY"],
    )?;
    assert_eq!(
        show_json(&env, child)?["after"],
        serde_json::json!([parent])
    );
    assert_eq!(show_json(&env, parent)?["after"], serde_json::json!([]));
    Ok(())
}

/// A dependent job waits while its parent is TEMPORARILY_FAILED, and runs in the same run as
/// the parent's successful retry, after it.
#[test]
fn a_dependent_waits_while_its_parent_retries() -> TestResult {
    let env = cb_env()?;
    let parent = printed_id(&publish_out(&env, "\"again\"", &[])?)?;
    let child = printed_id(&publish_out(&env, "{}", &["--after", &parent.to_string()])?)?;
    env.process(&[])?;
    assert_eq!(ran(&env)?, [parent]);
    assert_eq!(env.state(parent)?, "TEMPORARILY_FAILED");
    assert_eq!(env.state(child)?, "READY");
    assert_contains(
        &explain(&env, child)?,
        &[&format!("waits for job {parent}"), "TEMPORARILY_FAILED"],
    )?;
    mend(&env)?;
    env.process(&[])?;
    assert_eq!(ran(&env)?, [parent, parent, child]);
    assert_eq!(env.state(child)?, "FINISHED");
    Ok(())
}

/// A chain A <- B <- C published together all FINISH in one `process` run, one after the
/// other in chain order, even with free slots and higher priorities further down the chain.
#[test]
fn a_chain_finishes_in_one_process_run_in_order() -> TestResult {
    let (env, log) = timed_env(4, "0.1")?;
    let a = printed_id(&publish_out(&env, "{}", &[])?)?;
    let b = printed_id(&publish_out(
        &env,
        "{}",
        &["--after", &a.to_string(), "--priority", "5"],
    )?)?;
    let c = printed_id(&publish_out(
        &env,
        "{}",
        &["--after", &b.to_string(), "--priority", "10"],
    )?)?;
    env.process(&[])?;
    for id in [a, b, c] {
        assert_eq!(env.state(id)?, "FINISHED", "job {id} in the one run");
    }
    let runs = intervals(&log)?;
    let order: Vec<i64> = runs.iter().map(|(id, _, _)| *id).collect();
    assert_eq!(order, [a, b, c]);
    for pair in runs.windows(2) {
        assert!(
            pair[0].2 <= pair[1].1,
            "job {} started before job {} ended",
            pair[1].0,
            pair[0].0
        );
    }
    Ok(())
}

/// `--after` repeated waits for every named job: one finished parent is not enough.
#[test]
fn repeated_after_waits_for_every_named_job() -> TestResult {
    let env = cb_env()?;
    let done = printed_id(&publish_out(&env, "{}", &[])?)?;
    let retrying = printed_id(&publish_out(&env, "\"again\"", &[])?)?;
    let child = printed_id(&publish_out(
        &env,
        "{}",
        &[
            "--after",
            &done.to_string(),
            "--after",
            &retrying.to_string(),
        ],
    )?)?;
    assert_eq!(
        show_json(&env, child)?["after"],
        serde_json::json!([done, retrying])
    );
    env.process(&[])?;
    assert_eq!(env.state(done)?, "FINISHED");
    assert_eq!(env.state(retrying)?, "TEMPORARILY_FAILED");
    assert_eq!(env.state(child)?, "READY", "one parent is still unfinished");
    assert!(!ran(&env)?.contains(&child));
    assert_contains(
        &explain(&env, child)?,
        &[&format!("waits for job {retrying}")],
    )?;
    mend(&env)?;
    env.process(&[])?;
    assert_eq!(ran(&env)?[2..], [retrying, child]);
    assert_eq!(env.state(child)?, "FINISHED");
    Ok(())
}

/// `--after` an unknown id: exit 2, `bgq: error: --after: no job 99 in <database>`, nothing
/// stored.
#[test]
fn after_an_unknown_job_is_refused() -> TestResult {
    let env = cb_env()?;
    let mut fragments = vec!["--after: no job 99 in "];
    // TODO(PostgreSQL issue): how the line names a PostgreSQL database is that to say.
    if env.on_sqlite() {
        fragments.push("bgq.sqlite");
    }
    let out = publish_out(&env, "{}", &["--after", "99"])?;
    expect_error(&out, 2, &fragments)?;
    assert_no_jobs(&env, "--after 99")?;
    let known = printed_id(&publish_out(&env, "{}", &[])?)?;
    let out = publish_out(
        &env,
        "{}",
        &["--after", &known.to_string(), "--after", "99"],
    )?;
    expect_error(&out, 2, &fragments)?;
    assert_eq!(env.jobs()?.len(), 1, "only the first job is stored");
    Ok(())
}

/// `--after` a job that already FINISHED is satisfied: the job runs on the next run.
#[test]
fn after_a_finished_job_runs_at_once() -> TestResult {
    let env = cb_env()?;
    let parent = printed_id(&publish_out(&env, "{}", &[])?)?;
    env.process(&[])?;
    assert_eq!(env.state(parent)?, "FINISHED");
    let child = printed_id(&publish_out(&env, "{}", &["--after", &parent.to_string()])?)?;
    env.process(&[])?;
    assert_eq!(ran(&env)?, [parent, child]);
    assert_eq!(env.state(child)?, "FINISHED");
    Ok(())
}

/// A PERMANENTLY_FAILED parent keeps its dependent from running (explain points to
/// `bgq retry P`); after the cause is fixed, `bgq retry P` lets the chain finish in the next
/// run, parent first.
#[test]
fn a_permanently_failed_parent_holds_its_dependent_until_retried() -> TestResult {
    let env = cb_env()?;
    let parent = printed_id(&publish_out(&env, "\"fail\"", &[])?)?;
    let child = printed_id(&publish_out(&env, "{}", &["--after", &parent.to_string()])?)?;
    env.process(&[])?;
    env.process(&[])?;
    assert_eq!(env.state(parent)?, "PERMANENTLY_FAILED");
    assert_eq!(ran(&env)?, [parent], "the dependent never ran");
    assert_eq!(env.state(child)?, "READY");
    assert_contains(
        &explain(&env, child)?,
        &[
            &format!("job {parent}"),
            "PERMANENTLY_FAILED",
            &format!("bgq retry {parent}"),
        ],
    )?;

    mend(&env)?;
    operate(&env, "retry", parent)?;
    env.process(&[])?;
    assert_eq!(ran(&env)?, [parent, parent, child]);
    assert_eq!(env.state(parent)?, "FINISHED");
    assert_eq!(env.state(child)?, "FINISHED");
    Ok(())
}

/// A CANCELLED parent keeps its dependent from running (explain points to `bgq retry P`);
/// `bgq retry P` lets both run, parent first.
#[test]
fn a_cancelled_parent_holds_its_dependent_until_retried() -> TestResult {
    let env = cb_env()?;
    let parent = printed_id(&publish_out(&env, "{}", &[])?)?;
    let child = printed_id(&publish_out(&env, "{}", &["--after", &parent.to_string()])?)?;
    operate(&env, "cancel", parent)?;
    env.process(&[])?;
    env.process(&[])?;
    assert!(ran(&env)?.is_empty(), "neither ran");
    assert_eq!(env.state(child)?, "READY");
    assert_contains(
        &explain(&env, child)?,
        &[
            &format!("job {parent}"),
            "CANCELLED",
            &format!("bgq retry {parent}"),
        ],
    )?;

    operate(&env, "retry", parent)?;
    env.process(&[])?;
    assert_eq!(ran(&env)?, [parent, child]);
    assert_eq!(env.state(child)?, "FINISHED");
    Ok(())
}

/// Publishing `--after` a PERMANENTLY_FAILED or CANCELLED job is allowed: the id on stdout,
/// exit 0, and a note on stderr naming the job and its state.
#[test]
fn publishing_after_a_failed_or_cancelled_job_stores_it_with_a_note() -> TestResult {
    let env = cb_env()?;
    let failed = printed_id(&publish_out(&env, "\"fail\"", &[])?)?;
    env.process(&[])?;
    assert_eq!(env.state(failed)?, "PERMANENTLY_FAILED");
    let cancelled = printed_id(&publish_out(&env, "{}", &[])?)?;
    operate(&env, "cancel", cancelled)?;

    for (parent, state) in [(failed, "PERMANENTLY_FAILED"), (cancelled, "CANCELLED")] {
        let out = publish_out(&env, "{}", &["--after", &parent.to_string()])?;
        let child = printed_id(&out)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_contains(&stderr, &[&parent.to_string(), state])
            .map_err(|err| format!("the note: {err}; {}", describe(&out)))?;
        assert!(!stderr.contains("bgq: error:"), "{}", describe(&out));
        assert_eq!(env.state(child)?, "READY", "stored");
        assert_eq!(
            show_json(&env, child)?["after"],
            serde_json::json!([parent])
        );
    }
    Ok(())
}

// ---- the ids, a cleared parent, and when a dependent counts as due

/// Contract: "`--after ID` ... An unknown ID: exit 2, `bgq: error: --after: no job 99 in
/// <database path>`", even when `--unique` finds an existing job (the typo must not go
/// unnoticed).
#[test]
fn unique_still_refuses_an_unknown_after_id() -> TestResult {
    let env = env_with_callbacks("", &[("cb", "exit 0")])?;
    env.publish_with("cb", "{}", &["--identifier", "x", "--unique"])?;
    let out = env
        .bgq()
        .args([
            "publish",
            "cb",
            "--json",
            "{}",
            "--identifier",
            "x",
            "--unique",
            "--after",
            "99",
        ])
        .output()?;
    crate::support::expect_error(&out, 2, &["--after: no job 99 in "])
}

/// `--after` a job that `clear` already deleted: it had FINISHED, so the new job is due at once
/// (an id never handed out is still refused).
#[test]
fn after_a_cleared_job_is_satisfied() -> TestResult {
    let env = env_with_callbacks("", &[("cb", TIMED_BY_PAYLOAD)])?;
    let parent = env.publish("cb", "{}")?;
    env.process(&[])?;
    let out = env.bgq().args(["clear"]).output()?;
    assert!(out.status.success(), "{}", describe(&out));
    let child = env.publish_with("cb", "{}", &["--after", &parent.to_string()])?;
    env.process(&[])?;
    assert_eq!(env.state(child)?, "FINISHED");
    let out = env
        .bgq()
        .args(["publish", "cb", "--json", "{}", "--after", "99"])
        .output()?;
    crate::support::expect_error(&out, 2, &["--after: no job 99 in "])
}

/// `bgq status` (and `stats`' oldest due age) must count a job published `--after` another as
/// due from when that job finished, not from its own publish: no false `stale:` alarm (exit 1)
/// for a job that became due a moment ago.
#[test]
fn status_does_not_call_a_dependent_stale_the_moment_its_parent_finishes() -> TestResult {
    // The parent runs until the test releases it (15 s at most, so a failing test cleans up).
    let held = "echo \"start $BGQ_JOB_ID $(date +%s%N)\" >> @ROOT@/log\n\
         i=0; while [ ! -e @ROOT@/release ] && [ $i -lt 300 ]; do sleep 0.05; i=$((i+1)); done";
    let env = env_with_callbacks("", &[("cb", TIMED_BY_PAYLOAD), ("held", held)])?;
    let parent = env.publish("held", "{}")?;
    let published = Instant::now();
    let child = env.publish_with(
        "cb",
        "{}",
        &["--after", &parent.to_string(), "--queue", "other"],
    )?;
    let mut run = env.spawn(&["process"])?;
    wait_for("the parent to start", Duration::from_secs(10), || {
        logged(&env, "start", parent).is_some()
    })?;
    // What is tested is an age: the child must have been published longer ago than
    // `--stale-after` (2 s), so that a status counting from its publish would call it stale.
    // That takes time itself, not an event.
    std::thread::sleep(Duration::from_millis(2500).saturating_sub(published.elapsed()));
    // The other queue's cron run, while the parent still runs: nothing to do yet.
    env.process(&["--queue", "other"])?;
    assert_eq!(env.state(child)?, "READY");
    std::fs::write(env.path("release"), "")?;
    run.wait_exit(Duration::from_secs(10))?;
    assert_eq!(env.state(parent)?, "FINISHED");
    assert_eq!(env.state(child)?, "READY");
    let out = env
        .bgq()
        .args(["status", "--queue", "other", "--stale-after", "2s"])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "job {child} became due when job {parent} finished, a moment ago, yet: {}",
        stdout
    );
    Ok(())
}
