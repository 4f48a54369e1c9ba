//! A queue shared by several Unix users (SPEC sections 3 and 8): a web server's user publishes,
//! a service user processes, root now and then runs `process`, `list` or `retry`. With the
//! config's `group`, no run leaves files that lock the others out; without it, a refused access
//! says which file, which user and what to change, in one line; `bgq check` run as each user
//! says what that user cannot do. And cron's short PATH: a callback finds bgq in `BGQ_BIN`.
//!
//! The users are real ones made for these tests (`bgq-test-web` and `bgq-test-svc` in the
//! group `bgq-test-share`, and `bgq-test-other` outside it), so the tests need root: without it
//! they are skipped with a printed reason, and fail in CI (`CI=true`), which runs as root. The
//! lock files are shared on both backends; the database file only on SQLite.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use crate::support::*;

const GROUP: &str = "bgq-test-share";
const WEB: &str = "bgq-test-web";
const SERVICE: &str = "bgq-test-svc";

/// The group and its two users, made the first time; `None` (with a note) when not root,
/// outside CI.
fn shared_users() -> TestResult<Option<u32>> {
    static MADE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = MADE
        .lock()
        .map_err(|_| "another test panicked making the users")?;
    if !nix_is_root() {
        if std::env::var("CI").is_ok_and(|ci| ci == "true") {
            return Err("the tests of a queue shared by users need root, as CI runs them".into());
        }
        eprintln!("skipped: needs root to create the users {WEB} and {SERVICE}");
        return Ok(None);
    }
    if gid_of(GROUP).is_none() {
        let out = Command::new("groupadd")
            .args(["--system", GROUP])
            .output()?;
        if !out.status.success() && gid_of(GROUP).is_none() {
            return Err(format!("groupadd {GROUP}: {}", describe(&out)).into());
        }
    }
    for user in [WEB, SERVICE] {
        if id_of(user, "-u").is_none() {
            let out = Command::new("useradd")
                .args(["--system", "--user-group", "--no-create-home"])
                .args(["--shell", "/usr/sbin/nologin", "--groups", GROUP, user])
                .output()?;
            if !out.status.success() && id_of(user, "-u").is_none() {
                return Err(format!("useradd {user}: {}", describe(&out)).into());
            }
        }
    }
    Ok(Some(
        gid_of(GROUP).ok_or("the group was made but has no gid")?,
    ))
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

fn id_of(user: &str, flag: &str) -> Option<u32> {
    let out = Command::new("id").args([flag, user]).output().ok()?;
    std::str::from_utf8(&out.stdout).ok()?.trim().parse().ok()
}

fn gid_of(group: &str) -> Option<u32> {
    let out = Command::new("getent")
        .args(["group", group])
        .output()
        .ok()?;
    std::str::from_utf8(&out.stdout)
        .ok()?
        .split(':')
        .nth(2)?
        .trim()
        .parse()
        .ok()
}

/// A queue whose folder every user can cross, with callback `cb` that appends its job id to
/// `out/ran` (a folder all may write), locks in `shared-locks` (made by bgq) and, on SQLite, the
/// database in `q/` (made by bgq). `top` adds top-level settings (`group = ...`).
fn shared_env(top: &str) -> TestResult<TestEnv> {
    let env = TestEnv::new("")?;
    fs::set_permissions(env.root(), fs::Permissions::from_mode(0o755))?;
    let out = env.path("out");
    fs::create_dir(&out)?;
    fs::set_permissions(&out, fs::Permissions::from_mode(0o777))?;
    // Appended to by callbacks that run as any of the users.
    fs::write(out.join("ran"), "")?;
    fs::set_permissions(out.join("ran"), fs::Permissions::from_mode(0o666))?;
    let script = env.script(
        "cb.sh",
        &format!("echo $BGQ_JOB_ID >> {}/ran", out.display()),
    )?;
    let database = if env.on_sqlite() {
        "database = \"q/bgq.sqlite\"".to_owned()
    } else {
        env.database_line()
    };
    env.write_raw_config(&format!(
        "{database}\ntemp_dir = \"shared-locks\"\n{top}\n{}",
        callback_toml("cb", &script, "")
    ))?;
    Ok(env)
}

/// `bgq --config ... ARGS` run as `user` (with its groups, as a login would give them).
fn bgq_as(env: &TestEnv, user: &str, args: &[&str]) -> TestResult<Output> {
    let mut command = Command::new("runuser");
    command
        .args(["-u", user, "--", env!("CARGO_BIN_EXE_bgq"), "--config"])
        .arg(env.config_path())
        .args(args)
        .current_dir(env.root())
        .env_remove("BGQ_CONFIG");
    Ok(command.output()?)
}

/// Like [`bgq_as`], failing unless it exits 0; returns stdout.
fn ok_as(env: &TestEnv, user: &str, args: &[&str]) -> TestResult<String> {
    let out = bgq_as(env, user, args)?;
    if !out.status.success() {
        return Err(format!("bgq {args:?} as {user}: {}", describe(&out)).into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn publish_as(env: &TestEnv, user: &str, args: &[&str]) -> TestResult<i64> {
    let mut all = vec!["publish", "cb", "--json", "{}"];
    all.extend_from_slice(args);
    Ok(ok_as(env, user, &all)?.trim().parse()?)
}

fn ran(env: &TestEnv) -> Vec<String> {
    read_lines(&env.path("out/ran"))
}

/// Every file and folder bgq made: its lock folder and lock files, and on SQLite the database
/// folder, the database and whichever of its -wal and -shm files exist.
fn made_by_bgq(env: &TestEnv) -> TestResult<Vec<PathBuf>> {
    let locks = env.path("shared-locks");
    let mut made = vec![locks.clone()];
    made.extend(lock_files(&locks)?);
    if env.on_sqlite() {
        let q = env.path("q");
        made.push(q.clone());
        for name in ["bgq.sqlite", "bgq.sqlite-wal", "bgq.sqlite-shm"] {
            if q.join(name).exists() {
                made.push(q.join(name));
            }
        }
    }
    Ok(made)
}

/// Asserts each path is the group's: group `gid`, files 0660, folders 2770.
fn assert_shared(paths: &[PathBuf], gid: u32) -> TestResult {
    for path in paths {
        let meta = fs::metadata(path)?;
        let wanted = if meta.is_dir() { 0o2770 } else { 0o660 };
        assert_eq!(meta.gid(), gid, "group of {}", path.display());
        assert_eq!(
            meta.mode() & 0o7777,
            wanted,
            "mode of {}: {:o}",
            path.display(),
            meta.mode() & 0o7777
        );
    }
    Ok(())
}

/// Root runs `process` first: what it leaves belongs to the group, and the service user's
/// runs work after it.
#[test]
fn after_root_ran_process_the_service_user_runs_it_too() -> TestResult {
    let Some(gid) = shared_users()? else {
        return Ok(());
    };
    let env = shared_env(&format!("group = {}", toml_str(GROUP)))?;
    let first = publish_as(&env, "root", &[])?;
    ok_as(&env, "root", &["process"])?;
    assert_eq!(ran(&env), [first.to_string()]);
    let made = made_by_bgq(&env)?;
    assert!(made.len() >= 2, "a lock file was made: {made:?}");
    assert_shared(&made, gid)?;

    let second = publish_as(&env, "root", &[])?;
    ok_as(&env, SERVICE, &["process"])?;
    assert_eq!(ran(&env), [first.to_string(), second.to_string()]);
    assert_eq!(env.state(second)?, "FINISHED");
    // And root again, after the service user: nothing of either locks the other out.
    let third = publish_as(&env, SERVICE, &[])?;
    ok_as(&env, "root", &["process"])?;
    assert_eq!(env.state(third)?, "FINISHED");
    assert_shared(&made_by_bgq(&env)?, gid)
}

/// The web user publishes (making the queue's files), the service user processes, root lists
/// and retries, and a `publish --process` by the web user runs its job at once.
#[test]
fn the_web_user_publishes_and_the_service_user_processes() -> TestResult {
    let Some(gid) = shared_users()? else {
        return Ok(());
    };
    let env = shared_env(&format!("group = {}", toml_str(GROUP)))?;
    // The queue's users may make its folders in the application's folder.
    std::os::unix::fs::chown(env.root(), None, Some(gid))?;
    fs::set_permissions(env.root(), fs::Permissions::from_mode(0o775))?;
    let id = publish_as(&env, WEB, &[])?;
    ok_as(&env, SERVICE, &["process"])?;
    assert_eq!(ran(&env), [id.to_string()]);
    assert_shared(&made_by_bgq(&env)?, gid)?;

    let listed = ok_as(&env, "root", &["list", "--json"])?;
    assert!(listed.contains("\"FINISHED\""), "{listed}");
    let cancelled = publish_as(&env, WEB, &[])?;
    ok_as(&env, "root", &["cancel", &cancelled.to_string()])?;
    ok_as(&env, "root", &["retry", &cancelled.to_string()])?;
    ok_as(&env, SERVICE, &["process"])?;
    assert_eq!(env.state(cancelled)?, "FINISHED");

    let now = publish_as(&env, WEB, &["--process"])?;
    wait_for(
        "the run publish --process started as the web user to run the job",
        Duration::from_secs(20),
        || ran(&env).contains(&now.to_string()),
    )?;
    assert_shared(&made_by_bgq(&env)?, gid)
}

/// A lock file only root can open (left by a run before `group` was set) stops the service
/// user's run with one line naming the file, the user and the fix; `check` as that user reports
/// it, a `publish --process` that fails on it leaves its error in `stats`, and a run by root
/// mends it.
#[test]
fn a_lock_file_only_root_can_open_is_named_with_the_fix_and_mended_by_root() -> TestResult {
    let Some(gid) = shared_users()? else {
        return Ok(());
    };
    let env = shared_env("")?;
    // Before `group`: root's run leaves its files private.
    publish_as(&env, "root", &[])?;
    ok_as(&env, "root", &["process"])?;
    let locks = lock_files(&env.path("shared-locks"))?;
    assert!(!locks.is_empty());
    for lock in &locks {
        assert_eq!(mode_of(lock)?, 0o600, "{}", lock.display());
    }
    // The folders are opened to the group by hand, as the README says; the lock files not.
    let mut folders = vec![env.path("shared-locks")];
    if env.on_sqlite() {
        folders.push(env.path("q"));
    }
    for folder in &folders {
        std::os::unix::fs::chown(folder, None, Some(gid))?;
        fs::set_permissions(folder, fs::Permissions::from_mode(0o2770))?;
    }
    if env.on_sqlite() {
        for name in ["bgq.sqlite", "bgq.sqlite-wal", "bgq.sqlite-shm"] {
            let file = env.path("q").join(name);
            if file.exists() {
                std::os::unix::fs::chown(&file, None, Some(gid))?;
                fs::set_permissions(&file, fs::Permissions::from_mode(0o660))?;
            }
        }
    }
    let top = format!("group = {}", toml_str(GROUP));
    let text =
        fs::read_to_string(env.config_path())?.replace("temp_dir", &format!("{top}\ntemp_dir"));
    env.write_raw_config(&text)?;

    let id = publish_as(&env, WEB, &[])?;
    let lock = env.path("shared-locks").join(
        lock_files(&env.path("shared-locks"))?
            .iter()
            .find(|lock| mode_of(lock).is_ok_and(|mode| mode == 0o600))
            .and_then(|lock| lock.file_name())
            .ok_or("no private lock file")?,
    );
    let out = bgq_as(&env, SERVICE, &["process"])?;
    expect_error(
        &out,
        1,
        &[
            &format!("cannot open lock file {}", lock.display()),
            &format!("permission denied for user {SERVICE}"),
            "owner root",
            "mode 0600",
            &format!("chgrp {GROUP} {}", lock.display()),
            "run bgq once as root",
        ],
    )?;
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);

    let out = bgq_as(&env, SERVICE, &["check"])?;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stdout = String::from_utf8(out.stdout)?;
    assert!(
        stdout.lines().any(|line| line.starts_with("problem: ")
            && line.contains(&format!(
                "user {SERVICE} cannot open the lock file {}",
                lock.display()
            ))),
        "{stdout}"
    );

    // The web user's on-demand run fails the same way, and says so where it can: in `stats`.
    publish_as(&env, WEB, &["--process"])?;
    wait_for(
        "the failed on-demand run's error in stats",
        Duration::from_secs(20),
        || {
            ok_as(&env, "root", &["stats"])
                .is_ok_and(|stats| stats.contains("error: cannot open lock file"))
        },
    )?;
    assert_eq!(env.state(id)?, "READY");

    ok_as(&env, "root", &["process"])?;
    assert_eq!(env.state(id)?, "FINISHED");
    assert_shared(&made_by_bgq(&env)?, gid)?;
    let later = publish_as(&env, WEB, &[])?;
    ok_as(&env, SERVICE, &["process"])?;
    assert_eq!(env.state(later)?, "FINISHED");
    let out = bgq_as(&env, SERVICE, &["check"])?;
    assert!(out.status.success(), "{}", describe(&out));
    Ok(())
}

/// Without `group`, a database only root can open stops another user in one line that names
/// the file, the user and the setting to change.
#[test]
fn a_database_only_root_can_open_is_named_with_the_fix() -> TestResult {
    let Some(_) = shared_users()? else {
        return Ok(());
    };
    if !sqlite_only()? {
        return Ok(());
    }
    let env = shared_env("")?;
    publish_as(&env, "root", &[])?;
    // The service user may enter the folder, but the file is root's alone.
    fs::set_permissions(env.path("q"), fs::Permissions::from_mode(0o755))?;
    let db = env.path("q/bgq.sqlite");
    assert_eq!(mode_of(&db)?, 0o600);
    let out = bgq_as(&env, SERVICE, &["list"])?;
    expect_error(
        &out,
        1,
        &[
            &format!("cannot open database {}", db.display()),
            &format!("permission denied for user {SERVICE}"),
            "owner root",
            "set `group = \"NAME\"` in the config",
            &format!("chmod 660 {}", db.display()),
        ],
    )?;
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
    Ok(())
}

/// `check` as a user outside the group says what it cannot do: it lacks the group, and cannot
/// write the lock folder (nor, on SQLite, the database folder). As a member, all is well.
#[test]
fn check_as_a_user_outside_the_group_reports_what_it_cannot_do() -> TestResult {
    let Some(_) = shared_users()? else {
        return Ok(());
    };
    let Some(outsider) = other_user()? else {
        return Ok(());
    };
    let env = shared_env(&format!("group = {}", toml_str(GROUP)))?;
    publish_as(&env, "root", &[])?;
    ok_as(&env, "root", &["process"])?;
    ok_as(&env, SERVICE, &["process"])?;
    let out = ok_as(&env, SERVICE, &["check"])?;
    assert!(out.starts_with("ok: "), "{out}");

    let out = bgq_as(&env, &outsider.name, &["check"])?;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stdout = String::from_utf8(out.stdout)?;
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines.iter().all(|line| line.starts_with("problem: ")),
        "{stdout}"
    );
    let expected = [
        format!("user {} is not in group {GROUP}", outsider.name),
        format!("usermod -aG {GROUP} {}", outsider.name),
        format!(
            "temp_dir {} is not writable",
            env.path("shared-locks").display()
        ),
    ];
    for fragment in &expected {
        assert!(
            stdout.contains(fragment.as_str()),
            "{fragment:?} in {stdout}"
        );
    }
    if env.on_sqlite() {
        let folder = format!(
            "the database folder {} is not writable by user {}",
            env.path("q").display(),
            outsider.name
        );
        assert!(stdout.contains(&folder), "{folder:?} in {stdout}");
    }
    Ok(())
}

/// Under cron's PATH (`/usr/bin:/bin`, without wherever bgq was installed) a callback publishes
/// its follow-up job with `"$BGQ_BIN"`, the bgq that runs it.
#[test]
fn a_callback_publishes_with_bgq_bin_under_crons_path() -> TestResult {
    let env = TestEnv::new("")?;
    let log = env.path("log");
    let first = env.script(
        "first.sh",
        &format!(
            "echo \"$BGQ_BIN\" > {log}.bin\n\"$BGQ_BIN\" publish second --json '{{\"from\":'$BGQ_JOB_ID'}}' || exit 1",
            log = log.display()
        ),
    )?;
    let second = env.script("second.sh", &format!("cat >> {}", log.display()))?;
    env.write_config(&format!(
        "{}{}",
        callback_toml("first", &first, ""),
        callback_toml("second", &second, "")
    ))?;
    let id = env.publish("first", "{}")?;
    let out = env
        .bgq()
        .env("PATH", "/usr/bin:/bin")
        .arg("process")
        .output()?;
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(env.state(id)?, "FINISHED");
    let bin = fs::read_to_string(format!("{}.bin", log.display()))?;
    assert_eq!(
        fs::canonicalize(bin.trim())?,
        fs::canonicalize(env!("CARGO_BIN_EXE_bgq"))?
    );
    // The follow-up job ran in the same run or runs in the next one.
    env.process(&[])?;
    assert_eq!(read_lines(&log), [format!("{{\"from\":{id}}}")]);
    Ok(())
}
