//! Configuration (SPEC.md section 3): where the file is found, how relative paths resolve, and that
//! unknown keys and invalid values are refused with the file, the line and the cause.

use std::fs;
use std::path::Path;
use std::time::Duration;

use assert_cmd::Command;

use crate::support::{
    SQLITE_FILE, TestEnv, TestResult, describe, expect_error, lock_files, read_lines, sqlite_only,
};

const TRUE_CALLBACK: &str = "[callbacks.cb]\ncommand = [\"/bin/true\"]\n";

/// `bgq` with no `--config`, run in `cwd`, with `BGQ_CONFIG` removed.
fn bare(cwd: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bgq"));
    cmd.current_dir(cwd)
        .env_remove("BGQ_CONFIG")
        .timeout(std::time::Duration::from_secs(60));
    cmd
}

#[test]
fn discovery_prefers_flag_then_env_then_working_dir() -> TestResult {
    let cwd_env = TestEnv::new(TRUE_CALLBACK)?;
    let env_env = TestEnv::new(TRUE_CALLBACK)?;
    let flag_env = TestEnv::new(TRUE_CALLBACK)?;
    let publish = ["publish", "cb", "--json", "{}"];

    // Only ./bgq.toml.
    let out = cwd_env.bgq_bare().args(publish).output()?;
    assert!(out.status.success(), "{}", describe(&out));
    // BGQ_CONFIG beats ./bgq.toml.
    let out = cwd_env
        .bgq_bare()
        .env("BGQ_CONFIG", env_env.config_path())
        .args(publish)
        .output()?;
    assert!(out.status.success(), "{}", describe(&out));
    // --config beats both.
    let out = cwd_env
        .bgq_bare()
        .env("BGQ_CONFIG", env_env.config_path())
        .arg("--config")
        .arg(flag_env.config_path())
        .args(publish)
        .args(["--identifier", "from-flag"])
        .output()?;
    assert!(out.status.success(), "{}", describe(&out));

    assert_eq!(cwd_env.jobs()?.len(), 1, "jobs in the ./bgq.toml database");
    assert_eq!(env_env.jobs()?.len(), 1, "jobs in the BGQ_CONFIG database");
    let flagged = flag_env.jobs()?;
    assert_eq!(flagged.len(), 1, "jobs in the --config database");
    assert_eq!(flagged[0]["identifier"], "from-flag");
    Ok(())
}

#[test]
fn config_flag_is_accepted_after_the_subcommand() -> TestResult {
    let env = TestEnv::new(TRUE_CALLBACK)?;
    let elsewhere = tempfile::tempdir()?;
    let out = bare(elsewhere.path())
        .args(["publish", "cb", "--json", "{}", "--config"])
        .arg(env.config_path())
        .output()?;
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(String::from_utf8(out.stdout)?, "1\n");
    assert_eq!(env.jobs()?.len(), 1);
    Ok(())
}

#[test]
fn no_config_found_names_all_three_places() -> TestResult {
    let empty = tempfile::tempdir()?;
    let out = bare(empty.path()).arg("list").output()?;
    expect_error(&out, 2, &["--config", "BGQ_CONFIG", "./bgq.toml"])?;
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).lines().count(),
        1,
        "a one-line error: {}",
        describe(&out)
    );
    assert_eq!(fs::read_dir(empty.path())?.count(), 0, "nothing created");
    Ok(())
}

/// A config that cannot be read (here a folder: EISDIR, which root cannot bypass) is the
/// machine's trouble, exit 1; a config path that names nothing is the user's typo, exit 2, as
/// are invalid TOML and unknown keys (see the tests below).
#[test]
fn an_unreadable_config_exits_1_and_a_missing_one_2() -> TestResult {
    let env = TestEnv::new(TRUE_CALLBACK)?;
    let folder = env.path("config-folder.toml");
    fs::create_dir(&folder)?;
    let out = env
        .bgq_bare()
        .arg("--config")
        .arg(&folder)
        .arg("list")
        .output()?;
    expect_error(
        &out,
        1,
        &[&format!("cannot read config {}", folder.display())],
    )?;
    let out = env
        .bgq_bare()
        .env("BGQ_CONFIG", &folder)
        .arg("list")
        .output()?;
    expect_error(&out, 1, &["config-folder.toml"])?;
    let missing = env.path("missing.toml");
    let out = env
        .bgq_bare()
        .arg("--config")
        .arg(&missing)
        .arg("list")
        .output()?;
    expect_error(
        &out,
        2,
        &[&format!("cannot read config {}", missing.display())],
    )?;
    Ok(())
}

#[test]
fn relative_paths_resolve_against_the_config_folder() -> TestResult {
    // The database here is a SQLite path, resolved and created with its folders.
    if !sqlite_only()? {
        return Ok(());
    }
    let env = TestEnv::new("")?;
    fs::create_dir_all(env.path("cfg/locks"))?;
    fs::create_dir_all(env.path("elsewhere"))?;
    fs::write(
        env.path("cfg/bgq.toml"),
        format!("database = \"var/data/bgq.sqlite\"\ntemp_dir = \"locks\"\n{TRUE_CALLBACK}"),
    )?;
    let run = |args: &[&str]| {
        bare(&env.path("elsewhere"))
            .args(["--config", "../cfg/bgq.toml"])
            .args(args)
            .output()
    };

    let out = run(&["publish", "cb", "--json", "{}"])?;
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(String::from_utf8(out.stdout)?, "1\n");
    assert!(
        env.path("cfg/var/data/bgq.sqlite").is_file(),
        "database created (with its folders) next to the config file"
    );

    let out = run(&["process"])?;
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        lock_files(&env.path("cfg/locks"))?.len(),
        1,
        "lock file in the relative temp_dir"
    );

    let out = run(&["list", "--json"])?;
    assert!(out.status.success(), "{}", describe(&out));
    let job: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(job["state"], "FINISHED");

    assert_eq!(
        fs::read_dir(env.path("elsewhere"))?.count(),
        0,
        "nothing written to the working directory"
    );
    Ok(())
}

#[test]
fn callbacks_run_in_the_config_folder_with_relative_command_and_env() -> TestResult {
    let env = TestEnv::new("")?;
    fs::create_dir_all(env.path("cfg/sub"))?;
    fs::create_dir_all(env.path("elsewhere"))?;
    env.script(
        "cfg/cb.sh",
        "pwd > pwd.txt; echo \"$GREETING\" > greeting.txt",
    )?;
    fs::write(
        env.path("cfg/bgq.toml"),
        format!(
            "{}\ntemp_dir = \"{}\"\n\
             [callbacks.here]\ncommand = [\"./cb.sh\"]\nenv = {{ GREETING = \"hello\" }}\n\
             [callbacks.there]\ncommand = [\"./cb.sh\"]\nworking_dir = \"sub\"\n",
            env.database_line(),
            env.path("locks").display()
        ),
    )?;
    let run = |args: &[&str]| {
        bare(&env.path("elsewhere"))
            .arg("--config")
            .arg(env.path("cfg/bgq.toml"))
            .args(args)
            .output()
    };
    for callback in ["here", "there"] {
        let out = run(&["publish", callback, "--json", "{}"])?;
        assert!(out.status.success(), "{}", describe(&out));
    }
    let out = run(&["process"])?;
    assert!(out.status.success(), "{}", describe(&out));

    let cfg = env.path("cfg").canonicalize()?;
    assert_eq!(
        read_lines(&env.path("cfg/pwd.txt")),
        [cfg.display().to_string()],
        "default working_dir is the config file's folder"
    );
    assert_eq!(read_lines(&env.path("cfg/greeting.txt")), ["hello"]);
    assert_eq!(
        read_lines(&env.path("cfg/sub/pwd.txt")),
        [cfg.join("sub").display().to_string()],
        "relative working_dir resolves against the config file's folder"
    );
    assert_eq!(fs::read_dir(env.path("elsewhere"))?.count(), 0);
    Ok(())
}

/// Writes `text` as the whole config, runs a publish, and checks it is refused with exit 2, a
/// `bgq: error: <config path>:<line>: ` line containing `fragment`, and no database file (the
/// configs name the SQLite file [`SQLITE_FILE`], whatever backend the other tests use).
fn refused(text: &str, line: Option<usize>, fragment: &str) -> TestResult {
    let env = TestEnv::new("")?;
    env.write_raw_config(text)?;
    let out = env.bgq().args(["publish", "cb", "--json", "{}"]).output()?;
    let place = match line {
        Some(line) => format!("{}:{line}: ", env.config_path().display()),
        None => format!("{}", env.config_path().display()),
    };
    expect_error(&out, 2, &[&place, fragment]).map_err(|err| format!("config\n{text}\n{err}"))?;
    if env.path(SQLITE_FILE).exists() {
        return Err(format!("config\n{text}\nwas refused but created the database").into());
    }
    Ok(())
}

#[test]
fn unknown_top_level_key_is_refused_with_its_line() -> TestResult {
    refused(
        "database = \"bgq.sqlite\"\nqueue = \"general\"\nconcurency = 4\n[callbacks.cb]\ncommand = [\"/bin/true\"]\n",
        Some(3),
        "unknown field `concurency`",
    )?;
    refused(
        "database = \"bgq.sqlite\"\n[callbacks.cb]\ncommand = [\"/bin/true\"]\n\n[retri]\ndelay = \"1s\"\n",
        Some(5),
        "unknown field `retri`",
    )
}

#[test]
fn unknown_callback_key_is_refused_with_its_line() -> TestResult {
    refused(
        "database = \"bgq.sqlite\"\n\n[callbacks.cb]\ncommand = [\"/bin/true\"]\ntimeout = \"5s\"\ncomand = [\"/bin/false\"]\n",
        Some(6),
        "unknown field `comand`",
    )?;
    refused(
        "database = \"bgq.sqlite\"\n[callbacks.cb]\ncommand = [\"/bin/true\"]\n[callbacks.cb.retry]\ndelay = \"1s\"\njiter = 0.5\n",
        Some(6),
        "unknown field `jiter`",
    )
}

#[test]
fn unknown_retry_key_is_refused_with_its_line() -> TestResult {
    refused(
        "database = \"bgq.sqlite\"\n[retry]\ndelay = \"1s\"\nmax_attempt = 3\n[callbacks.cb]\ncommand = [\"/bin/true\"]\n",
        Some(4),
        "unknown field `max_attempt`",
    )
}

#[test]
fn invalid_values_are_refused() -> TestResult {
    let base = "database = \"bgq.sqlite\"\n";
    refused(
        &format!("{base}[callbacks.cb]\ncommand = []\n"),
        Some(3),
        "command",
    )?;
    refused(
        &format!("{base}concurrency = 0\n{TRUE_CALLBACK}"),
        Some(2),
        "concurrency",
    )?;
    refused(
        &format!("{base}{TRUE_CALLBACK}concurrency = 0\n"),
        Some(4),
        "concurrency",
    )?;
    refused(
        &format!("{base}{TRUE_CALLBACK}timeout = \"-5s\"\n"),
        Some(4),
        "-5s",
    )?;
    refused(
        &format!("{base}[retry]\ndelay = \"5 parsecs\"\n{TRUE_CALLBACK}"),
        Some(3),
        "5 parsecs",
    )?;
    refused(
        &format!("{base}{TRUE_CALLBACK}kill_grace = \"1.5s\"\n"),
        Some(4),
        "1.5s",
    )?;
    refused(
        &format!("{base}[retry]\njitter = 2.0\n{TRUE_CALLBACK}"),
        Some(3),
        "jitter",
    )?;
    refused(
        &format!("{base}max_payload = \"0\"\n{TRUE_CALLBACK}"),
        Some(2),
        "max_payload: must be from 1 byte to 512MiB, got 0",
    )?;
    refused(
        &format!("{base}max_payload = \"1G\"\n{TRUE_CALLBACK}"),
        Some(2),
        "max_payload: must be from 1 byte to 512MiB, got 1GiB",
    )?;
    refused(
        &format!("{base}max_payload = \"lots\"\n{TRUE_CALLBACK}"),
        Some(2),
        "max_payload: invalid size `lots`",
    )?;
    refused(
        &format!("{base}durability = \"fast\"\n{TRUE_CALLBACK}"),
        Some(2),
        "durability: unknown variant `fast`, expected `full` or `normal`",
    )
}

/// A `command` written as one string (as a crontab line would be) is refused with the list it
/// stands for, ready to paste; a `group` the system lacks is refused with how to make it.
#[test]
fn a_command_string_is_shown_as_a_list_and_an_unknown_group_is_named() -> TestResult {
    let base = "database = \"bgq.sqlite\"\n";
    refused(
        &format!("{base}[callbacks.cb]\ncommand = \"php bin/console app:send-email\"\n"),
        Some(3),
        r#"command: must be a list of arguments, not one string (bgq runs it without a shell): write `["php", "bin/console", "app:send-email"]`"#,
    )?;
    refused(
        &format!("{base}group = \"no-such-group-xyz\"\n{TRUE_CALLBACK}"),
        None,
        "group: there is no group `no-such-group-xyz` on this system: create it (`groupadd no-such-group-xyz`)",
    )
}

/// A duration of the config becomes a due time (retry delays) or a deadline (timeouts): beyond
/// 100 years one is refused, as on the command line, rather than overflowing a time.
#[test]
fn durations_longer_than_100_years_are_refused() -> TestResult {
    let base = "database = \"bgq.sqlite\"\n";
    let limit = "too long: at most 36500d (100 years)";
    refused(
        &format!("{base}{TRUE_CALLBACK}timeout = \"36501d\"\n"),
        Some(4),
        limit,
    )?;
    refused(
        &format!("{base}[retry]\ndelay = \"18446744073709551615ms\"\n{TRUE_CALLBACK}"),
        Some(3),
        limit,
    )?;
    refused(
        &format!("{base}[retry]\nmax_delay = \"876001h\"\n{TRUE_CALLBACK}"),
        Some(3),
        limit,
    )?;
    let env = TestEnv::new("[retry]\nmax_delay = \"36500d\"\n")?;
    let out = env.bgq().args(["list"]).output()?;
    assert!(out.status.success(), "{}", describe(&out));
    Ok(())
}

#[test]
fn missing_required_settings_are_refused() -> TestResult {
    refused(TRUE_CALLBACK, None, "database")?;
    refused(
        "database = \"bgq.sqlite\"\n[callbacks.cb]\ntimeout = \"5s\"\n",
        None,
        "command",
    )
}

#[test]
fn minimal_config_and_every_duration_unit_load() -> TestResult {
    let env = TestEnv::new("")?;
    env.write_raw_config(&format!("{}\n", env.database_line()))?;
    let out = env.bgq().args(["list"]).output()?;
    assert!(out.status.success(), "{}", describe(&out));

    let env = TestEnv::new(
        "[retry]\ndelay = \"0s\"\nmax_delay = \"14d\"\nmultiplier = 1.5\njitter = 0.0\nmax_attempts = 3\n\
         [callbacks.x]\ncommand = [\"/bin/true\"]\ntimeout = \"500ms\"\nkill_grace = \"10s\"\n\
         [callbacks.y]\ncommand = [\"/bin/true\"]\ntimeout = \"5m\"\n\
         [callbacks.y.retry]\ndelay = \"2h\"\n",
    )?;
    let id = env.publish("x", "{}")?;
    env.process(&[])?;
    assert_eq!(env.state(id)?, "FINISHED");
    Ok(())
}

fn example_config() -> TestResult<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    fs::read_to_string(&path).map_err(|err| format!("{}: {err}", path.display()).into())
}

#[test]
fn example_config_loads_as_is() -> TestResult {
    let env = TestEnv::new("")?;
    env.write_raw_config(&example_config()?)?;
    let out = env.bgq().arg("list").output()?;
    assert!(out.status.success(), "{}", describe(&out));
    Ok(())
}

#[test]
fn example_config_mentions_every_setting() -> TestResult {
    let text = example_config()?;
    for key in [
        "database",
        "temp_dir",
        "group",
        "queue",
        "concurrency",
        "notify_on_attempts",
        "notify",
        "max_payload",
        "durability",
        "[retry]",
        "delay",
        "multiplier",
        "max_delay",
        "jitter",
        "max_attempts",
        "[callbacks.",
        "command",
        "timeout",
        "kill_grace",
        "working_dir",
        "env",
    ] {
        assert!(
            text.contains(key),
            "config.example.toml does not mention {key}"
        );
    }
    Ok(())
}

/// `database` takes a path (SQLite) or a PostgreSQL URL: another scheme is refused in one
/// line (exit 2) before anything is made or reached.
#[test]
fn a_database_url_of_another_scheme_is_refused_in_one_line() -> TestResult {
    let env = TestEnv::new("")?;
    for url in ["mysql://db.example/app", "redis://127.0.0.1/0"] {
        env.write_raw_config(&format!(
            "database = \"{url}\"\n[callbacks.cb]\ncommand = [\"/bin/true\"]\n"
        ))?;
        for args in [&["list"][..], &["publish", "cb", "--json", "{}"]] {
            let out = env.bgq().args(args).output()?;
            expect_error(
                &out,
                2,
                &["bgq.toml:1: database:", "has the unknown scheme"],
            )?;
        }
    }
    let made: Vec<_> = std::fs::read_dir(env.root())?
        .filter_map(Result::ok)
        .map(|entry| entry.file_name())
        .filter(|name| name != "bgq.toml" && name != "locks")
        .collect();
    assert!(made.is_empty(), "made {made:?}");
    Ok(())
}

/// A PostgreSQL server that cannot be reached is an error in one line, exit 1, naming the
/// server without its password: one that refuses the connection, and one that accepts it and
/// then says nothing (packets dropped, a hung server), which must not hang the command.
#[test]
fn an_unreachable_or_silent_server_is_an_error_within_seconds() -> TestResult {
    let env = TestEnv::new("")?;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?;
    let closed_port = closed.local_addr()?.port();
    drop(closed);
    // Bound, never accepted: the kernel completes the handshake, then nothing ever answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0")?;
    let silent_port = silent.local_addr()?.port();
    for port in [closed_port, silent_port] {
        env.write_raw_config(&format!(
            "database = \"postgres://bgq:s3cret@127.0.0.1:{port}/app\"\n[callbacks.cb]\ncommand = [\"/bin/true\"]\n"
        ))?;
        for (args, timeout) in [
            // The default timeout once; then libpq's variable, which shortens it.
            (&["list"][..], None),
            (&["publish", "cb", "--json", "{}"], Some("2")),
            (&["process"], Some("2")),
        ] {
            let vars: Vec<(&str, &Path)> = timeout
                .map(|seconds| ("PGCONNECT_TIMEOUT", Path::new(seconds)))
                .into_iter()
                .collect();
            let mut child = env.spawn_with_env(args, &vars)?;
            // SPEC section 10 allows 10 s; the margin is for a loaded machine.
            let status = child.wait_exit(Duration::from_secs(30))?;
            let stderr = child.stderr();
            assert_eq!(status.code(), Some(1), "{args:?} on port {port}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            assert!(
                stderr.starts_with("bgq: error: cannot connect to postgres://bgq:***@127.0.0.1:"),
                "{stderr}"
            );
            assert!(!stderr.contains("s3cret"), "{stderr}");
        }
    }
    drop(silent);
    Ok(())
}
