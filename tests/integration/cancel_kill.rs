//! `bgq cancel --kill` of a running job: the callback and its children are stopped by the
//! `process` run that runs it (or by `cancel` itself when that run is stopped or dead, never the
//! run itself), the job ends CANCELLED (FINISHED if the callback reports success anyway) and is
//! no failure of its run, and what `cancel` prints says which. Its serial group (in any queue)
//! stays held until the whole callback is gone, and a `retry` waits for that too. Also: a run
//! that dies or is told to stop meanwhile, callbacks that end by themselves or leave helpers
//! behind, timeouts, another temp_dir, and the descriptors of a long watch.

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use crate::support::{
    HangingJob, KillGroupOnDrop, Spawned, TIMED_BY_PAYLOAD, TestEnv, TestResult, alive, attempts,
    callback_toml, describe, env_with_callbacks, hanging_job, lock_files, logged, pgid_of,
    read_lines, running_job, send_signal, stdout_of, wait_for, wait_for_group_record,
    wait_for_watcher,
};

/// Runs `bgq ARGS` and returns its output without checking anything.
fn run(env: &TestEnv, args: &[&str]) -> TestResult<Output> {
    Ok(env.bgq().args(args).output()?)
}

/// Whether job `id` carries the mark of `bgq cancel --kill` while its run is alive, as
/// `bgq explain` tells it (`is being cancelled`).
fn marked(env: &TestEnv, id: i64) -> bool {
    run(env, &["explain", &id.to_string()])
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("is being cancelled"))
}

/// A callback that ignores SIGTERM: only SIGKILL, after `kill_grace`, stops it.
const IGNORING_TERM: HangingJob<'static> = HangingJob {
    head: "trap '' TERM",
    settings: "kill_grace = \"1s\"",
    run: &["process"],
    tmpdir: None,
};

/// Starts `process` on a job of callback `hang` (with `settings`) that, like one that ignores
/// SIGTERM, only stops for SIGKILL, but appends a line to the file `term` for each SIGTERM it
/// gets: a test can wait for that signal instead of guessing when it came. Returns the job id,
/// the run, the callback's pid once it runs and a guard that kills its process group.
fn term_noting_job(
    env: &TestEnv,
    settings: &str,
) -> TestResult<(i64, Spawned, i32, KillGroupOnDrop)> {
    let pidfile = env.path("hang.pid");
    // Bounded (30 s), so that a failing test leaves nothing behind for long.
    let script = env.script(
        "hang.sh",
        &format!(
            "trap 'echo TERM >> {t}' TERM\necho $$ > {p}.tmp\nmv {p}.tmp {p}\n\
             i=0; while [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done",
            t = env.path("term").display(),
            p = pidfile.display()
        ),
    )?;
    env.write_config(&callback_toml("hang", &script, settings))?;
    let id = env.publish("hang", "{}")?;
    let run = env.spawn(&["process"])?;
    wait_for("the callback to start", Duration::from_secs(15), || {
        pidfile.exists()
    })?;
    let pid: i32 = fs::read_to_string(&pidfile)?.trim().parse()?;
    let guard = KillGroupOnDrop(pgid_of(pid)?);
    Ok((id, run, pid, guard))
}

/// Waits until the callback of [`term_noting_job`] has got a SIGTERM.
fn wait_for_sigterm(env: &TestEnv) -> TestResult {
    let noted = env.path("term");
    wait_for(
        "the callback to get SIGTERM",
        Duration::from_secs(10),
        || noted.exists(),
    )
}

/// Two temp dirs, as cron's and an operator's shell's `$TMPDIR` when the config sets no
/// `temp_dir`.
fn two_temp_dirs(env: &TestEnv) -> TestResult<(PathBuf, PathBuf)> {
    let cron_tmp = env.path("cron-tmp");
    let shell_tmp = env.path("shell-tmp");
    fs::create_dir_all(&cron_tmp)?;
    fs::create_dir_all(&shell_tmp)?;
    Ok((cron_tmp, shell_tmp))
}

/// Starts `bgq cancel --kill ID` in the background.
fn spawn_cancel(env: &TestEnv, id: i64) -> TestResult<std::process::Child> {
    Ok(std::process::Command::new(env!("CARGO_BIN_EXE_bgq"))
        .current_dir(env.root())
        .env_remove("BGQ_CONFIG")
        .arg("--config")
        .arg(env.config_path())
        .args(["cancel", "--kill", &id.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?)
}

/// The number of open descriptors of `pid`.
fn open_fds(pid: u32) -> TestResult<usize> {
    Ok(fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// The eventfds among the open descriptors of `pid`.
fn eventfds(pid: u32) -> TestResult<usize> {
    let mut count = 0;
    for entry in fs::read_dir(format!("/proc/{pid}/fd"))? {
        if fs::read_link(entry?.path())
            .is_ok_and(|target| target.to_string_lossy().contains("eventfd"))
        {
            count += 1;
        }
    }
    Ok(count)
}

/// A `--watch` run keeps no descriptor per job: after many jobs (some of them stopped by
/// `cancel --kill`) it holds as many as after the first few.
#[test]
fn a_watch_run_keeps_no_descriptor_per_job() -> TestResult {
    let env = TestEnv::new("")?;
    let ok = env.script("ok.sh", "cat >/dev/null; exit 0")?;
    let (hang, pidfile) = crate::support::hanging_callback(&env, "hang.sh")?;
    env.write_config(&format!(
        "concurrency = 4\n{}{}",
        callback_toml("ok", &ok, ""),
        callback_toml("hang", &hang, "kill_grace = \"1s\"")
    ))?;
    let mut watch = env.spawn(&["process", "--watch"])?;
    let batch = |n: usize| -> TestResult<i64> {
        let mut last = 0;
        for _ in 0..n {
            last = env.publish("ok", "{\"x\":1}")?;
        }
        Ok(last)
    };
    let last = batch(20)?;
    wait_for("the first batch", Duration::from_secs(30), || {
        env.state(last).is_ok_and(|s| s == "FINISHED")
    })?;
    // The positive signal is that FINISHED: a run closes a job's descriptors (output pipe,
    // pidfd, eventfd) before it commits the job's end, and nothing later says "idle". The pause
    // only keeps a descriptor held for a moment (by SQLite, say) out of both counts; it waits for
    // nothing that must not happen: a descriptor kept per job shows as 150 more either way.
    std::thread::sleep(Duration::from_millis(300));
    let before = open_fds(watch.pid())?;
    // PostgreSQL's client keeps one per connection (its runtime's waker), none per job.
    let idle_events = eventfds(watch.pid())?;
    if env.on_sqlite() {
        assert_eq!(idle_events, 0, "eventfds open while idle");
    }
    for round in 0..3 {
        let id = env.publish("hang", "{}")?;
        wait_for("the hanging callback", Duration::from_secs(15), || {
            pidfile.exists()
        })?;
        let out = run(&env, &["cancel", "--kill", &id.to_string()])?;
        assert!(out.status.success(), "round {round}: {}", describe(&out));
        fs::remove_file(&pidfile)?;
        assert_eq!(env.state(id)?, "CANCELLED");
    }
    let last = batch(150)?;
    wait_for("the second batch", Duration::from_secs(120), || {
        env.state(last).is_ok_and(|s| s == "FINISHED")
    })?;
    // As above: the same margin, so that both counts are taken alike.
    std::thread::sleep(Duration::from_millis(300));
    let after = open_fds(watch.pid())?;
    let events = eventfds(watch.pid())?;
    send_signal(watch.pid(), "TERM")?;
    watch.wait_exit(Duration::from_secs(20))?;
    assert_eq!(events, idle_events, "eventfds left open while idle");
    assert!(
        after <= before,
        "descriptors grew from {before} to {after} over 173 jobs"
    );
    Ok(())
}

/// The run dies while `cancel --kill` waits for it (here it is SIGKILLed after it sent SIGTERM,
/// which the callback outlives): `cancel` stops the callback itself and, with no run left to
/// store the end, ends the job CANCELLED (it does not leave it PROCESSING, holding its serial
/// group, until some later run recovers it).
#[test]
fn cancel_ends_the_job_itself_when_the_run_dies_during_the_wait() -> TestResult {
    let env = TestEnv::new("")?;
    let (id, mut process, callback, _guard) = term_noting_job(&env, "kill_grace = \"1s\"")?;

    let cancel = spawn_cancel(&env, id)?;
    wait_for("the mark", Duration::from_secs(10), || marked(&env, id))?;
    // The run sees the mark and sends SIGTERM, which the callback outlives; the run dies before
    // its SIGKILL, 1 s later.
    wait_for_sigterm(&env)?;
    send_signal(process.pid(), "KILL")?;
    process.wait_exit(Duration::from_secs(10))?;
    env.expect_orphans_after_run_died(&[callback])?;

    let out = cancel.wait_with_output()?;
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8(out.stdout)?;
    assert!(!alive(callback), "cancel stopped the callback: {stdout}");
    let state = env.state(id)?;
    assert_eq!(
        state, "CANCELLED",
        "the run is dead and its callback stopped, yet cancel left the job {state}: {stdout}"
    );
    Ok(())
}

/// A callback that ends on its own (exit 1) after `cancel --kill` marked its job but before the
/// run looked for marks (it looks every 0.1 s) leaves the job CANCELLED, and its run counts no
/// failure (`stats`).
#[test]
fn a_callback_that_ends_by_itself_once_marked_is_cancelled_and_no_failure() -> TestResult {
    let env = TestEnv::new("")?;
    // The mark must be seen far sooner than a `bgq explain` could tell it, so it is read in the
    // SQLite file.
    let Some(db) = env.sqlite_file() else {
        return Ok(());
    };
    let fifo = env.path("go");
    let started = env.path("started");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()?
            .success()
    );
    let script = env.script(
        "quick.sh",
        &format!(
            "touch {s}\nread x < {f}\nexit 1",
            s = started.display(),
            f = fifo.display()
        ),
    )?;
    env.write_config(&callback_toml("quick", &script, "kill_grace = \"1s\""))?;
    let id = env.publish("quick", "{}")?;
    let mut process = env.spawn(&["process"])?;
    wait_for("the callback to start", Duration::from_secs(15), || {
        started.exists()
    })?;
    let cancel = spawn_cancel(&env, id)?;
    // Release the callback the moment the mark is there: far sooner than 0.1 s.
    let conn = rusqlite::Connection::open(&db)?;
    let begun = Instant::now();
    while !conn
        .query_row(
            "SELECT cancel_requested FROM jobs WHERE id = ?1",
            [id],
            |row| row.get::<_, bool>(0),
        )
        .unwrap_or(false)
    {
        assert!(begun.elapsed() < Duration::from_secs(10), "no mark");
    }
    fs::OpenOptions::new()
        .write(true)
        .open(&fifo)?
        .write_all(b"go\n")?;
    let out = cancel.wait_with_output()?;
    let status = process.wait_exit(Duration::from_secs(20))?;
    assert_eq!(status.code(), Some(0), "{}", process.stderr());
    assert_eq!(env.state(id)?, "CANCELLED", "{}", describe(&out));
    let stats = String::from_utf8(run(&env, &["stats", "--json"])?.stdout)?;
    assert!(
        stats.contains("\"failed\":0"),
        "a job that ended CANCELLED counted as a failure of its run: {stats}\ncancel said: {}",
        describe(&out)
    );
    Ok(())
}

/// A callback whose leader exits 0 on SIGTERM while a helper of its group is still at work: the
/// waiter SIGKILLs the helper to free the group, so the work was cut off and the job is not
/// FINISHED (as a timeout is a timeout whatever the exit code).
#[test]
fn a_stopped_callback_whose_helpers_were_cut_off_is_not_finished() -> TestResult {
    let env = TestEnv::new("")?;
    let started = env.path("started");
    let done = env.path("done");
    let helper_pid = env.path("helper.pid");
    let script = env.script(
        "leader.sh",
        &format!(
            "(trap '' TERM; sleep 2; touch {d}) &\necho $! > {h}.tmp\nmv {h}.tmp {h}\n\
             trap 'exit 0' TERM\ntouch {s}\nwhile :; do sleep 0.05; done",
            d = done.display(),
            h = helper_pid.display(),
            s = started.display()
        ),
    )?;
    env.write_config(&callback_toml("leader", &script, "kill_grace = \"5s\""))?;
    let id = env.publish("leader", "{}")?;
    let mut process: Spawned = env.spawn(&["process"])?;
    wait_for("the callback to start", Duration::from_secs(15), || {
        started.exists()
    })?;
    let helper: i32 = fs::read_to_string(&helper_pid)?.trim().parse()?;
    let out = run(&env, &["cancel", "--kill", &id.to_string()])?;
    let status = process.wait_exit(Duration::from_secs(20))?;
    assert_eq!(status.code(), Some(0), "{}", process.stderr());
    // Whether it was cut off or did its work, the helper is gone once it has ended.
    wait_for("the helper to end", Duration::from_secs(10), || {
        !alive(helper)
    })?;
    let helper_done = done.exists();
    let state = env.state(id)?;
    assert!(
        helper_done || state != "FINISHED",
        "job FINISHED though its helper was killed before its work was done; cancel said: {}",
        describe(&out)
    );
    Ok(())
}

/// SIGTERM to a `--watch` run while `cancel --kill` is under way (and `--max-jobs` reached):
/// the run still stops the callback, stores CANCELLED and exits 0.
#[test]
fn sigterm_to_the_watch_run_during_a_cancel_still_ends_it_cancelled() -> TestResult {
    let env = TestEnv::new("")?;
    let setup = HangingJob {
        run: &["process", "--watch", "--max-jobs", "1"],
        ..IGNORING_TERM
    };
    let (id, mut watch, callback, _guard) = hanging_job(&env, &setup)?;
    let cancel = spawn_cancel(&env, id)?;
    wait_for("the mark", Duration::from_secs(10), || marked(&env, id))?;
    send_signal(watch.pid(), "TERM")?;
    let out = cancel.wait_with_output()?;
    let status = watch.wait_exit(Duration::from_secs(20))?;
    assert_eq!(status.code(), Some(0), "{}", watch.stderr());
    assert!(!alive(callback));
    assert_eq!(env.state(id)?, "CANCELLED", "{}", describe(&out));
    assert_eq!(
        String::from_utf8(out.stdout)?,
        format!("cancelled job {id} (hang): PROCESSING -> CANCELLED; its callback has ended\n")
    );
    Ok(())
}

/// A callback that timed out (its SIGTERM outlived, SIGKILL pending) and is then cancelled ends
/// CANCELLED, and `cancel` returns once it is.
#[test]
fn a_timed_out_callback_then_cancelled_ends_cancelled_and_no_failure() -> TestResult {
    let env = TestEnv::new("")?;
    let (id, mut process, _callback, _guard) =
        term_noting_job(&env, "timeout = \"1s\"\nkill_grace = \"3s\"")?;
    // The SIGTERM of the timeout: nothing else sends one before the cancel.
    wait_for_sigterm(&env)?;
    let out = run(&env, &["cancel", "--kill", &id.to_string()])?;
    let status = process.wait_exit(Duration::from_secs(20))?;
    assert_eq!(status.code(), Some(0), "{}", process.stderr());
    assert_eq!(env.state(id)?, "CANCELLED", "{}", describe(&out));
    let stats = String::from_utf8(run(&env, &["stats", "--json"])?.stdout)?;
    assert!(stats.contains("\"failed\":0"), "{stats}");
    Ok(())
}

/// The `process` run stops the callback itself, so a `cancel --kill` from a shell whose
/// temp_dir (here `$TMPDIR`) differs from cron's, and so finds no lock file, still works.
#[test]
fn cancel_kill_works_from_a_shell_with_another_temp_dir() -> TestResult {
    let env = TestEnv::new("")?;
    let (cron_tmp, shell_tmp) = two_temp_dirs(&env)?;
    let setup = HangingJob {
        tmpdir: Some(&cron_tmp),
        ..HangingJob::default()
    };
    let (id, mut process, callback, _guard) = hanging_job(&env, &setup)?;
    let out = env
        .bgq()
        .env("TMPDIR", &shell_tmp)
        .args(["cancel", "--kill", &id.to_string()])
        .output()?;
    let status = process.wait_exit(Duration::from_secs(20))?;
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        String::from_utf8(out.stdout)?,
        format!("cancelled job {id} (hang): PROCESSING -> CANCELLED; its callback has ended\n")
    );
    assert!(!alive(callback));
    assert_eq!(status.code(), Some(0), "{}", process.stderr());
    assert_eq!(env.state(id)?, "CANCELLED");
    Ok(())
}

/// `cancel --kill` from a shell whose temp_dir differs from cron's, of a job whose run has died:
/// with no lock file it cannot find the orphaned callback, so it leaves the job PROCESSING and
/// marked (not CANCELLED beside a callback that runs on) and says so; the next run under cron's
/// temp_dir kills the callback and ends the job CANCELLED.
#[test]
fn cancel_of_a_dead_runs_job_from_another_temp_dir_leaves_it_to_recovery() -> TestResult {
    let env = TestEnv::new("")?;
    let (cron_tmp, shell_tmp) = two_temp_dirs(&env)?;
    let setup = HangingJob {
        tmpdir: Some(&cron_tmp),
        ..HangingJob::default()
    };
    let (id, mut process, callback, _guard) = hanging_job(&env, &setup)?;
    send_signal(process.pid(), "KILL")?;
    process.wait_exit(Duration::from_secs(10))?;
    let out = env
        .bgq()
        .env("TMPDIR", &shell_tmp)
        .args(["cancel", "--kill", &id.to_string()])
        .output()?;
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8(out.stdout)?;
    assert!(
        stdout.starts_with(&format!(
            "job {id} (hang) stays PROCESSING, marked for cancelling: its callback could not be looked up: there is no lock file "
        )),
        "{stdout}"
    );
    env.expect_orphans_after_run_died(&[callback])?;
    assert_eq!(env.state(id)?, "PROCESSING");

    let mut recovery = env.spawn_with_env(&["process"], &[("TMPDIR", &cron_tmp)])?;
    let status = recovery.wait_exit(Duration::from_secs(20))?;
    assert_eq!(status.code(), Some(0), "{}", recovery.stderr());
    assert!(
        recovery.stderr().contains("it becomes CANCELLED"),
        "{}",
        recovery.stderr()
    );
    assert_eq!(env.state(id)?, "CANCELLED");
    wait_for("the callback to die", Duration::from_secs(5), || {
        !alive(callback)
    })?;
    Ok(())
}

// ---- what `cancel --kill` prints, and who stops the callback

/// `cancel --kill` stops a running callback and its children; the `process` run carries on,
/// keeps the job CANCELLED and sends no notice for it.
#[test]
fn cancel_kill_stops_the_callback_and_the_run_carries_on() -> TestResult {
    let env = TestEnv::new("")?;
    let runs = env.path("runs");
    let cb_pid = env.path("cb.pid");
    let child_pid = env.path("child.pid");
    let ok = env.script("ok.sh", &format!("echo $BGQ_JOB_ID >> {}", runs.display()))?;
    let hang = env.script(
        "hang.sh",
        &format!(
            "sleep 30 &\necho $! > {c}.tmp\nmv {c}.tmp {c}\necho $$ > {p}.tmp\nmv {p}.tmp {p}\nsleep 30\necho $BGQ_JOB_ID >> {r}",
            c = child_pid.display(),
            p = cb_pid.display(),
            r = runs.display()
        ),
    )?;
    env.write_config(&format!(
        "concurrency = 1\n{}{}",
        callback_toml("ok", &ok, ""),
        callback_toml("hang", &hang, "timeout = \"40s\"\nkill_grace = \"1s\"")
    ))?;
    let before = env.publish("ok", "{}")?;
    let id = env.publish("hang", "{}")?;
    let after = env.publish("ok", "{}")?;

    let mut process = env.spawn(&["process"])?;
    wait_for("the callback to start", Duration::from_secs(15), || {
        cb_pid.exists()
    })?;
    let callback: i32 = fs::read_to_string(&cb_pid)?.trim().parse()?;
    let child: i32 = fs::read_to_string(&child_pid)?.trim().parse()?;
    let group = pgid_of(callback)?;
    let _cleanup = KillGroupOnDrop(group);
    assert_eq!(env.state(id)?, "PROCESSING");

    let out = run(&env, &["cancel", "--kill", &id.to_string()])?;
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        String::from_utf8(out.stdout)?,
        format!("cancelled job {id} (hang): PROCESSING -> CANCELLED; its callback has ended\n")
    );
    wait_for("the callback to die", Duration::from_secs(5), || {
        !alive(callback)
    })?;
    wait_for(
        "the callback's background child to die",
        Duration::from_secs(5),
        || !alive(child),
    )?;

    let status = process.wait_exit(Duration::from_secs(20))?;
    let stderr = process.stderr();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("bgq: notice:"), "no notice: {stderr}");
    assert_eq!(env.state(id)?, "CANCELLED", "not PERMANENTLY_FAILED");
    assert_eq!(env.state(before)?, "FINISHED");
    assert_eq!(env.state(after)?, "FINISHED", "the run carried on");
    assert_eq!(
        read_lines(&runs),
        [before.to_string(), after.to_string()],
        "the killed callback never reached its end"
    );
    Ok(())
}

/// When the run does not stop the callback in time (here it is stopped with SIGSTOP), `cancel
/// --kill` stops it itself by the process group recorded in the lock file. With no group
/// recorded (the moment between a callback's start and that record, widened here by erasing
/// it) it never kills the holders of the callback's output pipe, among which is the `process`
/// run itself: the run, continued, stops the callback and exits 0.
#[test]
fn cancel_kill_never_kills_the_running_process() -> TestResult {
    let env = TestEnv::new("")?;
    let (id, mut process, callback, _guard) = hanging_job(&env, &HangingJob::default())?;
    send_signal(process.pid(), "STOP")?;
    for lock in lock_files(&env.path("locks"))? {
        let kept: String = fs::read_to_string(&lock)?
            .lines()
            .filter(|line| !line.starts_with("G "))
            .map(|line| format!("{line}\n"))
            .collect();
        fs::write(&lock, kept)?;
    }
    let out = run(&env, &["cancel", "--kill", &id.to_string()]);
    let run_alive = alive(i32::try_from(process.pid())?);
    let callback_alive = alive(callback);
    send_signal(process.pid(), "CONT")?;
    let out = out?;
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        String::from_utf8(out.stdout)?,
        format!(
            "cancelled job {id} (hang): PROCESSING -> CANCELLED when the `process` running it records its end; its callback is not recorded yet; the running `process` (pid {}) stops it\n",
            process.pid()
        )
    );
    assert!(run_alive, "cancel --kill killed the `process` run");
    assert!(callback_alive, "not ours to kill without its group");
    let status = process.wait_exit(Duration::from_secs(20))?;
    assert_eq!(status.code(), Some(0), "{}", process.stderr());
    assert_eq!(env.state(id)?, "CANCELLED");
    wait_for("the callback to die", Duration::from_secs(5), || {
        !alive(callback)
    })?;
    Ok(())
}

/// A job cancelled with `--kill` is not a failure of its run: `stats` does not count it.
#[test]
fn a_job_cancelled_with_kill_is_not_a_failure_of_its_run() -> TestResult {
    let env = TestEnv::new("")?;
    let (id, mut process, _callback, _guard) = hanging_job(&env, &HangingJob::default())?;
    stdout_of(&env, &["cancel", "--kill", &id.to_string()])?;
    process.wait_exit(Duration::from_secs(20))?;
    let stats = stdout_of(&env, &["stats", "--json"])?;
    assert!(stats.contains("\"jobs\":1"), "{stats}");
    assert!(stats.contains("\"failed\":0"), "{stats}");
    Ok(())
}

/// A callback that, told to stop, still reports success (exit 0 on SIGTERM) leaves its job
/// FINISHED: the work is done, and a later `retry` must not repeat it. `cancel` says so.
#[test]
fn cancel_kill_of_a_callback_that_finishes_anyway_leaves_it_finished() -> TestResult {
    let graceful = "trap 'exit 0' TERM
touch \"@ROOT@/started-$BGQ_JOB_ID\"
i=0
while [ $i -lt 300 ]; do sleep 0.05; i=$((i+1)); done
exit 3";
    let env = env_with_callbacks("", &[("block", graceful)])?;
    let (id, mut process) = running_job(&env)?;
    let out = stdout_of(&env, &["cancel", "--kill", &id.to_string()])?;
    assert_eq!(
        out,
        format!(
            "job {id} (block) is FINISHED, not CANCELLED: its callback reported success (exit 0)\n"
        )
    );
    assert_eq!(env.state(id)?, "FINISHED");
    let status = process.wait_exit(Duration::from_secs(20))?;
    assert_eq!(status.code(), Some(0), "{}", process.stderr());
    assert_eq!(env.state(id)?, "FINISHED");
    Ok(())
}

/// `cancel --kill` of a job whose `process` run died (its callback lives on, orphaned) stops
/// the callback and ends the job CANCELLED at once: no run is left to do it, and the next run
/// neither recovers nor re-runs it.
#[test]
fn cancel_kill_of_a_job_whose_run_died_cancels_it_at_once() -> TestResult {
    let env = TestEnv::new("")?;
    let (id, mut process, callback, guard) = hanging_job(&env, &HangingJob::default())?;
    wait_for_group_record(&env, id)?;
    send_signal(process.pid(), "KILL")?;
    process.wait_exit(Duration::from_secs(10))?;
    env.expect_orphans_after_run_died(&[callback])?;

    let out = stdout_of(&env, &["cancel", "--kill", &id.to_string()])?;
    let ending = if env.orphans_outlive_their_run() {
        format!("its callback (process group {}) was stopped", guard.0)
    } else {
        "its callback had already ended".to_owned()
    };
    assert_eq!(
        out,
        format!("cancelled job {id} (hang): PROCESSING -> CANCELLED; {ending}\n")
    );
    assert_eq!(env.state(id)?, "CANCELLED");
    wait_for("the callback to die", Duration::from_secs(5), || {
        !alive(callback)
    })?;
    let (code, _, stderr) = env.process_output(&[])?;
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains(&format!("job {id}")), "{stderr}");
    assert_eq!(env.state(id)?, "CANCELLED");
    assert_eq!(attempts(&env, id)?, 1);
    Ok(())
}

/// When the run of a job being cancelled cannot store its end (here it is stopped, then
/// killed), `cancel --kill` says the job becomes CANCELLED once that is seen, `explain` says it
/// is being cancelled, and the next run's recovery ends it CANCELLED instead of running it
/// again, without a notice.
#[test]
fn a_cancel_its_run_never_stored_is_ended_cancelled_by_recovery() -> TestResult {
    let env = TestEnv::new("")?;
    let (id, mut process, _callback, guard) = hanging_job(&env, &HangingJob::default())?;
    // The run records the callback's group just after the callback starts: stop it only then.
    wait_for_group_record(&env, id)?;
    send_signal(process.pid(), "STOP")?;
    let out = run(&env, &["cancel", "--kill", &id.to_string()]);
    let explained = run(&env, &["explain", &id.to_string()]);
    send_signal(process.pid(), "KILL")?;
    process.wait_exit(Duration::from_secs(10))?;
    let out = out?;
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        String::from_utf8(out.stdout)?,
        format!(
            "cancelled job {id} (hang): PROCESSING -> CANCELLED when the `process` running it records its end; its callback (process group {}) was stopped\n",
            guard.0
        )
    );
    let explained = String::from_utf8(explained?.stdout)?;
    assert!(
        explained.starts_with(&format!("job {id} is being cancelled")),
        "{explained}"
    );
    assert_eq!(env.state(id)?, "PROCESSING");

    let (code, _, stderr) = env.process_output(&[])?;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "bgq: recovered job {id} (hang): the `process` run running it died; its callback was no longer running; it becomes CANCELLED"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("notice"), "{stderr}");
    assert_eq!(env.state(id)?, "CANCELLED");
    assert!(
        String::from_utf8(run(&env, &["show", &id.to_string()])?.stdout)?
            .contains("its callback was no longer running"),
        "the recovery is kept as the job's output"
    );
    Ok(())
}

// ---- the serial group of a job being stopped, and a retry meanwhile

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
    let env = env_with_callbacks("", &[("slow", LEADER_DIES_FIRST), ("cb", TIMED_BY_PAYLOAD)])?;
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
