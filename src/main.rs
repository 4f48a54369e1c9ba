//! The `bgq` binary: parses the command line, runs it, and maps the result to an exit code.

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

fn main() -> ExitCode {
    let cli = match bgq::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return parse_error(&err),
    };
    // A publish's exit code says whether its job was stored (1: nothing stored), so a lost
    // note after the id was printed must not make a caller publish the job again.
    let stores_a_job = matches!(cli.command, bgq::cli::Command::Publish(_));
    let code = match bgq::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if bgq::error::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) if bgq::error::is_unhealthy(&err) => ExitCode::FAILURE,
        Err(err) => {
            // One line, whatever a cause's message holds: cron mails and log greps read lines.
            let message = format!("{err:#}").replace('\n', " ");
            bgq::diagnostic!("bgq: error: {message}");
            ExitCode::from(bgq::error::exit_code(&err))
        }
    };
    // A run whose warnings were lost did its work, but someone should look at its stderr.
    if code == ExitCode::SUCCESS && bgq::diagnostic::any_dropped() && !stores_a_job {
        return ExitCode::FAILURE;
    }
    code
}

/// A command line the parser refused, or `--help`/`--version`: help and version go to stdout
/// (exit 0); a usage error is clap's message prefixed `bgq: error:` as every other error is
/// (SPEC section 6), with its usage lines, exit 2.
fn parse_error(err: &clap::Error) -> ExitCode {
    let text = match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => err.exit(),
        // `bgq` alone, or `bgq batch`: the help of what is missing, under the error line.
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            format!("error: a command is required\n\n{}", err.render())
        }
        _ => err.render().to_string(),
    };
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    // Written as is: clap's lines already hold nothing from a publisher's data but the
    // arguments themselves, which `diagnostic` escapes line by line.
    for line in format!("bgq: error: {text}").trim_end().lines() {
        bgq::diagnostic!("{line}");
    }
    ExitCode::from(2)
}
