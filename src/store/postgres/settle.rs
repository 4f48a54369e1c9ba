//! A run's turn after callbacks ended, on PostgreSQL: the outcomes and the next claim go to the
//! schema's `settle_and_claim()` (functions.sql) as arrays, one statement and so one round trip
//! and one transaction, where they used to take six round trips per finished job. This module
//! turns `Completion`s and a `ClaimRequest` into that call's parameters and its rows back into
//! what the store returns.

use anyhow::{Context, bail};
use postgres::GenericClient;
use postgres::types::Type;

use super::{Param, in_schema, read_u32, stored_payload};
use crate::job::{JobState, Payload};
use crate::store::{Applied, ClaimRequest, ClaimedJob, Completion, Fence, Settled, Tally};

/// How many parameters settle() takes.
const OUTCOME_PARAMS: usize = 17;

/// settle()'s parameters: one element of each array per completion.
struct Outcomes<'a> {
    ids: Vec<i64>,
    states: Vec<&'static str>,
    run_ats: Vec<i64>,
    due: Vec<bool>,
    uncount: Vec<i32>,
    outputs: Vec<&'a [u8]>,
    ended_at: Vec<i64>,
    notified: Vec<bool>,
    fence_runs: Vec<i64>,
    attempts: Vec<i32>,
    notice_kinds: Vec<Option<&'static str>>,
    notice_reasons: Vec<Option<&'a str>>,
    created_by: Vec<i64>,
    run_outcomes: Vec<&'static str>,
    exit_codes: Vec<Option<i32>>,
    signals: Vec<Option<i32>>,
    history: Vec<i32>,
}

impl<'a> Outcomes<'a> {
    /// The outcomes of `done`, whose notices are sent by run `created_by` (by default the run
    /// that held each job).
    fn new(done: &'a [Completion], created_by: Option<i64>) -> Outcomes<'a> {
        Outcomes {
            ids: done.iter().map(|done| done.id).collect(),
            states: done.iter().map(|done| done.state.as_str()).collect(),
            run_ats: done.iter().map(|done| done.run_at).collect(),
            due: done.iter().map(|done| done.due_now).collect(),
            uncount: done
                .iter()
                .map(|done| i32::from(done.uncount_attempt))
                .collect(),
            outputs: done.iter().map(|done| done.output.as_slice()).collect(),
            ended_at: done.iter().map(|done| done.ended_at).collect(),
            notified: done.iter().map(|done| done.notified).collect(),
            fence_runs: done.iter().map(|done| done.fence.run).collect(),
            attempts: done
                .iter()
                .map(|done| i32::try_from(done.fence.attempt).unwrap_or(i32::MAX))
                .collect(),
            notice_kinds: done
                .iter()
                .map(|done| done.notice.as_ref().map(|(kind, _)| kind.as_str()))
                .collect(),
            notice_reasons: done
                .iter()
                .map(|done| done.notice.as_ref().map(|(_, reason)| reason.as_str()))
                .collect(),
            created_by: done
                .iter()
                .map(|done| created_by.unwrap_or(done.fence.run))
                .collect(),
            run_outcomes: done
                .iter()
                .map(|done| done.ended.outcome.as_str())
                .collect(),
            exit_codes: done.iter().map(|done| done.ended.exit_code).collect(),
            signals: done.iter().map(|done| done.ended.signal).collect(),
            history: done
                .iter()
                .map(|done| i32::try_from(done.history).unwrap_or(i32::MAX))
                .collect(),
        }
    }

    fn params(&self) -> [Param<'_>; OUTCOME_PARAMS] {
        [
            (&self.ids, Type::INT8_ARRAY),
            (&self.states, Type::TEXT_ARRAY),
            (&self.run_ats, Type::INT8_ARRAY),
            (&self.due, Type::BOOL_ARRAY),
            (&self.uncount, Type::INT4_ARRAY),
            (&self.outputs, Type::BYTEA_ARRAY),
            (&self.ended_at, Type::INT8_ARRAY),
            (&self.notified, Type::BOOL_ARRAY),
            (&self.fence_runs, Type::INT8_ARRAY),
            (&self.attempts, Type::INT4_ARRAY),
            (&self.notice_kinds, Type::TEXT_ARRAY),
            (&self.notice_reasons, Type::TEXT_ARRAY),
            (&self.created_by, Type::INT8_ARRAY),
            (&self.run_outcomes, Type::TEXT_ARRAY),
            (&self.exit_codes, Type::INT4_ARRAY),
            (&self.signals, Type::INT4_ARRAY),
            (&self.history, Type::INT4_ARRAY),
        ]
    }
}

/// claim()'s parameters (see its comment in functions.sql for what -1 means).
struct Claim<'a> {
    queue: &'a str,
    run: i64,
    now: i64,
    limit: i32,
    names: Vec<&'a str>,
    left: Vec<i32>,
    fleet_limits: Vec<i32>,
    blocking: &'a [&'a str],
}

impl<'a> Claim<'a> {
    fn new(claim: &'a ClaimRequest<'a>) -> Claim<'a> {
        let as_limit = |limit: usize| i32::try_from(limit).unwrap_or(i32::MAX);
        let any_left = claim.callbacks.iter().any(|(_, left)| *left > 0);
        Claim {
            queue: claim.queue,
            run: claim.run,
            now: claim.now,
            limit: if any_left { as_limit(claim.limit) } else { 0 },
            names: claim.callbacks.iter().map(|(name, _)| *name).collect(),
            left: claim
                .callbacks
                .iter()
                .map(|(_, left)| {
                    if *left == usize::MAX {
                        -1
                    } else {
                        as_limit(*left)
                    }
                })
                .collect(),
            fleet_limits: claim
                .limits
                .iter()
                .map(|limit| limit.map_or(-1, as_limit))
                .collect(),
            blocking: claim.blocking,
        }
    }

    fn params(&self) -> [Param<'_>; 8] {
        [
            (&self.queue, Type::TEXT),
            (&self.run, Type::INT8),
            (&self.now, Type::INT8),
            (&self.limit, Type::INT4),
            (&self.names, Type::TEXT_ARRAY),
            (&self.left, Type::INT4_ARRAY),
            (&self.fleet_limits, Type::INT4_ARRAY),
            (&self.blocking, Type::TEXT_ARRAY),
        ]
    }
}

/// Stores `done` (counting each stored outcome into `tally`) and claims as `claim` asks, in
/// one statement.
pub(super) fn settle_and_claim(
    client: &mut impl GenericClient,
    schema: &str,
    done: &[Completion],
    claim: &ClaimRequest<'_>,
    tally: &mut Tally,
    created_by: Option<i64>,
) -> anyhow::Result<Settled> {
    let outcomes = Outcomes::new(done, created_by);
    let request = Claim::new(claim);
    let params: Vec<Param<'_>> = outcomes
        .params()
        .into_iter()
        .chain(request.params())
        .collect();
    let placeholders: Vec<String> = (1..=params.len()).map(|n| format!("${n}")).collect();
    let sql = in_schema(
        schema,
        &format!(
            "SELECT * FROM @.settle_and_claim({})",
            placeholders.join(", ")
        ),
    );
    let rows = client.query_typed(&sql, &params)?;
    let mut settled = Settled {
        claimed: Vec::new(),
        failed: 0,
        stale: Vec::new(),
    };
    let mut outcomes_read = 0;
    for row in &rows {
        let kind: &str = row.get(0);
        let id: i64 = row.get(1);
        match kind {
            "settled" => {
                let completion = done
                    .get(outcomes_read)
                    .filter(|completion| completion.id == id)
                    .with_context(|| {
                        format!("settle_and_claim() answered for job {id} out of turn")
                    })?;
                outcomes_read += 1;
                let applied = applied(row.get(3))?;
                count_stored(completion, applied, row.get(2), tally);
                match applied {
                    Applied::Stored
                        if matches!(
                            completion.state,
                            JobState::TemporarilyFailed | JobState::PermanentlyFailed
                        ) =>
                    {
                        settled.failed += 1;
                    }
                    Applied::Stale => settled.stale.push((completion.id, completion.fence)),
                    Applied::Stored | Applied::Cancelled => {}
                }
            }
            "claimed" => settled.claimed.push(claimed(row, claim.run)),
            other => bail!("settle_and_claim() answered a row of kind {other:?}"),
        }
    }
    if outcomes_read != done.len() {
        bail!(
            "settle_and_claim() answered for {outcomes_read} of {} outcomes",
            done.len()
        );
    }
    Ok(settled)
}

/// Stores one outcome (with no claim), counting it into `tally`.
pub(super) fn settle_one(
    client: &mut impl GenericClient,
    schema: &str,
    done: &Completion,
    tally: &mut Tally,
    created_by: Option<i64>,
) -> anyhow::Result<Applied> {
    let outcomes = Outcomes::new(std::slice::from_ref(done), created_by);
    let placeholders: Vec<String> = (1..=OUTCOME_PARAMS).map(|n| format!("${n}")).collect();
    let sql = in_schema(
        schema,
        &format!(
            "SELECT outcome, queue FROM @.settle({})",
            placeholders.join(", ")
        ),
    );
    let row = client.query_typed_one(&sql, &outcomes.params())?;
    let applied = applied(row.get(0))?;
    count_stored(done, applied, row.get(1), tally);
    Ok(applied)
}

fn applied(outcome: &str) -> anyhow::Result<Applied> {
    Ok(match outcome {
        "stored" => Applied::Stored,
        "cancelled" => Applied::Cancelled,
        "stale" => Applied::Stale,
        other => bail!("settle() answered an outcome {other:?}"),
    })
}

/// Counts a stored run of `done` in `tally`, by its job's `queue`.
fn count_stored(done: &Completion, applied: Applied, queue: Option<String>, tally: &mut Tally) {
    if let (Applied::Stored, Some(queue)) = (applied, queue) {
        tally.count(&queue, done.ended_at, done.state);
    }
}

/// A job claim() handed to run `run`, from a 'claimed' row.
fn claimed(row: &postgres::Row, run: i64) -> ClaimedJob {
    let id: i64 = row.get(1);
    let attempts = read_u32(row, 7);
    ClaimedJob {
        id,
        queue: row.get(2),
        callback: row.get(4),
        payload: stored_payload(row.get(5), row.get(6))
            .and_then(|bytes| Payload::from_msgpack(&bytes).map_err(|err| format!("{err:#}")))
            .map_err(|err| format!("job {id} has unreadable parameters: {err}")),
        attempts,
        serial_group: row.get(8),
        identifier: row.get(9),
        notified: row.get(10),
        fence: Fence {
            run,
            attempt: attempts,
        },
        batch: row.get(11),
    }
}
