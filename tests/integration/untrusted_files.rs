//! Files another local user could have written are never trusted (SPEC section 8): the lock
//! folder, lock files and the notes in them, and the database's folder. The other user is a
//! real one, `bgq-test-other`, made for these tests.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// A queue of callback `cb` (exit 0) whose config names no `temp_dir`, so that locks go to
/// bgq's private folder under `$TMPDIR`; its folder can be crossed by other users (as /srv/app
/// would be).
fn env_without_temp_dir() -> TestResult<TestEnv> {
    let env = TestEnv::new("")?;
    env.write_raw_config(&format!(
        "{}\n{}",
        env.database_line(),
        finished_callback(&env)?
    ))?;
    fs::set_permissions(env.root(), fs::Permissions::from_mode(0o755))?;
    Ok(env)
}

/// A folder every user can write, sticky, as /tmp is.
fn shared_tmp(env: &TestEnv) -> TestResult<PathBuf> {
    let tmp = env.path("tmp");
    fs::create_dir(&tmp)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777))?;
    Ok(tmp)
}

fn finished_callback(env: &TestEnv) -> TestResult<String> {
    let done = env.script("done.sh", "exit 0")?;
    Ok(callback_toml("cb", &done, ""))
}

/// Where bgq before its private folder put the `process` lock of `queue`: `$TMPDIR/bgq-<FNV-1a
/// 64 of "process\0<database>\0<queue>">.lock`.
fn old_lock_path(tmp: &Path, database: &Path, queue: &str) -> PathBuf {
    let key = format!("process\0{}\0{queue}", database.display());
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    tmp.join(format!("bgq-{hash:016x}.lock"))
}

/// A process that stands for anything bgq must never kill: `sleep` in a group of its own.
struct Bystander(std::process::Child);

impl Bystander {
    fn start() -> TestResult<Bystander> {
        use std::os::unix::process::CommandExt;
        Ok(Bystander(
            Command::new("sleep").arg("60").process_group(0).spawn()?,
        ))
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    /// A `G` note naming its group, as a run of bgq writes one for a callback.
    fn group_note(&self, job: i64) -> TestResult<String> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        let (_, rest) = stat.rsplit_once(')').ok_or("bad /proc stat")?;
        let started = rest.split_whitespace().nth(19).ok_or("no start time")?;
        let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id")?;
        Ok(format!(
            "G {job} {} {started} {}\n",
            self.pid(),
            boot.trim()
        ))
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_lock_another_user_holds_in_the_shared_temp_folder_does_not_stop_the_queue() -> TestResult {
    let Some(other) = other_user()? else {
        return Ok(());
    };
    let env = env_without_temp_dir()?;
    // The old lock's name came from the SQLite file's path.
    let Some(db) = env.sqlite_file() else {
        return Ok(());
    };
    let tmp = shared_tmp(&env)?;
    let id = env.publish("cb", "{}")?;
    // Where the lock used to be, created and held by the other user.
    let planted = old_lock_path(&tmp, &fs::canonicalize(db)?, "general");
    let mut holder = other
        .sh(&format!("exec flock {} sleep 60", planted.display()))
        .stderr(Stdio::null())
        .spawn()?;
    wait_for(
        "the planted lock to be held",
        Duration::from_secs(10),
        || {
            Command::new("flock")
                .args(["-n"])
                .arg(&planted)
                .arg("true")
                .status()
                .is_ok_and(|status| !status.success())
        },
    )?;

    let out = env.bgq().env("TMPDIR", &tmp).arg("process").output()?;
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(env.state(id)?, "FINISHED", "{}", describe(&out));
    let private = tmp.join("bgq-0");
    assert_eq!(mode_of(&private)?, 0o700);
    assert_eq!(lock_files(&private)?.len(), 1);
    Ok(())
}

#[test]
fn a_private_lock_folder_made_by_another_user_is_refused() -> TestResult {
    let Some(other) = other_user()? else {
        return Ok(());
    };
    let env = env_without_temp_dir()?;
    let tmp = shared_tmp(&env)?;
    let id = env.publish("cb", "{}")?;
    let squatted = tmp.join("bgq-0");
    other.run(&format!("mkdir -m 700 {}", squatted.display()))?;

    let out = env.bgq().env("TMPDIR", &tmp).arg("process").output()?;
    expect_error(
        &out,
        1,
        &[
            &format!("lock folder {}", squatted.display()),
            "is owned by bgq-test-other",
        ],
    )?;
    assert_eq!(env.state(id)?, "READY");

    let out = env.bgq().env("TMPDIR", &tmp).arg("check").output()?;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "problem: lock folder {} is owned by bgq-test-other",
            squatted.display()
        )),
        "{stdout}"
    );
    Ok(())
}

#[test]
fn a_lock_folder_every_user_can_write_is_refused() -> TestResult {
    let env = TestEnv::new("")?;
    let tmp = shared_tmp(&env)?;
    env.write_raw_config(&format!(
        "{}\ntemp_dir = \"{}\"\n{}",
        env.database_line(),
        tmp.display(),
        finished_callback(&env)?
    ))?;
    let id = env.publish("cb", "{}")?;
    let out = env.bgq().arg("process").output()?;
    expect_error(
        &out,
        1,
        &[
            &format!("lock folder {}", tmp.display()),
            "writable by every user (mode 1777, owner root)",
            "leave temp_dir unset",
        ],
    )?;
    assert_eq!(env.state(id)?, "READY");
    let out = env.bgq().arg("check").output()?;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("problem: lock folder"),
        "{}",
        describe(&out)
    );
    Ok(())
}

#[test]
fn a_lock_file_with_a_second_name_is_refused() -> TestResult {
    let env = TestEnv::new("")?;
    env.write_config(&finished_callback(&env)?)?;
    env.publish("cb", "{}")?;
    env.process(&[])?;
    let lock = lock_files(&env.path("locks"))?
        .pop()
        .ok_or("no lock file")?;
    fs::hard_link(&lock, env.path("second-name"))?;
    let id = env.publish("cb", "{}")?;
    let out = env.bgq().arg("process").output()?;
    expect_error(
        &out,
        1,
        &[&format!("lock file {}", lock.display()), "has 2 links"],
    )?;
    assert_eq!(env.state(id)?, "READY");
    Ok(())
}

/// A dead run's job, PROCESSING, with its callback gone: what recovery finds after a crash.
fn orphaned_job(env: &TestEnv) -> TestResult<i64> {
    let (id, mut run, pid, guard) = hanging_job(env, &HangingJob::default())?;
    wait_for_group_record(env, id)?;
    send_signal(run.pid(), "KILL")?;
    run.wait_exit(Duration::from_secs(10))?;
    drop(guard);
    wait_for("the callback to be gone", Duration::from_secs(10), || {
        !alive(pid)
    })?;
    assert_eq!(env.state(id)?, "PROCESSING");
    Ok(id)
}

#[test]
fn notes_another_user_planted_in_a_lock_file_are_never_acted_on() -> TestResult {
    let Some(other) = other_user()? else {
        return Ok(());
    };
    let env = TestEnv::new("")?;
    fs::set_permissions(env.root(), fs::Permissions::from_mode(0o755))?;
    let id = orphaned_job(&env)?;
    let locks = env.path("locks");
    let lock = lock_files(&locks)?.pop().ok_or("no lock file")?;
    let bystander = Bystander::start()?;

    // The other user replaces the lock file, in a moment when its folder was open to it, with
    // one that names the bystander's group as the job's callback.
    fs::remove_file(&lock)?;
    fs::set_permissions(&locks, fs::Permissions::from_mode(0o777))?;
    let note = bystander.group_note(id)?;
    other.run(&format!(
        "printf '{}' > {}",
        note.trim_end(),
        lock.display()
    ))?;
    fs::set_permissions(&locks, fs::Permissions::from_mode(0o755))?;

    let out = env.bgq().arg("process").output()?;
    expect_error(
        &out,
        1,
        &[
            &format!("lock file {}", lock.display()),
            "is owned by bgq-test-other",
        ],
    )?;
    assert!(
        alive(bystander.pid()),
        "recovery killed what a planted note named"
    );
    assert_eq!(env.state(id)?, "PROCESSING");

    let out = env
        .bgq()
        .args(["cancel", "--kill", &id.to_string()])
        .output()?;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("is owned by bgq-test-other"),
        "{}",
        describe(&out)
    );
    assert!(
        alive(bystander.pid()),
        "cancel --kill killed what a planted note named"
    );
    Ok(())
}

#[test]
fn a_run_that_died_but_is_not_yet_reaped_is_dead() -> TestResult {
    let env = TestEnv::new("")?;
    let pidfile = env.path("first.pid");
    let script = env.script(
        "once.sh",
        &format!(
            "if [ \"$BGQ_ATTEMPT\" = 1 ]; then echo $$ > {p}.tmp; mv {p}.tmp {p}; exec sleep 30; fi",
            p = pidfile.display()
        ),
    )?;
    env.write_config(&callback_toml("once", &script, ""))?;
    let id = env.publish("once", "{}")?;
    // Its parent never reaps it: `sh` starts the run, then becomes a `sleep` that never waits.
    let run_pid = env.path("run.pid");
    let mut parent = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "\"$0\" --config {} process & echo $! > {}; exec sleep 60",
            env.config_path().display(),
            run_pid.display()
        ))
        .arg(env!("CARGO_BIN_EXE_bgq"))
        .current_dir(env.root())
        .spawn()?;
    wait_for("the callback to start", Duration::from_secs(15), || {
        pidfile.exists()
    })?;
    wait_for_group_record(&env, id)?;
    let callback: i32 = fs::read_to_string(&pidfile)?.trim().parse()?;
    let _guard = KillGroupOnDrop(pgid_of(callback)?);
    let run: u32 = fs::read_to_string(&run_pid)?.trim().parse()?;
    send_signal(run, "KILL")?;
    wait_for("the run to be a zombie", Duration::from_secs(10), || {
        fs::read_to_string(format!("/proc/{run}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
    })?;

    let stderr = env.process(&[])?;
    let _ = parent.kill();
    let _ = parent.wait();
    // On PostgreSQL the callback died with its run (SPEC section 10), so there may be nothing
    // left for recovery to kill.
    assert!(
        stderr.contains(&format!("bgq: recovered job {id} (once)"))
            && (stderr.contains("was killed")
                || (!env.orphans_outlive_their_run()
                    && stderr.contains("its callback was no longer running"))),
        "{stderr}"
    );
    assert!(
        !alive(callback),
        "the first callback still runs beside the second"
    );
    assert_eq!(env.state(id)?, "FINISHED");
    Ok(())
}

#[test]
fn recovery_that_cannot_prove_a_callback_never_started_says_unknown() -> TestResult {
    let env = TestEnv::new("")?;
    let id = orphaned_job(&env)?;
    // The same database under another lock folder: its lock file has no notes of the dead run.
    let other_locks = env.path("other-locks");
    let config = fs::read_to_string(env.config_path())?.replace(
        &env.path("locks").display().to_string(),
        &other_locks.display().to_string(),
    );
    let other_config = env.path("other.toml");
    fs::write(&other_config, config)?;
    let out = env
        .bgq_bare()
        .arg("--config")
        .arg(&other_config)
        .arg("process")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("bgq: recovered job {id}"))
            && stderr.contains("whether its callback started is unknown"),
        "{stderr}"
    );
    assert!(!stderr.contains("had not started"), "{stderr}");
    Ok(())
}

#[test]
fn a_database_folder_every_user_can_write_is_refused() -> TestResult {
    if !sqlite_only()? {
        return Ok(());
    }
    let env = TestEnv::new("")?;
    let open = shared_tmp(&env)?;
    env.write_raw_config(&format!(
        "database = \"tmp/bgq.sqlite\"\n{}",
        finished_callback(&env)?
    ))?;
    let out = env.bgq().args(["publish", "cb", "--json", "{}"]).output()?;
    expect_error(
        &out,
        1,
        &[
            &format!("database folder {}", open.display()),
            "writable by every user",
        ],
    )?;
    assert!(
        !open.join("bgq.sqlite").exists(),
        "a database was made there"
    );
    let out = env.bgq().arg("check").output()?;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("problem: database folder"),
        "{}",
        describe(&out)
    );
    Ok(())
}

#[test]
fn a_database_that_links_into_a_folder_every_user_can_write_is_refused() -> TestResult {
    let env = TestEnv::new("")?;
    let Some(db) = env.sqlite_file() else {
        return Ok(());
    };
    let open = shared_tmp(&env)?;
    env.write_config(&finished_callback(&env)?)?;
    fs::write(open.join("planted.sqlite"), "")?;
    std::os::unix::fs::symlink(open.join("planted.sqlite"), &db)?;
    let out = env.bgq().args(["publish", "cb", "--json", "{}"]).output()?;
    expect_error(
        &out,
        1,
        &[
            &format!("the database {} is a symlink to", db.display()),
            "writable by every user",
        ],
    )?;
    assert_eq!(
        fs::read(open.join("planted.sqlite"))?,
        b"",
        "the planted file was written"
    );
    let out = env.bgq().arg("check").output()?;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("is a symlink to"),
        "{}",
        describe(&out)
    );
    Ok(())
}

#[test]
fn a_database_folder_of_another_user_is_refused() -> TestResult {
    let Some(other) = other_user()? else {
        return Ok(());
    };
    if !sqlite_only()? {
        return Ok(());
    }
    let env = TestEnv::new("")?;
    let theirs = env.path("theirs");
    fs::create_dir(&theirs)?;
    fs::set_permissions(env.root(), fs::Permissions::from_mode(0o755))?;
    let chown = Command::new("chown")
        .arg(format!("{}:{}", other.uid, other.gid))
        .arg(&theirs)
        .status()?;
    assert!(chown.success());
    env.write_raw_config(&format!(
        "database = \"theirs/bgq.sqlite\"\ntemp_dir = \"locks\"\n{}",
        finished_callback(&env)?
    ))?;
    let out = env.bgq().args(["publish", "cb", "--json", "{}"]).output()?;
    expect_error(
        &out,
        1,
        &[
            &format!("database folder {}", theirs.display()),
            "is owned by bgq-test-other, not by root",
        ],
    )?;
    let out = env.bgq().arg("check").output()?;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("is owned by bgq-test-other"),
        "{}",
        describe(&out)
    );
    Ok(())
}
