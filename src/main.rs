//! The `bgq` binary: parses the command line, runs it, and maps the result to an exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = bgq::cli::Cli::parse();
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
