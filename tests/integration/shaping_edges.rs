//! Edge cases of issue 6 found in review, each of which failed before its fix: dependents and
//! retries under `--watch`, `--unique` with `--after`, when a dependent counts as due,
//! `cancel --kill` in a serial group (across queues too) and beside a `retry`, a watcher on a
//! symlinked database, and what a detached `publish --process` run holds open.

use std::time::{Duration, Instant};

use crate::support::{
    TIMED_BY_PAYLOAD as TIMED, TestEnv, TestResult, describe, env_with_callbacks, logged,
    read_lines, wait_for, wait_for_watcher,
};

// ---- `--watch`: what the watcher's own commits and busy slots must not delay.

/// Contract (`--after`): "When the last named job finishes, the dependent job becomes due
/// (within a second or so; the same `process` run picks it up)", also under `--watch` with a
/// long `--poll` (its own commit frees the dependent; no poll needed).
#[test]
fn watch_starts_a_dependent_soon_after_its_parent_even_with_a_long_poll() -> TestResult {
    let env = env_with_callbacks("", &[("cb", TIMED)])?;
    let mut watcher = env.spawn(&["process", "--watch", "--poll", "10s"])?;
    wait_for_watcher(&env)?;
    let a = env.publish("cb", r#"{"sleep": "1"}"#)?;
    let b = env.publish_with("cb", "{}", &["--after", &a.to_string()])?;
    wait_for("A to end", Duration::from_secs(10), || {
        logged(&env, "end", a).is_some()
    })?;
    let ended = Instant::now();
    let started = wait_for("B to start", Duration::from_secs(15), || {
        logged(&env, "start", b).is_some()
    });
    let waited = ended.elapsed();
    crate::support::send_signal(watcher.pid(), "TERM")?;
    watcher.wait_exit(Duration::from_secs(10))?;
    started?;
    let gap_ms =
        (logged(&env, "start", b).unwrap_or(0) - logged(&env, "end", a).unwrap_or(0)) / 1_000_000;
    assert!(
        gap_ms < 2000,
        "B started {gap_ms} ms after A finished (observed after {waited:?}): a dependent must be \
         due within a second or so, not at the next --poll"
    );
    Ok(())
}

/// A `bgq retry` made while every slot of a watcher is busy runs as soon as a slot frees, not
/// at the next `--poll`.
#[test]
fn watch_runs_a_job_retried_while_all_slots_were_busy_as_soon_as_a_slot_frees() -> TestResult {
    let env = env_with_callbacks("", &[("cb", TIMED)])?;
    let failed = env.publish("cb", r#""fail""#)?;
    env.process(&[])?;
    assert_eq!(env.state(failed)?, "PERMANENTLY_FAILED");
    let mut watcher = env.spawn(&["process", "--watch", "--poll", "10s", "--concurrency", "1"])?;
    wait_for_watcher(&env)?;
    let long = env.publish("cb", r#"{"sleep": "1.5"}"#)?;
    wait_for("the long job to start", Duration::from_secs(5), || {
        logged(&env, "start", long).is_some()
    })?;
    // Fix the job's parameters and retry it while the only slot is busy.
    let out = env
        .bgq()
        .args(["retry", &failed.to_string(), "--json", "{}"])
        .output()?;
    assert!(out.status.success(), "{}", describe(&out));
    wait_for("the long job to end", Duration::from_secs(5), || {
        logged(&env, "end", long).is_some()
    })?;
    let started = wait_for("the retried job to start", Duration::from_secs(15), || {
        read_lines(&env.path("log"))
            .iter()
            .filter(|line| line.starts_with(&format!("start {failed} ")))
            .count()
            == 2
    });
    crate::support::send_signal(watcher.pid(), "TERM")?;
    watcher.wait_exit(Duration::from_secs(10))?;
    started?;
    let second_start = read_lines(&env.path("log"))
        .iter()
        .filter(|line| line.starts_with(&format!("start {failed} ")))
        .nth(1)
        .and_then(|line| line.split_whitespace().nth(2)?.parse::<u128>().ok())
        .ok_or("no second start")?;
    let gap_ms = (second_start - logged(&env, "end", long).ok_or("no end")?) / 1_000_000;
    assert!(
        gap_ms < 2000,
        "the retried job started {gap_ms} ms after the slot freed up (it waited for --poll 10s)"
    );
    Ok(())
}

// ---- `--after` ids are checked whatever else publish does.

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

// ---- A dependent is due from when its parent finished.

/// `bgq status` (and `stats`' oldest due age) must count a job published `--after` another as
/// due from when that job finished, not from its own publish: no false `stale:` alarm (exit 1)
/// for a job that became due a moment ago.
#[test]
fn status_does_not_call_a_dependent_stale_the_moment_its_parent_finishes() -> TestResult {
    let env = env_with_callbacks("", &[("cb", TIMED)])?;
    let parent = env.publish("cb", r#"{"sleep": "3"}"#)?;
    let child = env.publish_with(
        "cb",
        "{}",
        &["--after", &parent.to_string(), "--queue", "other"],
    )?;
    let mut run = env.spawn(&["process"])?;
    std::thread::sleep(Duration::from_millis(2000));
    // The other queue's cron run: nothing to do yet.
    env.process(&["--queue", "other"])?;
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

// ---- `cancel --kill` must not free the serial group before the callback has stopped.

/// SPEC: "serial groups never run two jobs at once". `cancel --kill` marks the job CANCELLED,
/// then gives the callback `kill_grace` to stop; the next job of its group must not start while
/// the cancelled callback still runs (here it traps SIGTERM, takes 1.5 s and exits 0).
#[test]
fn cancel_kill_does_not_let_the_group_run_two_jobs_at_once() -> TestResult {
    let body = "echo \"start $BGQ_JOB_ID $(date +%s%N)\" >> @ROOT@/log\n\
         p=$(cat)\n\
         trap 'sleep 1.5; echo \"end $BGQ_JOB_ID $(date +%s%N)\" >> @ROOT@/log; exit 0' TERM\n\
         case \"$p\" in *long*) sleep 10 & wait;; esac\n\
         echo \"end $BGQ_JOB_ID $(date +%s%N)\" >> @ROOT@/log";
    let env = env_with_callbacks("", &[("cb", body)])?;
    let first = env.publish_with("cb", r#""long""#, &["--serial-group", "g"])?;
    let second = env.publish_with("cb", "{}", &["--serial-group", "g"])?;
    let mut run = env.spawn(&["process"])?;
    wait_for("the first job to start", Duration::from_secs(5), || {
        logged(&env, "start", first).is_some()
    })?;
    let out = env
        .bgq()
        .args(["cancel", "--kill", &first.to_string()])
        .output()?;
    assert!(out.status.success(), "{}", describe(&out));
    run.wait_exit(Duration::from_secs(20))?;
    let first_end = logged(&env, "end", first).ok_or("first job never ended")?;
    let second_start = logged(&env, "start", second).ok_or("second job never ran")?;
    assert!(
        second_start >= first_end,
        "job {second} started {} ms before job {first} of its serial group ended",
        (first_end - second_start) / 1_000_000
    );
    Ok(())
}

/// A callback that logs `start`, then (the first time it runs a job) waits 10 s; on SIGTERM it
/// logs `term`, takes 1.5 s to stop, logs `end` and exits 3.
const SLOW_TO_STOP: &str = "echo \"start $BGQ_JOB_ID $(date +%s%N)\" >> @ROOT@/log\n\
     trap 'echo \"term $BGQ_JOB_ID $(date +%s%N)\" >> @ROOT@/log; sleep 1.5; echo \"end $BGQ_JOB_ID $(date +%s%N)\" >> @ROOT@/log; exit 3' TERM\n\
     if [ ! -e @ROOT@/ran-$BGQ_JOB_ID ]; then touch @ROOT@/ran-$BGQ_JOB_ID; sleep 10 & wait; fi\n\
     echo \"end $BGQ_JOB_ID $(date +%s%N)\" >> @ROOT@/log";

/// Every nanosecond time logged as `kind ID NS`, in order.
fn all_logged(env: &TestEnv, kind: &str, id: i64) -> Vec<u128> {
    read_lines(&env.path("log"))
        .iter()
        .filter_map(|line| {
            let parts: Vec<&str> = line.split_whitespace().collect();
            match parts[..] {
                [k, i, ns] if k == kind && i == id.to_string() => ns.parse().ok(),
                _ => None,
            }
        })
        .collect()
}

/// A serial group spans queues: while `cancel --kill` waits for a callback of queue `one` to
/// stop, a watcher of queue `two` must not start the next job of the group. The job stays
/// PROCESSING until its callback has ended, then becomes CANCELLED.
#[test]
fn cancel_kill_holds_the_group_for_other_queues_until_the_callback_has_stopped() -> TestResult {
    let env = env_with_callbacks("", &[("cb", SLOW_TO_STOP)])?;
    let first = env.publish_with("cb", "{}", &["--serial-group", "g", "--queue", "one"])?;
    let second = env.publish_with("cb", "{}", &["--serial-group", "g", "--queue", "two"])?;
    let mut run = env.spawn(&["process", "--queue", "one"])?;
    wait_for("the first job to start", Duration::from_secs(10), || {
        logged(&env, "start", first).is_some()
    })?;
    let mut watcher = env.spawn(&["process", "--watch", "--queue", "two", "--poll", "100ms"])?;
    let out = env
        .bgq()
        .args(["cancel", "--kill", &first.to_string()])
        .output()?;
    let cancelled = wait_for("the second job to end", Duration::from_secs(15), || {
        logged(&env, "end", second).is_some()
    });
    crate::support::send_signal(watcher.pid(), "TERM")?;
    watcher.wait_exit(Duration::from_secs(10))?;
    run.wait_exit(Duration::from_secs(10))?;
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("cancelled job {first} (cb): PROCESSING -> CANCELLED; its callback has ended\n")
    );
    cancelled?;
    let first_end = logged(&env, "end", first).ok_or("the first job never ended")?;
    let second_start = logged(&env, "start", second).ok_or("the second job never ran")?;
    assert!(
        second_start >= first_end,
        "job {second} (queue two) started {} ms before job {first} (queue one) of its serial group stopped",
        (first_end - second_start) / 1_000_000
    );
    assert_eq!(env.state(first)?, "CANCELLED");
    assert_eq!(env.state(second)?, "FINISHED");
    Ok(())
}

/// A callback whose group leader dies at once on SIGTERM while a helper in its process group
/// keeps working (it logs `beat ID NS` every 50 ms, and for 2 s more after SIGTERM).
const LEADER_DIES_FIRST: &str = "echo \"start $BGQ_JOB_ID $(date +%s%N)\" >> @ROOT@/log\n\
     ( beat() { echo \"beat $BGQ_JOB_ID $(date +%s%N)\" >> @ROOT@/log; sleep 0.05; }; \
       trap 'i=0; while [ $i -lt 40 ]; do beat; i=$((i+1)); done; exit 0' TERM; \
       while :; do beat; done ) &\n\
     wait";

/// The group is held until the whole stopped callback is gone, not only its leader: the run
/// kills what is left of the group, as after a timeout, before it stores the end.
#[test]
fn cancel_kill_holds_the_group_until_the_whole_callback_is_gone() -> TestResult {
    let env = env_with_callbacks("", &[("slow", LEADER_DIES_FIRST), ("cb", TIMED)])?;
    let first = env.publish_with("slow", "{}", &["--serial-group", "g"])?;
    let second = env.publish_with("cb", "{}", &["--serial-group", "g"])?;
    let mut run = env.spawn(&["process"])?;
    wait_for(
        "the first callback to beat",
        Duration::from_secs(10),
        || !all_logged(&env, "beat", first).is_empty(),
    )?;
    let out = env
        .bgq()
        .args(["cancel", "--kill", &first.to_string()])
        .output()?;
    let status = run.wait_exit(Duration::from_secs(20))?;
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(status.code(), Some(0), "{}", run.stderr());
    let second_start = logged(&env, "start", second).ok_or("the second job never ran")?;
    let last_beat = all_logged(&env, "beat", first)
        .into_iter()
        .max()
        .unwrap_or_default();
    assert!(
        last_beat < second_start,
        "job {second} of serial group g started {} ms before the callback of job {first} was gone",
        (last_beat - second_start) / 1_000_000
    );
    assert_eq!(env.state(first)?, "CANCELLED");
    Ok(())
}

/// While `cancel --kill` stops a callback under `--watch`, the job is still running: `retry`
/// refuses it (before, the watcher started it a second time beside the stopping callback and
/// then failed on "a callback of job N ended that was not running"). Once cancelled, a retry
/// runs it once more, after the first run has ended, and the watcher carries on.
#[test]
fn retry_waits_for_cancel_kill_to_stop_the_callback_under_watch() -> TestResult {
    let env = env_with_callbacks("", &[("cb", SLOW_TO_STOP)])?;
    let mut watcher = env.spawn(&["process", "--watch", "--poll", "100ms"])?;
    wait_for_watcher(&env)?;
    let id = env.publish("cb", "{}")?;
    wait_for("the job to start", Duration::from_secs(10), || {
        logged(&env, "start", id).is_some()
    })?;
    let mut cancel = env.spawn(&["cancel", "--kill", &id.to_string()])?;
    wait_for(
        "the callback to get SIGTERM",
        Duration::from_secs(10),
        || logged(&env, "term", id).is_some(),
    )?;
    let early = env.bgq().args(["retry", &id.to_string()]).output()?;
    let explained = env.bgq().args(["explain", &id.to_string()]).output()?;
    let cancel_status = cancel.wait_exit(Duration::from_secs(15))?;
    let state_after_cancel = env.state(id)?;
    let retried = env.bgq().args(["retry", &id.to_string()]).output()?;
    let ran_again = wait_for("the retried job to end", Duration::from_secs(15), || {
        all_logged(&env, "end", id).len() == 2
    });
    let alive = crate::support::alive(i32::try_from(watcher.pid())?);
    crate::support::send_signal(watcher.pid(), "TERM")?;
    let watcher_status = watcher.wait_exit(Duration::from_secs(10))?;

    crate::support::expect_error(
        &early,
        2,
        &[
            &format!("job {id} is being cancelled"),
            "once it is CANCELLED",
        ],
    )?;
    assert!(
        String::from_utf8_lossy(&explained.stdout).contains("is being cancelled"),
        "{}",
        describe(&explained)
    );
    assert!(cancel_status.success(), "{}", cancel.stderr());
    assert!(
        cancel.stdout().contains("PROCESSING -> CANCELLED"),
        "{}",
        cancel.stdout()
    );
    assert_eq!(state_after_cancel, "CANCELLED");
    assert!(retried.status.success(), "{}", describe(&retried));
    ran_again?;
    let starts = all_logged(&env, "start", id);
    let ends = all_logged(&env, "end", id);
    assert_eq!(starts.len(), 2, "{starts:?}");
    assert!(
        starts[1] >= ends[0],
        "the retried job started beside its stopping callback"
    );
    assert!(alive, "the watcher died: {}", watcher.stderr());
    assert_eq!(watcher_status.code(), Some(0), "{}", watcher.stderr());
    assert!(!watcher.stderr().contains("error"), "{}", watcher.stderr());
    assert_eq!(env.state(id)?, "FINISHED");
    Ok(())
}

/// A watcher of a database reached through a symlink wakes on publishes like any other: it
/// watches the write-ahead log beside the real file, where SQLite writes it, and so warns of
/// nothing.
#[test]
fn watch_on_a_symlinked_database_watches_the_real_write_ahead_log() -> TestResult {
    let env = env_with_callbacks("", &[("cb", TIMED)])?;
    let Some(db) = env.sqlite_file() else {
        return Ok(());
    };
    let real = env.path("data");
    std::fs::create_dir_all(&real)?;
    std::os::unix::fs::symlink(real.join("bgq.sqlite"), &db)?;
    let first = env.publish("cb", "{}")?;
    assert!(
        real.join("bgq.sqlite").exists(),
        "the database is the link's target"
    );
    let mut watcher = env.spawn(&["process", "--watch", "--poll", "10s"])?;
    wait_for_watcher(&env)?;
    let second = env.publish("cb", "{}")?;
    let finished = wait_for("the second job to finish", Duration::from_secs(10), || {
        env.state(second).is_ok_and(|state| state == "FINISHED")
    });
    crate::support::send_signal(watcher.pid(), "TERM")?;
    let status = watcher.wait_exit(Duration::from_secs(10))?;
    finished?;
    assert_eq!(status.code(), Some(0), "{}", watcher.stderr());
    assert_eq!(
        watcher.stderr(),
        "",
        "a watcher of a symlinked database warned"
    );
    assert_eq!(env.state(first)?, "FINISHED");
    Ok(())
}

/// `--after` a job that `clear` already deleted: it had FINISHED, so the new job is due at once
/// (an id never handed out is still refused).
#[test]
fn after_a_cleared_job_is_satisfied() -> TestResult {
    let env = env_with_callbacks("", &[("cb", TIMED)])?;
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

/// A detached `publish --process` run does not keep the caller's other open files: a caller
/// reading a pipe it handed to publish (as `$(...)` or PHP's `shell_exec` do) sees its end as
/// soon as publish exits, not when the job is done.
#[test]
fn publish_process_does_not_hold_the_callers_files_open() -> TestResult {
    let env = env_with_callbacks("", &[("cb", TIMED)])?;
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
