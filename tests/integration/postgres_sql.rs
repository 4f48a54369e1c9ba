//! PostgreSQL only: jobs stored by the SQL functions `bgq.publish` and `bgq.publish_raw` inside
//! an application's own transaction (rolled back: no job; committed: a job that runs exactly like
//! one of `bgq publish`), and the schema's version refusing a newer one. These run when the
//! suite runs against PostgreSQL (`BGQ_TEST_DATABASE`); on SQLite they say so and return.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::*;

/// The connection string and schema of this test's PostgreSQL queue; `None` (with a note)
/// when the suite runs on SQLite.
fn postgres_of(env: &TestEnv) -> TestResult<Option<(String, String)>> {
    Ok(env.postgres())
}

/// Runs `sql` with psql against `url`, stopping at the first error; returns its output.
fn psql(url: &str, sql: &str) -> TestResult<String> {
    let out = Command::new("psql")
        .args([
            url,
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .output()?;
    if !out.status.success() {
        return Err(format!("psql failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

fn recording_env() -> TestResult<(TestEnv, std::path::PathBuf)> {
    let env = TestEnv::new("")?;
    let log = env.path("stdin.log");
    let script = env.script(
        "record.sh",
        &format!(
            "cat >> {log}; printf '|%s\\n' \"$BGQ_SERIAL_GROUP\" >> {log}",
            log = log.display()
        ),
    )?;
    env.write_config(&callback_toml("sendEmail", &script, ""))?;
    // The schema exists once bgq has connected.
    env.bgq().arg("list").assert().success();
    Ok((env, log))
}

#[test]
fn a_job_published_in_a_rolled_back_transaction_never_exists() -> TestResult {
    let (env, _) = recording_env()?;
    let Some((url, schema)) = postgres_of(&env)? else {
        return Ok(());
    };
    psql(
        &url,
        &format!(
            "BEGIN; SELECT {schema}.publish('sendEmail', '{{\"to\":\"a@example.com\"}}'); ROLLBACK;"
        ),
    )?;
    assert_no_jobs(&env, "after a rolled-back publish")?;
    Ok(())
}

#[test]
fn a_job_published_in_sql_runs_like_one_from_the_cli_with_its_keys_in_order() -> TestResult {
    let (env, log) = recording_env()?;
    let Some((url, schema)) = postgres_of(&env)? else {
        return Ok(());
    };
    let id: i64 = psql(
        &url,
        &format!(
            "BEGIN; SELECT {schema}.publish('sendEmail', '{{\"z\": 1, \"a\": [true, null], \"m\": \"x\"}}',
                 serial_group => 'invoice-7', identifier => 'sendEmail-7'); COMMIT;"
        ),
    )?
    .parse()?;
    let cli = env.publish_with("sendEmail", r#"{"z":2}"#, &["--serial-group", "invoice-7"])?;
    assert!(
        cli > id,
        "ids keep increasing across both ways in: {id} then {cli}"
    );
    let job = env.job(id)?;
    assert_eq!(job["state"], "READY");
    assert_eq!(job["queue"], "general");
    assert_eq!(job["identifier"], "sendEmail-7");
    env.process(&[])?;
    assert_eq!(env.state(id)?, "FINISHED");
    assert_eq!(env.state(cli)?, "FINISHED");
    // Compact JSON with the keys as written (json, not jsonb), then the CLI's job after it in
    // its serial group.
    assert_eq!(
        read_lines(&log),
        vec![
            r#"{"z":1,"a":[true,null],"m":"x"}"#.to_owned(),
            "|invoice-7".to_owned(),
            r#"{"z":2}"#.to_owned(),
            "|invoice-7".to_owned(),
        ]
    );
    let shown = show_json(&env, id)?;
    assert_eq!(
        shown["parameters"],
        serde_json::json!({"z": 1, "a": [true, null], "m": "x"})
    );
    Ok(())
}

/// The deltas that keep the counts of `stats` are folded by the runs that make them, not left
/// to pile up until someone runs `stats`.
#[test]
fn a_run_folds_the_count_deltas_it_made() -> TestResult {
    let (env, _) = recording_env()?;
    let Some((url, schema)) = postgres_of(&env)? else {
        return Ok(());
    };
    for n in 0..5 {
        env.publish("sendEmail", &format!("{{\"n\":{n}}}"))?;
    }
    env.process(&[])?;
    let left: i64 = psql(
        &url,
        &format!("SELECT count(*) FROM {schema}.job_count_deltas"),
    )?
    .parse()?;
    assert_eq!(left, 0, "deltas left after the run");
    let finished: i64 = psql(
        &url,
        &format!(
            "SELECT sum(jobs) FROM {schema}.job_counts WHERE state = 'FINISHED' AND callback = 'sendEmail'"
        ),
    )?
    .parse()?;
    assert_eq!(finished, 5);
    Ok(())
}

#[test]
fn publish_raw_delivers_the_exact_bytes() -> TestResult {
    let (env, _) = recording_env()?;
    let Some((url, schema)) = postgres_of(&env)? else {
        return Ok(());
    };
    let out = env.path("raw.out");
    let script = env.script("raw.sh", &format!("cat > {}", out.display()))?;
    env.write_config(&callback_toml("raw", &script, ""))?;
    let id: i64 = psql(
        &url,
        &format!("SELECT {schema}.publish_raw('raw', '\\x00ff0a7b22'::bytea)"),
    )?
    .parse()?;
    env.process(&[])?;
    assert_eq!(env.state(id)?, "FINISHED");
    assert_eq!(std::fs::read(&out)?, vec![0x00, 0xff, 0x0a, 0x7b, 0x22]);
    assert_eq!(show_json(&env, id)?["raw_base64"], "AP8KeyI=");
    Ok(())
}

#[test]
fn a_unique_job_published_in_sql_returns_the_unfinished_one() -> TestResult {
    let (env, _) = recording_env()?;
    let Some((url, schema)) = postgres_of(&env)? else {
        return Ok(());
    };
    let first = env.publish_with("sendEmail", "{}", &["--identifier", "mail-9", "--unique"])?;
    let again: i64 = psql(
        &url,
        &format!(
            "SELECT {schema}.publish('sendEmail', '{{}}', identifier => 'mail-9', is_unique => true)"
        ),
    )?
    .parse()?;
    assert_eq!(again, first);
    assert_eq!(env.jobs()?.len(), 1);
    Ok(())
}

#[test]
fn a_delayed_job_from_sql_waits_for_its_time() -> TestResult {
    let (env, _) = recording_env()?;
    let Some((url, schema)) = postgres_of(&env)? else {
        return Ok(());
    };
    let id: i64 = psql(
        &url,
        &format!("SELECT {schema}.publish('sendEmail', '{{}}', run_at => now() + interval '1 hour', priority => 5)"),
    )?
    .parse()?;
    env.process(&[])?;
    assert_eq!(env.state(id)?, "READY");
    assert_contains(&explain(&env, id)?, &["delayed until"])?;
    Ok(())
}

#[test]
fn a_schema_of_a_newer_bgq_is_refused_and_left_alone() -> TestResult {
    let (env, _) = recording_env()?;
    let Some((url, schema)) = postgres_of(&env)? else {
        return Ok(());
    };
    psql(
        &url,
        &format!("UPDATE {schema}.meta SET value = '99' WHERE key = 'version'"),
    )?;
    let out = env.bgq().arg("list").output()?;
    expect_error(
        &out,
        1,
        &["version 99", "newer than this bgq knows", "upgrade bgq"],
    )?;
    assert_eq!(
        psql(
            &url,
            &format!("SELECT value FROM {schema}.meta WHERE key = 'version'")
        )?,
        "99"
    );
    Ok(())
}

#[test]
fn hosts_that_create_the_schema_at_once_all_succeed() -> TestResult {
    let env = TestEnv::new("")?;
    let Some((url, schema)) = postgres_of(&env)? else {
        return Ok(());
    };
    // A schema nobody has created yet, opened by eight commands at once.
    psql(&url, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))?;
    let children: Vec<_> = (0..8)
        .map(|_| {
            std::process::Command::new(env!("CARGO_BIN_EXE_bgq"))
                .arg("--config")
                .arg(env.config_path())
                .arg("list")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    for child in children {
        let out = child.wait_with_output()?;
        assert!(out.status.success(), "{}", describe(&out));
    }
    assert_eq!(
        psql(
            &url,
            &format!("SELECT value FROM {schema}.meta WHERE key = 'version'")
        )?,
        "7"
    );
    Ok(())
}

/// A `process --watch` on one host whose poll would take an hour, and a second host's config
/// of the same queue: returns (watcher's env, publisher's config path, the watcher, the log).
fn two_hosts() -> TestResult<Option<(TestEnv, std::path::PathBuf, Spawned, std::path::PathBuf)>> {
    let env = TestEnv::new("")?;
    if postgres_of(&env)?.is_none() {
        return Ok(None);
    }
    let log = env.path("ran.log");
    let script = env.script(
        "ran.sh",
        &format!("echo \"$BGQ_JOB_ID\" >> {}", log.display()),
    )?;
    env.write_config(&callback_toml("work", &script, ""))?;
    // The other host: the same database and schema, its own lock folder.
    let other = env.path("other.toml");
    let config = std::fs::read_to_string(env.config_path())?;
    std::fs::create_dir_all(env.path("other-locks"))?;
    std::fs::write(
        &other,
        config.replace(
            &env.path("locks").display().to_string(),
            &env.path("other-locks").display().to_string(),
        ),
    )?;
    let watcher = env.spawn_with_env(&["process", "--watch", "--poll", "1h"], &[])?;
    wait_for_watcher(&env)?;
    Ok(Some((env, other, watcher, log)))
}

fn publish_from(config: &std::path::Path) -> TestResult<i64> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bgq"))
        .arg("--config")
        .arg(config)
        .env("BGQ_HOST_ID", "the-other-host")
        .args(["publish", "work", "--json", "{}"])
        .output()?;
    printed_id(&out)
}

#[test]
fn a_watcher_starts_a_job_published_on_another_host_without_waiting_for_its_poll() -> TestResult {
    let Some((env, other, mut watcher, log)) = two_hosts()? else {
        return Ok(());
    };
    let id = publish_from(&other)?;
    // Its poll is an hour away: only the notification can have woken it.
    let ran = wait_for("the job to run", Duration::from_secs(20), || {
        sorted_ids(&log).is_ok_and(|ids| ids.contains(&id))
    });
    if ran.is_err() {
        send_signal(watcher.pid(), "TERM")?;
        watcher.wait_exit(Duration::from_secs(20))?;
        return Err(format!("{ran:?}; the watcher said: {}", watcher.stderr()).into());
    }
    send_signal(watcher.pid(), "TERM")?;
    watcher.wait_exit(Duration::from_secs(20))?;
    assert_eq!(env.state(id)?, "FINISHED");
    Ok(())
}

#[test]
fn a_watcher_whose_listening_connection_is_cut_listens_again() -> TestResult {
    let Some((env, other, mut watcher, log)) = two_hosts()? else {
        return Ok(());
    };
    let (url, schema) = postgres_of(&env)?.ok_or("postgres")?;
    // This watcher's only: other tests share the server. The channel is named after the schema.
    let listening =
        format!("FROM pg_stat_activity WHERE query LIKE 'LISTEN %' AND query LIKE '%{schema}%'");
    // Cut the watcher's LISTEN connection, as a lost network or a restarted pooler would.
    wait_for("the watcher to listen", Duration::from_secs(10), || {
        psql(&url, &format!("SELECT count(*) {listening}")).is_ok_and(|count| count != "0")
    })?;
    psql(
        &url,
        &format!("SELECT pg_terminate_backend(pid) {listening}"),
    )?;
    wait_for(
        "the watcher to listen again",
        Duration::from_secs(20),
        || psql(&url, &format!("SELECT count(*) {listening}")).is_ok_and(|count| count != "0"),
    )?;
    let id = publish_from(&other)?;
    wait_for("the job to run", Duration::from_secs(20), || {
        sorted_ids(&log).is_ok_and(|ids| ids.contains(&id))
    })?;
    send_signal(watcher.pid(), "TERM")?;
    watcher.wait_exit(Duration::from_secs(20))?;
    assert_eq!(env.state(id)?, "FINISHED");
    Ok(())
}

#[test]
fn a_run_that_loses_its_connection_stops_its_callbacks_and_the_next_run_recovers_the_job()
-> TestResult {
    let env = TestEnv::new("")?;
    let Some((url, _)) = postgres_of(&env)? else {
        return Ok(());
    };
    let pids = env.path("pids");
    let script = env.script(
        "slow.sh",
        &format!(
            "[ \"$BGQ_ATTEMPT\" -gt 1 ] && exit 0\nsleep 60 &\necho $$ $! > {}.tmp && mv {p}.tmp {p}\nwait",
            pids.display(),
            p = pids.display()
        ),
    )?;
    env.write_config(&callback_toml("slow", &script, ""))?;
    let id = env.publish("slow", "{}")?;
    // Named, so that only this run's sessions are cut: other tests share the server.
    let name = format!("bgq-lost-{}", std::process::id());
    let mut run = env.spawn_with_env(&["process"], &[("PGAPPNAME", Path::new(&name))])?;
    wait_for("the callback to start", Duration::from_secs(20), || {
        pids.exists()
    })?;
    let started = std::fs::read_to_string(&pids)?;
    let pids_seen: Vec<i32> = started
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    // The server drops every session of the run (a restart, a failover, an operator).
    psql(
        &url,
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name = '{name}'"
        ),
    )?;
    let status = run.wait_exit(Duration::from_secs(30))?;
    assert_eq!(status.code(), Some(1), "{}", run.stderr());
    let stderr = run.stderr();
    assert!(stderr.contains("bgq: error:"), "{stderr}");
    for pid in &pids_seen {
        wait_for(
            "the callback and its helper to be gone",
            Duration::from_secs(10),
            || !alive(*pid),
        )?;
    }
    // The next run of this host knows the old run is dead and runs the job again.
    let recovered = env.process(&[])?;
    assert!(
        recovered.contains(&format!("recovered job {id}")),
        "{recovered}"
    );
    assert_eq!(env.state(id)?, "FINISHED");
    assert_eq!(attempts(&env, id)?, 2);
    Ok(())
}
