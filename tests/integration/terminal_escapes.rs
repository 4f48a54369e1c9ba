//! Job data never reaches an operator's terminal raw. Human output (`list`, `list --unfinished`,
//! `show`, `stats`, `explain`, `status`, `retry`, `cancel`, and every stderr line, notices
//! included) shows control characters from a publisher or a callback escaped; `--json` and the
//! notify command's stdin stay exact; `publish` refuses control characters in a queue, serial group
//! or identifier, so only a database written by an older bgq holds such names (the tests write them
//! there directly, so those are SQLite-only).

use serde_json::Value;

use crate::support::{TestEnv, TestResult, describe, env_with_callbacks, expect_error};

/// What the `loud` callback prints: an OSC 52 clipboard write, a screen clear, a carriage return
/// that hides the text before it, DEL, a C1 CSI (U+009B) and a tab after a newline.
const LOUD_OUTPUT: &str =
    "before\x1b]52;c;SGVsbG8=\x07\x1b[2Jclear\rover\x7fdel\u{9b}csi\n\tindented\n";

/// [`LOUD_OUTPUT`] as `show` shows it: newline and tab kept, every other control escaped.
const LOUD_SHOWN: &str =
    "before\\x1b]52;c;SGVsbG8=\\x07\\x1b[2Jclear\\rover\\x7fdel\\u{9b}csi\n\tindented\n";

/// The `loud` callback's body: prints [`LOUD_OUTPUT`] and fails for good.
const LOUD_BODY: &str = "printf 'before\\033]52;c;SGVsbG8=\\a\\033[2Jclear\\rover\\177del\\302\\233csi\\n\\tindented\\n'\nexit 1";

/// Names as an older bgq may have stored them, and as human output shows them.
const QUEUE: &str = "mail\x1b]52;c;SGVsbG8=\x07";
const QUEUE_SHOWN: &str = "mail\\x1b]52;c;SGVsbG8=\\x07";
const GROUP: &str = "group\r\x7f\u{9b}2J";
const GROUP_SHOWN: &str = "group\\r\\x7f\\u{9b}2J";
const IDENTIFIER: &str = "sync\n1\x1b[2J";
const IDENTIFIER_SHOWN: &str = "sync\\n1\\x1b[2J";

/// The control characters in `text` other than those in `kept`.
fn controls(text: &str, kept: &[char]) -> Vec<char> {
    text.chars()
        .filter(|c| c.is_control() && !kept.contains(c))
        .collect()
}

/// Runs `bgq ARGS`, checks exit `code` and no panic, returns stdout.
fn stdout_of(env: &TestEnv, args: &[&str], code: i32) -> TestResult<String> {
    let out = env.bgq().args(args).output()?;
    if out.status.code() != Some(code) || String::from_utf8_lossy(&out.stderr).contains("panicked")
    {
        return Err(format!("bgq {args:?}, expected exit {code}: {}", describe(&out)).into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// A job of callback `loud` whose parameters hold DEL and C1, run once: it printed
/// [`LOUD_OUTPUT`] and failed permanently. Returns the env, the job id and the run's stderr.
fn loud_failure() -> TestResult<(TestEnv, i64, String)> {
    let env = env_with_callbacks("", &[("loud", LOUD_BODY)])?;
    let id = env.publish("loud", r#"{"note":"del\u007f csi\u009b"}"#)?;
    let stderr = env.process(&[])?;
    if env.state(id)? != "PERMANENTLY_FAILED" {
        return Err(format!("setup: job {id} did not fail: {stderr}").into());
    }
    Ok((env, id, stderr))
}

/// `show` prints the callback's terminal commands as visible escapes (keeping its lines and
/// tabs), and the parameters' DEL and C1 as JSON escapes; `show --json` keeps every byte.
#[test]
fn show_escapes_the_output_tail_and_show_json_keeps_it_exact() -> TestResult {
    let (env, id, _) = loud_failure()?;

    let shown = stdout_of(&env, &["show", &id.to_string()], 0)?;
    assert_eq!(controls(&shown, &['\n', '\t']), [], "{shown:?}");
    assert!(shown.contains(LOUD_SHOWN), "{shown}");
    assert!(
        shown.contains(r#""note": "del\u007f csi\u009b""#),
        "{shown}"
    );

    let json: Value =
        serde_json::from_str(&stdout_of(&env, &["show", &id.to_string(), "--json"], 0)?)?;
    assert_eq!(json["output"], LOUD_OUTPUT);
    assert_eq!(json["parameters"]["note"], "del\x7f csi\u{9b}");
    Ok(())
}

/// Without a `notify` command the notice goes to stderr: a line with no raw control character
/// whose JSON still holds the exact output tail.
#[test]
fn the_stderr_notice_escapes_the_output_tail_and_its_json_stays_exact() -> TestResult {
    let (_env, id, stderr) = loud_failure()?;

    assert_eq!(controls(&stderr, &['\n']), [], "{stderr:?}");
    let prefix = format!("bgq: notice: job {id} (loud) failed permanently");
    let notices: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with(&prefix))
        .collect();
    assert_eq!(notices.len(), 1, "one notice line: {stderr}");
    let start = notices[0].find(": {").ok_or("no JSON in the notice")?;
    let notice: Value = serde_json::from_str(&notices[0][start + 2..])?;
    assert_eq!(notice["output"], LOUD_OUTPUT);
    assert_eq!(notice["id"].as_i64(), Some(id));
    Ok(())
}

/// A job published as `plain`, and one published normally and then given [`QUEUE`], [`GROUP`]
/// and [`IDENTIFIER`] in the database, as an older bgq could have stored it. Returns the env and
/// the second job's id; `None` (with a printed reason) unless the tests run on SQLite, whose
/// file this writes.
fn old_database() -> TestResult<Option<(TestEnv, i64)>> {
    let env = env_with_callbacks("", &[("cb", "exit 0")])?;
    let Some(db) = env.sqlite_file() else {
        return Ok(None);
    };
    env.publish_with("cb", "{}", &["--identifier", "plain"])?;
    let id = env.publish_with(
        "cb",
        "{}",
        &[
            "--queue",
            "mail",
            "--serial-group",
            "g",
            "--identifier",
            "i",
        ],
    )?;
    let conn = rusqlite::Connection::open(&db)?;
    let changed = conn.execute(
        "UPDATE jobs SET queue = ?1, serial_group = ?2, identifier = ?3 WHERE id = ?4",
        rusqlite::params![QUEUE, GROUP, IDENTIFIER, id],
    )?;
    if changed != 1 {
        return Err(format!("setup: {changed} rows changed").into());
    }
    Ok(Some((env, id)))
}

/// The `list` table, `list --unfinished`, `show`, `stats`, `explain` and `status` show names with
/// control characters escaped, each on its one line; `list --json` keeps them exact.
#[test]
fn names_from_an_older_database_are_shown_escaped_one_line_each() -> TestResult {
    let Some((env, id)) = old_database()? else {
        return Ok(());
    };
    let id_text = id.to_string();

    let table = stdout_of(&env, &["list"], 0)?;
    assert_eq!(controls(&table, &['\n']), [], "{table:?}");
    assert_eq!(
        table.lines().count(),
        3,
        "a header and one row per job:\n{table}"
    );
    let row = table
        .lines()
        .find(|line| line.split_whitespace().next() == Some(id_text.as_str()))
        .ok_or_else(|| format!("no row for job {id}:\n{table}"))?;
    for name in [QUEUE_SHOWN, GROUP_SHOWN, IDENTIFIER_SHOWN] {
        assert!(row.contains(&format!("{name}  ")), "{name} in {row:?}");
    }

    let unfinished = stdout_of(&env, &["list", "--unfinished"], 0)?;
    assert_eq!(controls(&unfinished, &['\n']), [], "{unfinished:?}");
    assert_eq!(
        unfinished.lines().collect::<Vec<_>>(),
        ["plain", IDENTIFIER_SHOWN],
        "one line per identifier"
    );
    let asked = stdout_of(
        &env,
        &[
            "list",
            "--unfinished",
            "--identifier",
            IDENTIFIER,
            "--identifier",
            "plain",
        ],
        0,
    )?;
    assert_eq!(
        asked.lines().collect::<Vec<_>>(),
        [IDENTIFIER_SHOWN, "plain"]
    );

    let job = env.job(id)?;
    assert_eq!(job["queue"], QUEUE);
    assert_eq!(job["serial_group"], GROUP);
    assert_eq!(job["identifier"], IDENTIFIER);

    let shown = stdout_of(&env, &["show", &id_text], 0)?;
    assert_eq!(controls(&shown, &['\n']), [], "{shown:?}");
    for (key, value) in [
        ("queue", QUEUE_SHOWN),
        ("serial group", GROUP_SHOWN),
        ("identifier", IDENTIFIER_SHOWN),
    ] {
        let expected = format!("  {key:<13} {value}");
        assert!(
            shown.lines().any(|line| line == expected),
            "{expected:?} in:\n{shown}"
        );
    }

    let stats = stdout_of(&env, &["stats"], 0)?;
    assert_eq!(controls(&stats, &['\n']), [], "{stats:?}");
    assert!(stats.contains(QUEUE_SHOWN), "{stats}");

    let explained = stdout_of(&env, &["explain", &id_text], 0)?;
    assert_eq!(controls(&explained, &['\n']), [], "{explained:?}");
    assert_eq!(explained.lines().count(), 1, "{explained}");
    assert!(
        explained.contains(&format!("`{QUEUE_SHOWN}`")),
        "{explained}"
    );

    let status = stdout_of(&env, &["status", "--queue", QUEUE], 1)?;
    assert_eq!(
        status,
        format!("stale: queue `{QUEUE_SHOWN}`: no `process` run has been recorded\n")
    );
    Ok(())
}

/// A callback name an older bgq stored with an ESC in it (its config defined it then): the
/// warnings of `process` and the lines of `retry` and `cancel` show it escaped.
#[test]
fn a_callback_name_from_an_older_database_is_escaped_on_stdout_and_stderr() -> TestResult {
    let env = env_with_callbacks("", &[("cb", "exit 0")])?;
    let Some(db) = env.sqlite_file() else {
        return Ok(());
    };
    let id = env.publish("cb", "{}")?;
    let conn = rusqlite::Connection::open(&db)?;
    conn.execute(
        "UPDATE jobs SET callback = 'gone' || char(27) || '[2J' WHERE id = ?1",
        [id],
    )?;
    drop(conn);
    let shown = "gone\\x1b[2J";

    let stderr = env.process(&[])?;
    assert_eq!(controls(&stderr, &['\n']), [], "{stderr:?}");
    assert!(
        stderr.contains(&format!("wait for callback `{shown}`")),
        "{stderr}"
    );

    let out = env.bgq().args(["retry", &id.to_string()]).output()?;
    let (stdout, stderr) = (
        String::from_utf8(out.stdout.clone())?,
        String::from_utf8(out.stderr.clone())?,
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        stdout,
        format!("retried job {id} ({shown}): READY -> READY\n")
    );
    assert!(stderr.contains(&format!("callback `{shown}`")), "{stderr}");
    assert_eq!(controls(&stderr, &['\n']), [], "{stderr:?}");

    let cancelled = stdout_of(&env, &["cancel", &id.to_string()], 0)?;
    assert_eq!(
        cancelled,
        format!("cancelled job {id} ({shown}): READY -> CANCELLED\n")
    );
    Ok(())
}

/// `publish` refuses a control character in `--queue`, `--serial-group`, `--identifier` (also
/// with `--jsonl`) and the config's default queue: exit 2, the value shown escaped in a one-line
/// error, nothing stored.
#[test]
fn publish_refuses_control_characters_in_names_and_stores_nothing() -> TestResult {
    let env = env_with_callbacks("", &[("cb", "exit 0")])?;
    let values = [
        ("a\nb", "a\\nb"),
        ("a\x1b[2Jb", "a\\x1b[2Jb"),
        ("a\tb", "a\\tb"),
        ("a\rb", "a\\rb"),
        ("a\x7fb", "a\\x7fb"),
        ("a\u{9b}b", "a\\u{9b}b"),
    ];
    for flag in ["--queue", "--serial-group", "--identifier"] {
        for (value, shown) in values {
            let out = env
                .bgq()
                .args(["publish", "cb", "--json", "{}", flag, value])
                .output()?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(stderr.lines().count(), 1, "{flag} {value:?}: {stderr:?}");
            assert_eq!(
                controls(&stderr, &['\n']),
                [],
                "{flag} {value:?}: {stderr:?}"
            );
            expect_error(
                &out,
                2,
                &[&format!("{flag} `{shown}` holds a control character")],
            )?;
        }
    }
    let out = env
        .bgq()
        .args(["publish", "cb", "--jsonl", "-", "--identifier", "x\ny"])
        .write_stdin("{}\n{}\n")
        .output()?;
    expect_error(&out, 2, &["--identifier `x\\ny` holds a control character"])?;

    let cb = env.path("cb.sh");
    env.write_config(&format!(
        "queue = \"mail\\u001b[2J\"\n[callbacks.cb]\ncommand = [\"{}\"]\n",
        cb.display()
    ))?;
    let out = env.bgq().args(["publish", "cb", "--json", "{}"]).output()?;
    expect_error(
        &out,
        2,
        &["the config's queue `mail\\x1b[2J` holds a control character"],
    )?;

    assert_eq!(env.jobs()?, Vec::<Value>::new(), "nothing stored");
    Ok(())
}
