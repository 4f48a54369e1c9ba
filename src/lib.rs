//! bgq: a durable background job queue in one SQLite file, run by cron.
//!
//! The call path reads top-down: `main` → [`run`] → `commands::*` → `store`, `lock`, `runner`,
//! `backoff`. Commands hold no SQL; `store` holds no policy.
#![warn(missing_docs)]

pub mod backoff;
pub mod cli;
pub mod commands;
pub mod config;
pub mod duration;
pub mod error;
pub mod job;
pub mod lock;
pub mod notify;
pub mod process_group;
pub mod runner;
pub mod running_log;
pub mod store;

use cli::{Cli, Command};

/// Runs one parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let config = config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Publish(args) => commands::publish::run(&config, &args),
        Command::Process(args) => commands::process::run(&config, &args, cli.verbose),
        Command::List(args) => commands::list::run(&config, &args),
        Command::Clear(args) => commands::clear::run(&config, &args, cli.verbose),
    }
}
