//! `bgq migrate --to URL`: a SQLite queue with jobs in every state copied to PostgreSQL reads
//! the same there (`list --json`, `show --json`), runs in the order it would have run on SQLite,
//! and hands out ids above the copied ones; the SQLite file is left as it was; a schema that
//! already holds jobs, a PostgreSQL source, a bad `--to` and a live run are refused.
//!
//! The tests that copy need a SQLite source and a PostgreSQL target at once: they run in the
//! suite's SQLite pass, with a schema of their own on the server `BGQ_TEST_POSTGRES` names
//! (`postgres_beside_sqlite`); in the PostgreSQL pass they return at once, saying so.

use std::fs;
use std::path::Path;
use std::time::Duration;

use assert_cmd::Command;
use serde_json::Value;

use crate::support::{
    HangingJob, TestEnv, TestResult, TestSchema, callback_toml, describe, expect_error,
    expect_refused, hanging_job, postgres_beside_sqlite, read_lines, sqlite_only, stdout_of,
    toml_str, wait_for,
};

/// A URL no server answers at: the refusals below happen before any connection.
const NOWHERE: &str = "postgres://nobody@127.0.0.1:1/none";

/// The callbacks of the mixed queue, as `[callbacks.*]` tables: `log` notes each job id in
/// `ran.log` and keeps its stdin as `in-ID`, both in its working folder (the config's).
fn callbacks(env: &TestEnv) -> TestResult<String> {
    let scripts = [
        ("ok", "echo done"),
        ("fail", "echo boom; exit 1"),
        ("retry", "exit 75"),
        ("wait", "exit 76"),
        (
            "log",
            "cat > \"in-$BGQ_JOB_ID\"; echo \"$BGQ_JOB_ID\" >> ran.log",
        ),
    ];
    let mut text = String::from("concurrency = 1\n");
    for (name, body) in scripts {
        let script = env.script(&format!("{name}.sh"), body)?;
        text.push_str(&callback_toml(name, &script, ""));
    }
    Ok(text)
}

/// A config beside `env`'s for the PostgreSQL queue in `schema`, with `extra` after it.
fn write_postgres_config(env: &TestEnv, schema: &TestSchema, extra: &str) -> TestResult {
    fs::write(
        env.path("pg.toml"),
        format!(
            "database = {}\nschema = {}\ntemp_dir = {}\n{extra}\n",
            toml_str(schema.url()),
            toml_str(schema.name()),
            toml_str(&env.path("locks").display().to_string())
        ),
    )?;
    Ok(())
}

/// `bgq --config pg.toml ARGS` (the PostgreSQL queue beside `env`'s).
fn on_postgres(env: &TestEnv) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bgq"));
    cmd.current_dir(env.root())
        .env_remove("BGQ_CONFIG")
        .arg("--config")
        .arg(env.path("pg.toml"))
        .timeout(Duration::from_secs(60));
    cmd
}

/// Runs `cmd`, checks exit 0, returns stdout.
fn ok_stdout(cmd: &mut Command) -> TestResult<String> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(describe(&out).into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// `bgq list --json` of every job, as JSON values.
fn listed(cmd: &mut Command) -> TestResult<Vec<Value>> {
    ok_stdout(cmd.args(["list", "--json", "--limit", "1000000"]))?
        .lines()
        .map(|line| Ok(serde_json::from_str(line)?))
        .collect()
}

/// The bytes of `path`, for comparing a file before and after.
fn bytes(path: &Path) -> TestResult<Vec<u8>> {
    Ok(fs::read(path)?)
}

/// `bgq migrate --to` the schema.
fn migrate(env: &TestEnv, schema: &TestSchema) -> TestResult<std::process::Output> {
    Ok(env
        .bgq()
        .args(["migrate", "--to", schema.url(), "--schema", schema.name()])
        .output()?)
}

#[test]
fn a_queue_in_every_state_reads_and_runs_the_same_on_postgresql() -> TestResult {
    let Some(schema) = postgres_beside_sqlite()? else {
        return Ok(());
    };
    let env = TestEnv::new("")?;
    let settings = callbacks(&env)?;
    env.write_config(&settings)?;
    // Ended states come from a real run.
    let finished = env.publish("ok", "{}")?;
    let failed = env.publish("fail", "{}")?;
    let retried = env.publish("retry", "{}")?;
    let waiting = env.publish("wait", "{}")?;
    let cancelled = env.publish("log", "{\"n\":0}")?;
    stdout_of(&env, &["cancel", &cancelled.to_string()])?;
    env.process(&[])?;
    // Then jobs that wait for a run, shaped every way publish can shape them.
    let first = env.publish_with("log", "{\"n\":1}", &["--serial-group", "g"])?;
    let second = env.publish_with("log", "{\"n\":2}", &["--serial-group", "g"])?;
    let urgent = env.publish_with("log", "{\"n\":3}", &["--priority", "5"])?;
    let child = env.publish_with("log", "{\"n\":4}", &["--after", &first.to_string()])?;
    let unique_args = ["--identifier", "u", "--unique"];
    let unique = env.publish_with("log", "{\"n\":5}", &unique_args)?;
    let raw_bytes: &[u8] = &[0, 1, 2, 0xff, 0xfe, b'\n', b'\r', 0xc3];
    fs::write(env.path("raw.bin"), raw_bytes)?;
    let raw: i64 = stdout_of(&env, &["publish", "log", "--raw", "raw.bin"])?
        .trim()
        .parse()?;
    let later = env.publish_with("log", "{\"n\":7}", &["--delay", "1h"])?;
    let states = |id| env.state(id);
    assert_eq!(states(finished)?, "FINISHED");
    assert_eq!(states(failed)?, "PERMANENTLY_FAILED");
    assert_eq!(states(retried)?, "TEMPORARILY_FAILED");
    assert_eq!(states(waiting)?, "WAITING");
    assert_eq!(states(cancelled)?, "CANCELLED");
    let before = listed(&mut env.bgq())?;
    let ids: Vec<i64> = before.iter().filter_map(|job| job["id"].as_i64()).collect();
    let shown: Vec<String> = ids
        .iter()
        .map(|id| stdout_of(&env, &["show", "--json", &id.to_string()]))
        .collect::<TestResult<_>>()?;
    let file = env.path("bgq.sqlite");
    let original = bytes(&file)?;
    // A twin of the source, to see in what order SQLite would have run the jobs: the file
    // and its write-ahead log, which bgq keeps between commands.
    let twin = TestEnv::new(&settings)?;
    fs::copy(&file, twin.path("bgq.sqlite"))?;
    fs::copy(env.path("bgq.sqlite-wal"), twin.path("bgq.sqlite-wal"))?;

    let out = migrate(&env, &schema)?;
    assert!(out.status.success(), "migrate: {}", describe(&out));
    let line = String::from_utf8(out.stdout)?;
    assert_eq!(
        line,
        format!(
            "copied 12 jobs (CANCELLED 1, FINISHED 1, PERMANENTLY_FAILED 1, READY 7, TEMPORARILY_FAILED 1, WAITING 1), 1 dependency, 1 run, 0 notices to {} schema {}; verified\n",
            schema.url(),
            schema.name()
        )
    );
    assert_eq!(bytes(&file)?, original, "the SQLite file is unchanged");
    assert_eq!(listed(&mut env.bgq())?, before, "the source lists the same");

    write_postgres_config(&env, &schema, &settings)?;
    // Every field of every job is the same: nothing the copy could not keep shows in
    // `list --json` or `show --json`.
    assert_eq!(listed(&mut on_postgres(&env))?, before);
    for (id, shown) in ids.iter().zip(&shown) {
        let there = ok_stdout(on_postgres(&env).args(["show", "--json", &id.to_string()]))?;
        assert_eq!(&there, shown, "show --json {id}");
    }

    // The kept counts of `stats` are filled on the way: the same jobs in each state.
    let counts = |cmd: &mut Command| -> TestResult<Vec<(Value, Value)>> {
        let stats: Value = serde_json::from_str(&ok_stdout(cmd.args(["stats", "--json"]))?)?;
        Ok(stats["queues"]
            .as_array()
            .map(|queues| {
                queues
                    .iter()
                    .map(|queue| (queue["queue"].clone(), queue["jobs"].clone()))
                    .collect()
            })
            .unwrap_or_default())
    };
    let counted = counts(&mut twin.bgq())?;
    assert_eq!(counted.len(), 1, "{counted:?}");
    assert_eq!(counts(&mut on_postgres(&env))?, counted);

    // --unique finds the copied job while it is unfinished.
    let again = ok_stdout(
        on_postgres(&env)
            .args(["publish", "log", "--json", "{}"])
            .args(unique_args),
    )?;
    assert_eq!(again.trim(), unique.to_string());

    // Both queues run their due jobs in the same order; the child after its parent.
    ok_stdout(on_postgres(&env).arg("process"))?;
    twin.process(&[])?;
    let ran_here = read_lines(&env.path("ran.log"));
    let ran_there = read_lines(&twin.path("ran.log"));
    let expected: Vec<String> = [urgent, first, second, child, unique, raw]
        .iter()
        .map(i64::to_string)
        .collect();
    let mut sorted = ran_here.clone();
    sorted.sort_by_key(|id| id.parse::<i64>().unwrap_or_default());
    let mut expected_sorted = expected.clone();
    expected_sorted.sort_by_key(|id| id.parse::<i64>().unwrap_or_default());
    assert_eq!(sorted, expected_sorted, "each due job ran once");
    assert_eq!(
        ran_here, ran_there,
        "the order SQLite would have run them in"
    );
    let position = |id: i64| ran_here.iter().position(|ran| *ran == id.to_string());
    assert!(position(first) < position(child), "child after its parent");
    assert!(
        !ran_here.contains(&later.to_string()),
        "a delayed job waits"
    );
    assert_eq!(bytes(&env.path(&format!("in-{raw}")))?, raw_bytes);
    assert_eq!(
        fs::read_to_string(env.path(&format!("in-{urgent}")))?,
        "{\"n\":3}\n"
    );

    // A new job gets an id above every copied one.
    let out =
        ok_stdout(on_postgres(&env).args(["publish", "log", "--json", "{}", "--delay", "1h"]))?;
    let new: i64 = out.trim().parse()?;
    let max = ids.iter().copied().max().unwrap_or_default();
    assert!(new > max, "new id {new} is above {max}");
    Ok(())
}

#[test]
fn a_schema_that_holds_jobs_is_refused_and_left_unchanged() -> TestResult {
    let Some(schema) = postgres_beside_sqlite()? else {
        return Ok(());
    };
    let env = TestEnv::new("")?;
    let script = env.script("cb.sh", "exit 0")?;
    let settings = callback_toml("cb", &script, "");
    env.write_config(&settings)?;
    env.publish("cb", "{\"from\":\"sqlite\"}")?;
    write_postgres_config(&env, &schema, &settings)?;
    ok_stdout(on_postgres(&env).args(["publish", "cb", "--json", "{\"from\":\"pg\"}"]))?;
    let before = listed(&mut on_postgres(&env))?;
    let shown = ok_stdout(on_postgres(&env).args(["show", "--json", "1"]))?;

    let out = migrate(&env, &schema)?;
    expect_error(
        &out,
        1,
        &[
            &format!("schema {} of {}", schema.name(), schema.url()),
            "already holds 1 job:",
            "nothing was changed",
        ],
    )?;
    assert_eq!(listed(&mut on_postgres(&env))?, before);
    assert_eq!(
        ok_stdout(on_postgres(&env).args(["show", "--json", "1"]))?,
        shown
    );
    // And the next publish there goes on from where that queue was.
    let next = ok_stdout(on_postgres(&env).args(["publish", "cb", "--json", "{}"]))?;
    assert_eq!(next.trim(), "2");
    Ok(())
}

#[test]
fn a_large_queue_is_copied_in_batches() -> TestResult {
    let Some(schema) = postgres_beside_sqlite()? else {
        return Ok(());
    };
    let env = TestEnv::new("")?;
    let script = env.script("cb.sh", "exit 0")?;
    let settings = callback_toml("cb", &script, "");
    env.write_config(&settings)?;
    let count = 12_345;
    let lines: String = (0..count).map(|n| format!("{{\"n\":{n}}}\n")).collect();
    fs::write(env.path("jobs.jsonl"), lines)?;
    stdout_of(&env, &["publish", "cb", "--jsonl", "jobs.jsonl"])?;
    let out = migrate(&env, &schema)?;
    assert!(out.status.success(), "migrate: {}", describe(&out));
    assert!(String::from_utf8(out.stdout)?.starts_with(&format!(
        "copied {count} jobs (READY {count}), 0 dependencies, 0 runs, 0 notices to "
    )));
    write_postgres_config(&env, &schema, &settings)?;
    let newest = ok_stdout(on_postgres(&env).args(["list", "--json", "--limit", "1"]))?;
    let newest: Value = serde_json::from_str(newest.trim())?;
    assert_eq!(newest["id"].as_i64(), Some(count));
    assert_eq!(newest["state"], "READY");
    Ok(())
}

#[test]
fn a_job_left_running_by_a_dead_run_is_recovered_on_postgresql() -> TestResult {
    let Some(schema) = postgres_beside_sqlite()? else {
        return Ok(());
    };
    let env = TestEnv::new("")?;
    let (id, mut run, pid, guard) = hanging_job(&env, &HangingJob::default())?;
    // The run dies, and its callback with it, leaving the job PROCESSING.
    run.child.kill()?;
    run.wait_exit(Duration::from_secs(10))?;
    drop(guard);
    wait_for("the callback to be gone", Duration::from_secs(10), || {
        !crate::support::alive(pid)
    })?;
    assert_eq!(env.state(id)?, "PROCESSING");
    let out = migrate(&env, &schema)?;
    assert!(out.status.success(), "migrate: {}", describe(&out));
    // On PostgreSQL the callback finishes at once.
    let quick = env.script("quick.sh", "exit 0")?;
    write_postgres_config(&env, &schema, &callback_toml("hang", &quick, ""))?;
    let out = on_postgres(&env).arg("process").output()?;
    assert!(out.status.success(), "process: {}", describe(&out));
    let job: Value = serde_json::from_str(
        ok_stdout(on_postgres(&env).args(["show", "--json", &id.to_string()]))?.trim(),
    )?;
    assert_eq!(job["state"], "FINISHED");
    assert_eq!(job["attempts"], 2, "the lost attempt counted");
    Ok(())
}

#[test]
fn a_live_run_of_the_source_refuses_the_copy() -> TestResult {
    if !sqlite_only()? {
        return Ok(());
    }
    let env = TestEnv::new("")?;
    let (id, _run, _pid, _guard) = hanging_job(&env, &HangingJob::default())?;
    let out = env.bgq().args(["migrate", "--to", NOWHERE]).output()?;
    expect_error(&out, 1, &["a `process` of queue `general` is running"])?;
    assert_eq!(env.state(id)?, "PROCESSING");
    Ok(())
}

#[test]
fn a_postgresql_source_is_a_usage_error() -> TestResult {
    let env = TestEnv::new("")?;
    env.write_raw_config(&format!("database = {}\n", toml_str(NOWHERE)))?;
    let out = env.bgq().args(["migrate", "--to", NOWHERE]).output()?;
    expect_error(
        &out,
        2,
        &["bgq migrate copies a SQLite queue", "PostgreSQL already"],
    )?;
    Ok(())
}

#[test]
fn a_bad_target_is_a_usage_error_and_touches_nothing() -> TestResult {
    let env = TestEnv::new("")?;
    env.write_raw_config("database = \"bgq.sqlite\"\n")?;
    for (args, fragment) in [
        (
            &["--to", "mysql://u:secret@db/app"][..],
            "--to: the scheme `mysql` is not PostgreSQL's",
        ),
        (
            &["--to", "other.sqlite"][..],
            "--to: not a PostgreSQL database",
        ),
        (&["--to", ""][..], "--to: must be a non-empty path"),
        (
            &["--to", NOWHERE, "--schema", "Bad-Name"][..],
            "--schema: must be a plain PostgreSQL name",
        ),
    ] {
        let out = env.bgq().arg("migrate").args(args).output()?;
        expect_error(&out, 2, &[fragment])?;
        assert!(!String::from_utf8_lossy(&out.stderr).contains("secret"));
    }
    expect_refused(&env.bgq().arg("migrate").output()?, &[2])?;
    assert!(!env.path("bgq.sqlite").exists(), "no database was made");
    assert!(!env.path("other.sqlite").exists());
    Ok(())
}

#[test]
fn runs_already_recorded_in_the_schema_are_kept_and_the_copied_ones_numbered_after() -> TestResult {
    let Some(schema) = postgres_beside_sqlite()? else {
        return Ok(());
    };
    let env = TestEnv::new("")?;
    let script = env.script("cb.sh", "echo \"$BGQ_JOB_ID\" >> ran.log")?;
    let settings = callback_toml("cb", &script, "");
    env.write_config(&settings)?;
    let done = env.publish("cb", "{}")?;
    env.process(&[])?;
    let waiting = env.publish("cb", "{}")?;
    // `process` ran on the empty PostgreSQL queue before the copy: its runs stay.
    write_postgres_config(&env, &schema, &settings)?;
    ok_stdout(on_postgres(&env).arg("process"))?;
    ok_stdout(on_postgres(&env).arg("process"))?;
    let out = migrate(&env, &schema)?;
    assert!(out.status.success(), "migrate: {}", describe(&out));
    let shown = |id: i64| ok_stdout(on_postgres(&env).args(["show", "--json", &id.to_string()]));
    let mut there: Value = serde_json::from_str(&shown(done)?)?;
    let mut here: Value =
        serde_json::from_str(&stdout_of(&env, &["show", "--json", &done.to_string()])?)?;
    // Its attempt names its run as the copy numbered it: after the two already there.
    let run = |job: &mut Value| job["runs"][0]["run"].take().as_i64();
    assert_eq!(run(&mut there), run(&mut here).map(|run| run + 2));
    assert_eq!(there, here);
    // The copied job that waits runs once on PostgreSQL, and only it.
    ok_stdout(on_postgres(&env).arg("process"))?;
    assert_eq!(
        read_lines(&env.path("ran.log")),
        [done.to_string(), waiting.to_string()]
    );
    assert_eq!(
        ok_stdout(on_postgres(&env).args(["list", "--state", "FINISHED", "--json"]))?
            .lines()
            .count(),
        2
    );
    Ok(())
}

#[test]
fn pauses_run_totals_and_a_cleared_failed_parent_are_copied() -> TestResult {
    let Some(schema) = postgres_beside_sqlite()? else {
        return Ok(());
    };
    let env = TestEnv::new("")?;
    let ok = env.script("ok.sh", "exit 0")?;
    let fail = env.script("fail.sh", "exit 1")?;
    let settings = format!(
        "{}{}",
        callback_toml("ok", &ok, ""),
        callback_toml("fail", &fail, "")
    );
    env.write_config(&settings)?;
    let parent = env.publish("fail", "{}")?;
    env.bgq().args(["process"]).assert().success();
    env.bgq()
        .args(["clear", "--state", "PERMANENTLY_FAILED"])
        .assert()
        .success();
    // Published after its parent failed and was cleared: it must keep waiting after the move.
    let child = ok_stdout(env.bgq().args([
        "publish",
        "ok",
        "--json",
        "{}",
        "--after",
        &parent.to_string(),
    ]))?;
    env.publish("ok", "{}")?;
    env.bgq().args(["process"]).assert().success();
    env.bgq()
        .args(["pause", "--callback", "ok"])
        .assert()
        .success();
    let totals = |cmd: &mut Command| -> TestResult<Vec<String>> {
        Ok(ok_stdout(cmd.args(["stats", "--prometheus"]))?
            .lines()
            .filter(|line| {
                line.starts_with("bgq_job_runs_total{") || line.starts_with("bgq_paused{")
            })
            .map(str::to_owned)
            .collect())
    };
    let before = totals(&mut env.bgq())?;
    assert!(before.len() >= 3, "{before:?}");

    let out = migrate(&env, &schema)?;
    assert!(out.status.success(), "{}", describe(&out));
    write_postgres_config(&env, &schema, &settings)?;
    assert_eq!(totals(&mut on_postgres(&env))?, before);
    ok_stdout(on_postgres(&env).args(["resume"]))?;
    let explained = ok_stdout(on_postgres(&env).args(["explain", child.trim()]))?;
    assert!(explained.contains(&format!("job {parent}")), "{explained}");
    ok_stdout(on_postgres(&env).args(["process"]))?;
    let state = ok_stdout(on_postgres(&env).args(["list", "--json", "--limit", "0"]))?;
    let child_row: Vec<Value> = state
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let child_state = child_row
        .iter()
        .find(|row| row["id"].as_i64() == child.trim().parse().ok())
        .map(|row| row["state"].clone());
    assert_eq!(
        child_state,
        Some(Value::from("READY")),
        "the child of a cleared failed parent must still wait: {state}"
    );
    Ok(())
}

/// A batch is copied with its jobs and counters: on PostgreSQL it shows the same, takes its
/// running jobs' additions, and completes there once, with the summary of all its jobs.
#[test]
fn a_batch_is_copied_and_completes_on_postgresql() -> TestResult {
    let Some(schema) = postgres_beside_sqlite()? else {
        return Ok(());
    };
    let env = TestEnv::new("")?;
    let settings = callbacks(&env)?;
    env.write_config(&settings)?;
    let id: i64 = stdout_of(
        &env,
        &[
            "batch",
            "new",
            "--on-complete",
            "log",
            "--description",
            "copied",
        ],
    )?
    .trim()
    .parse()?;
    let batch = id.to_string();
    stdout_of(&env, &["publish", "ok", "--json", "{}", "--batch", &batch])?;
    stdout_of(
        &env,
        &["publish", "fail", "--json", "{}", "--batch", &batch],
    )?;
    env.process(&[])?;
    stdout_of(
        &env,
        &[
            "publish", "ok", "--json", "{}", "--batch", &batch, "--delay", "1h",
        ],
    )?;
    stdout_of(&env, &["batch", "seal", &batch])?;
    let before = stdout_of(&env, &["batch", "show", &batch, "--json"])?;
    let out = migrate(&env, &schema)?;
    assert!(out.status.success(), "migrate: {}", describe(&out));
    write_postgres_config(&env, &schema, &settings)?;
    let after = ok_stdout(on_postgres(&env).args(["batch", "show", &batch, "--json"]))?;
    assert_eq!(after, before);
    let next: i64 = ok_stdout(on_postgres(&env).args(["batch", "new"]))?
        .trim()
        .parse()?;
    assert_eq!(next, id + 1, "batch ids go on increasing");
    // The delayed job, due now, ends the batch on PostgreSQL.
    ok_stdout(on_postgres(&env).args(["retry", "3"]))?;
    for _ in 0..2 {
        ok_stdout(on_postgres(&env).arg("process"))?;
    }
    let ran = read_lines(&env.path("ran.log"));
    assert_eq!(ran.len(), 1, "one completion: {ran:?}");
    let summary: Value = serde_json::from_slice(&fs::read(env.path(&format!("in-{}", ran[0])))?)?;
    assert_eq!(summary["batch"], id);
    assert_eq!(
        summary["counts"],
        serde_json::json!({"FINISHED": 2, "PERMANENTLY_FAILED": 1, "CANCELLED": 0})
    );
    assert_eq!(summary["unfinished_ids"], serde_json::json!([2]));
    Ok(())
}
