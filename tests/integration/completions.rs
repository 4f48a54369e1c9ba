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
