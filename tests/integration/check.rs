//! `bgq check` validates the config against the machine and the queue: commands that cannot
//! run, missing folders, a missing notify command, jobs waiting for a callback the config lost.
//! One `problem: ` line each and exit 1, or one `ok: ` line and exit 0; never a new database.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::support::{
    SQLITE_FILE, TestEnv, TestResult, callback_toml, describe, sqlite_only, toml_str,
};

/// Runs `bgq check`; returns (exit code, stdout lines), failing on a panic.
fn check(env: &TestEnv) -> TestResult<(i32, Vec<String>)> {
    let out = env.bgq().arg("check").output()?;
    if String::from_utf8_lossy(&out.stderr).contains("panicked") {
        return Err(format!("bgq check panicked: {}", describe(&out)).into());
    }
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout)?
            .lines()
            .map(str::to_owned)
            .collect(),
    ))
}

/// Runs `bgq check` expecting exit 1 and only `problem: ` lines; returns them.
fn problems(env: &TestEnv) -> TestResult<Vec<String>> {
    let (code, lines) = check(env)?;
    if code != 1 {
        return Err(format!("expected exit 1, got {code}: {lines:?}").into());
    }
    if lines.is_empty() || !lines.iter().all(|l| l.starts_with("problem: ")) {
        return Err(format!("expected only `problem: ` lines: {lines:?}").into());
    }
    Ok(lines)
}

/// Checks that `bgq check` reports exactly one problem, a line holding every one of `fragments`.
fn expect_one_problem(env: &TestEnv, fragments: &[&str]) -> TestResult {
    let lines = problems(env)?;
    assert_eq!(lines.len(), 1, "one problem: {lines:?}");
    for fragment in fragments {
        assert!(lines[0].contains(fragment), "{fragment:?} in {lines:?}");
    }
    Ok(())
}

/// A good script callback: `NAME.sh`, executable, exiting 0; returns its `[callbacks.NAME]` table.
fn good_callback(env: &TestEnv, name: &str, extra: &str) -> TestResult<String> {
    let script = env.script(&format!("{name}.sh"), "exit 0")?;
    Ok(callback_toml(name, &script, extra))
}

/// A sound config passes with one `ok: ` line, and check does not create the database.
#[test]
fn a_good_config_is_ok_and_no_database_is_created() -> TestResult {
    let env = TestEnv::new("")?;
    let notify = env.script("notify.sh", "cat > /dev/null")?;
    let root = toml_str(&env.root().display().to_string());
    env.write_config(&format!(
        "notify = [{}]\n{}{}",
        toml_str(&notify.display().to_string()),
        good_callback(&env, "mailer", &format!("working_dir = {root}"))?,
        good_callback(&env, "exporter", "")?
    ))?;
    // On SQLite a database is a file; under another backend `check` must leave the server
    // alone too, which that backend's tests have to say how to see.
    let db = env.path(SQLITE_FILE);
    assert!(!db.exists());

    let (code, lines) = check(&env)?;
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("ok: "), "{lines:?}");
    assert!(!db.exists(), "check created the database");
    Ok(())
}

/// A command that is not on PATH is a problem naming the callback and the command.
#[test]
fn a_command_that_is_not_found_is_a_problem() -> TestResult {
    let env = TestEnv::new("[callbacks.mailer]\ncommand = [\"no-such-program-xyz\", \"--flag\"]")?;
    expect_one_problem(&env, &["mailer", "no-such-program-xyz"])
}

/// A script without the execute bit is a problem naming the callback.
#[test]
fn a_script_that_is_not_executable_is_a_problem() -> TestResult {
    let env = TestEnv::new("")?;
    let script = env.script("mailer.sh", "exit 0")?;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o644))?;
    env.write_config(&callback_toml("mailer", &script, ""))?;
    expect_one_problem(&env, &["mailer"])
}

/// A directory given as the command is a problem naming the callback.
#[test]
fn a_directory_as_command_is_a_problem() -> TestResult {
    let env = TestEnv::new("")?;
    let dir = env.path("bin");
    fs::create_dir(&dir)?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
    env.write_config(&callback_toml("mailer", &dir, ""))?;
    expect_one_problem(&env, &["mailer"])
}

/// A script whose `#!` interpreter does not exist is a problem naming the callback.
#[test]
fn a_script_with_a_missing_interpreter_is_a_problem() -> TestResult {
    let env = TestEnv::new("")?;
    let script = env.path("mailer.py");
    fs::write(&script, "#!/no/such/interpreter\nprint('hi')\n")?;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
    env.write_config(&callback_toml("mailer", &script, ""))?;
    expect_one_problem(&env, &["mailer"])
}

/// A script saved with Windows line endings (`#!/bin/sh\r`) cannot start: the kernel looks for
/// an interpreter named `/bin/sh\r`. check says so in one line, with the fix.
#[test]
fn a_script_with_crlf_line_endings_is_a_problem() -> TestResult {
    let env = TestEnv::new("")?;
    let script = env.path("mailer.sh");
    fs::write(&script, "#!/bin/sh\r\nexit 0\r\n")?;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
    env.write_config(&callback_toml("mailer", &script, ""))?;
    expect_one_problem(
        &env,
        &[
            "callback `mailer`",
            &script.display().to_string(),
            "Windows (CRLF) line endings",
            "dos2unix",
        ],
    )?;
    // And it is right: the callback cannot start.
    assert!(
        std::process::Command::new(&script).status().is_err(),
        "a CRLF script started"
    );
    Ok(())
}

/// A database folder that is missing and cannot be made is named itself, with the folder that
/// stops bgq from making it (not the parent alone, as if it were the database's folder).
#[test]
fn a_missing_database_folder_is_named_with_the_parent_that_stops_it() -> TestResult {
    if !sqlite_only()? {
        return Ok(());
    }
    let env = TestEnv::new("")?;
    let parent = env.path("app");
    fs::create_dir(&parent)?;
    fs::set_permissions(&parent, fs::Permissions::from_mode(0o555))?;
    // Root writes anywhere: make the folder's parent a file, which nobody can make folders in.
    let blocked = if nix_is_root() {
        let file = parent.join("file");
        fs::set_permissions(&parent, fs::Permissions::from_mode(0o755))?;
        fs::write(&file, "")?;
        file
    } else {
        parent.clone()
    };
    let missing = blocked.join("var");
    env.write_raw_config(&format!(
        "database = {}\ntemp_dir = {}\n{}",
        toml_str(&missing.join("bgq.sqlite").display().to_string()),
        toml_str(&env.path("locks").display().to_string()),
        good_callback(&env, "mailer", "")?
    ))?;
    expect_one_problem(
        &env,
        &[
            &format!("the database folder {} does not exist", missing.display()),
            &format!("{} is not", blocked.display()),
        ],
    )?;
    fs::set_permissions(&parent, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn nix_is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

/// A `working_dir` that is missing, or is a file, is a problem naming the path.
#[test]
fn a_missing_working_dir_is_a_problem() -> TestResult {
    let env = TestEnv::new("")?;
    let missing = env.path("no-such-dir");
    env.write_config(&good_callback(
        &env,
        "mailer",
        &format!("working_dir = {}", toml_str(&missing.display().to_string())),
    )?)?;
    expect_one_problem(&env, &["mailer", &missing.display().to_string()])?;

    let file = env.path("a-file");
    fs::write(&file, "")?;
    env.write_config(&good_callback(
        &env,
        "mailer",
        &format!("working_dir = {}", toml_str(&file.display().to_string())),
    )?)?;
    expect_one_problem(&env, &["mailer", &file.display().to_string()])
}

/// A `notify` command that does not exist is a problem naming it.
#[test]
fn a_missing_notify_command_is_a_problem() -> TestResult {
    let env = TestEnv::new("")?;
    env.write_config(&format!(
        "notify = [\"/no/such/notifier-xyz\", \"bgq\"]\n{}",
        good_callback(&env, "mailer", "")?
    ))?;
    expect_one_problem(&env, &["/no/such/notifier-xyz"])
}

/// A `temp_dir` that does not exist is a problem naming it.
#[test]
fn a_missing_temp_dir_is_a_problem() -> TestResult {
    let env = TestEnv::new("")?;
    let missing = env.path("no-such-temp");
    let callback = good_callback(&env, "mailer", "")?;
    env.write_raw_config(&format!(
        "{}\ntemp_dir = {}\n{callback}",
        env.database_line(),
        toml_str(&missing.display().to_string())
    ))?;
    expect_one_problem(&env, &[&missing.display().to_string()])
}

/// Unfinished jobs whose callback left the config are counted per queue and named.
#[test]
fn unfinished_jobs_of_a_removed_callback_are_a_problem() -> TestResult {
    let env = TestEnv::new("")?;
    let keep = good_callback(&env, "keep", "")?;
    let gone = env.script("gone.sh", "exit 75")?;
    env.write_config(&format!("{keep}{}", callback_toml("gone", &gone, "")))?;
    let retried = env.publish("gone", "{}")?;
    env.process(&[])?;
    assert_eq!(env.state(retried)?, "TEMPORARILY_FAILED");
    env.publish("gone", "{}")?;
    env.publish_with("gone", "{}", &["--queue", "mail"])?;
    env.write_config(&keep)?;

    let mut lines = problems(&env)?;
    lines.sort();
    assert_eq!(
        lines,
        [
            "problem: 1 unfinished job(s) of queue `mail` wait for callback `gone`, which the config does not define",
            "problem: 2 unfinished job(s) of queue `general` wait for callback `gone`, which the config does not define",
        ]
    );
    Ok(())
}

/// FINISHED and PERMANENTLY_FAILED jobs of a removed callback wait for nothing: no problem.
#[test]
fn ended_jobs_of_a_removed_callback_are_not_a_problem() -> TestResult {
    let env = TestEnv::new("")?;
    let keep = good_callback(&env, "keep", "")?;
    let done = good_callback(&env, "done", "")?;
    let broken = env.script("broken.sh", "exit 1")?;
    env.write_config(&format!(
        "{keep}{done}{}",
        callback_toml("broken", &broken, "")
    ))?;
    let finished = env.publish("done", "{}")?;
    let failed = env.publish("broken", "{}")?;
    env.process(&[])?;
    assert_eq!(env.state(finished)?, "FINISHED");
    assert_eq!(env.state(failed)?, "PERMANENTLY_FAILED");
    env.write_config(&keep)?;

    let (code, lines) = check(&env)?;
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("ok: "), "{lines:?}");
    Ok(())
}

/// Several problems are all printed, one line each.
#[test]
fn several_problems_are_each_reported() -> TestResult {
    let env = TestEnv::new("")?;
    let locked = env.script("locked.sh", "exit 0")?;
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o644))?;
    let homeless_dir = env.path("no-such-home");
    env.write_config(&format!(
        "notify = [\"/no/such/notifier-xyz\"]\n\
         [callbacks.lost]\ncommand = [\"no-such-program-xyz\"]\n{}{}{}",
        callback_toml("locked", &locked, ""),
        good_callback(
            &env,
            "homeless",
            &format!(
                "working_dir = {}",
                toml_str(&homeless_dir.display().to_string())
            )
        )?,
        good_callback(&env, "fine", "")?
    ))?;

    let lines = problems(&env)?;
    assert_eq!(lines.len(), 4, "one line per problem: {lines:?}");
    for fragment in [
        "lost",
        "no-such-program-xyz",
        "locked",
        "homeless",
        "/no/such/notifier-xyz",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(fragment)),
            "{fragment:?} in {lines:?}"
        );
    }
    assert!(
        !lines.iter().any(|l| l.contains("`fine`")),
        "the sound callback is not a problem: {lines:?}"
    );
    Ok(())
}
