//! `bgq clear [--state S]... [DAYS]`: deletes FINISHED jobs (or the PERMANENTLY_FAILED or
//! CANCELLED ones asked for) in small batches, so that `publish` and `process` wait for one batch
//! at most, never for the whole purge.

use std::io::Write;

use crate::cli::ClearArgs;
use crate::config::Config;
use crate::coord::lock::Lock;
use crate::error::usage;
use crate::job::{JobState, now_millis};
use crate::store::Durability;

/// Rows deleted per transaction.
const BATCH: usize = 2000;
/// Pause between batches.
const BATCH_GAP: std::time::Duration = std::time::Duration::from_micros(300);
const DAY_MILLIS: i64 = 86_400_000;

/// Runs `bgq clear`.
pub fn run(config: &Config, args: &ClearArgs, verbose: bool) -> anyhow::Result<()> {
    let mut states = Vec::new();
    for state in &args.state {
        let state = state.parse::<JobState>()?;
        if !matches!(
            state,
            JobState::Finished | JobState::PermanentlyFailed | JobState::Cancelled
        ) {
            return Err(usage(format!(
                "--state {state}: clear deletes only FINISHED, PERMANENTLY_FAILED or CANCELLED jobs"
            )));
        }
        if !states.contains(&state) {
            states.push(state);
        }
    }
    if states.is_empty() {
        states.push(JobState::Finished);
    }
    let mut store = crate::store::open(&config.database, Durability::Relaxed)?;
    let lock_path = config.lock_folder.clear_lock_path(store.identity());
    let Some(_lock) = Lock::try_acquire(&config.lock_folder, &lock_path)? else {
        if verbose {
            crate::diagnostic!(
                "bgq: another `clear` holds {}; leaving it to that one",
                lock_path.display()
            );
        }
        return Ok(());
    };
    let cutoff = args
        .days
        .map_or(i64::MAX, |days| now_millis() - i64::from(days) * DAY_MILLIS);
    let mut deleted = 0;
    for state in states {
        let mut after = 0;
        loop {
            let (count, next) = store.clear_batch(state, cutoff, after, BATCH)?;
            deleted += count;
            let Some(next) = next else { break };
            after = next;
            // A gap between batches, so that a waiting `publish` gets in (see
            // store::wait_for_lock).
            std::thread::sleep(BATCH_GAP);
        }
    }
    // Complete batches whose jobs are all gone go with them (stdout stays the count of jobs).
    let pruned = store.prune_batches()?;
    if verbose && pruned > 0 {
        crate::diagnostic!("bgq: pruned {pruned} complete batch(es) with no job left");
    }
    writeln!(std::io::stdout().lock(), "{deleted}")?;
    Ok(())
}
