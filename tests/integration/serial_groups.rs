//! SPEC.md section 7: serial groups run one job at a time, in publish order.

use crate::support::{TestEnv, TestResult, callback_toml, intervals, read_lines, timed_env};

#[test]
fn a_retrying_job_holds_back_its_group_only() -> TestResult {
    let env = TestEnv::new("")?;
    let log = env.path("order");
    // Payload "fail" exits 75 on the first attempt; everything else finishes.
    let cb = env.script(
        "cb.sh",
        &format!(
            "echo \"$BGQ_JOB_ID $BGQ_ATTEMPT\" >> {}\nif [ \"$(cat)\" = '\"fail\"' ] && [ \"$BGQ_ATTEMPT\" = 1 ]; then exit 75; fi\nexit 0",
            log.display()
        ),
    )?;
    env.write_config(&format!(
        "concurrency = 4\n[retry]\ndelay = \"0s\"\njitter = 0.0\n{}",
        callback_toml("cb", &cb, "")
    ))?;
    let a1 = env.publish_with("cb", "\"fail\"", &["--serial-group", "A"])?;
    let a2 = env.publish_with("cb", "\"ok\"", &["--serial-group", "A"])?;
    let b1 = env.publish_with("cb", "\"ok\"", &["--serial-group", "B"])?;
    let u = env.publish("cb", "\"ok\"")?;

    env.process(&[])?;
    let mut first = read_lines(&log);
    first.sort();
    let mut expected = vec![format!("{a1} 1"), format!("{b1} 1"), format!("{u} 1")];
    expected.sort();
    assert_eq!(first, expected, "A's second job must not run yet");
    assert_eq!(env.state(a1)?, "TEMPORARILY_FAILED");
    assert_eq!(env.state(a2)?, "READY");
    assert_eq!(env.state(b1)?, "FINISHED");
    assert_eq!(env.state(u)?, "FINISHED");
    assert_eq!(
        env.job(a2)?["attempts"].as_i64(),
        Some(0),
        "being held back spends no attempt"
    );

    env.process(&[])?;
    let all = read_lines(&log);
    assert_eq!(
        all[3..],
        [format!("{a1} 2"), format!("{a2} 1")],
        "A's first, then A's second"
    );
    assert_eq!(env.state(a1)?, "FINISHED");
    assert_eq!(env.state(a2)?, "FINISHED");
    Ok(())
}

#[test]
fn a_waiting_job_holds_back_its_group() -> TestResult {
    let env = TestEnv::new("")?;
    let log = env.path("order");
    let marker = env.path("waited");
    let cb = env.script(
        "cb.sh",
        &format!(
            "echo $BGQ_JOB_ID >> {log}\nif [ \"$(cat)\" = '\"wait\"' ] && [ ! -e {m} ]; then touch {m}; exit 76; fi\nexit 0",
            log = log.display(),
            m = marker.display()
        ),
    )?;
    env.write_config(&callback_toml("cb", &cb, ""))?;
    let a1 = env.publish_with("cb", "\"wait\"", &["--serial-group", "A"])?;
    let a2 = env.publish_with("cb", "\"ok\"", &["--serial-group", "A"])?;
    env.process(&[])?;
    assert_eq!(read_lines(&log), [a1.to_string()]);
    assert_eq!(env.state(a1)?, "WAITING");
    assert_eq!(env.state(a2)?, "READY");
    env.process(&[])?;
    assert_eq!(
        read_lines(&log),
        [a1.to_string(), a1.to_string(), a2.to_string()]
    );
    assert_eq!(env.state(a2)?, "FINISHED");
    Ok(())
}

#[test]
fn a_permanently_failed_job_does_not_block_its_group() -> TestResult {
    let env = TestEnv::new("")?;
    let log = env.path("order");
    let cb = env.script(
        "cb.sh",
        &format!(
            "echo $BGQ_JOB_ID >> {}\n[ \"$(cat)\" = '\"crash\"' ] && exit 3\nexit 0",
            log.display()
        ),
    )?;
    env.write_config(&callback_toml("cb", &cb, ""))?;
    let a1 = env.publish_with("cb", "\"crash\"", &["--serial-group", "A"])?;
    let a2 = env.publish_with("cb", "\"ok\"", &["--serial-group", "A"])?;
    env.process(&[])?;
    assert_eq!(env.state(a1)?, "PERMANENTLY_FAILED");
    assert_eq!(env.state(a2)?, "FINISHED");
    assert_eq!(read_lines(&log), [a1.to_string(), a2.to_string()]);
    Ok(())
}

#[test]
fn jobs_of_one_group_never_overlap_and_run_in_publish_order() -> TestResult {
    let (env, log) = timed_env(4, "0.1")?;
    let mut group_a = Vec::new();
    let mut group_b = Vec::new();
    for _ in 0..4 {
        group_a.push(env.publish_with("cb", "{}", &["--serial-group", "A"])?);
        group_b.push(env.publish_with("cb", "{}", &["--serial-group", "B"])?);
    }
    env.process(&[])?;
    assert!(env.jobs()?.iter().all(|j| j["state"] == "FINISHED"));
    let all = intervals(&log)?;
    assert_eq!(all.len(), 8);
    for group in [&group_a, &group_b] {
        let runs: Vec<_> = all.iter().filter(|(id, _, _)| group.contains(id)).collect();
        let order: Vec<i64> = runs.iter().map(|(id, _, _)| *id).collect();
        assert_eq!(&order, group, "publish order");
        for pair in runs.windows(2) {
            assert!(
                pair[0].2 <= pair[1].1,
                "job {} started before job {} of its group ended",
                pair[1].0,
                pair[0].0
            );
        }
    }
    Ok(())
}

/// An operator retries an older failed job of a group while a younger one runs: the claim holds
/// the older one back until the younger has ended, and `explain` says exactly that (it used to
/// say the job was due and waiting for a free slot).
#[test]
fn explain_and_the_claim_agree_on_a_retried_job_behind_a_running_one() -> TestResult {
    use crate::support::{Spawned, wait_for};
    use std::time::Duration;
    let env = TestEnv::new("")?;
    let release = env.path("release");
    let started = env.path("started");
    let log = env.path("log");
    // The first job fails once (a retry counts attempts from 1 again), then succeeds; the
    // second runs until released.
    let cb = env.script(
        "cb.sh",
        &format!(
            "echo \"$BGQ_JOB_ID $BGQ_ATTEMPT\" >> {log}\n\
             if [ \"$(cat)\" = '\"first\"' ]; then [ -e {failed} ] && exit 0; touch {failed}; exit 1; fi\n\
             touch {started}\nn=0\nwhile [ ! -e {release} ] && [ $n -lt 1500 ]; do sleep 0.02; n=$((n+1)); done",
            log = log.display(),
            failed = env.path("failed-once").display(),
            started = started.display(),
            release = release.display()
        ),
    )?;
    env.write_config(&format!(
        "concurrency = 4\n{}",
        callback_toml("cb", &cb, "")
    ))?;
    let older = env.publish_with("cb", "\"first\"", &["--serial-group", "g"])?;
    let younger = env.publish_with("cb", "\"second\"", &["--serial-group", "g"])?;
    let mut watcher: Spawned = env.spawn(&["process", "--watch"])?;
    wait_for("the younger job to run", Duration::from_secs(15), || {
        started.exists()
    })?;
    assert_eq!(env.state(older)?, "PERMANENTLY_FAILED");
    let retried = env.bgq().args(["retry", &older.to_string()]).output()?;
    assert!(retried.status.success());

    let out = env.bgq().args(["explain", &older.to_string()]).output()?;
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", crate::support::describe(&out));
    assert_eq!(
        line.trim(),
        format!(
            "job {older} waits for job {younger} of serial group `g`, which is running: a group runs one job at a time"
        )
    );
    // The watcher saw the retry (it claims on every change) and held the job back.
    assert_eq!(env.state(older)?, "READY");

    std::fs::write(&release, "")?;
    wait_for("the retried job to finish", Duration::from_secs(15), || {
        env.state(older).is_ok_and(|state| state == "FINISHED")
    })?;
    assert_eq!(env.state(younger)?, "FINISHED");
    send_term(&mut watcher)?;
    assert_eq!(
        read_lines(&log),
        [
            format!("{older} 1"),
            format!("{younger} 1"),
            format!("{older} 1")
        ],
        "the retried job started only after the running one ended"
    );
    Ok(())
}

fn send_term(run: &mut crate::support::Spawned) -> TestResult {
    crate::support::send_signal(run.pid(), "TERM")?;
    run.wait_exit(std::time::Duration::from_secs(15))?;
    Ok(())
}
