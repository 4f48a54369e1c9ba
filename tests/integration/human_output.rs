//! Human output: `--color auto|always|never` and `NO_COLOR`, the `list` table on a terminal
//! (coloured, fitted to its width) and piped (plain, nothing shortened), its header and its
//! relative times, and exact UTC times in `--json`.

use std::time::Duration;

use crate::support::{TestEnv, TestResult, callback_toml, describe, faketime_available};

/// The `list` table's columns, in order.
const COLUMNS: [&str; 9] = [
    "ID",
    "STATE",
    "QUEUE",
    "CALLBACK",
    "ATTEMPTS",
    "SERIAL_GROUP",
    "IDENTIFIER",
    "CREATED",
    "WHEN",
];

/// A queue with job 1 FINISHED (`ok`), job 2 TEMPORARILY_FAILED (`again`, exit 75, retried after
/// 1 min) and job 3 READY (`ok`, published after the `process` run).
fn three_states() -> TestResult<TestEnv> {
    let env = TestEnv::new("")?;
    let ok = env.script("ok.sh", "exit 0")?;
    let again = env.script("again.sh", "exit 75")?;
    env.write_config(&format!(
        "[retry]\ndelay = \"1m\"\njitter = 0.0\n{}{}",
        callback_toml("ok", &ok, ""),
        callback_toml("again", &again, "")
    ))?;
    env.publish("ok", "{}")?;
    env.publish("again", "{}")?;
    env.process(&[])?;
    env.publish("ok", "{}")?;
    let states: Vec<String> = env
        .jobs()?
        .iter()
        .map(|job| job["state"].as_str().unwrap_or("?").to_owned())
        .collect();
    if states != ["FINISHED", "TEMPORARILY_FAILED", "READY"] {
        return Err(format!("setup: states {states:?}").into());
    }
    Ok(env)
}

/// Runs `bgq list ARGS` (piped), asserts exit 0, returns stdout.
fn list(env: &TestEnv, args: &[&str]) -> TestResult<String> {
    let out = env.bgq().arg("list").args(args).output()?;
    if !out.status.success() {
        return Err(format!("list {args:?}: {}", describe(&out)).into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The table row of job `id` (the line whose first cell is the id).
fn row(table: &str, id: i64) -> TestResult<String> {
    let id = id.to_string();
    table
        .lines()
        .map(strip_ansi)
        .find(|line| line.split_whitespace().next() == Some(id.as_str()))
        .ok_or_else(|| format!("no row for job {id} in:\n{table}").into())
}

/// `text` without ANSI SGR escapes (`ESC [ ... m`) and without carriage returns.
fn strip_ansi(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // Skip up to and including the final byte of the escape.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else if c != '\r' {
            out.push(c);
        }
    }
    out
}

/// True when `text` starts with a fresh relative time: `just now` or `Ns ago`.
fn starts_fresh(text: &str) -> bool {
    if text.starts_with("just now") {
        return true;
    }
    let mut words = text.split_whitespace();
    let seconds = words.next().and_then(|word| word.strip_suffix('s'));
    seconds.is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        && words.next() == Some("ago")
}

/// The CREATED and WHEN cells of a row whose serial group and identifier are `-`.
fn times_of(row: &str) -> String {
    row.split_whitespace().skip(7).collect::<Vec<_>>().join(" ")
}

/// A word in single quotes for `sh`.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// Whether util-linux `script` can give a command a pseudo-terminal here. Without it the terminal
/// tests are skipped with a printed reason, except in CI (`CI=true`).
fn script_available() -> TestResult<bool> {
    let works = std::process::Command::new("script")
        .args(["-qec", "true", "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .is_ok_and(|out| out.status.success());
    if works {
        return Ok(true);
    }
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        return Err(
            "util-linux `script` cannot run here, and CI must run the terminal tests".into(),
        );
    }
    eprintln!("skipped: util-linux `script` cannot give bgq a terminal here");
    Ok(false)
}

/// Runs `SETUP; bgq --config ... ARGS` under `script`, so that bgq's stdout is a terminal, with
/// `NO_COLOR` set to `no_color` (or unset); returns what it printed, carriage returns removed.
fn in_terminal(
    env: &TestEnv,
    setup: &str,
    args: &[&str],
    no_color: Option<&str>,
) -> TestResult<String> {
    let mut line = format!(
        "{setup}; exec {} --config {}",
        shell_quote(env!("CARGO_BIN_EXE_bgq")),
        shell_quote(&env.config_path().display().to_string())
    );
    for arg in args {
        line.push(' ');
        line.push_str(&shell_quote(arg));
    }
    let mut cmd = assert_cmd::Command::new("script");
    cmd.current_dir(env.root())
        .env_remove("BGQ_CONFIG")
        .env_remove("NO_COLOR")
        .args(["-qec", &line, "/dev/null"])
        .timeout(Duration::from_secs(60));
    if let Some(value) = no_color {
        cmd.env("NO_COLOR", value);
    }
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(format!("script -qec {line:?}: {}", describe(&out)).into());
    }
    Ok(String::from_utf8(out.stdout)?.replace('\r', ""))
}

/// Piped `list` is plain; `--color always` colours the header and STATE cells without moving
/// anything; `--color never` is plain.
#[test]
fn piped_list_is_plain_unless_color_always() -> TestResult {
    let env = three_states()?;
    let plain = list(&env, &[])?;
    assert!(
        !plain.contains("\x1b["),
        "piped output has no escapes:\n{plain:?}"
    );
    assert_eq!(plain.lines().count(), 4, "{plain}");

    let never = list(&env, &["--color", "never"])?;
    assert!(!never.contains("\x1b["), "{never:?}");
    assert_eq!(never, plain);

    let out = env
        .bgq()
        .args(["--color", "always", "list"])
        .env("NO_COLOR", "1")
        .output()?;
    assert!(out.status.success(), "{}", describe(&out));
    let coloured = String::from_utf8(out.stdout)?;
    assert!(
        coloured.contains("\x1b["),
        "--color always colours even piped and with NO_COLOR:\n{coloured:?}"
    );
    // Rows are newest first: job 3 READY, job 2 TEMPORARILY_FAILED, job 1 FINISHED.
    for (state, line) in ["TEMPORARILY_FAILED", "FINISHED"]
        .iter()
        .zip(coloured.lines().skip(2))
    {
        let at = line
            .find(state)
            .ok_or_else(|| format!("no {state} in {line:?}"))?;
        let escape = line[..at]
            .rfind("\x1b[")
            .ok_or_else(|| format!("the {state} cell is not coloured: {line:?}"))?;
        let between = &line[escape..at];
        assert!(
            between.ends_with('m') && !between.contains(' '),
            "an SGR escape right before {state}: {line:?}"
        );
    }
    let stripped: Vec<String> = coloured
        .lines()
        .map(|line| strip_ansi(line).trim_end().to_owned())
        .collect();
    let expected: Vec<&str> = plain.lines().map(str::trim_end).collect();
    assert_eq!(stripped, expected, "colour changes nothing else");
    Ok(())
}

/// `list --json` never carries escapes, even with `--color always`, and its times are exact UTC.
#[test]
fn json_is_never_coloured_and_its_times_are_exact() -> TestResult {
    let env = three_states()?;
    for args in [&["--json", "--color", "always"][..], &["--json"][..]] {
        let text = list(&env, args)?;
        assert!(!text.contains('\x1b'), "list {args:?}: {text:?}");
        for line in text.lines() {
            let job: serde_json::Value = serde_json::from_str(line)?;
            for key in ["created_at", "run_at", "started_at", "finished_at"] {
                let Some(time) = job[key].as_str() else {
                    assert!(job[key].is_null(), "{key} in {line}");
                    continue;
                };
                let bytes = time.as_bytes();
                assert!(
                    bytes.len() == 24
                        && bytes[10] == b'T'
                        && bytes[19] == b'.'
                        && time.ends_with('Z')
                        && !time.contains("ago"),
                    "{key} is RFC 3339 UTC with milliseconds, not relative: {time:?}"
                );
            }
        }
    }
    Ok(())
}

/// The table header names the columns ID STATE QUEUE CALLBACK ATTEMPTS SERIAL_GROUP IDENTIFIER
/// CREATED WHEN, in that order.
#[test]
fn header_names_every_column() -> TestResult {
    let env = three_states()?;
    let table = list(&env, &[])?;
    let header: Vec<&str> = table
        .lines()
        .next()
        .ok_or("no header")?
        .split_whitespace()
        .collect();
    assert_eq!(header, COLUMNS, "{table}");
    Ok(())
}

/// CREATED is relative (`just now` / `Ns ago`); WHEN says `finished ... ago`, `retry in ...` or
/// `due` by state.
#[test]
fn table_times_are_relative() -> TestResult {
    let env = three_states()?;
    let table = list(&env, &[])?;

    let ready = times_of(&row(&table, 3)?);
    assert!(starts_fresh(&ready), "CREATED of a new job: {ready:?}");
    assert!(ready.ends_with("due"), "WHEN of a READY job: {ready:?}");

    let finished = times_of(&row(&table, 1)?);
    assert!(starts_fresh(&finished), "{finished:?}");
    let when = finished
        .split_once("finished ")
        .map(|(_, rest)| rest)
        .ok_or_else(|| format!("WHEN of a FINISHED job says `finished`: {finished:?}"))?;
    assert!(
        starts_fresh(when),
        "finished just now / Ns ago: {finished:?}"
    );

    let failed = times_of(&row(&table, 2)?);
    assert!(
        failed.contains("retry in "),
        "WHEN of a job in backoff: {failed:?}"
    );
    for time in [&ready, &finished, &failed] {
        assert!(!time.contains(':'), "no exact times in the table: {time:?}");
    }
    Ok(())
}

/// Two hours on, CREATED says `2 h ago`, a finished job `finished 2 h ago`, a backoff `retry due`.
#[test]
fn table_times_two_hours_later() -> TestResult {
    if !faketime_available()? {
        return Ok(());
    }
    let env = three_states()?;
    let out = env.bgq_at("+2h").arg("list").output()?;
    assert!(out.status.success(), "{}", describe(&out));
    let table = String::from_utf8(out.stdout)?;

    let finished = times_of(&row(&table, 1)?);
    assert!(finished.starts_with("2 h ago"), "CREATED: {finished:?}");
    assert!(finished.contains("finished 2 h ago"), "WHEN: {finished:?}");
    let failed = times_of(&row(&table, 2)?);
    assert!(failed.starts_with("2 h ago"), "{failed:?}");
    assert!(failed.contains("retry due"), "{failed:?}");
    let ready = times_of(&row(&table, 3)?);
    assert!(ready.starts_with("2 h ago"), "{ready:?}");
    assert!(ready.ends_with("due"), "{ready:?}");
    Ok(())
}

/// On a terminal the table is coloured; with `NO_COLOR=1` it is not.
#[test]
fn terminal_list_is_coloured_unless_no_color() -> TestResult {
    if !script_available()? {
        return Ok(());
    }
    let env = three_states()?;
    let coloured = in_terminal(&env, "stty cols 200", &["list"], None)?;
    assert!(
        coloured.contains("\x1b["),
        "coloured on a terminal:\n{coloured:?}"
    );
    let header = strip_ansi(coloured.lines().next().ok_or("no output")?);
    assert_eq!(header.split_whitespace().collect::<Vec<_>>(), COLUMNS);
    assert_eq!(strip_ansi(&coloured).lines().count(), 4, "{coloured}");

    for no_color in ["1", "yes"] {
        let plain = in_terminal(&env, "stty cols 200", &["list"], Some(no_color))?;
        assert!(
            !plain.contains('\x1b'),
            "NO_COLOR={no_color} turns colour off:\n{plain:?}"
        );
        assert_eq!(plain.lines().count(), 4, "{plain}");
    }

    // An empty NO_COLOR counts as unset.
    let empty = in_terminal(&env, "stty cols 200", &["list"], Some(""))?;
    assert!(empty.contains("\x1b["), "{empty:?}");

    let never = in_terminal(&env, "stty cols 200", &["--color", "never", "list"], None)?;
    assert!(!never.contains('\x1b'), "{never:?}");
    Ok(())
}

/// On a 90-column terminal every table line fits, a 100-character identifier shortened with `…`;
/// piped, the identifier is printed whole.
#[test]
fn terminal_table_fits_its_width_and_pipes_print_cells_whole() -> TestResult {
    if !script_available()? {
        return Ok(());
    }
    let env = TestEnv::new("")?;
    let ok = env.script("ok.sh", "exit 0")?;
    env.write_config(&callback_toml("ok", &ok, ""))?;
    let identifier = format!("invoice-{}", "7".repeat(92));
    assert_eq!(identifier.len(), 100);
    let id = env.publish_with("ok", "{}", &["--identifier", &identifier])?;
    env.publish_with("ok", "{}", &["--identifier", "short"])?;

    let shown = in_terminal(&env, "stty cols 90", &["list"], None)?;
    let lines: Vec<String> = shown.lines().map(strip_ansi).collect();
    assert_eq!(lines.len(), 3, "{shown}");
    for line in &lines {
        assert!(
            line.chars().count() <= 90,
            "{} columns: {line:?}",
            line.chars().count()
        );
    }
    let long = row(&shown, id)?;
    assert!(long.contains('…'), "shortened with …: {long:?}");
    assert!(long.contains("invoice-"), "{long:?}");
    assert!(!long.contains(&identifier), "{long:?}");
    assert!(lines.iter().any(|l| l.contains(" short ")), "{shown}");

    let piped = list(&env, &[])?;
    assert!(!piped.contains('…'), "{piped}");
    assert!(
        row(&piped, id)?.contains(&format!(" {identifier} ")),
        "piped, nothing is shortened:\n{piped}"
    );
    Ok(())
}

/// On a narrow terminal the columns with nothing in them (no serial group, no identifier) give
/// way first, their headers shortened, before a callback name loses a character.
#[test]
fn narrow_terminal_shrinks_empty_columns_first() -> TestResult {
    if !script_available()? {
        return Ok(());
    }
    let env = TestEnv::new("")?;
    let ok = env.script("ok.sh", "exit 0")?;
    let name = "sendQuarterlyInvoiceReminder";
    env.write_config(&callback_toml(name, &ok, ""))?;
    let id = env.publish(name, "{}")?;
    let wide = list(&env, &[])?;
    let width = wide
        .lines()
        .map(|line| line.chars().count())
        .max()
        .unwrap_or(0);
    let cols = width - 10;
    let shown = in_terminal(&env, &format!("stty cols {cols}"), &["list"], None)?;
    let lines: Vec<String> = shown.lines().map(strip_ansi).collect();
    assert!(
        lines.iter().all(|line| line.chars().count() <= cols),
        "{shown}"
    );
    assert!(lines[0].contains(" SERIA… "), "{shown}");
    assert!(
        lines[0].contains(" IDENTI… ") || lines[0].contains(" IDENT… "),
        "{shown}"
    );
    assert!(
        row(&shown, id)?.contains(name),
        "the name is whole: {shown}"
    );
    Ok(())
}
