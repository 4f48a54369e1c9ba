//! Lock and database files (SPEC.md section 8): where the lock lives and its mode, that it is kept,
//! that a symlinked lock is refused, and that a second `process` steps aside while one runs.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::support::{
    TestEnv, TestResult, describe, env_with_callbacks, expect_error, lock_files, mode_of,
    read_lines, wait_for,
};

#[test]
fn lock_file_is_private_stable_and_kept() -> TestResult {
    let env = env_with_callbacks("", &[("ok", "exit 0")])?;
    let id = env.publish("ok", "{}")?;
    env.process(&[])?;
    assert_eq!(env.state(id)?, "FINISHED");

    let locks = lock_files(&env.path("locks"))?;
    assert_eq!(locks.len(), 1, "one bgq-*.lock in temp_dir: {locks:?}");
    assert_eq!(mode_of(&locks[0])?, 0o600, "{}", locks[0].display());

    env.process(&[])?;
    assert_eq!(
        lock_files(&env.path("locks"))?,
        locks,
        "the same lock file, kept after the run"
    );

    env.process(&["--queue", "other"])?;
    let both = lock_files(&env.path("locks"))?;
    assert_eq!(both.len(), 2, "another queue, another lock: {both:?}");
    for lock in &both {
        assert_eq!(mode_of(lock)?, 0o600, "{}", lock.display());
    }
    Ok(())
}

#[test]
fn database_files_are_private() -> TestResult {
    let env = env_with_callbacks("", &[("ok", "exit 0")])?;
    let Some(db) = env.sqlite_file() else {
        return Ok(());
    };
    env.publish("ok", "{}")?;
    assert_eq!(mode_of(&db)?, 0o600, "database made by publish");
    env.process(&[])?;
    for suffix in ["", "-wal", "-shm"] {
        let path = std::path::PathBuf::from(format!("{}{suffix}", db.display()));
        if path.exists() {
            assert_eq!(mode_of(&path)?, 0o600, "{}", path.display());
        }
    }
    Ok(())
}

#[test]
fn symlinked_lock_is_refused_and_its_target_untouched() -> TestResult {
    let env = env_with_callbacks("", &[("ok", "exit 0")])?;
    env.process(&[])?;
    let locks = lock_files(&env.path("locks"))?;
    assert_eq!(locks.len(), 1, "{locks:?}");
    let lock = &locks[0];

    let victim = env.path("victim.txt");
    fs::write(&victim, "precious\n")?;
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o644))?;
    fs::remove_file(lock)?;
    std::os::unix::fs::symlink(&victim, lock)?;
    let id = env.publish("ok", "{}")?;

    let out = env.bgq().arg("process").output()?;
    expect_error(&out, 1, &[])?;
    assert_eq!(fs::read_to_string(&victim)?, "precious\n");
    assert_eq!(mode_of(&victim)?, 0o644);
    assert!(fs::symlink_metadata(lock)?.file_type().is_symlink());
    assert_eq!(env.state(id)?, "READY", "nothing ran");

    // A dangling symlink: refused, and its target is not created.
    let nowhere = env.path("nowhere.txt");
    fs::remove_file(lock)?;
    std::os::unix::fs::symlink(&nowhere, lock)?;
    let out = env.bgq().arg("process").output()?;
    expect_error(&out, 1, &[])?;
    assert!(!nowhere.exists(), "symlink target created");
    assert_eq!(env.state(id)?, "READY", "nothing ran");
    Ok(())
}

#[test]
fn second_process_steps_aside_while_the_lock_is_held() -> TestResult {
    let env = env_with_callbacks(
        "concurrency = 1",
        &[
            // Runs until the test creates `release` (at most 30 s, so a failed test cleans up).
            (
                "slow",
                "echo $BGQ_JOB_ID >> @ROOT@/runs\n\
                 i=0; while [ ! -f @ROOT@/release ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done",
            ),
            ("quick", "exit 0"),
        ],
    )?;
    let first_job = env.publish("slow", "{}")?;
    let second_job = env.publish("slow", "{}")?;
    let runs = env.path("runs");

    let mut first = env.spawn(&["process"])?;
    wait_for("the first job to start", Duration::from_secs(10), || {
        !read_lines(&runs).is_empty()
    })?;

    let out = env.bgq().arg("process").output()?;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "silent: {}",
        describe(&out)
    );

    let out = env.bgq().args(["process", "-v"]).output()?;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(out.stdout.is_empty(), "{}", describe(&out));
    let stderr = String::from_utf8(out.stderr.clone())?;
    assert!(
        !stderr.trim().is_empty() && !stderr.contains("bgq: error"),
        "-v says why: {}",
        describe(&out)
    );

    // clear takes its own lock and does not wait on process.
    let out = env.bgq().arg("clear").output()?;
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(String::from_utf8(out.stdout)?, "0\n");

    // Another queue has its own lock.
    let other = env.publish_with("quick", "{}", &["--queue", "other"])?;
    env.process(&["--queue", "other"])?;
    assert_eq!(env.state(other)?, "FINISHED");

    assert!(
        first.child.try_wait()?.is_none(),
        "the first process ended while its callback was still running: {}",
        first.stderr()
    );
    assert_eq!(read_lines(&runs), [first_job.to_string()], "job 2 waits");
    fs::write(env.path("release"), "")?;
    let status = first.wait_exit(Duration::from_secs(30))?;
    assert!(status.success(), "first process: {}", first.stderr());

    let mut ran = read_lines(&runs);
    ran.sort();
    assert_eq!(
        ran,
        [first_job.to_string(), second_job.to_string()],
        "each job ran exactly once"
    );
    assert_eq!(env.state(first_job)?, "FINISHED");
    assert_eq!(env.state(second_job)?, "FINISHED");
    Ok(())
}

#[test]
fn lock_name_comes_from_the_canonical_database_path() -> TestResult {
    let env = env_with_callbacks("", &[("ok", "exit 0")])?;
    // The path is the SQLite file's, reached through a link.
    if env.sqlite_file().is_none() {
        return Ok(());
    }
    // A second config in a subfolder reaching the same database another way, through a symlink.
    fs::create_dir(env.path("sub"))?;
    std::os::unix::fs::symlink(env.root(), env.path("sub/link"))?;
    let text = fs::read_to_string(env.config_path())?.replace(
        "database = \"bgq.sqlite\"",
        "database = \"link/./bgq.sqlite\"",
    );
    fs::write(env.path("sub/bgq.toml"), text)?;

    env.process(&[])?;
    let out = env
        .bgq_bare()
        .arg("--config")
        .arg(env.path("sub/bgq.toml"))
        .arg("process")
        .output()?;
    assert!(out.status.success(), "{}", describe(&out));
    let locks = lock_files(&env.path("locks"))?;
    assert_eq!(
        locks.len(),
        1,
        "one database, one queue, one lock: {locks:?}"
    );
    Ok(())
}

#[test]
fn a_database_from_a_newer_bgq_is_refused_and_left_alone() -> TestResult {
    let env = TestEnv::new("[callbacks.cb]\ncommand = [\"true\"]\n")?;
    let Some(db) = env.sqlite_file() else {
        return Ok(());
    };
    env.publish("cb", "{}")?;
    {
        let conn = rusqlite::Connection::open(&db)?;
        conn.pragma_update(None, "user_version", 99)?;
    }
    let before = std::fs::read(&db)?;
    for args in [
        &["list"][..],
        &["process"],
        &["publish", "cb", "--json", "{}"],
        &["clear"],
    ] {
        let out = env.bgq().args(args).output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("bgq: error: cannot open database ")
                && stderr.contains("schema version 99, newer than this bgq knows"),
            "{stderr}"
        );
    }
    assert_eq!(std::fs::read(&db)?, before, "the database is untouched");
    Ok(())
}
