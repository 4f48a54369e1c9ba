//! `bgq retry`: jobs back to READY with their attempts reset, by id or by state, optionally
//! with corrected parameters.

use std::io::Write;

use crate::cli::RetryArgs;
use crate::config::Config;
use crate::error::usage;
use crate::escape;
use crate::job::{JobState, now_millis};
use crate::store::{Change, Durability, JobBrief, Selection};

/// Runs `bgq retry`.
pub fn run(config: &Config, args: &RetryArgs) -> anyhow::Result<()> {
    let payload = super::publish::read_payload(
        config,
        args.parameters.json.as_deref(),
        args.parameters.raw.as_deref(),
    )?;
    if payload.is_some() && args.ids.len() != 1 {
        return Err(usage(
            "--json and --raw replace the parameters of exactly one job: give one ID",
        ));
    }
    let states = parse_states(&args.state, |state| {
        matches!(state, JobState::Finished | JobState::Processing)
            .then(|| format!("a {state} job cannot be retried"))
    })?;
    // --batch: the members that ended without finishing.
    let states = match args.batch {
        Some(_) => vec![JobState::PermanentlyFailed, JobState::Cancelled],
        None => states,
    };
    let selection = selection(
        &args.ids,
        &states,
        args.queue.as_deref(),
        args.callback.as_deref(),
        args.batch,
    );
    let new_parameters = payload.is_some();
    let change = Change::Retry {
        now: now_millis(),
        payload,
    };
    let mut store = crate::store::open(&config.database, Durability::Full)?;
    if let Some(batch) = args.batch {
        super::batch::existing(&*store, batch)?;
    }
    let changed = store.change(
        &selection,
        &change,
        args.dry_run,
        &mut |job: &JobBrief| match job.state {
            JobState::Finished => Err(usage(format!(
                "job {} is FINISHED; publish a new job to run it again",
                job.id
            ))),
            JobState::Processing if job.cancel_requested => Err(usage(format!(
                "job {} is being cancelled (`bgq cancel --kill`); retry it once it is CANCELLED",
                job.id
            ))),
            JobState::Processing => Err(usage(format!(
                "job {} is running; wait for it or use `bgq cancel --kill {}`",
                job.id, job.id
            ))),
            _ => Ok(true),
        },
    )?;
    let mut out = std::io::stdout().lock();
    for (job, _) in &changed {
        let verb = if args.dry_run {
            "would retry"
        } else {
            "retried"
        };
        let with = if new_parameters {
            ", with new parameters"
        } else {
            ""
        };
        let callback = escape::line(&job.callback);
        writeln!(
            out,
            "{verb} job {} ({callback}): {} -> READY{with}",
            job.id, job.state
        )?;
        if !config.callbacks.contains_key(&job.callback) {
            crate::diagnostic!(
                "bgq: warning: job {} waits for callback `{callback}`, which {} does not define",
                job.id,
                config.path.display()
            );
        }
    }
    out.flush()?;
    drop(out);
    if !args.dry_run {
        say_batches_stay_complete(&*store, &changed)?;
    }
    Ok(())
}

/// Says on stderr, once per batch, that the retried members of a batch that already completed
/// reopen nothing: its completion jobs ran, and will not run again (SPEC section 11).
fn say_batches_stay_complete(
    store: &dyn crate::store::Store,
    changed: &[(JobBrief, bool)],
) -> anyhow::Result<()> {
    let mut batches: Vec<i64> = changed
        .iter()
        .filter(|(_, applied)| *applied)
        .filter_map(|(job, _)| job.batch)
        .collect();
    batches.sort_unstable();
    batches.dedup();
    for id in batches {
        if let Some(batch) = store.batch(id)?
            && batch.completed_at.is_some()
        {
            crate::diagnostic!(
                "bgq: note: batch {id} is already complete: retrying its jobs reopens nothing, and its completion jobs do not run again"
            );
        }
    }
    Ok(())
}

/// The states of a bulk command's `--state` options, each passed to `refuse`, which says why
/// the command cannot take jobs in that state (a usage error), if it cannot.
pub(super) fn parse_states(
    states: &[String],
    refuse: impl Fn(JobState) -> Option<String>,
) -> anyhow::Result<Vec<JobState>> {
    states
        .iter()
        .map(|state| {
            let state = state.parse::<JobState>()?;
            match refuse(state) {
                Some(why) => Err(usage(why)),
                None => Ok(state),
            }
        })
        .collect()
}

/// The jobs a bulk command (`retry`, `cancel`) names: `ids`, or when there are none every job
/// in one of `states`, of `queue`, `callback` and `batch` when given.
pub(super) fn selection<'a>(
    ids: &'a [i64],
    states: &'a [JobState],
    queue: Option<&'a str>,
    callback: Option<&'a str>,
    batch: Option<i64>,
) -> Selection<'a> {
    if ids.is_empty() {
        Selection::Matching {
            states,
            queue,
            callback,
            batch,
        }
    } else {
        Selection::Ids(ids)
    }
}
