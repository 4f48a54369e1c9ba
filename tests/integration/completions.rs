//! `bgq completions SHELL` and `bgq man`: they need no config file, print a script each shell
//! accepts and a man page that names every command, and refuse an unknown shell.

use std::time::Duration;

use assert_cmd::Command;

use crate::support::{TestResult, describe, expect_refused};

/// Every subcommand the completion scripts and the man page must name.
const SUBCOMMANDS: [&str; 12] = [
    "publish", "process", "list", "clear", "show", "retry", "cancel", "stats", "explain", "status",
    "check", "migrate",
];

/// `bgq ARGS` run in `dir` (which has no `bgq.toml`), with no `--config` and no `BGQ_CONFIG`.
fn bare(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bgq"));
    cmd.current_dir(dir)
        .env_remove("BGQ_CONFIG")
        .timeout(Duration::from_secs(60));
    cmd
}

/// Runs `bgq ARGS` without any config, asserts exit 0 and that it wrote no file; returns stdout.
fn print_without_config(args: &[&str]) -> TestResult<String> {
    let dir = tempfile::tempdir()?;
    let out = bare(dir.path()).args(args).output()?;
    if !out.status.success() {
        return Err(format!("bgq {args:?} without a config: {}", describe(&out)).into());
    }
    let created: Vec<_> = std::fs::read_dir(dir.path())?.collect();
    if !created.is_empty() {
        return Err(format!("bgq {args:?} created files: {created:?}").into());
    }
    let text = String::from_utf8(out.stdout)?;
    if text.trim().is_empty() {
        return Err(format!("bgq {args:?} printed nothing").into());
    }
    Ok(text)
}

/// True when `word` occurs in `text` with no letter, digit or `_` right before or after it.
fn has_word(text: &str, word: &str) -> bool {
    let part = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    text.match_indices(word).any(|(at, _)| {
        !part(text[..at].chars().next_back()) && !part(text[at + word.len()..].chars().next())
    })
}

/// Whether `program` is on the PATH.
fn installed(program: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", "command -v \"$1\" >/dev/null", "sh", program])
        .status()
        .is_ok_and(|status| status.success())
}

/// Runs `program ARGS` with `input` on stdin; returns its output.
fn feed(program: &str, args: &[&str], input: &str) -> TestResult<std::process::Output> {
    Ok(Command::new(program)
        .args(args)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "80")
        .write_stdin(input.to_owned())
        .timeout(Duration::from_secs(60))
        .output()?)
}

/// `bgq completions bash` works without a config, and bash registers a completion for `bgq` from it.
#[test]
fn bash_completion_needs_no_config_and_registers_bgq() -> TestResult {
    let script = print_without_config(&["completions", "bash"])?;
    assert!(has_word(&script, "bgq"), "{script}");
    for sub in SUBCOMMANDS {
        assert!(has_word(&script, sub), "the bash script names {sub}");
    }

    let dir = tempfile::tempdir()?;
    let line = format!(
        "source <('{}' completions bash) && complete -p bgq",
        env!("CARGO_BIN_EXE_bgq")
    );
    let out = Command::new("bash")
        .args(["-c", &line])
        .current_dir(dir.path())
        .env_remove("BGQ_CONFIG")
        .timeout(Duration::from_secs(60))
        .output()?;
    assert!(out.status.success(), "{}", describe(&out));
    let registered = String::from_utf8(out.stdout)?;
    assert!(
        registered.starts_with("complete ") && registered.trim_end().ends_with(" bgq"),
        "{registered:?}"
    );
    Ok(())
}

/// The zsh and fish scripts name `bgq` and every subcommand, and parse when the shell is installed.
#[test]
fn zsh_and_fish_scripts_name_every_subcommand() -> TestResult {
    for (shell, check) in [("zsh", &["-n"][..]), ("fish", &["--no-execute"][..])] {
        let script = print_without_config(&["completions", shell])?;
        assert!(has_word(&script, "bgq"), "{shell}: {script}");
        for sub in SUBCOMMANDS {
            assert!(has_word(&script, sub), "the {shell} script names {sub}");
        }
        if installed(shell) {
            let out = feed(shell, check, &script)?;
            assert!(
                out.status.success(),
                "{shell} {check:?}: {}",
                describe(&out)
            );
        } else {
            eprintln!("skipped: {shell} is not installed, its script was not parsed");
        }
    }
    Ok(())
}

/// `bgq completions elvish` and `powershell` print a script for `bgq` without a config.
#[test]
fn elvish_and_powershell_scripts_are_printed() -> TestResult {
    for shell in ["elvish", "powershell"] {
        let script = print_without_config(&["completions", shell])?;
        assert!(has_word(&script, "bgq"), "{shell}: {script}");
        assert!(has_word(&script, "publish"), "{shell}: {script}");
    }
    Ok(())
}

/// An unknown shell is a usage error: exit 2, nothing on stdout.
#[test]
fn unknown_shell_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    for args in [&["completions", "tcsh"][..], &["completions"][..]] {
        let out = bare(dir.path()).args(args).output()?;
        expect_refused(&out, &[2]).map_err(|err| format!("bgq {args:?}: {err}"))?;
    }
    Ok(())
}

/// `bgq man` needs no config, prints a roff page titled `bgq` section 1 that names every command.
#[test]
fn man_page_needs_no_config_and_covers_every_command() -> TestResult {
    let page = print_without_config(&["man"])?;
    // Before the title only roff set-up lines may come (comments, `.ie`/`.el` string definitions).
    let mut lines = page.lines();
    let title = lines
        .by_ref()
        .find(|line| {
            !(line.starts_with(".\\\"")
                || line.starts_with(".ie ")
                || line.starts_with(".el ")
                || line.starts_with("'\\\""))
        })
        .ok_or("an empty page")?;
    assert!(title.starts_with(".TH bgq 1"), "the title line: {title:?}");
    for sub in SUBCOMMANDS.iter().chain(&["completions", "man"]) {
        assert!(has_word(&page, sub), "the man page names {sub}");
    }
    Ok(())
}

/// The man page renders with `nroff -man` (or `man -l -`) without an error.
#[test]
fn man_page_renders() -> TestResult {
    let page = print_without_config(&["man"])?;
    let out = if installed("nroff") {
        feed("nroff", &["-man"], &page)?
    } else if installed("man") {
        feed("man", &["-l", "-"], &page)?
    } else {
        eprintln!("skipped: neither nroff nor man is installed");
        return Ok(());
    };
    assert!(out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.to_lowercase().contains("error"), "{stderr}");
    // Bold and underline come as overstrikes (`b\x08b`) or SGR escapes: keep the plain text.
    let mut rendered = String::new();
    let mut escape = false;
    for c in String::from_utf8_lossy(&out.stdout).chars() {
        match c {
            '\x08' => {
                rendered.pop();
            }
            '\x1b' => escape = true,
            c if escape => escape = !c.is_ascii_alphabetic(),
            c => rendered.push(c),
        }
    }
    assert!(rendered.contains("bgq"), "{rendered}");
    assert!(rendered.contains("publish"), "{rendered}");
    Ok(())
}

/// The scripts offer the job states where `--state` is expected, in every shell.
#[test]
fn completions_offer_the_states() -> TestResult {
    for shell in ["bash", "zsh", "fish"] {
        let script = print_without_config(&["completions", shell])?;
        for state in [
            "READY",
            "TEMPORARILY_FAILED",
            "PERMANENTLY_FAILED",
            "CANCELLED",
        ] {
            assert!(has_word(&script, state), "{shell} offers {state}");
        }
        assert!(
            !script.contains("__bgq_callbacks__"),
            "{shell}: the placeholder is replaced"
        );
        assert!(
            has_word(&script, "callbacks"),
            "{shell} asks `bgq callbacks`"
        );
    }
    Ok(())
}

/// In bash, Tab after `publish` and after `list --callback` offers the config's callback
/// names, asked from the hidden `bgq callbacks`; after `--state`, the states.
#[test]
fn bash_completes_callback_names_from_the_config() -> TestResult {
    let env = crate::support::env_with_callbacks(
        "",
        &[
            ("sendEmail", "exit 0"),
            ("sendSms", "exit 0"),
            ("export", "exit 0"),
        ],
    )?;
    let listed = env.bgq().arg("callbacks").output()?;
    assert!(listed.status.success(), "{}", describe(&listed));
    assert_eq!(
        String::from_utf8(listed.stdout)?,
        "export\nsendEmail\nsendSms\n"
    );
    let bin = env!("CARGO_BIN_EXE_bgq");
    let complete = |words: &str, config_var: bool| -> TestResult<String> {
        let line = format!(
            "source <('{bin}' completions bash) && COMP_WORDS=('{bin}' {words}) && COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)) && _bgq '{bin}' \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\" && printf '%s\\n' \"${{COMPREPLY[@]}}\""
        );
        let mut cmd = Command::new("bash");
        cmd.args(["-c", &line])
            .current_dir(env.root())
            .env_remove("BGQ_CONFIG")
            .timeout(Duration::from_secs(60));
        if config_var {
            cmd.env("BGQ_CONFIG", env.config_path());
        }
        let out = cmd.output()?;
        if !out.status.success() {
            return Err(format!("bash {line:?}: {}", describe(&out)).into());
        }
        Ok(String::from_utf8(out.stdout)?)
    };
    assert_eq!(
        complete("list --callback send", true)?,
        "sendEmail\nsendSms\n"
    );
    assert_eq!(
        complete("retry --state PERM", true)?,
        "PERMANENTLY_FAILED\n"
    );
    let publish = complete("publish s", true)?;
    assert_eq!(publish, "sendEmail\nsendSms\n", "{publish}");
    // The config of the line being completed, without BGQ_CONFIG; or ./bgq.toml.
    let config = env.config_path().display().to_string();
    let given = complete(&format!("--config '{config}' publish e"), false)?;
    assert_eq!(given, "export\n");
    let given = complete(&format!("list --config='{config}' --callback e"), false)?;
    assert_eq!(given, "export\n");
    assert_eq!(
        complete("list --callback send", false)?,
        "sendEmail\nsendSms\n",
        "./bgq.toml"
    );
    Ok(())
}

/// `bgq --help` points to the man page, which has the sections a reader looks for.
#[test]
fn help_points_to_the_man_page_and_it_has_the_protocol() -> TestResult {
    let help = print_without_config(&["--help"])?;
    assert!(help.contains("`man bgq`"), "{help}");
    let page = print_without_config(&["man"])?;
    for section in [
        ".SH THE CALLBACK PROTOCOL",
        ".SH EXIT STATUS",
        ".SH FILES",
        ".SH ENVIRONMENT",
        ".SH CONFIGURATION",
        ".SH EXAMPLES",
    ] {
        assert!(page.contains(section), "the man page has {section}");
    }
    for word in [
        "BGQ_JOB_ID",
        "BGQ_ATTEMPT",
        "BGQ_BIN",
        "BGQ_CONFIG",
        "BGQ_HOST_ID",
        "PGPASSWORD",
        "75",
        "76",
        "supervisord",
        "/usr/local/bin/bgq",
    ] {
        assert!(has_word(&page, word), "the man page names {word}");
    }
    assert!(
        !page.contains("\\fBbgq callbacks\\fR"),
        "the hidden command has no entry in the page"
    );
    Ok(())
}

/// A usage error from the argument parser starts `bgq: error:` like every other error, keeps
/// its usage lines, exits 2 and prints nothing on stdout.
#[test]
fn parser_errors_start_with_bgq_error() -> TestResult {
    let dir = tempfile::tempdir()?;
    for args in [
        &["list", "--limitx", "3"][..],
        &["list", "--state", "DONE"][..],
        &["publish"][..],
        &["frobnicate"][..],
        &[][..],
    ] {
        let out = bare(dir.path()).args(args).output()?;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
        assert!(out.stdout.is_empty(), "{args:?}: {}", describe(&out));
        let stderr = String::from_utf8(out.stderr)?;
        assert!(stderr.starts_with("bgq: error: "), "{args:?}: {stderr}");
        assert!(
            stderr.contains("Usage: bgq") || stderr.contains("try '--help'"),
            "{args:?}: {stderr}"
        );
    }
    Ok(())
}
