//! What a crash leaves is enough. A committed write lives in the `-wal` file until a checkpoint
//! copies it into the database; a kill -9 between the two leaves the database and its `-wal`
//! (the `-shm` index is rebuilt from the `-wal`), and those two alone hold every committed job
//! and outcome. (SQLite's files, so SQLite-only.)

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::{
    SQLITE_FILE, TestEnv, TestResult, callback_toml, describe, read_lines, send_signal, toml_str,
    wait_for,
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

    // No closing `bgq` folds the -wal into the database (the log is kept between commands; a
    // reader held open changes nothing): the commits stay in the -wal, as after a kill -9
    // between commit and checkpoint.
    let reader = rusqlite::Connection::open(&db)?;
    let count: i64 = reader.query_row("SELECT count(*) FROM jobs", [], |row| row.get(0))?;
    assert_eq!(count, 1);
    let mut ids = vec![first];
    for n in 1..=20 {
        ids.push(env.publish("cb", &format!("{{\"n\":{n}}}"))?);
    }
    assert_eq!(
        ids_without_wal(&env, &db, "READY")?,
        Vec::<i64>::new(),
        "every publish is in the -wal only (not yet checkpointed)"
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

/// How many fsync/fdatasync calls one `bgq publish` of `env` makes, by strace; `None` where
/// strace is not installed.
fn syncs_of_one_publish(env: &TestEnv) -> TestResult<Option<usize>> {
    let log = env.path("publish.strace");
    let traced = std::process::Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=fsync,fdatasync", "-o"])
        .arg(&log)
        .arg(env!("CARGO_BIN_EXE_bgq"))
        .arg("--config")
        .arg(env.config_path())
        .args(["publish", "cb", "--json", "{}"])
        .output();
    match traced {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err.into()),
        Ok(out) if !out.status.success() => {
            return Err(format!("publish under strace: {}", describe(&out)).into());
        }
        Ok(_) => {}
    }
    let syncs = read_lines(&log)
        .iter()
        .filter(|line| line.contains("sync("))
        .count();
    Ok(Some(syncs))
}

/// `durability = "normal"`: publish and process work as ever, on every backend; on SQLite a
/// publish then leaves its commit to the operating system (no sync), where the default syncs
/// the write-ahead log once.
#[test]
fn durability_normal_publishes_without_a_sync_and_the_jobs_run() -> TestResult {
    let env = TestEnv::new("")?;
    let cb = env.script("cb.sh", "exit 0")?;
    env.write_config(&callback_toml("cb", &cb, ""))?;
    let durable = env.publish("cb", "{}")?;
    let full_syncs = if env.on_sqlite() {
        syncs_of_one_publish(&env)?
    } else {
        None
    };
    env.write_config(&format!(
        "durability = \"normal\"\n{}",
        callback_toml("cb", &cb, "")
    ))?;
    let relaxed = env.publish("cb", "{}")?;
    assert!(relaxed > durable);
    if env.on_sqlite()
        && let Some(normal_syncs) = syncs_of_one_publish(&env)?
    {
        assert_eq!(
            full_syncs,
            Some(1),
            "a durable publish syncs its commit once"
        );
        assert_eq!(
            normal_syncs, 0,
            "a publish with durability = \"normal\" syncs nothing"
        );
    }
    env.process(&[])?;
    for job in env.jobs()? {
        assert_eq!(job["state"], "FINISHED", "{job}");
    }
    assert_eq!(env.jobs()?.len(), if env.on_sqlite() { 4 } else { 2 });
    Ok(())
}

/// A write-ahead log that another SQLite client made and left empty (a reader that checkpointed
/// the old one away as it closed, then opened again) has a name no one synced: the first
/// durable publish into it syncs the folder before its commit, as it does for a log of its own.
#[test]
fn a_log_another_client_made_gets_its_folder_synced_by_the_first_publish() -> TestResult {
    let env = TestEnv::new("")?;
    if !env.on_sqlite() {
        return Ok(());
    }
    let cb = env.script("cb.sh", "exit 0")?;
    env.write_config(&callback_toml("cb", &cb, ""))?;
    env.publish("cb", "{}")?;
    let db = env.path(SQLITE_FILE);
    let wal = env.path(&format!("{SQLITE_FILE}-wal"));
    // The last connection to close checkpoints and removes the log (SQLite's default).
    {
        let other = rusqlite::Connection::open(&db)?;
        other.query_row("SELECT count(*) FROM jobs", [], |row| row.get::<_, i64>(0))?;
    }
    assert!(!wal.exists(), "the other client removed the log");
    let reader = rusqlite::Connection::open(&db)?;
    let jobs: i64 = reader.query_row("SELECT count(*) FROM jobs", [], |row| row.get(0))?;
    assert_eq!(jobs, 1);
    assert_eq!(fs::metadata(&wal)?.len(), 0, "the reader made an empty log");
    let Some(syncs) = syncs_of_one_publish(&env)? else {
        eprintln!("skipped: strace is not installed");
        return Ok(());
    };
    assert_eq!(
        syncs, 3,
        "the folder, the new log's header, then the commit"
    );
    drop(reader);
    Ok(())
}

/// The write-ahead log stays beside the database between commands (a publish does not fold it
/// in and remove it), and stays bounded: a publish that made it large is followed by a
/// checkpoint, and the log is cut back when it starts again.
#[test]
fn the_wal_is_kept_between_commands_and_cut_back_after_a_large_commit() -> TestResult {
    let env = TestEnv::new("")?;
    let Some(db) = env.sqlite_file() else {
        return Ok(());
    };
    let cb = env.script("cb.sh", "exit 0")?;
    env.write_config(&callback_toml("cb", &cb, ""))?;
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    let wal_size = || fs::metadata(&wal).map(|meta| meta.len());
    env.publish("cb", "{}")?;
    assert!(wal_size()? > 0, "the -wal is kept after a publish");

    let lines: String = (0..40_000).map(|n| format!("{{\"n\":{n}}}\n")).collect();
    let file = env.path("many.jsonl");
    fs::write(&file, lines)?;
    let out = env
        .bgq()
        .args(["publish", "cb", "--jsonl"])
        .arg(&file)
        .output()?;
    assert!(out.status.success(), "{}", describe(&out));
    let grown = wal_size()?;
    assert!(
        grown > 4 << 20,
        "one large commit grows the -wal ({grown} bytes)"
    );
    for n in 0..3 {
        env.publish("cb", &format!("{{\"after\":{n}}}"))?;
    }
    let cut = wal_size()?;
    assert!(
        cut <= 1 << 20,
        "the -wal is cut back to 1 MiB once it starts again: {cut} bytes, from {grown}"
    );
    let jobs = env.bgq().args(["stats", "--json"]).output()?;
    assert!(jobs.status.success(), "{}", describe(&jobs));
    assert!(
        ids_without_wal(&env, &db, "READY")?.len() > 40_000,
        "the large commit was folded into the database"
    );
    Ok(())
}

/// A database as an older bgq left it: its last connection folded the -wal in and removed it
/// (no -wal, no -shm). It opens in place and keeps its jobs and ids.
#[test]
fn a_database_without_its_wal_as_an_older_bgq_left_it_opens_in_place() -> TestResult {
    let env = TestEnv::new("")?;
    let Some(db) = env.sqlite_file() else {
        return Ok(());
    };
    let cb = env.script("cb.sh", "exit 0")?;
    env.write_config(&callback_toml("cb", &cb, ""))?;
    let first = env.publish("cb", "{}")?;
    // SQLite's default close, as the older bgq did it: checkpoint, then remove the -wal.
    let conn = rusqlite::Connection::open(&db)?;
    conn.query_row("SELECT count(*) FROM jobs", [], |row| row.get::<_, i64>(0))?;
    drop(conn);
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    assert!(!wal.exists(), "the old layout has no -wal");
    let second = env.publish("cb", "{}")?;
    assert_eq!(second, first + 1);
    env.process(&[])?;
    assert_eq!(env.state(first)?, "FINISHED");
    assert_eq!(env.state(second)?, "FINISHED");
    Ok(())
}
