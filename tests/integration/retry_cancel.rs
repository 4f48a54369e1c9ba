//! `bgq retry` (by id, by `--state`, `--dry-run`, new parameters with `--json`/`--raw`, beside a
//! running `process`) and `bgq cancel` of jobs that are not running (READY jobs, refusals,
//! serial groups; a running job needs `--kill`, whose tests are in `cancel_kill.rs`).

use std::fs;
use std::process::Output;
use std::time::Duration;

use crate::support::{
    TestEnv, TestResult, attempts, describe, env_with_callbacks, expect_error, expect_refused,
    listed_ids, read_lines, running_job, stdout_of, wait_for,
};

/// A callback that saves its stdin to `stdin-<id>`, logs `<id> <attempt>` to `runs`, exits 1
/// (PERMANENTLY_FAILED) the first time it runs a job and 0 every later time.
const FLAKY: &str = "cat > \"@ROOT@/stdin-$BGQ_JOB_ID\"
echo \"$BGQ_JOB_ID $BGQ_ATTEMPT\" >> \"@ROOT@/runs\"
if [ ! -e \"@ROOT@/failed-$BGQ_JOB_ID\" ]; then touch \"@ROOT@/failed-$BGQ_JOB_ID\"; exit 1; fi
exit 0";

/// A callback that logs `<id>` to `runs` and exits 0.
const LOG_OK: &str = "echo \"$BGQ_JOB_ID\" >> \"@ROOT@/runs\"\nexit 0";

/// A callback that logs `<id>` to `runs`, touches `started-<id>`, then waits (at most ~15 s) for
/// the file `release` to appear and exits 0.
const BLOCK: &str = "echo \"$BGQ_JOB_ID\" >> \"@ROOT@/runs\"
touch \"@ROOT@/started-$BGQ_JOB_ID\"
i=0
while [ ! -e \"@ROOT@/release\" ] && [ $i -lt 300 ]; do sleep 0.05; i=$((i+1)); done
exit 0";

/// Runs `bgq ARGS` and returns its output without checking anything.
fn run(env: &TestEnv, args: &[&str]) -> TestResult<Output> {
    Ok(env.bgq().args(args).output()?)
}

/// One `retried job ...` line per `(id, callback, from)`, each ending in a newline.
fn retried(prefix: &str, jobs: &[(i64, &str, &str)], suffix: &str) -> String {
    jobs.iter()
        .map(|(id, cb, from)| format!("{prefix} job {id} ({cb}): {from} -> READY{suffix}\n"))
        .collect()
}

/// What the [`FLAKY`] callback last got on stdin for job `id`.
fn stdin_of(env: &TestEnv, id: i64) -> TestResult<Vec<u8>> {
    fs::read(env.path(&format!("stdin-{id}"))).map_err(|err| format!("stdin-{id}: {err}").into())
}

/// An env with the [`FLAKY`] callback `cb` and the [`LOG_OK`] callback `ok`.
fn flaky_env() -> TestResult<TestEnv> {
    env_with_callbacks("", &[("cb", FLAKY), ("ok", LOG_OK)])
}

/// Publishes one `cb` job per payload and runs `process` once: each ends PERMANENTLY_FAILED.
fn failed_jobs(env: &TestEnv, payloads: &[&str]) -> TestResult<Vec<i64>> {
    let ids = payloads
        .iter()
        .map(|json| env.publish("cb", json))
        .collect::<TestResult<Vec<i64>>>()?;
    env.process(&[])?;
    for &id in &ids {
        let state = env.state(id)?;
        if state != "PERMANENTLY_FAILED" {
            return Err(format!("setup: job {id} is {state}, expected PERMANENTLY_FAILED").into());
        }
    }
    Ok(ids)
}

/// Asserts that each of `ids` is in `state`.
fn assert_states(env: &TestEnv, ids: &[i64], state: &str) -> TestResult {
    for &id in ids {
        assert_eq!(env.state(id)?, state, "job {id}");
    }
    Ok(())
}

// ---- retry by id

/// A PERMANENTLY_FAILED job retried by id is READY with 0 attempts and then runs as attempt 1.
#[test]
fn retry_brings_a_failed_job_back_and_it_runs_as_attempt_one() -> TestResult {
    let env = flaky_env()?;
    let [id] = failed_jobs(&env, &["{}"])?[..] else {
        return Err("setup".into());
    };
    assert_eq!(attempts(&env, id)?, 1);

    let out = stdout_of(&env, &["retry", &id.to_string()])?;
    assert_eq!(
        out,
        format!("retried job {id} (cb): PERMANENTLY_FAILED -> READY\n")
    );
    assert_eq!(env.state(id)?, "READY");
    assert_eq!(attempts(&env, id)?, 0);

    env.process(&[])?;
    assert_eq!(env.state(id)?, "FINISHED");
    assert_eq!(attempts(&env, id)?, 1);
    assert_eq!(
        read_lines(&env.path("runs")),
        [format!("{id} 1"), format!("{id} 1")],
        "the retried run sees BGQ_ATTEMPT=1 again"
    );
    Ok(())
}

/// Several ids given in any order are retried together, one line each, in id order.
#[test]
fn retry_of_several_ids_prints_one_line_each_in_id_order() -> TestResult {
    let env = flaky_env()?;
    let ids = failed_jobs(&env, &["{}", "{}", "{}"])?;
    let out = stdout_of(
        &env,
        &[
            "retry",
            &ids[2].to_string(),
            &ids[0].to_string(),
            &ids[1].to_string(),
        ],
    )?;
    let expected: Vec<(i64, &str, &str)> = ids
        .iter()
        .map(|&id| (id, "cb", "PERMANENTLY_FAILED"))
        .collect();
    assert_eq!(out, retried("retried", &expected, ""));
    assert_states(&env, &ids, "READY")?;
    Ok(())
}

/// An unknown id among several refuses the whole command: the known ones stay failed.
#[test]
fn retry_with_an_unknown_id_changes_nothing() -> TestResult {
    let env = flaky_env()?;
    let ids = failed_jobs(&env, &["{}", "{}"])?;
    let out = run(
        &env,
        &["retry", &ids[0].to_string(), "999", &ids[1].to_string()],
    )?;
    expect_error(&out, 2, &["no job 999"])?;
    assert_states(&env, &ids, "PERMANENTLY_FAILED")?;
    Ok(())
}

/// A FINISHED job cannot be retried, and a failed job named with it is left alone.
#[test]
fn retry_refuses_a_finished_job() -> TestResult {
    let env = flaky_env()?;
    let done = env.publish("ok", "{}")?;
    let [failed] = failed_jobs(&env, &["{}"])?[..] else {
        return Err("setup".into());
    };
    assert_eq!(env.state(done)?, "FINISHED");

    let out = run(&env, &["retry", &done.to_string()])?;
    expect_error(&out, 2, &[&format!("job {done} is FINISHED")])?;
    let out = run(&env, &["retry", &failed.to_string(), &done.to_string()])?;
    expect_error(&out, 2, &["FINISHED"])?;
    assert_eq!(env.state(failed)?, "PERMANENTLY_FAILED");
    assert_eq!(env.state(done)?, "FINISHED");
    Ok(())
}

/// A running job cannot be retried; the error points to `cancel --kill` and the run goes on.
#[test]
fn retry_refuses_a_running_job_and_points_to_cancel_kill() -> TestResult {
    let env = env_with_callbacks("", &[("block", BLOCK)])?;
    let (id, mut process) = running_job(&env)?;

    let out = run(&env, &["retry", &id.to_string()])?;
    let refused = expect_error(&out, 2, &[&format!("job {id} is running"), "cancel --kill"]);
    let state = env.state(id);
    fs::write(env.path("release"), "")?;
    refused?;
    assert_eq!(state?, "PROCESSING");

    let status = process.wait_exit(Duration::from_secs(20))?;
    assert_eq!(status.code(), Some(0), "{}", process.stderr());
    assert_eq!(env.state(id)?, "FINISHED");
    Ok(())
}

/// A CANCELLED job retried by id is READY again and runs on the next `process`.
#[test]
fn retry_of_a_cancelled_job_runs_it() -> TestResult {
    let env = flaky_env()?;
    let id = env.publish("ok", "{}")?;
    stdout_of(&env, &["cancel", &id.to_string()])?;
    env.process(&[])?;
    assert_eq!(read_lines(&env.path("runs")), Vec::<String>::new());

    let out = stdout_of(&env, &["retry", &id.to_string()])?;
    assert_eq!(out, format!("retried job {id} (ok): CANCELLED -> READY\n"));
    assert_eq!(env.state(id)?, "READY");
    env.process(&[])?;
    assert_eq!(env.state(id)?, "FINISHED");
    assert_eq!(read_lines(&env.path("runs")), [id.to_string()]);
    Ok(())
}

/// A TEMPORARILY_FAILED job in backoff runs on the very next `process` after a retry, as attempt 1.
#[test]
fn retry_of_a_job_in_backoff_runs_it_at_once_from_attempt_one() -> TestResult {
    let env = env_with_callbacks(
        "[retry]\ndelay = \"1m\"\njitter = 0.0",
        &[(
            "cb",
            "echo \"$BGQ_ATTEMPT\" >> \"@ROOT@/runs\"
if [ ! -e \"@ROOT@/failed\" ]; then touch \"@ROOT@/failed\"; exit 75; fi
exit 0",
        )],
    )?;
    let id = env.publish("cb", "{}")?;
    env.process(&[])?;
    env.process(&[])?;
    assert_eq!(read_lines(&env.path("runs")), ["1"], "in backoff for 1m");
    assert_eq!(env.state(id)?, "TEMPORARILY_FAILED");

    let out = stdout_of(&env, &["retry", &id.to_string()])?;
    assert_eq!(
        out,
        format!("retried job {id} (cb): TEMPORARILY_FAILED -> READY\n")
    );
    assert_eq!(attempts(&env, id)?, 0);
    env.process(&[])?;
    assert_eq!(read_lines(&env.path("runs")), ["1", "1"]);
    assert_eq!(env.state(id)?, "FINISHED");
    assert_eq!(attempts(&env, id)?, 1);
    Ok(())
}

// ---- retry by state

/// Callbacks `a` and `b` that always fail (exit 1) and `ok` that finishes; returns
/// the env and the ids of: `a`@general, `b`@q2, `a`@q2 (all PERMANENTLY_FAILED), a FINISHED job
/// and a CANCELLED job.
fn failed_everywhere() -> TestResult<(TestEnv, [i64; 5])> {
    let env = env_with_callbacks("", &[("a", "exit 1"), ("b", "exit 1"), ("ok", "exit 0")])?;
    let a_general = env.publish("a", "{}")?;
    let b_q2 = env.publish_with("b", "{}", &["--queue", "q2"])?;
    let a_q2 = env.publish_with("a", "{}", &["--queue", "q2"])?;
    let finished = env.publish("ok", "{}")?;
    let cancelled = env.publish("ok", "{}")?;
    stdout_of(&env, &["cancel", &cancelled.to_string()])?;
    env.process(&[])?;
    env.process(&["--queue", "q2"])?;
    assert_states(&env, &[a_general, b_q2, a_q2], "PERMANENTLY_FAILED")?;
    assert_eq!(env.state(finished)?, "FINISHED");
    assert_eq!(env.state(cancelled)?, "CANCELLED");
    Ok((env, [a_general, b_q2, a_q2, finished, cancelled]))
}

/// `--state PERMANENTLY_FAILED` retries every such job of every queue, and nothing else.
#[test]
fn retry_by_state_retries_every_match_across_queues() -> TestResult {
    let (env, [a_general, b_q2, a_q2, finished, cancelled]) = failed_everywhere()?;
    let out = stdout_of(&env, &["retry", "--state", "PERMANENTLY_FAILED"])?;
    let expected = [
        (a_general, "a", "PERMANENTLY_FAILED"),
        (b_q2, "b", "PERMANENTLY_FAILED"),
        (a_q2, "a", "PERMANENTLY_FAILED"),
    ];
    assert_eq!(out, retried("retried", &expected, ""));
    assert_states(&env, &[a_general, b_q2, a_q2], "READY")?;
    assert_eq!(env.state(finished)?, "FINISHED");
    assert_eq!(env.state(cancelled)?, "CANCELLED");

    // Several states: only the CANCELLED one is left to match.
    let out = stdout_of(
        &env,
        &[
            "retry",
            "--state",
            "CANCELLED",
            "--state",
            "PERMANENTLY_FAILED",
        ],
    )?;
    assert_eq!(
        out,
        format!("retried job {cancelled} (ok): CANCELLED -> READY\n")
    );
    assert_eq!(env.state(cancelled)?, "READY");
    Ok(())
}

/// `--callback` and `--queue` narrow `--state`; no match prints nothing and exits 0.
#[test]
fn retry_by_state_narrows_by_callback_and_queue() -> TestResult {
    let (env, [a_general, b_q2, a_q2, _, _]) = failed_everywhere()?;
    let pf = "PERMANENTLY_FAILED";

    let out = stdout_of(
        &env,
        &[
            "retry",
            "--state",
            pf,
            "--callback",
            "b",
            "--queue",
            "general",
        ],
    )?;
    assert_eq!(out, "", "no match: no output");
    assert_states(&env, &[a_general, b_q2, a_q2], pf)?;

    let out = stdout_of(
        &env,
        &["retry", "--state", pf, "--callback", "a", "--queue", "q2"],
    )?;
    assert_eq!(out, retried("retried", &[(a_q2, "a", pf)], ""));
    assert_states(&env, &[a_general, b_q2], pf)?;

    let out = stdout_of(&env, &["retry", "--state", pf, "--callback", "b"])?;
    assert_eq!(out, retried("retried", &[(b_q2, "b", pf)], ""));
    assert_eq!(env.state(a_general)?, pf);

    let out = stdout_of(&env, &["retry", "--state", pf, "--queue", "general"])?;
    assert_eq!(out, retried("retried", &[(a_general, "a", pf)], ""));
    assert_states(&env, &[a_general, b_q2, a_q2], "READY")?;

    let out = stdout_of(&env, &["retry", "--state", pf])?;
    assert_eq!(out, "", "nothing left to retry");
    Ok(())
}

/// `--dry-run` prints `would retry` lines, by state or by id, and changes nothing.
#[test]
fn retry_dry_run_prints_what_it_would_do_and_changes_nothing() -> TestResult {
    let (env, [a_general, b_q2, a_q2, _, _]) = failed_everywhere()?;
    let pf = "PERMANENTLY_FAILED";
    let before = env.jobs()?;

    let out = stdout_of(&env, &["retry", "--state", pf, "--dry-run"])?;
    let expected = [(a_general, "a", pf), (b_q2, "b", pf), (a_q2, "a", pf)];
    assert_eq!(out, retried("would retry", &expected, ""));

    let out = stdout_of(&env, &["retry", &b_q2.to_string(), "--dry-run"])?;
    assert_eq!(out, retried("would retry", &[(b_q2, "b", pf)], ""));

    assert_eq!(env.jobs()?, before, "a dry run changes nothing");
    Ok(())
}

/// `--state FINISHED`/`PROCESSING`, ids with `--state`, and neither are usage errors.
#[test]
fn retry_rejects_bad_selections() -> TestResult {
    let (env, [a_general, _, _, finished, _]) = failed_everywhere()?;
    let before = env.jobs()?;
    let id = a_general.to_string();
    for args in [
        &["retry", "--state", "FINISHED"][..],
        &["retry", "--state", "PROCESSING"],
        &["retry", &id, "--state", "PERMANENTLY_FAILED"],
        &["retry"],
    ] {
        let out = run(&env, args)?;
        expect_refused(&out, &[2]).map_err(|err| format!("{args:?}: {err}"))?;
    }
    assert_eq!(env.jobs()?, before, "refusals change nothing");
    assert_eq!(env.state(finished)?, "FINISHED");
    Ok(())
}

// ---- retry with new parameters

/// `retry ID --json TEXT` replaces the parameters the callback gets on its next run.
#[test]
fn retry_with_json_replaces_the_parameters() -> TestResult {
    let env = flaky_env()?;
    let [id] = failed_jobs(&env, &[r#"{"broken":1}"#])?[..] else {
        return Err("setup".into());
    };
    assert_eq!(stdin_of(&env, id)?, b"{\"broken\":1}\n");

    let out = stdout_of(
        &env,
        &["retry", &id.to_string(), "--json", r#"{"fixed":true}"#],
    )?;
    assert_eq!(
        out,
        format!("retried job {id} (cb): PERMANENTLY_FAILED -> READY, with new parameters\n")
    );
    assert_eq!(env.state(id)?, "READY");
    env.process(&[])?;
    assert_eq!(env.state(id)?, "FINISHED");
    assert_eq!(stdin_of(&env, id)?, b"{\"fixed\":true}\n");
    Ok(())
}

/// `--json @FILE` and `--json -` read the new parameters from a file and from stdin.
#[test]
fn retry_with_json_from_a_file_and_stdin() -> TestResult {
    let env = flaky_env()?;
    let ids = failed_jobs(&env, &["{}", "{}"])?;
    let file = env.path("new.json");
    fs::write(&file, "{\n  \"from\": \"file\"\n}\n")?;

    let out = stdout_of(
        &env,
        &[
            "retry",
            &ids[0].to_string(),
            "--json",
            &format!("@{}", file.display()),
        ],
    )?;
    assert!(out.ends_with(", with new parameters\n"), "{out:?}");
    let out = env
        .bgq()
        .args(["retry", &ids[1].to_string(), "--json", "-"])
        .write_stdin("[1, \"from stdin\"]\n")
        .output()?;
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        String::from_utf8(out.stdout)?,
        format!(
            "retried job {} (cb): PERMANENTLY_FAILED -> READY, with new parameters\n",
            ids[1]
        )
    );

    env.process(&[])?;
    assert_states(&env, &ids, "FINISHED")?;
    assert_eq!(stdin_of(&env, ids[0])?, b"{\"from\":\"file\"}\n");
    assert_eq!(stdin_of(&env, ids[1])?, b"[1,\"from stdin\"]\n");
    Ok(())
}

/// Invalid JSON, or `--json` with several ids or `--state`, is refused and the old parameters stay.
#[test]
fn retry_with_bad_new_parameters_changes_nothing() -> TestResult {
    let env = flaky_env()?;
    let ids = failed_jobs(&env, &[r#"{"old":1}"#, r#"{"old":2}"#])?;
    let first = ids[0].to_string();
    let second = ids[1].to_string();

    let out = run(&env, &["retry", &first, "--json", "{\"fixed\":"])?;
    expect_error(&out, 2, &[])?;
    let out = run(&env, &["retry", &first, &second, "--json", "{}"])?;
    expect_refused(&out, &[2])?;
    let out = run(
        &env,
        &["retry", "--state", "PERMANENTLY_FAILED", "--json", "{}"],
    )?;
    expect_refused(&out, &[2])?;
    assert_states(&env, &ids, "PERMANENTLY_FAILED")?;

    // A plain retry now runs them with the parameters they were published with.
    stdout_of(&env, &["retry", &first, &second])?;
    env.process(&[])?;
    assert_states(&env, &ids, "FINISHED")?;
    assert_eq!(stdin_of(&env, ids[0])?, b"{\"old\":1}\n");
    assert_eq!(stdin_of(&env, ids[1])?, b"{\"old\":2}\n");
    Ok(())
}

/// `retry ID --raw FILE` replaces the parameters with the file's exact bytes.
#[test]
fn retry_with_raw_replaces_the_parameters_byte_for_byte() -> TestResult {
    let env = flaky_env()?;
    let [id] = failed_jobs(&env, &[r#"{"json":true}"#])?[..] else {
        return Err("setup".into());
    };
    let bytes: Vec<u8> = vec![0, 0xff, 0xfe, b'\n', b'{', 0x80, b' ', b'x'];
    let file = env.path("payload.bin");
    fs::write(&file, &bytes)?;

    let out = stdout_of(
        &env,
        &[
            "retry",
            &id.to_string(),
            "--raw",
            &file.display().to_string(),
        ],
    )?;
    assert_eq!(
        out,
        format!("retried job {id} (cb): PERMANENTLY_FAILED -> READY, with new parameters\n")
    );
    env.process(&[])?;
    assert_eq!(env.state(id)?, "FINISHED");
    assert_eq!(stdin_of(&env, id)?, bytes);
    Ok(())
}

// ---- cancel

/// A cancelled READY job never runs, and `list --state cancelled` shows it.
#[test]
fn cancel_of_a_ready_job_keeps_it_from_running() -> TestResult {
    let env = env_with_callbacks("", &[("ok", LOG_OK)])?;
    let cancelled = env.publish("ok", "{}")?;
    let kept = env.publish("ok", "{}")?;

    let out = stdout_of(&env, &["cancel", &cancelled.to_string()])?;
    assert_eq!(
        out,
        format!("cancelled job {cancelled} (ok): READY -> CANCELLED\n")
    );
    assert_eq!(env.state(cancelled)?, "CANCELLED");
    env.process(&[])?;
    env.process(&[])?;
    assert_eq!(
        read_lines(&env.path("runs")),
        [kept.to_string()],
        "only the other job ran"
    );
    assert_eq!(env.state(cancelled)?, "CANCELLED");
    assert_eq!(env.state(kept)?, "FINISHED");
    assert_eq!(listed_ids(&env, &["--state", "cancelled"])?, [cancelled]);
    Ok(())
}

/// Cancelling a CANCELLED job again says so and exits 0.
#[test]
fn cancel_twice_says_it_was_already_cancelled() -> TestResult {
    let env = env_with_callbacks("", &[("ok", LOG_OK)])?;
    let id = env.publish("ok", "{}")?;
    stdout_of(&env, &["cancel", &id.to_string()])?;
    let out = stdout_of(&env, &["cancel", &id.to_string()])?;
    assert_eq!(out, format!("job {id} (ok) was already CANCELLED\n"));
    assert_eq!(env.state(id)?, "CANCELLED");
    Ok(())
}

/// A FINISHED or unknown id refuses the whole cancel: a READY job named with it stays READY.
#[test]
fn cancel_refuses_finished_and_unknown_ids_and_changes_nothing() -> TestResult {
    let env = env_with_callbacks("", &[("ok", LOG_OK)])?;
    let done = env.publish("ok", "{}")?;
    env.process(&[])?;
    let ready = env.publish("ok", "{}")?;
    assert_eq!(env.state(done)?, "FINISHED");

    let out = run(&env, &["cancel", &done.to_string()])?;
    expect_error(&out, 2, &[&format!("job {done} is FINISHED")])?;
    let out = run(&env, &["cancel", &ready.to_string(), &done.to_string()])?;
    expect_error(&out, 2, &["FINISHED"])?;
    let out = run(&env, &["cancel", &ready.to_string(), "999"])?;
    expect_error(&out, 2, &["999"])?;

    assert_eq!(env.state(ready)?, "READY");
    assert_eq!(env.state(done)?, "FINISHED");
    Ok(())
}

/// A cancelled job does not hold back the later jobs of its serial group.
#[test]
fn a_cancelled_job_does_not_hold_its_serial_group() -> TestResult {
    let env = env_with_callbacks("", &[("ok", LOG_OK)])?;
    let first = env.publish_with("ok", "{}", &["--serial-group", "g"])?;
    let second = env.publish_with("ok", "{}", &["--serial-group", "g"])?;
    stdout_of(&env, &["cancel", &first.to_string()])?;
    env.process(&[])?;
    assert_eq!(read_lines(&env.path("runs")), [second.to_string()]);
    assert_eq!(env.state(second)?, "FINISHED");
    assert_eq!(env.state(first)?, "CANCELLED");
    Ok(())
}

/// A running job is not cancelled without `--kill`; it keeps running and finishes.
#[test]
fn cancel_of_a_running_job_needs_kill() -> TestResult {
    let env = env_with_callbacks("", &[("block", BLOCK)])?;
    let (id, mut process) = running_job(&env)?;

    let out = run(&env, &["cancel", &id.to_string()])?;
    let refused = expect_error(&out, 2, &["is running", "--kill"]);
    let state = env.state(id);
    fs::write(env.path("release"), "")?;
    refused?;
    assert_eq!(state?, "PROCESSING");

    let status = process.wait_exit(Duration::from_secs(20))?;
    assert_eq!(status.code(), Some(0), "{}", process.stderr());
    assert_eq!(env.state(id)?, "FINISHED");
    Ok(())
}

// ---- races with a running `process`

/// A retried job never runs beside a younger job of its serial group that is running: retry
/// puts it back in its old place, ahead of the running one, and the group still runs one job at
/// a time; the retried job runs once the younger one has ended.
#[test]
fn a_retried_job_waits_for_the_running_job_of_its_group() -> TestResult {
    let env = env_with_callbacks(
        "",
        &[
            ("block", BLOCK),
            ("bad", "exit 1"),
            ("mark", "echo $BGQ_JOB_ID >> @ROOT@/marks\nexit 1"),
        ],
    )?;
    let older = env.publish_with("bad", "{}", &["--serial-group", "g"])?;
    // A job of no group that fails too, and is retried after the older one.
    let marker = env.publish("mark", "{}")?;
    env.process(&[])?;
    assert_eq!(env.state(older)?, "PERMANENTLY_FAILED");
    assert_eq!(env.state(marker)?, "PERMANENTLY_FAILED");
    let younger = env.publish_with("block", "{}", &["--serial-group", "g"])?;
    let mut process = env.spawn(&["process"])?;
    let started = env.path(&format!("started-{younger}"));
    wait_for("the younger job to start", Duration::from_secs(15), || {
        started.exists()
    })?;
    stdout_of(&env, &["retry", &older.to_string()])?;
    stdout_of(&env, &["retry", &marker.to_string()])?;
    // The running `process` looks for newly due jobs every second. Once it has started the
    // marker, retried after the older job and behind it in the queue, it has looked at the
    // older one too, and must have held it back.
    let marks = env.path("marks");
    let looked = wait_for("the retried marker to run", Duration::from_secs(15), || {
        read_lines(&marks).len() == 2
    });
    let held = env.state(older);
    fs::write(env.path("release"), "")?;
    looked?;
    assert_eq!(
        held?, "READY",
        "the retried job must wait for the running one"
    );
    let status = process.wait_exit(Duration::from_secs(20))?;
    assert_eq!(status.code(), Some(0), "{}", process.stderr());
    assert_eq!(env.state(younger)?, "FINISHED");
    let retried = env.job(older)?;
    assert_eq!(
        retried["state"], "PERMANENTLY_FAILED",
        "it ran after: {retried}"
    );
    assert_eq!(retried["attempts"], 1);
    Ok(())
}

/// A job left marked for cancelling by a `process` of bgq 3 (which ended it PERMANENTLY_FAILED
/// without knowing the mark) runs normally once retried: retry and claim clear the mark.
#[test]
fn a_retried_job_left_marked_by_an_older_run_is_not_cancelled() -> TestResult {
    let env = env_with_callbacks("", &[("work", "sleep 0.5\nexit 0")])?;
    let Some(db) = env.sqlite_file() else {
        return Ok(());
    };
    let id = env.publish("work", "{}")?;
    let conn = rusqlite::Connection::open(&db)?;
    conn.execute(
        "UPDATE jobs SET state = 'PERMANENTLY_FAILED', attempts = 1, cancel_requested = 1, due = 0
         WHERE id = ?1",
        [id],
    )?;
    drop(conn);
    stdout_of(&env, &["retry", &id.to_string()])?;
    let stderr = env.process(&[])?;
    assert_eq!(env.state(id)?, "FINISHED", "{stderr}");
    Ok(())
}
