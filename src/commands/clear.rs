//! `bgq clear [DAYS]`: deletes FINISHED jobs in small batches, so that `publish` and `process`
//! wait for one batch at most, never for the whole purge.

use std::io::Write;

use crate::cli::ClearArgs;
use crate::config::Config;
use crate::coord::lock::Lock;
use crate::job::now_millis;
use crate::store::Durability;

/// Rows deleted per transaction.
const BATCH: usize = 2000;
/// Pause between batches.
const BATCH_GAP: std::time::Duration = std::time::Duration::from_micros(300);
const DAY_MILLIS: i64 = 86_400_000;

/// Runs `bgq clear`.
pub fn run(config: &Config, args: &ClearArgs, verbose: bool) -> anyhow::Result<()> {
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
    let mut after = 0;
    loop {
        let (count, next) = store.clear_batch(cutoff, after, BATCH)?;
        deleted += count;
        let Some(next) = next else { break };
        after = next;
        // A gap between batches, so that a waiting `publish` gets in (see store::wait_for_lock).
        std::thread::sleep(BATCH_GAP);
    }
    writeln!(std::io::stdout().lock(), "{deleted}")?;
    Ok(())
}
