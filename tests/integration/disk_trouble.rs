//! A full filesystem and a read-only database folder each give one clear error and exit 1, no
//! panic, and leave the data as it was. (A database that is not SQLite and one from a newer bgq
//! are covered in `bad_input.rs` and `locking.rs`.) The filesystem is the SQLite file's, so these
//! tests are SQLite-only.
//!
//! A full or read-only filesystem takes a tmpfs mount, hence root; without it these tests say
//! why and are skipped, except in CI (`CI=true`), which runs them as root.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{TestEnv, TestResult, callback_toml, describe, sqlite_only, toml_str};

/// Skips a test with a printed reason, except in CI, where it is an error.
fn skip(reason: &str) -> TestResult<bool> {
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        return Err(format!("CI must run the disk tests, but {reason}").into());
    }
    eprintln!("skipped: {reason}");
    Ok(false)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// A tmpfs mounted on a folder of the test's temp dir, unmounted when dropped (even when the
/// test fails), so that the temp dir can be removed.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `2m`) on `dir`; `None` (with a printed reason) when this
    /// machine cannot.
    fn mount(dir: &Path, size: &str) -> TestResult<Option<Tmpfs>> {
        if !is_root() {
            return skip("mounting a tmpfs needs root").map(|_| None);
        }
        fs::create_dir_all(dir)?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(dir)
            .output();
        match out {
            Ok(out) if out.status.success() => Ok(Some(Tmpfs {
                dir: dir.to_owned(),
            })),
            Ok(out) => skip(&format!("mount -t tmpfs failed: {}", describe(&out))).map(|_| None),
            Err(err) => skip(&format!("cannot run mount: {err}")).map(|_| None),
        }
    }

    /// Remounts it with `options` (`ro` or `rw`).
    fn remount(&self, options: &str) -> TestResult {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.dir)
            .output()?;
        if !out.status.success() {
            return Err(format!("remount,{options}: {}", describe(&out)).into());
        }
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|status| status.success());
        if !unmounted {
            // Busy (a callback left running): detach it now, it goes when the last user does.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// A config whose SQLite database lives in `folder` (relative to the temp dir), with callback
/// `cb` writing its stdin to `out/JOB_ID`; `None` (with a printed reason) when the tests run on
/// another backend: these tests fill and freeze the file's own filesystem.
fn env_with_database_in(folder: &str) -> TestResult<Option<TestEnv>> {
    if !sqlite_only()? {
        return Ok(None);
    }
    let env = TestEnv::new("")?;
    fs::create_dir_all(env.path("out"))?;
    let cb = env.script(
        "cb.sh",
        &format!("cat > {}/$BGQ_JOB_ID", env.path("out").display()),
    )?;
    env.write_raw_config(&format!(
        "database = \"{folder}/bgq.sqlite\"\ntemp_dir = {}\n{}",
        toml_str(&env.path("locks").display().to_string()),
        callback_toml("cb", &cb, "")
    ))?;
    Ok(Some(env))
}

/// Every file of `dir` with its bytes.
fn snapshot(dir: &Path) -> TestResult<BTreeMap<String, Vec<u8>>> {
    let mut files = BTreeMap::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        files.insert(
            entry.file_name().to_string_lossy().into_owned(),
            fs::read(entry.path())?,
        );
    }
    Ok(files)
}

/// Checks a failure: exit 1, nothing on stdout, no panic, and exactly one stderr line, a
/// `bgq: error: ` that contains one of `any_of` (compared in lower case).
fn one_clear_error(out: &std::process::Output, any_of: &[&str]) -> TestResult {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let ok = out.status.code() == Some(1)
        && out.stdout.is_empty()
        && !stderr.contains("panicked")
        && lines.len() == 1
        && lines[0].starts_with("bgq: error: ")
        && any_of
            .iter()
            .any(|word| lines[0].to_lowercase().contains(word));
    if !ok {
        return Err(format!(
            "expected exit 1 and one `bgq: error: ` line mentioning one of {any_of:?}; got {}",
            describe(out)
        )
        .into());
    }
    Ok(())
}

/// Fills the filesystem holding `path` until a write fails for want of space.
fn fill(path: &Path) -> TestResult {
    let mut file = fs::File::create(path)?;
    let chunk = vec![0xa5u8; 64 * 1024];
    loop {
        if let Err(err) = file.write_all(&chunk) {
            // Then byte by byte, so that not even a page is left.
            for _ in 0..64 * 1024 {
                if file.write_all(&[0]).is_err() {
                    break;
                }
            }
            return if err.raw_os_error() == Some(libc::ENOSPC) {
                Ok(())
            } else {
                Err(err.into())
            };
        }
    }
}

/// Fills the database's filesystem, publishes a large `--raw` job (refused: exit 1, one line
/// saying the disk is full), runs `process` (may fail the same way), frees the space, and checks
/// that the earlier jobs are intact and run. With `held_open`, another connection keeps the
/// database open meanwhile, so its `-wal` and `-shm` files exist when the disk fills.
fn full_filesystem(held_open: bool) -> TestResult {
    let Some(env) = env_with_database_in("disk")? else {
        return Ok(());
    };
    let Some(_disk) = Tmpfs::mount(&env.path("disk"), "2m")? else {
        return Ok(());
    };
    let payloads: Vec<String> = (0..5).map(|n| format!("{{\"n\":{n}}}")).collect();
    let ids = payloads
        .iter()
        .map(|json| env.publish("cb", json))
        .collect::<TestResult<Vec<i64>>>()?;
    let holder = if held_open {
        let conn = rusqlite::Connection::open(env.path("disk/bgq.sqlite"))?;
        conn.query_row("SELECT count(*) FROM jobs", [], |row| row.get::<_, i64>(0))?;
        Some(conn)
    } else {
        None
    };

    fill(&env.path("disk/filler"))?;
    let big = env.path("big.bin");
    fs::write(&big, vec![0x5au8; 1024 * 1024])?;
    let out = env
        .bgq()
        .args(["publish", "cb", "--raw"])
        .arg(&big)
        .output()?;
    one_clear_error(&out, &["full", "no space"]).map_err(|err| format!("publish: {err}"))?;

    // A `process` run meanwhile may fail (exit 1, one line) but must not lose or break anything.
    let out = env.bgq().arg("process").output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(0 | 1)) && !stderr.contains("panicked"),
        "process on a full disk: {}",
        describe(&out)
    );
    if out.status.code() == Some(1) {
        one_clear_error(&out, &["full", "no space"])
            .map_err(|err| format!("process on a full disk: {err}"))?;
    }

    fs::remove_file(env.path("disk/filler"))?;
    drop(holder);
    let jobs = env.jobs()?;
    let listed: Vec<i64> = jobs.iter().filter_map(|job| job["id"].as_i64()).collect();
    assert_eq!(listed, ids, "the earlier jobs, and only those: {jobs:?}");
    let conn = rusqlite::Connection::open(env.path("disk/bgq.sqlite"))?;
    let check: String = conn.query_row("PRAGMA integrity_check", [], |row| row.get(0))?;
    assert_eq!(check, "ok");
    drop(conn);

    env.process(&[])?;
    for (id, json) in ids.iter().zip(&payloads) {
        assert_eq!(env.state(*id)?, "FINISHED", "job {id}");
        assert_eq!(
            fs::read_to_string(env.path(&format!("out/{id}")))?,
            format!("{json}\n"),
            "job {id} got its parameters intact"
        );
    }
    // With room again, the big job goes through.
    let out = env
        .bgq()
        .args(["publish", "cb", "--raw"])
        .arg(&big)
        .output()?;
    assert!(out.status.success(), "{}", describe(&out));
    Ok(())
}

/// The usual case: nothing has the database open when the disk fills (no `-wal`, no `-shm`).
#[test]
fn a_full_filesystem_refuses_the_publish_and_keeps_the_earlier_jobs() -> TestResult {
    full_filesystem(false)
}

/// The disk fills while a `process` (here: another connection) has the database open.
#[test]
fn a_full_filesystem_under_an_open_database_refuses_the_publish_too() -> TestResult {
    full_filesystem(true)
}

#[test]
fn a_read_only_database_folder_refuses_writes_and_changes_nothing() -> TestResult {
    let Some(env) = env_with_database_in("ro")? else {
        return Ok(());
    };
    let folder = env.path("ro");
    // Root ignores permission bits, so it gets a read-only mount; anyone else a mode 0555 folder.
    let mount = if is_root() {
        let Some(mount) = Tmpfs::mount(&folder, "8m")? else {
            return Ok(());
        };
        Some(mount)
    } else {
        fs::create_dir_all(&folder)?;
        None
    };
    let ids = [
        env.publish("cb", "{\"n\":1}")?,
        env.publish("cb", "{\"n\":2}")?,
    ];
    let before = snapshot(&folder)?;
    match &mount {
        Some(mount) => mount.remount("ro")?,
        None => fs::set_permissions(&folder, fs::Permissions::from_mode(0o555))?,
    }

    let mut problems = Vec::new();
    for args in [&["publish", "cb", "--json", "{}"][..], &["process"]] {
        let out = env.bgq().args(args).output()?;
        if let Err(err) = one_clear_error(
            &out,
            &[
                "read-only",
                "readonly",
                "permission denied",
                "unable to open",
            ],
        ) {
            problems.push(format!("bgq {args:?}: {err}"));
        }
    }
    let after = snapshot(&folder)?;
    match &mount {
        Some(mount) => mount.remount("rw")?,
        None => fs::set_permissions(&folder, fs::Permissions::from_mode(0o700))?,
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
    assert!(before == after, "the database folder changed");

    let listed: Vec<i64> = env
        .jobs()?
        .iter()
        .filter_map(|job| job["id"].as_i64())
        .collect();
    assert_eq!(listed, ids);
    env.process(&[])?;
    for id in ids {
        assert_eq!(env.state(id)?, "FINISHED");
    }
    Ok(())
}
