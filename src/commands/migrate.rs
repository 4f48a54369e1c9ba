//! `bgq migrate --to URL [--schema NAME]`: copies the config's SQLite queue into an empty
//! PostgreSQL schema, keeping ids, states, attempts, outputs, dependencies and order, and
//! leaves the SQLite file as it was. What it owns is the order of things and the refusals:
//! the source must be SQLite and no live `process` run may hold it; the copying itself, one
//! PostgreSQL transaction verified before it commits, is the stores' (`SqliteExport`, which
//! only reads, and `PostgresStore::import`).
//!
//! While it copies it holds the `process` lock of every queue of the source, so that cron's
//! runs leave the queue alone (they exit at once, as when another run holds it); publishers
//! are the operator's to stop: a job published to the file after the copy's snapshot stays
//! behind. A PROCESSING job of a run that died is copied as it is: the first run on
//! PostgreSQL recovers it, counting the lost attempt, as a run on SQLite would have.

use std::io::Write;

use anyhow::bail;

use crate::cli::MigrateArgs;
use crate::config::{self, Config, Database};
use crate::coord::lock::Lock;
use crate::coord::{Coordination, Local};
use crate::error::usage;
use crate::escape;
use crate::store::Durability;
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::SqliteExport;
use crate::store::transfer::Census;

/// Runs `bgq migrate`.
pub fn run(config: &Config, args: &MigrateArgs) -> anyhow::Result<()> {
    let Database::Sqlite(path) = &config.database else {
        return Err(usage(format!(
            "bgq migrate copies a SQLite queue to PostgreSQL, and the config's database is PostgreSQL already ({})",
            config.database
        )));
    };
    // Checked before anything is opened: a bad --to leaves no trace.
    let target = config::postgres_target(&args.to, args.schema.as_deref())?;
    let mut source = SqliteExport::open(path)?;
    let mut locks = Vec::new();
    for queue in source.queues()? {
        let lock_path = config
            .lock_folder
            .process_lock_path(source.identity(), &queue);
        match Lock::try_acquire(&config.lock_folder, &lock_path)? {
            Some(lock) => locks.push(lock),
            None => bail!(
                "a `process` of queue `{}` is running (it holds {}): let it end, and keep cron's runs from starting, before migrating",
                escape::line(&queue),
                lock_path.display()
            ),
        }
    }
    // The snapshot starts once the locks are held, so it holds what ended before.
    source.begin()?;
    // A run the lock did not stop (a `temp_dir` that differs between configs) still has its
    // jobs: they are its own until it ends.
    for run in source.unfinished_runs()? {
        if Local.is_alive(&run.runner) {
            bail!(
                "run {} of queue `{}` (pid {}) is alive and may be running jobs: let it end before migrating",
                run.id,
                escape::line(&run.queue),
                run.runner.pid
            );
        }
    }
    let mut store = PostgresStore::open(&target, Durability::Full)?;
    let census = store.import(&mut source)?;
    drop(locks);
    let line = summary(
        &census,
        &config::redact_password(&target.conninfo),
        &target.schema,
    );
    writeln!(std::io::stdout().lock(), "{line}")?;
    Ok(())
}

/// `count noun`, with an `s` unless it is one.
fn counted(count: u64, noun: &str) -> String {
    format!("{count} {noun}{}", if count == 1 { "" } else { "s" })
}

/// The line `migrate` prints: what it copied, and where.
fn summary(census: &Census, database: &str, schema: &str) -> String {
    let states: Vec<String> = census
        .states
        .iter()
        .map(|(state, count)| format!("{} {count}", escape::line(state)))
        .collect();
    let states = if states.is_empty() {
        String::new()
    } else {
        format!(" ({})", states.join(", "))
    };
    format!(
        "copied {}{states}, {}, {}, {} to {} schema {schema}; verified",
        counted(census.jobs, "job"),
        counted(census.dependencies, "dependency").replace("dependencys", "dependencies"),
        counted(census.runs, "run"),
        counted(census.notices, "notice"),
        escape::line(database),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_counts_and_escapes() {
        let mut census = Census::default();
        census.jobs = 3;
        census.states.insert("FINISHED".to_owned(), 2);
        census.states.insert("READY".to_owned(), 1);
        census.dependencies = 1;
        assert_eq!(
            summary(&census, "postgres://u:***@db/app\x1b", "bgq"),
            "copied 3 jobs (FINISHED 2, READY 1), 1 dependency, 0 runs, 0 notices to postgres://u:***@db/app\\x1b schema bgq; verified"
        );
        assert_eq!(
            summary(&Census::default(), "host=db", "q"),
            "copied 0 jobs, 0 dependencies, 0 runs, 0 notices to host=db schema q; verified"
        );
    }
}
