//! `bgq process --watch`, the long-running run for supervisord and systemd: jobs published,
//! delayed, retried or WAITING while it runs (and `waiting_delay`); SIGTERM/SIGINT; `--max-jobs`,
//! `--max-time`, `--max-memory`; standby behind another `process`; notices while watching;
//! `status` while it runs; recovery at start; work it must notice at once, not at the next
//! `--poll` (a dependent freed by its own commit, a retry made while every slot was busy, a
//! publish to a database reached through a symlink). (`publish --process` is in `on_demand.rs`.)

use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::{
    Spawned, TIMED_BY_PAYLOAD, TestEnv, TestResult, alive, callback_toml, describe,
    env_recording_runs, env_with_callbacks, expect_refused, hanging_callback, lock_files, logged,
    notices, notify_line, one_slow_slot_env, read_lines, send_signal, sorted_ids, wait_for,
    wait_for_watcher, wait_state_checked,
};

/// A `bgq process --watch ...` running in the background. Dropping it (a failed test) sends
/// SIGTERM and waits a little, then SIGKILLs it, so no watcher outlives its test.
struct Watcher(Spawned);

impl Watcher {
    /// Starts `bgq process --watch ARGS`.
    fn start(env: &TestEnv, args: &[&str]) -> TestResult<Self> {
        let mut full = vec!["process", "--watch"];
        full.extend_from_slice(args);
        Ok(Watcher(env.spawn(&full)?))
    }

    /// The watcher's pid.
    fn pid(&self) -> u32 {
        self.0.pid()
    }

    /// True while it has not exited.
    fn running(&mut self) -> TestResult<bool> {
        Ok(self.0.child.try_wait()?.is_none())
    }

    /// Fails unless the watcher is still running (it must not stop by itself).
    fn expect_running(&mut self, when: &str) -> TestResult {
        if self.running()? {
            Ok(())
        } else {
            Err(format!(
                "the watcher exited by itself ({when}); stderr:\n{}",
                self.0.stderr()
            )
            .into())
        }
    }

    /// Waits up to `limit` for it to exit by itself.
    fn wait_exit(&mut self, limit: Duration) -> TestResult<ExitStatus> {
        self.0.wait_exit(limit)
    }

    /// Sends SIG`signal` and waits for the exit; fails if it had already exited by itself.
    fn signal_and_wait(&mut self, signal: &str) -> TestResult<ExitStatus> {
        self.expect_running(&format!("before SIG{signal}"))?;
        send_signal(self.pid(), signal)?;
        self.wait_exit(Duration::from_secs(15))
    }

    /// SIGTERM, then checks it exited 0 with nothing on stdout.
    fn stop(&mut self) -> TestResult {
        let status = self.signal_and_wait("TERM")?;
        self.expect_clean_exit(status, "SIGTERM")
    }

    /// Checks `status` is exit 0 and that nothing went to stdout.
    fn expect_clean_exit(&self, status: ExitStatus, what: &str) -> TestResult {
        if status.code() != Some(0) {
            return Err(format!(
                "after {what} the watcher exited with {status}, expected 0; stderr:\n{}",
                self.0.stderr()
            )
            .into());
        }
        let stdout = self.0.stdout();
        if !stdout.is_empty() {
            return Err(format!("the watcher printed on stdout: {stdout:?}").into());
        }
        Ok(())
    }

    /// What it printed on stderr so far.
    fn stderr(&self) -> String {
        self.0.stderr()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Ok(None) = self.0.child.try_wait() {
            let _ = send_signal(self.0.pid(), "TERM");
            let _ = self.0.wait_exit(Duration::from_secs(5));
        }
        // Still running: `Spawned`'s own drop SIGKILLs it.
    }
}

/// SIGKILLs the pids it holds when dropped, so a failing test leaves no orphaned callback behind.
struct KillOnDrop(Vec<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if alive(pid) {
                let _ = send_signal(u32::try_from(pid).unwrap_or(0), "KILL");
            }
        }
    }
}

impl Watcher {
    /// Waits until job `id` is in `state`, failing at once (with its stderr) if the watcher exits.
    fn wait_state(&mut self, env: &TestEnv, id: i64, state: &str, limit: Duration) -> TestResult {
        wait_state_checked(env, id, state, limit, || {
            self.expect_running(&format!("while job {id} was to become {state}"))
        })
    }

    /// Waits until job `id` is FINISHED (10 s at most: far more than a poll interval).
    fn wait_finished(&mut self, env: &TestEnv, id: i64) -> TestResult {
        self.wait_state(env, id, "FINISHED", Duration::from_secs(10))
    }

    /// Waits until a watcher started with `-v` says that it stands by behind another `process`
    /// (`bgq: another `process` holds LOCK; waiting for it`), or until it exits: the caller's
    /// checks then say which.
    fn wait_standby(&mut self) -> TestResult {
        let start = Instant::now();
        while !self.stderr().contains("another `process` holds") {
            if !self.running()? {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(10) {
                return Err(format!(
                    "the watcher did not say within 10 s that it stands by; stderr:\n{}",
                    self.stderr()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Waits until the watcher has created its lock file in the test's `temp_dir`.
    fn wait_lock_file(&mut self, env: &TestEnv) -> TestResult {
        let dir = env.path("locks");
        let start = Instant::now();
        while lock_files(&dir)?.is_empty() {
            self.expect_running("before opening its lock file")?;
            if start.elapsed() > Duration::from_secs(10) {
                return Err("the watcher created no lock file within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

/// Nanoseconds since the epoch (the clock `date +%s%N` reads in the callbacks).
fn now_ns() -> TestResult<u128> {
    Ok(SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos())
}

/// Parses `A B` lines (e.g. `attempt nanoseconds`) a callback appended to `path`.
fn pairs(path: &Path) -> TestResult<Vec<(String, u128)>> {
    read_lines(path)
        .iter()
        .map(|line| {
            let (a, b) = line
                .split_once(' ')
                .ok_or_else(|| format!("bad log line {line:?}"))?;
            Ok((a.to_owned(), b.trim().parse()?))
        })
        .collect()
}

// ---- process --watch: picking up work

/// Jobs published while the watcher runs are run without any other `process`, one after the
/// other, each once, and the watcher keeps running and prints nothing on stdout.
#[test]
fn watch_runs_jobs_published_while_it_runs() -> TestResult {
    let env = env_recording_runs("", "")?;
    let mut watcher = Watcher::start(&env, &[])?;
    watcher.wait_lock_file(&env)?;

    let first = env.publish("cb", "{\"n\":1}")?;
    watcher.wait_finished(&env, first)?;
    watcher.expect_running("after the first job")?;

    let second = env.publish("cb", "{\"n\":2}")?;
    watcher.wait_finished(&env, second)?;
    watcher.expect_running("after the second job")?;
    let third = env.publish("cb", "{\"n\":3}")?;
    watcher.wait_finished(&env, third)?;

    watcher.stop()?;
    assert_eq!(sorted_ids(&env.path("runs"))?, [first, second, third]);
    let stderr = watcher.stderr();
    assert!(
        !stderr.contains("error") && !stderr.contains("panicked"),
        "{stderr}"
    );
    Ok(())
}

/// Jobs already due when the watcher starts are run at once.
#[test]
fn watch_runs_jobs_that_were_due_before_it_started() -> TestResult {
    let env = env_recording_runs("", "")?;
    let ids: Vec<i64> = (0..3)
        .map(|i| env.publish("cb", &format!("{{\"i\":{i}}}")))
        .collect::<TestResult<_>>()?;
    let mut watcher = Watcher::start(&env, &["--poll", "200ms"])?;
    for &id in &ids {
        watcher.wait_finished(&env, id)?;
    }
    watcher.expect_running("after the due jobs")?;
    watcher.stop()?;
    assert_eq!(sorted_ids(&env.path("runs"))?, ids);
    Ok(())
}

// ---- process --watch: signals

/// Runs two jobs with `concurrency = 1` under a watcher and sends SIG`signal` during the first.
fn watcher_stops_gracefully_on(signal: &str) -> TestResult {
    let (env, started, ended) = one_slow_slot_env()?;
    let mut watcher = Watcher::start(&env, &["--poll", "200ms"])?;
    let first = env.publish("cb", "{\"n\":1}")?;
    let second = env.publish("cb", "{\"n\":2}")?;
    // Stops early if the watcher exits; `signal_and_wait` then reports it.
    wait_for("the callback to start", Duration::from_secs(10), || {
        !read_lines(&started).is_empty() || !watcher.running().unwrap_or(false)
    })?;

    let status = watcher.signal_and_wait(signal)?;
    watcher.expect_clean_exit(status, &format!("SIG{signal}"))?;
    assert_eq!(
        read_lines(&ended),
        [first.to_string()],
        "the running callback was allowed to finish"
    );
    assert_eq!(
        read_lines(&started),
        [first.to_string()],
        "nothing new started"
    );
    assert_eq!(env.state(first)?, "FINISHED");
    let job = env.job(second)?;
    assert_eq!(job["state"], "READY", "{job}");
    assert_eq!(job["attempts"].as_i64(), Some(0), "{job}");
    Ok(())
}

/// SIGTERM while a callback runs: it finishes (its job is FINISHED), nothing new starts, exit 0.
#[test]
fn watch_sigterm_lets_the_running_callback_finish_and_exits_0() -> TestResult {
    watcher_stops_gracefully_on("TERM")
}

/// SIGINT (Ctrl-C) while a callback runs: the same as SIGTERM.
#[test]
fn watch_sigint_lets_the_running_callback_finish_and_exits_0() -> TestResult {
    watcher_stops_gracefully_on("INT")
}

// ---- process --watch: limits

/// `--max-jobs 2` with 3 due jobs: runs the 2 oldest, then exits 0 by itself; the third stays READY.
#[test]
fn watch_max_jobs_runs_that_many_and_exits_0() -> TestResult {
    let env = env_recording_runs("", "")?;
    let ids: Vec<i64> = (0..3)
        .map(|i| env.publish("cb", &format!("{{\"i\":{i}}}")))
        .collect::<TestResult<_>>()?;
    let mut watcher = Watcher::start(&env, &["--max-jobs", "2", "--poll", "200ms"])?;
    let status = watcher.wait_exit(Duration::from_secs(15))?;
    watcher.expect_clean_exit(status, "--max-jobs 2")?;
    assert_eq!(env.state(ids[0])?, "FINISHED");
    assert_eq!(env.state(ids[1])?, "FINISHED");
    let job = env.job(ids[2])?;
    assert_eq!(job["state"], "READY", "{job}");
    assert_eq!(job["attempts"].as_i64(), Some(0), "{job}");
    assert_eq!(sorted_ids(&env.path("runs"))?, ids[..2]);
    Ok(())
}

/// `--max-time 1s`: exits 0 by itself after about a second, letting a callback that runs past
/// the limit finish.
#[test]
fn watch_max_time_exits_0_after_letting_the_running_callback_finish() -> TestResult {
    let env = env_recording_runs("", "\nsleep 1.5")?;
    let id = env.publish("cb", "{}")?;
    let start = Instant::now();
    let mut watcher = Watcher::start(&env, &["--max-time", "1s", "--poll", "200ms"])?;
    let status = watcher.wait_exit(Duration::from_secs(15))?;
    let took = start.elapsed();
    watcher.expect_clean_exit(status, "--max-time 1s")?;
    assert!(
        took >= Duration::from_secs(1),
        "it stopped before --max-time: {took:?}"
    );
    assert_eq!(
        env.state(id)?,
        "FINISHED",
        "the callback was allowed to finish"
    );
    assert_eq!(sorted_ids(&env.path("runs"))?, [id]);
    Ok(())
}

/// `--max-memory 1K` (bgq always uses more): exits 0 by itself, at once.
#[test]
fn watch_max_memory_exceeded_exits_0() -> TestResult {
    let env = env_recording_runs("", "")?;
    let mut watcher = Watcher::start(&env, &["--max-memory", "1K"])?;
    let status = watcher.wait_exit(Duration::from_secs(10))?;
    watcher.expect_clean_exit(status, "--max-memory 1K")
}

/// Every documented size form is accepted (binary units): the watcher runs and exits 0.
#[test]
fn watch_max_memory_accepts_bytes_and_binary_units() -> TestResult {
    let env = env_recording_runs("", "")?;
    for size in ["4096", "1K", "1KiB", "1MB", "1G", "1GiB"] {
        let mut watcher = Watcher::start(
            &env,
            &[
                "--max-memory",
                size,
                "--max-time",
                "300ms",
                "--poll",
                "100ms",
            ],
        )?;
        let status = watcher.wait_exit(Duration::from_secs(10))?;
        watcher.expect_clean_exit(status, &format!("--max-memory {size}"))?;
    }
    Ok(())
}

/// `--poll` and `--max-memory` without `--watch`, a bad size or a bad poll interval are usage
/// errors (exit 2) that run nothing.
#[test]
fn watch_only_options_and_bad_values_are_usage_errors() -> TestResult {
    let env = env_recording_runs("", "")?;
    let id = env.publish("cb", "{}")?;
    let refused: [&[&str]; 6] = [
        &["--poll", "1s"],
        &["--max-memory", "1G"],
        &["--watch", "--max-memory", "lots"],
        &["--watch", "--max-memory", "12Q"],
        &["--watch", "--max-memory", ""],
        &["--watch", "--poll", "often"],
    ];
    for args in refused {
        let out = env
            .bgq()
            .timeout(Duration::from_secs(10))
            .arg("process")
            .args(args)
            .output()?;
        expect_refused(&out, &[2]).map_err(|err| format!("process {args:?}: {err}"))?;
    }
    let job = env.job(id)?;
    assert_eq!(
        job["state"], "READY",
        "a refused command runs nothing: {job}"
    );
    assert!(read_lines(&env.path("runs")).is_empty());
    Ok(())
}

// ---- process --watch: retries, WAITING and delayed jobs

/// A TEMPORARILY_FAILED job is retried in the same watch run once its backoff (1 s) is over,
/// and not before.
#[test]
fn watch_retries_a_temporarily_failed_job_after_its_backoff() -> TestResult {
    let env = TestEnv::new("")?;
    let runs = env.path("runs");
    let marker = env.path("failed-once");
    let cb = env.script(
        "cb.sh",
        &format!(
            "echo \"$BGQ_ATTEMPT $(date +%s%N)\" >> {r}\nif [ ! -e {m} ]; then : > {m}; exit 75; fi\nexit 0",
            r = runs.display(),
            m = marker.display()
        ),
    )?;
    env.write_config(&callback_toml(
        "cb",
        &cb,
        "[callbacks.cb.retry]\ndelay = \"1s\"\njitter = 0.0",
    ))?;
    let mut watcher = Watcher::start(&env, &["--poll", "200ms"])?;
    let id = env.publish("cb", "{}")?;
    watcher.wait_finished(&env, id)?;
    watcher.expect_running("after the retry")?;
    watcher.stop()?;

    let job = env.job(id)?;
    assert_eq!(job["attempts"].as_i64(), Some(2), "{job}");
    let runs = pairs(&runs)?;
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!((runs[0].0.as_str(), runs[1].0.as_str()), ("1", "2"));
    let gap = runs[1].1.saturating_sub(runs[0].1);
    assert!(
        gap >= 900_000_000,
        "retried {gap} ns after the first attempt, before its 1 s backoff"
    );
    Ok(())
}

/// With `waiting_delay = "1s"`, a WAITING job runs again in the same watch run after about a
/// second (not at once), with the same attempt number, and finishes.
#[test]
fn watch_runs_a_waiting_job_again_after_waiting_delay() -> TestResult {
    let env = TestEnv::new("")?;
    let runs = env.path("runs");
    let marker = env.path("waited-once");
    let cb = env.script(
        "cb.sh",
        &format!(
            "echo \"$BGQ_ATTEMPT $(date +%s%N)\" >> {r}\nif [ ! -e {m} ]; then : > {m}; exit 76; fi\nexit 0",
            r = runs.display(),
            m = marker.display()
        ),
    )?;
    env.write_config(&format!(
        "waiting_delay = \"1s\"\n{}",
        callback_toml("cb", &cb, "")
    ))?;
    let mut watcher = Watcher::start(&env, &["--poll", "200ms"])?;
    let id = env.publish("cb", "{}")?;
    watcher.wait_finished(&env, id)?;
    watcher.expect_running("after the WAITING job finished")?;
    watcher.stop()?;

    let job = env.job(id)?;
    assert_eq!(
        job["attempts"].as_i64(),
        Some(1),
        "WAITING spends no attempt: {job}"
    );
    let runs = pairs(&runs)?;
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!((runs[0].0.as_str(), runs[1].0.as_str()), ("1", "1"));
    let gap = runs[1].1.saturating_sub(runs[0].1);
    assert!(
        gap >= 900_000_000,
        "ran again {gap} ns after WAITING, before waiting_delay (1s)"
    );
    Ok(())
}

/// A job published with `--delay 2s` while the watcher runs stays READY until it is due, then
/// the watcher runs it (not earlier).
#[test]
fn watch_runs_a_delayed_job_when_it_is_due_and_not_before() -> TestResult {
    let env = TestEnv::new("")?;
    let runs = env.path("runs");
    let cb = env.script(
        "cb.sh",
        &format!("echo \"$BGQ_JOB_ID $(date +%s%N)\" >> {}", runs.display()),
    )?;
    env.write_config(&callback_toml("cb", &cb, ""))?;
    let mut watcher = Watcher::start(&env, &["--poll", "200ms"])?;
    let warm_up = env.publish("cb", "{\"warm\":1}")?;
    watcher.wait_finished(&env, warm_up)?;

    let before = now_ns()?;
    let id = env.publish_with("cb", "{}", &["--delay", "2s"])?;
    assert_eq!(env.state(id)?, "READY", "not run before its delay");
    watcher.wait_finished(&env, id)?;
    watcher.expect_running("after the delayed job")?;
    watcher.stop()?;

    let ran: Vec<u128> = pairs(&runs)?
        .into_iter()
        .filter(|(job, _)| *job == id.to_string())
        .map(|(_, ns)| ns)
        .collect();
    assert_eq!(ran.len(), 1, "the delayed job ran once: {ran:?}");
    let after = ran[0].saturating_sub(before);
    assert!(
        after >= 1_900_000_000,
        "the delayed job ran {after} ns after publish, before its 2 s delay"
    );
    Ok(())
}

// ---- process --watch: standby behind another process

/// A second watcher on the same queue waits (starts nothing, stays running) while the first
/// runs, and takes over when the first gets SIGTERM; no job runs twice.
#[test]
fn a_second_watcher_stands_by_and_takes_over() -> TestResult {
    let env = env_recording_runs("", "\nsleep 0.2")?;
    let mut first = Watcher::start(&env, &["--poll", "200ms"])?;
    let mut ids = vec![env.publish("cb", "{\"n\":0}")?];
    first.wait_finished(&env, ids[0])?;

    let mut second = Watcher::start(&env, &["-v", "--poll", "200ms"])?;
    // The second watcher reaches its standby before more work arrives.
    second.wait_standby()?;
    for n in 1..4 {
        ids.push(env.publish("cb", &format!("{{\"n\":{n}}}"))?);
    }
    for &id in &ids {
        first.wait_finished(&env, id)?;
    }
    second.expect_running("while the first watcher holds the lock")?;
    first.expect_running("with a standby beside it")?;
    assert_eq!(sorted_ids(&env.path("runs"))?, ids, "each job ran once");

    first.stop()?;
    let late = env.publish("cb", "{\"n\":\"late\"}")?;
    second.wait_finished(&env, late)?;
    second.expect_running("after taking over")?;
    second.stop()?;
    ids.push(late);
    assert_eq!(sorted_ids(&env.path("runs"))?, ids, "each job ran once");
    Ok(())
}

/// A watcher waiting behind a plain `process` exits 0 on SIGTERM, and the job that `process`
/// runs is run once.
#[test]
fn a_standby_watcher_exits_0_on_sigterm() -> TestResult {
    let env = env_with_callbacks(
        "",
        &[(
            "slow",
            "echo $BGQ_JOB_ID >> @ROOT@/runs\n\
             i=0; while [ ! -f @ROOT@/release ] && [ $i -lt 500 ]; do sleep 0.02; i=$((i+1)); done",
        )],
    )?;
    let runs = env.path("runs");
    let id = env.publish("slow", "{}")?;
    let mut holder = env.spawn(&["process"])?;
    wait_for("the callback to start", Duration::from_secs(10), || {
        !read_lines(&runs).is_empty()
    })?;

    let mut standby = Watcher::start(&env, &["-v", "--poll", "200ms"])?;
    standby.wait_standby()?;
    let still_waiting = standby.running()?;
    let stopped = if still_waiting {
        standby.stop()
    } else {
        Ok(())
    };
    std::fs::write(env.path("release"), "")?;
    let holder_exit = holder.wait_exit(Duration::from_secs(15))?;

    assert!(
        still_waiting,
        "`--watch` must wait for the lock, not exit at once; stderr:\n{}",
        standby.stderr()
    );
    stopped?;
    assert!(holder_exit.success(), "{}", holder.stderr());
    assert_eq!(env.state(id)?, "FINISHED");
    assert_eq!(sorted_ids(&runs)?, [id], "the job ran once");
    Ok(())
}

// ---- process --watch: notices and status

/// A job that fails permanently while watching is sent to `notify` within ~15 s, and the watcher
/// goes on running jobs.
#[test]
fn watch_notifies_a_permanent_failure_without_stopping() -> TestResult {
    let env = TestEnv::new("")?;
    let notify = notify_line(&env)?;
    let bad = env.script("bad.sh", "echo broken\nexit 1")?;
    let ok = env.script("ok.sh", "exit 0")?;
    env.write_config(&format!(
        "{notify}\n{}{}",
        callback_toml("bad", &bad, ""),
        callback_toml("ok", &ok, "")
    ))?;
    let sent = env.path("notices.jsonl");
    let mut watcher = Watcher::start(&env, &["--poll", "200ms"])?;
    let id = env.publish("bad", "{}")?;
    wait_for(
        "the notice of the failed job",
        Duration::from_secs(20),
        || {
            // Stops early if the watcher exits; `expect_running` then reports it.
            !watcher.running().unwrap_or(false)
                || notices(&sent)
                    .is_ok_and(|all| all.iter().any(|notice| notice["id"].as_i64() == Some(id)))
        },
    )?;
    watcher.expect_running("after the failure")?;
    let all = notices(&sent)?;
    let notice = all
        .iter()
        .find(|notice| notice["id"].as_i64() == Some(id))
        .ok_or("no notice")?;
    assert_eq!(notice["state"], "PERMANENTLY_FAILED", "{notice}");

    let later = env.publish("ok", "{}")?;
    watcher.wait_finished(&env, later)?;
    watcher.stop()?;
    Ok(())
}

/// SIGTERM sends the notices still pending before the watcher exits.
#[test]
fn watch_sends_pending_notices_when_stopped() -> TestResult {
    let env = TestEnv::new("")?;
    let notify = notify_line(&env)?;
    let bad = env.script("bad.sh", "exit 1")?;
    env.write_config(&format!("{notify}\n{}", callback_toml("bad", &bad, "")))?;
    let mut watcher = Watcher::start(&env, &["--poll", "200ms"])?;
    let id = env.publish("bad", "{}")?;
    watcher.wait_state(&env, id, "PERMANENTLY_FAILED", Duration::from_secs(10))?;
    watcher.stop()?;
    let all = notices(&env.path("notices.jsonl"))?;
    assert!(
        all.iter().any(|notice| notice["id"].as_i64() == Some(id)),
        "the notice went out by the time the watcher exited: {all:?}"
    );
    Ok(())
}

/// `bgq status --stale-after 1s` is ok (exit 0) while a watcher has been running for longer,
/// and names `process --watch`.
#[test]
fn status_is_ok_while_a_watcher_runs_longer_than_stale_after() -> TestResult {
    let env = env_recording_runs("", "")?;
    let mut watcher = Watcher::start(&env, &["--poll", "200ms"])?;
    watcher.wait_lock_file(&env)?;
    // What is tested is a duration, a watcher that has run longer than `--stale-after`: that
    // takes time itself, not an event. (Nothing is asserted absent after it.)
    std::thread::sleep(Duration::from_secs(2));
    let out = env.bgq().args(["status", "--stale-after", "1s"]).output()?;
    watcher.stop()?;
    let stdout = String::from_utf8(out.stdout.clone())?;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        stdout.starts_with("ok: queue `general`"),
        "{}",
        describe(&out)
    );
    assert!(stdout.contains("process --watch"), "{}", describe(&out));
    Ok(())
}

/// While a watcher runs, a job due for longer than `--stale-after` (its callback is no longer
/// configured, so nothing runs it) still makes the queue stale.
#[test]
fn status_reports_a_job_due_too_long_even_while_a_watcher_runs() -> TestResult {
    let env = TestEnv::new("")?;
    let ok = env.script("ok.sh", "exit 0")?;
    let gone = env.script("gone.sh", "exit 0")?;
    env.write_config(&format!(
        "{}{}",
        callback_toml("ok", &ok, ""),
        callback_toml("gone", &gone, "")
    ))?;
    let id = env.publish("gone", "{}")?;
    let published = Instant::now();
    env.write_config(&callback_toml("ok", &ok, ""))?;
    let mut watcher = Watcher::start(&env, &["--poll", "200ms"])?;
    watcher.wait_lock_file(&env)?;
    // The watcher has seen the job and passed it by: it warns of it, then runs a job published
    // after it (it would have claimed the older job first).
    wait_for("the warning about `gone`", Duration::from_secs(10), || {
        watcher.stderr().contains("wait for callback `gone`")
    })?;
    let later = env.publish("ok", "{}")?;
    watcher.wait_finished(&env, later)?;
    // Due for longer than `--stale-after` (1 s): that takes time itself, not an event.
    std::thread::sleep(Duration::from_secs(2).saturating_sub(published.elapsed()));
    let out = env.bgq().args(["status", "--stale-after", "1s"]).output()?;
    watcher.stop()?;
    assert_eq!(env.state(id)?, "READY", "its callback is not configured");
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stdout = String::from_utf8(out.stdout.clone())?;
    let due = format!("stale: queue `general`: job {id} has been due since ");
    assert!(
        stdout.lines().any(|line| line.starts_with(&due)),
        "{}",
        describe(&out)
    );
    Ok(())
}

// ---- process --watch: recovery at start

/// A job left PROCESSING by a SIGKILLed `process` is recovered by a watcher when it starts
/// (the orphaned callback is killed, the lost attempt counted) and run again.
#[test]
fn watch_recovers_orphans_when_it_starts() -> TestResult {
    let env = TestEnv::new("")?;
    let (hang, pidfile) = hanging_callback(&env, "hang.sh")?;
    env.write_config(&callback_toml("cb", &hang, ""))?;
    let id = env.publish("cb", "{}")?;
    let mut killed = env.spawn(&["process"])?;
    wait_for("the callback to start", Duration::from_secs(10), || {
        pidfile.exists()
    })?;
    send_signal(killed.pid(), "KILL")?;
    killed.wait_exit(Duration::from_secs(5))?;
    let orphan: i32 = std::fs::read_to_string(&pidfile)?.trim().parse()?;
    let _guard = KillOnDrop(vec![orphan]);
    assert_eq!(env.state(id)?, "PROCESSING");

    let done = env.path("done");
    let finish = env.script("ok.sh", &format!("echo $BGQ_JOB_ID >> {}", done.display()))?;
    env.write_config(&callback_toml("cb", &finish, ""))?;
    let mut watcher = Watcher::start(&env, &["--poll", "200ms"])?;
    watcher.wait_finished(&env, id)?;
    wait_for(
        "recovery to kill the orphaned callback",
        Duration::from_secs(5),
        || !alive(orphan),
    )?;
    watcher.expect_running("after recovering")?;
    watcher.stop()?;

    let job = env.job(id)?;
    assert_eq!(
        job["attempts"].as_i64(),
        Some(2),
        "the lost attempt counts: {job}"
    );
    assert_eq!(sorted_ids(&done)?, [id]);
    let stderr = watcher.stderr();
    assert!(
        stderr.contains(&format!("recovered job {id}")),
        "recovery is said on stderr: {stderr}"
    );
    Ok(())
}

// ---- process --watch: work it notices at once, whatever `--poll` says

/// Contract (`--after`): "When the last named job finishes, the dependent job becomes due
/// (within a second or so; the same `process` run picks it up)", also under `--watch` with a
/// long `--poll` (its own commit frees the dependent; no poll needed).
#[test]
fn watch_starts_a_dependent_soon_after_its_parent_even_with_a_long_poll() -> TestResult {
    let env = env_with_callbacks("", &[("cb", TIMED_BY_PAYLOAD)])?;
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
    let env = env_with_callbacks("", &[("cb", TIMED_BY_PAYLOAD)])?;
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

/// A watcher of a database reached through a symlink wakes on publishes like any other: it
/// watches the write-ahead log beside the real file, where SQLite writes it, and so warns of
/// nothing.
#[test]
fn watch_on_a_symlinked_database_watches_the_real_write_ahead_log() -> TestResult {
    let env = env_with_callbacks("", &[("cb", TIMED_BY_PAYLOAD)])?;
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
