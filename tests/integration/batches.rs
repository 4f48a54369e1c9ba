//! Batches (SPEC section 11): a batch completes only once sealed and with nothing unfinished,
//! publishing its on-complete job (and on-success only when every job FINISHED) exactly once,
//! with the summary on stdin; a sealed batch takes jobs only from its running jobs, so a
//! planner plans in chunks; `list`, `cancel` and `retry --batch` steer it, and a retry after
//! completion reopens nothing. Every test runs on each backend.

use serde_json::{Value, json};

use crate::support::{
    TestEnv, TestResult, assert_contains, env_with_callbacks, expect_error, explain, printed_id,
    read_lines, stdout_of,
};

/// Callbacks: `task` (finishes; `"fail"` fails it), `done` and `ok` (append their stdin, the
/// summary, to done.log and ok.log), and `plan`, which publishes `$CHUNK` tasks into its
/// batch and, below chunk `$LAST`, the planner of the next chunk.
fn batch_env(chunk: usize, last: usize) -> TestResult<TestEnv> {
    let plan = format!(
        r#"read -r line
n=$(printf '%s' "$line" | tr -cd 0-9)
seq 1 {chunk} | sed 's/.*/{{"t":&}}/' | "$BGQ_BIN" publish task --jsonl - --batch "$BGQ_BATCH_ID" > /dev/null || exit 1
if [ "$n" -lt {last} ]; then
  "$BGQ_BIN" publish plan --json "{{\"chunk\":$((n + 1))}}" --batch "$BGQ_BATCH_ID" > /dev/null || exit 1
fi"#
    );
    env_with_callbacks(
        "",
        &[
            (
                "task",
                r#"read -r line; [ "$line" = '"fail"' ] && exit 1; exit 0"#,
            ),
            ("done", "cat >> @ROOT@/done.log"),
            ("ok", "cat >> @ROOT@/ok.log"),
            ("plan", &plan),
        ],
    )
}

/// `bgq batch new ARGS`, its id.
fn new_batch(env: &TestEnv, args: &[&str]) -> TestResult<i64> {
    printed_id(&env.bgq().args(["batch", "new"]).args(args).output()?)
}

/// `bgq batch show ID --json`.
fn show(env: &TestEnv, id: i64) -> TestResult<Value> {
    let text = stdout_of(env, &["batch", "show", &id.to_string(), "--json"])?;
    Ok(serde_json::from_str(text.trim())?)
}

/// The summaries the completion callback `log` (done or ok) received, one per run.
fn summaries(env: &TestEnv, log: &str) -> TestResult<Vec<Value>> {
    read_lines(&env.path(log))
        .iter()
        .map(|line| Ok(serde_json::from_str(line)?))
        .collect()
}

/// Runs `process` (with `args`) until batch `id` is complete, at most `runs` times.
fn drain(env: &TestEnv, id: i64, args: &[&str], runs: usize) -> TestResult<Value> {
    for _ in 0..runs {
        env.process(args)?;
        let batch = show(env, id)?;
        if batch["phase"] == "complete" {
            // The completion jobs were published with the last outcome: one more run runs them.
            env.process(args)?;
            return show(env, id);
        }
    }
    Err(format!(
        "batch {id} did not complete in {runs} runs: {}",
        show(env, id)?
    )
    .into())
}

/// Jobs that all ended before the seal do not complete the batch: the seal does, in its own
/// transaction, and the completion jobs get the summary, once.
#[test]
fn a_batch_completes_only_once_sealed_and_then_once() -> TestResult {
    let env = batch_env(1, 0)?;
    let id = new_batch(
        &env,
        &[
            "--on-complete",
            "done",
            "--on-complete-json",
            r#"{"report": "r1"}"#,
            "--on-success",
            "ok",
            "--description",
            "nightly refresh",
        ],
    )?;
    let ids: Vec<i64> = (0..3)
        .map(|_| env.publish_with("task", "{}", &["--batch", &id.to_string()]))
        .collect::<TestResult<_>>()?;
    env.process(&[])?;
    env.process(&[])?;
    for job in &ids {
        assert_eq!(env.state(*job)?, "FINISHED");
    }
    let open = show(&env, id)?;
    assert_eq!(open["phase"], "open", "{open}");
    assert_eq!(open["counts"]["FINISHED"], 3);
    assert!(
        summaries(&env, "done.log")?.is_empty(),
        "not sealed: no completion"
    );
    let sealed = stdout_of(&env, &["batch", "seal", &id.to_string()])?;
    assert_contains(&sealed, &["sealed batch", "complete"])?;
    env.process(&[])?;
    env.process(&[])?;
    let expected = json!({
        "batch": id, "description": "nightly refresh",
        "counts": {"FINISHED": 3, "PERMANENTLY_FAILED": 0, "CANCELLED": 0},
        "unfinished_ids": [], "params": {"report": "r1"},
    });
    assert_eq!(summaries(&env, "done.log")?, [expected]);
    assert_eq!(summaries(&env, "ok.log")?.len(), 1, "every job FINISHED");
    let batch = show(&env, id)?;
    assert_eq!(batch["phase"], "complete");
    let completion = batch["on_complete"]["job"]
        .as_i64()
        .ok_or("no completion job")?;
    assert_eq!(env.state(completion)?, "FINISHED");
    assert_contains(
        &explain(&env, completion)?,
        &[&format!("completion of batch {id}")],
    )?;
    // A sealed batch is sealed once; a complete one takes no more jobs.
    assert_contains(
        &stdout_of(&env, &["batch", "seal", &id.to_string()])?,
        &["already sealed"],
    )?;
    let late = env
        .bgq()
        .args([
            "publish",
            "task",
            "--json",
            "{}",
            "--batch",
            &id.to_string(),
        ])
        .output()?;
    expect_error(&late, 2, &["batch", "complete"])?;
    Ok(())
}

/// A sealed batch refuses jobs from outside (exit 2, nothing stored), also from a publisher
/// whose `BGQ_JOB_ID` names no running job of it; an unknown batch is refused too.
#[test]
fn a_sealed_batch_refuses_outside_publishers() -> TestResult {
    let env = batch_env(1, 0)?;
    let id = new_batch(&env, &["--on-complete", "done"])?;
    let member = env.publish_with("task", "{}", &["--batch", &id.to_string(), "--delay", "1h"])?;
    stdout_of(&env, &["batch", "seal", &id.to_string()])?;
    for publisher in [None, Some(member.to_string()), Some("999".to_owned())] {
        let mut command = env.bgq();
        command.args([
            "publish",
            "task",
            "--json",
            "{}",
            "--batch",
            &id.to_string(),
        ]);
        match &publisher {
            Some(job) => command.env("BGQ_JOB_ID", job),
            None => command.env_remove("BGQ_JOB_ID"),
        };
        expect_error(&command.output()?, 2, &["batch", "sealed"])?;
    }
    let unknown = env
        .bgq()
        .args(["publish", "task", "--json", "{}", "--batch", "77"])
        .output()?;
    expect_error(&unknown, 2, &["no batch 77"])?;
    assert_eq!(env.jobs()?.len(), 1, "nothing stored");
    assert_eq!(show(&env, id)?["jobs"], 1);
    // `--unique` does not get round it: an unfinished job with the identifier outside the batch
    // is no answer to a publish into a sealed one.
    env.publish_with("task", "{}", &["--identifier", "v", "--delay", "1h"])?;
    let unique = env
        .bgq()
        .env_remove("BGQ_JOB_ID")
        .args([
            "publish",
            "task",
            "--json",
            "{}",
            "--unique",
            "--identifier",
            "v",
        ])
        .args(["--batch", &id.to_string()])
        .output()?;
    expect_error(&unique, 2, &["batch", "sealed"])?;
    Ok(())
}

/// A planner job adds chunks of tasks and the next planner to its sealed batch: 10,000 tasks in
/// chunks of 500. The batch completes only after the last chunk's tasks, once, with every job
/// counted; `list --batch` lists its jobs.
#[test]
fn a_planner_plans_ten_thousand_tasks_in_chunks_of_500() -> TestResult {
    let env = batch_env(500, 20)?;
    let id = new_batch(&env, &["--on-complete", "done", "--on-success", "ok"])?;
    env.publish_with("plan", r#"{"chunk": 1}"#, &["--batch", &id.to_string()])?;
    stdout_of(&env, &["batch", "seal", &id.to_string()])?;
    // Runs of at most 20 s each: one run would drain it all, but each command of a test has
    // 60 s, and a loaded machine on PostgreSQL needs about that for all 10,020 jobs.
    let batch = drain(&env, id, &["--concurrency", "2", "--max-time", "20s"], 50)?;
    assert_eq!(batch["jobs"], 10_020, "{batch}");
    let done = summaries(&env, "done.log")?;
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(
        done[0]["counts"],
        json!({"FINISHED": 10_020, "PERMANENTLY_FAILED": 0, "CANCELLED": 0})
    );
    assert_eq!(done[0]["unfinished_ids"], json!([]));
    assert_eq!(summaries(&env, "ok.log")?.len(), 1);
    let listed = stdout_of(
        &env,
        &["list", "--batch", &id.to_string(), "--all", "--json"],
    )?;
    assert_eq!(listed.lines().count(), 10_020);
    Ok(())
}

/// A failed job: on-complete gets its id in `unfinished_ids`, on-success is not published.
/// `retry --batch` after completion says it reopens nothing, and no completion runs again.
#[test]
fn a_failed_job_completes_without_success_and_a_retry_reopens_nothing() -> TestResult {
    let env = batch_env(1, 0)?;
    let id = new_batch(&env, &["--on-complete", "done", "--on-success", "ok"])?;
    let batch = id.to_string();
    env.publish_with("task", "{}", &["--batch", &batch])?;
    let failing = env.publish_with("task", r#""fail""#, &["--batch", &batch])?;
    stdout_of(&env, &["batch", "seal", &batch])?;
    let shown = drain(&env, id, &[], 5)?;
    assert_eq!(shown["on_success"]["job"], Value::Null);
    let done = summaries(&env, "done.log")?;
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["unfinished_ids"], json!([failing]));
    assert_eq!(done[0]["counts"]["PERMANENTLY_FAILED"], 1);
    assert!(
        summaries(&env, "ok.log")?.is_empty(),
        "not every job FINISHED"
    );
    let out = env.bgq().args(["retry", "--batch", &batch]).output()?;
    assert!(out.status.success());
    assert_contains(
        &String::from_utf8_lossy(&out.stderr),
        &[
            &format!("batch {id} is already complete"),
            "reopens nothing",
        ],
    )?;
    assert_contains(
        &String::from_utf8_lossy(&out.stdout),
        &[&format!("retried job {failing}")],
    )?;
    env.process(&[])?;
    env.process(&[])?;
    assert_eq!(
        summaries(&env, "done.log")?.len(),
        1,
        "no second completion"
    );
    Ok(())
}

/// `cancel --batch` cancels the batch's unstarted jobs and no other; `retry --batch` puts them
/// back; `list --batch` lists only its jobs; a batch whose jobs were cancelled completes with
/// them counted CANCELLED.
#[test]
fn cancel_retry_and_list_by_batch() -> TestResult {
    let env = batch_env(1, 0)?;
    let id = new_batch(&env, &["--on-complete", "done"])?;
    let batch = id.to_string();
    let members: Vec<i64> = (0..3)
        .map(|_| env.publish_with("task", "{}", &["--batch", &batch, "--delay", "1h"]))
        .collect::<TestResult<_>>()?;
    let outsider = env.publish_with("task", "{}", &["--delay", "1h"])?;
    let listed = |env: &TestEnv| -> TestResult<Vec<i64>> {
        let text = stdout_of(env, &["list", "--batch", &batch, "--json"])?;
        let mut ids: Vec<i64> = text
            .lines()
            .map(|line| -> TestResult<i64> {
                let job: Value = serde_json::from_str(line)?;
                assert_eq!(job["batch"], json!(id));
                job["id"].as_i64().ok_or_else(|| "no id".into())
            })
            .collect::<TestResult<_>>()?;
        ids.sort_unstable();
        Ok(ids)
    };
    assert_eq!(listed(&env)?, members);
    stdout_of(&env, &["cancel", "--batch", &batch])?;
    for member in &members {
        assert_eq!(env.state(*member)?, "CANCELLED");
    }
    assert_eq!(env.state(outsider)?, "READY");
    assert_eq!(show(&env, id)?["counts"]["CANCELLED"], 3);
    stdout_of(&env, &["retry", "--batch", &batch])?;
    for member in &members {
        assert_eq!(env.state(*member)?, "READY");
    }
    assert_eq!(show(&env, id)?["unfinished"], 3);
    stdout_of(&env, &["cancel", "--batch", &batch])?;
    stdout_of(&env, &["batch", "seal", &batch])?;
    env.process(&[])?;
    let done = summaries(&env, "done.log")?;
    assert_eq!(done.len(), 1);
    assert_eq!(
        done[0]["counts"],
        json!({"FINISHED": 0, "PERMANENTLY_FAILED": 0, "CANCELLED": 3})
    );
    assert_eq!(done[0]["unfinished_ids"], json!(members));
    let unknown = env.bgq().args(["cancel", "--batch", "77"]).output()?;
    expect_error(&unknown, 2, &["no batch 77"])?;
    Ok(())
}

/// Two `process` runs at once (one per queue) settle the last jobs of one batch: its
/// completion is published exactly once.
#[test]
fn two_concurrent_runs_complete_a_batch_once() -> TestResult {
    let env = batch_env(1, 0)?;
    for round in 0..3 {
        let id = new_batch(&env, &["--on-complete", "done"])?;
        let batch = id.to_string();
        for queue in ["a", "b"] {
            let lines: String = (0..60).map(|n| format!("{{\"n\":{n}}}\n")).collect();
            let out = env
                .bgq()
                .args([
                    "publish", "task", "--jsonl", "-", "--queue", queue, "--batch", &batch,
                ])
                .write_stdin(lines)
                .output()?;
            assert!(out.status.success(), "{out:?}");
        }
        stdout_of(&env, &["batch", "seal", &batch])?;
        let mut runs: Vec<_> = ["a", "b"]
            .iter()
            .map(|queue| env.spawn(&["process", "--queue", queue, "--concurrency", "2"]))
            .collect::<TestResult<_>>()?;
        for run in &mut runs {
            assert!(run.wait_exit(std::time::Duration::from_secs(60))?.success());
        }
        assert_eq!(show(&env, id)?["phase"], "complete");
        env.process(&[])?;
        assert_eq!(summaries(&env, "done.log")?.len(), round + 1);
    }
    Ok(())
}
