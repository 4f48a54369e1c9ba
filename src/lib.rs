//! bgq: a durable background job queue in one SQLite file, run by cron.
//!
//! The call path reads top-down: `main` → [`run`] → `commands::*` → `store`, `coord`, `runner`,
//! `queue`. Commands hold no SQL; `store` holds no policy (see ARCHITECTURE.md).
#![warn(missing_docs)]

pub(crate) mod activity;
pub mod cli;
pub mod commands;
pub mod config;
pub(crate) mod coord;
pub mod diagnostic;
pub(crate) mod duration;
pub mod error;
pub(crate) mod escape;
pub(crate) mod human;
pub mod job;
pub(crate) mod notify;
pub(crate) mod queue;
pub(crate) mod runner;
pub(crate) mod size;
pub(crate) mod store;
pub(crate) mod table;
pub(crate) mod term;

use cli::{Cli, Command};

/// Runs one parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    // These describe bgq itself and need no config.
    match &cli.command {
        Command::Completions(args) => return commands::generate::completions(args.shell),
        Command::Man => return commands::generate::man(),
        _ => {}
    }
    let config = config::load(cli.config.as_deref())?;
    coord::share::set(config.sharing.clone());
    let style = term::Style::for_stdout(cli.color);
    match cli.command {
        Command::Publish(args) => commands::publish::run(&config, &args),
        Command::Process(args) => commands::process::run(&config, &args, cli.verbose),
        Command::List(args) => commands::list::run(&config, &args, &style),
        Command::Clear(args) => commands::clear::run(&config, &args, cli.verbose),
        Command::Show(args) => commands::show::run(&config, &args),
        Command::Retry(args) => commands::retry::run(&config, &args),
        Command::Cancel(args) => commands::cancel::run(&config, &args),
        Command::Pause(args) => commands::pause::pause(&config, &args),
        Command::Resume(args) => commands::pause::resume(&config, &args),
        Command::Stats(args) => commands::stats::run(&config, &args, &style),
        Command::Explain(args) => commands::explain::run(&config, &args),
        Command::Batch(command) => commands::batch::run(&config, &command),
        Command::Status(args) => commands::status::run(&config, &args),
        Command::Check => commands::check::run(&config),
        Command::Migrate(args) => commands::migrate::run(&config, &args),
        Command::Callbacks => commands::generate::callbacks(&config),
        Command::Completions(_) | Command::Man => Ok(()),
    }
}
