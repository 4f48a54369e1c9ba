//! `bgq completions` and `bgq man`: generated from the clap definitions, so they never drift
//! from the commands themselves.

use std::io::Write;

use anyhow::Context;
use clap::CommandFactory;

use crate::cli::Cli;

/// Prints the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "bgq", &mut out);
    std::io::stdout().lock().write_all(&out)?;
    Ok(())
}

/// Prints the man page: bgq(1) with a section for every command.
pub fn man() -> anyhow::Result<()> {
    let command = Cli::command();
    let mut out = Vec::new();
    let man = clap_mangen::Man::new(command.clone());
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    writeln!(out, ".SH COMMANDS")?;
    for sub in command.get_subcommands() {
        let name = sub.get_name();
        let about = sub.get_about().map(ToString::to_string).unwrap_or_default();
        let mut usage = sub.clone().bin_name(format!("bgq {name}"));
        writeln!(out, ".TP\n\\fBbgq {name}\\fR\n{}", escape(&about))?;
        writeln!(
            out,
            ".br\nUsage: {}",
            escape(&usage.render_usage().to_string().replace("Usage: ", ""))
        )?;
        for arg in sub.get_arguments().filter(|arg| !arg.is_hide_set()) {
            let flag = match (arg.get_long(), arg.get_short()) {
                (Some(long), Some(short)) => format!("-{short}, --{long}"),
                (Some(long), None) => format!("--{long}"),
                (None, Some(short)) => format!("-{short}"),
                (None, None) => arg.get_id().to_string().to_uppercase(),
            };
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            writeln!(out, ".RS\n.TP\n{}\n{}\n.RE", escape(&flag), escape(&help))?;
        }
    }
    man.render_version_section(&mut out)?;
    std::io::stdout()
        .lock()
        .write_all(&out)
        .context("cannot write the man page")?;
    Ok(())
}

/// Text made safe for roff: backslashes doubled, and a leading `.` or `'` not taken for a
/// request.
fn escape(text: &str) -> String {
    let text = text.replace('\\', "\\\\").replace('-', "\\-");
    if text.starts_with('.') || text.starts_with('\'') {
        format!("\\&{text}")
    } else {
        text
    }
}
