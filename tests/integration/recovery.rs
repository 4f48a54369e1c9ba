//! SPEC.md section 4: a `process` killed with SIGKILL leaves PROCESSING jobs that the next run recovers.

use std::time::Duration;

use crate::support::{
    TestEnv, TestResult, alive, callback_toml, read_lines, send_signal, wait_for,
};

/// Pids (one a line) a hanging callback wrote to `path`.
fn pids(path: &std::path::Path) -> TestResult<Vec<i32>> {
    Ok(read_lines(path)
        .iter()
        .map(|l| l.trim().parse())
        .collect::<Result<_, _>>()?)
}

#[test]
fn killed_process_leaves_jobs_that_the_next_run_recovers() -> TestResult {
    let env = TestEnv::new("")?;
    let started = env.path("started");
    let done = env.path("done");
    let pidfile = env.path("hang.pids");
    // First the callback hangs, recording its shell's pid and its sleeping child's pid.
    let hang = env.script(
        "hang.sh",
        &format!(
            "echo $BGQ_JOB_ID >> {s}\nsleep 30 &\nprintf '%s\\n%s\\n' $$ $! > {p}.tmp\nmv {p}.tmp {p}\nwait",
            s = started.display(),
            p = pidfile.display()
        ),
    )?;
    let finish = env.script(
        "ok.sh",
        &format!("echo \"$BGQ_JOB_ID $BGQ_ATTEMPT\" >> {}", done.display()),
    )?;
    env.write_config(&format!(
        "concurrency = 1\n{}",
        callback_toml("cb", &hang, "")
    ))?;

    let before = env.publish("cb", "{\"n\":1}")?;
    let before2 = env.publish("cb", "{\"n\":2}")?;
    let mut first = env.spawn(&["process"])?;
    wait_for("the callback to start", Duration::from_secs(10), || {
        pidfile.exists()
    })?;
    let during = env.publish("cb", "{\"n\":3}")?;
    send_signal(first.pid(), "KILL")?;
    first.wait_exit(Duration::from_secs(5))?;
    let old = pids(&pidfile)?;
    assert_eq!(old.len(), 2);
    env.expect_orphans_after_run_died(&old)?;
    assert_eq!(read_lines(&started), [before.to_string()]);
    assert_eq!(env.state(before)?, "PROCESSING");
    assert_eq!(env.state(before2)?, "READY");
    assert_eq!(env.state(during)?, "READY");
    let after = env.publish("cb", "{\"n\":4}")?;

    // Now the callback finishes.
    env.write_config(&format!(
        "concurrency = 1\n{}",
        callback_toml("cb", &finish, "")
    ))?;
    let stderr = env.process(&[])?;
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with(&format!("bgq: recovered job {before}"))),
        "{stderr}"
    );
    assert!(
        !stderr.contains(&format!("bgq: recovered job {before2}")),
        "only PROCESSING jobs are recovered: {stderr}"
    );
    wait_for(
        "recovery to kill the old callback",
        Duration::from_secs(3),
        || old.iter().all(|&p| !alive(p)),
    )?;

    for id in [before, before2, during, after] {
        assert_eq!(env.state(id)?, "FINISHED", "job {id}");
    }
    let job = env.job(before)?;
    assert_eq!(job["attempts"].as_i64(), Some(2), "the lost attempt counts");
    let mut ran = read_lines(&done);
    ran.sort();
    let mut expected = vec![
        format!("{before} 2"),
        format!("{before2} 1"),
        format!("{during} 1"),
        format!("{after} 1"),
    ];
    expected.sort();
    assert_eq!(ran, expected, "every job ran exactly once more");

    // Nothing left to recover.
    let stderr = env.process(&[])?;
    assert_eq!(stderr, "");
    Ok(())
}

#[test]
fn killed_process_with_several_running_jobs_recovers_them_all() -> TestResult {
    let env = TestEnv::new("")?;
    let dir = env.path("pids");
    std::fs::create_dir_all(&dir)?;
    let hang = env.script(
        "hang.sh",
        &format!(
            "echo $$ > {d}/$BGQ_JOB_ID.tmp\nmv {d}/$BGQ_JOB_ID.tmp {d}/$BGQ_JOB_ID\nexec sleep 30",
            d = dir.display()
        ),
    )?;
    let done = env.path("done");
    let finish = env.script("ok.sh", &format!("echo $BGQ_JOB_ID >> {}", done.display()))?;
    env.write_config(&format!(
        "concurrency = 3\n{}",
        callback_toml("cb", &hang, "")
    ))?;
    let ids: Vec<i64> = (0..5)
        .map(|i| env.publish("cb", &format!("{{\"i\":{i}}}")))
        .collect::<TestResult<_>>()?;
    let mut first = env.spawn(&["process"])?;
    wait_for("3 callbacks to start", Duration::from_secs(10), || {
        std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| !e.file_name().to_string_lossy().ends_with(".tmp"))
                    .count()
                    >= 3
            })
            .unwrap_or(false)
    })?;
    send_signal(first.pid(), "KILL")?;
    first.wait_exit(Duration::from_secs(5))?;
    let mut old = Vec::new();
    let mut processing = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") {
            continue;
        }
        processing.push(name.parse::<i64>()?);
        old.push(
            std::fs::read_to_string(entry.path())?
                .trim()
                .parse::<i32>()?,
        );
    }
    processing.sort_unstable();
    assert_eq!(processing.len(), 3);
    for &id in &processing {
        assert_eq!(env.state(id)?, "PROCESSING");
    }

    env.write_config(&format!(
        "concurrency = 3\n{}",
        callback_toml("cb", &finish, "")
    ))?;
    let stderr = env.process(&[])?;
    for &id in &processing {
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&format!("bgq: recovered job {id}"))),
            "job {id}: {stderr}"
        );
    }
    wait_for(
        "the old callbacks to be killed",
        Duration::from_secs(3),
        || old.iter().all(|&p| !alive(p)),
    )?;
    for &id in &ids {
        assert_eq!(env.state(id)?, "FINISHED", "job {id}");
    }
    let mut ran: Vec<i64> = read_lines(&done)
        .iter()
        .map(|l| l.parse())
        .collect::<Result<_, _>>()?;
    ran.sort_unstable();
    assert_eq!(ran, ids);
    Ok(())
}

#[test]
fn a_live_run_under_another_lock_is_not_taken_for_dead() -> TestResult {
    // Two configs of one database whose temp_dir differ hold different locks, so both
    // `process` runs start; the second must not "recover" (kill and re-run) the first's job.
    let env = TestEnv::new("")?;
    let release = env.path("release");
    let runs = env.path("runs");
    let slow = env.script(
        "slow.sh",
        &format!(
            // Bounded, so that a failing test leaves no callback behind for long.
            "echo $BGQ_JOB_ID >> {r}\nn=0\nwhile [ ! -e {x} ] && [ $n -lt 1500 ]; do sleep 0.02; n=$((n+1)); done",
            r = runs.display(),
            x = release.display()
        ),
    )?;
    env.write_config(&callback_toml("cb", &slow, ""))?;
    let other_locks = env.path("other-locks");
    let other_config = env.path("other.toml");
    std::fs::write(
        &other_config,
        format!(
            "{}\ntemp_dir = \"{}\"\n{}",
            env.database_line(),
            other_locks.display(),
            callback_toml("cb", &slow, "")
        ),
    )?;
    let id = env.publish("cb", "{}")?;
    let mut first = env.spawn(&["process"])?;
    wait_for("the callback to start", Duration::from_secs(10), || {
        runs.exists()
    })?;

    let out = env
        .bgq_bare()
        .arg("--config")
        .arg(&other_config)
        .arg("process")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // On SQLite the lock file is what keeps two runs of a queue apart, so a run under another
    // lock is a mistake to report; on PostgreSQL the database keeps them apart, and runs under
    // two locks are as safe as runs on two hosts.
    if env.on_sqlite() {
        assert!(
            stderr.contains(&format!(
                "bgq: warning: job {id} is running under another live `process`"
            )),
            "{stderr}"
        );
    } else {
        assert_eq!(stderr, "");
    }
    assert!(!stderr.contains("recovered"), "{stderr}");
    assert_eq!(env.state(id)?, "PROCESSING");

    std::fs::write(&release, "")?;
    assert!(first.wait_exit(Duration::from_secs(10))?.success());
    assert_eq!(env.state(id)?, "FINISHED");
    assert_eq!(read_lines(&runs), [id.to_string()], "the job ran once");
    Ok(())
}
