//! What a crash leaves is enough. A committed write lives in the `-wal` file until a checkpoint
//! copies it into the database; a kill -9 between the two leaves the database and its `-wal`
//! (the `-shm` index is rebuilt from the `-wal`), and those two alone hold every committed job
//! and outcome. (SQLite's files, so SQLite-only.)

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::{
    TestEnv, TestResult, callback_toml, describe, read_lines, send_signal, toml_str, wait_for,
};

/// Copies the SQLite file `db` of `env` and its `-wal` (never `-shm`) into `to`, with a config
/// naming the copy; returns the copy's config path.
fn copy_db_and_wal(env: &TestEnv, db: &Path, to: &Path) -> TestResult<PathBuf> {
    fs::create_dir_all(to)?;
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    assert!(
        fs::metadata(&wal).is_ok_and(|meta| meta.len() > 0),
        "the -wal file holds the commits"
    );
    fs::copy(db, to.join("bgq.sqlite"))?;
    fs::copy(&wal, to.join("bgq.sqlite-wal"))?;
    let config = to.join("bgq.toml");
    let callbacks = fs::read_to_string(env.config_path())?
        .lines()
        .skip_while(|line| !line.starts_with("[callbacks."))
        .collect::<Vec<_>>()
        .join("\n");
    fs::write(
        &config,
        format!(
            "database = \"bgq.sqlite\"\ntemp_dir = {}\n{callbacks}\n",
            toml_str(&to.join("locks").display().to_string())
        ),
    )?;
    Ok(config)
}

/// `bgq list --json` of the database that `config` names, oldest first, as (id, state).
fn listed(env: &TestEnv, config: &Path) -> TestResult<Vec<(i64, String)>> {
    let out = env
        .bgq_bare()
        .arg("--config")
        .arg(config)
        .args(["list", "--json", "--limit", "1000000"])
        .output()?;
    if !out.status.success() {
        return Err(format!("list failed: {}", describe(&out)).into());
    }
    let mut jobs = Vec::new();
    for line in String::from_utf8(out.stdout)?.lines() {
        let job: serde_json::Value = serde_json::from_str(line)?;
        jobs.push((
            job["id"].as_i64().ok_or("no id")?,
            job["state"].as_str().ok_or("no state")?.to_owned(),
        ));
    }
    jobs.reverse();
    Ok(jobs)
}

/// Ids of jobs in the SQLite file `db` alone, read without its `-wal` (a copy in `env`, so
/// nothing else changes).
fn ids_without_wal(env: &TestEnv, db: &Path, state: &str) -> TestResult<Vec<i64>> {
    let alone = env.path("db-alone");
    fs::create_dir_all(&alone)?;
    fs::copy(db, alone.join("bgq.sqlite"))?;
    let conn = rusqlite::Connection::open(alone.join("bgq.sqlite"))?;
    let mut stmt = conn.prepare("SELECT id FROM jobs WHERE state = ?1 ORDER BY id")?;
    let ids = stmt
        .query_map([state], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(ids)
}

#[test]
fn published_jobs_live_in_the_wal_and_the_db_with_its_wal_holds_them_all() -> TestResult {
    let env = TestEnv::new("")?;
    let Some(db) = env.sqlite_file() else {
        return Ok(());
    };
    let cb = env.script("cb.sh", "exit 0")?;
    env.write_config(&callback_toml("cb", &cb, ""))?;
    let first = env.publish("cb", "{\"n\":0}")?;

    // While a connection stays open, no closing `bgq` is the last one, so none checkpoints: the
    // commits stay in the -wal, as after a kill -9 between commit and checkpoint.
    let reader = rusqlite::Connection::open(&db)?;
    let count: i64 = reader.query_row("SELECT count(*) FROM jobs", [], |row| row.get(0))?;
    assert_eq!(count, 1);
    let mut ids = vec![first];
    for n in 1..=20 {
        ids.push(env.publish("cb", &format!("{{\"n\":{n}}}"))?);
    }
    assert_eq!(
        ids_without_wal(&env, &db, "READY")?,
        [first],
        "the later publishes are in the -wal only (not yet checkpointed)"
    );

    let config = copy_db_and_wal(&env, &db, &env.path("copy"))?;
    let jobs = listed(&env, &config)?;
    let expected: Vec<(i64, String)> = ids.iter().map(|&id| (id, "READY".to_owned())).collect();
    assert_eq!(
        jobs, expected,
        "the database and its -wal alone hold every job"
    );
    drop(reader);
    Ok(())
}

#[test]
fn outcomes_committed_before_a_kill_9_survive_in_the_wal() -> TestResult {
    let env = TestEnv::new("")?;
    let Some(db) = env.sqlite_file() else {
        return Ok(());
    };
    let release = env.path("release");
    let done = env.path("done");
    let quick = env.script(
        "quick.sh",
        &format!("echo $BGQ_JOB_ID >> {}", done.display()),
    )?;
    // Holds its slot until the test releases it (30 s at most, so a failed test cleans up).
    let slow = env.script(
        "slow.sh",
        &format!(
            "i=0; while [ ! -e {r} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done",
            r = release.display()
        ),
    )?;
    env.write_config(&format!(
        "concurrency = 2\n{}{}",
        callback_toml("quick", &quick, ""),
        callback_toml("slow", &slow, "")
    ))?;
    let hold = env.publish("slow", "{}")?;
    let quick_ids: Vec<i64> = (0..5)
        .map(|n| env.publish("quick", &format!("{{\"n\":{n}}}")))
        .collect::<TestResult<_>>()?;

    let mut run = env.spawn(&["process"])?;
    wait_for("the quick jobs to finish", Duration::from_secs(20), || {
        env.jobs().is_ok_and(|jobs| {
            jobs.iter()
                .filter(|job| job["callback"] == "quick" && job["state"] == "FINISHED")
                .count()
                == quick_ids.len()
        })
    })?;
    send_signal(run.pid(), "KILL")?;
    run.wait_exit(Duration::from_secs(5))?;

    // Copy before anything opens the database again: the next closing connection would
    // checkpoint the -wal into the database and remove it.
    let config = copy_db_and_wal(&env, &db, &env.path("copy"))?;
    let mut expected: Vec<(i64, String)> = vec![(hold, "PROCESSING".to_owned())];
    expected.extend(quick_ids.iter().map(|&id| (id, "FINISHED".to_owned())));
    assert_eq!(
        listed(&env, &config)?,
        expected,
        "the database and its -wal, as a kill -9 left them, hold every committed outcome"
    );
    assert!(
        ids_without_wal(&env, &db, "FINISHED")?.is_empty(),
        "the outcomes were in the -wal only (not yet checkpointed)"
    );

    // In place, too; the next run recovers the job that was running.
    fs::write(&release, "")?;
    assert_eq!(listed(&env, &env.config_path())?, expected);
    let stderr = env.process(&[])?;
    assert!(
        stderr.contains(&format!("bgq: recovered job {hold} ")),
        "{stderr}"
    );
    for id in quick_ids.iter().chain([&hold]) {
        assert_eq!(env.state(*id)?, "FINISHED", "job {id}");
    }
    let mut ran: Vec<i64> = read_lines(&done)
        .iter()
        .map(|l| l.parse())
        .collect::<Result<_, _>>()?;
    ran.sort_unstable();
    assert_eq!(ran, quick_ids, "finished jobs did not run again");
    Ok(())
}
