//! The store's behaviour suite: what every backend must do, written once against the
//! [`Store`] trait and its contract (claim order, priorities, serial groups, `--after`,
//! `--unique`, delays, retry, cancel, fencing of late outcomes, recovery, clear, notices, run
//! records, the counts of the read commands). Each behaviour is a plain function of
//! `&mut dyn Store`: no SQL, no connection, no backend type.
//!
//! A backend runs the whole suite by invoking, once, in its `#[cfg(test)]` module:
//!
//! ```ignore
//! crate::store::conformance::conformance_suite!(open);
//! ```
//!
//! where `open()` returns `Some((guard, store))`: a fresh, empty store of the backend's type and
//! whatever keeps it alive (a temp dir, a throwaway database), dropped after the store; or
//! `None` when the backend's test server is missing (see [`run`]). That
//! defines a module `conformance` in the caller with one `#[test]` per behaviour.
//!
//! To add a behaviour, write its function here and add its name to the list in
//! `conformance_suite!`: every backend then runs it, untouched. A function left off the list is
//! never called, which the `dead_code` lint reports (and clippy `-D warnings` refuses).
//!
//! What only one backend can show (its SQL's query plans, upgrades of its own old schemas, states
//! only its old versions wrote, checks that read what the trait does not expose) stays in that
//! backend's tests, which may use the helpers here.

use crate::coord::process_group::ProcessRecord;
use crate::job::{JobState, Millis, NewJob, Payload};
use crate::notify::NoticeKind;
use crate::queue::eligibility::group_hold;
use crate::store::{
    Applied, AttemptEnd, AttemptOutcome, Change, ClaimRequest, ClaimedJob, Completion, Fence,
    JobBrief, ListFilter, Pause, Published, Schedule, Selection, Store, Tally,
};

/// Defines, in the module that invokes it, a module `conformance` with one `#[test]` per
/// behaviour of the suite, each on a fresh store from `$open()` (see the module's docs).
macro_rules! conformance_suite {
    ($open:expr) => {
        $crate::store::conformance::conformance_suite!(@tests $open;
            claims_oldest_first_and_never_twice,
            serial_group_holds_younger_jobs_until_the_older_one_ends,
            claims_several_within_each_callbacks_capacity,
            only_the_given_callbacks_are_claimed,
            a_failed_job_waits_for_a_later_run_even_when_due,
            publish_returns_the_id_of_each_job_across_chunks,
            higher_priority_is_claimed_first_but_never_ahead_of_its_group,
            a_job_after_others_becomes_due_when_the_last_of_them_finishes,
            a_unique_job_is_stored_once_while_unfinished,
            a_failed_job_holds_its_group_only_for_blocking_callbacks,
            a_job_cancelled_while_running_holds_its_group_until_its_callback_ends,
            a_cancelled_callback_that_exits_0_leaves_its_job_finished,
            a_late_outcome_of_a_recovered_claim_changes_nothing,
            end_cancel_ends_only_a_running_job_marked_for_cancelling,
            delayed_jobs_wait_outside_the_claim_path,
            orphans_are_the_running_jobs_of_their_queue,
            a_waiting_job_does_not_count_the_attempt,
            a_retried_job_runs_again_in_a_later_run_with_its_new_parameters,
            a_change_applies_to_the_jobs_decided_or_to_none,
            clear_deletes_only_jobs_finished_before_the_cutoff,
            notices_wait_with_their_outcome_until_deleted,
            runs_are_recorded_from_start_to_end,
            outcomes_are_counted_once_written,
            the_read_side_sees_what_is_stored,
            a_shifted_schedule_makes_delayed_jobs_due_sooner,
            claims_agree_with_the_group_rule,
            paused_jobs_are_not_claimed_until_resumed,
            a_job_cleared_unfinished_keeps_its_dependents_waiting,
            runs_are_totalled_per_callback_and_outcome,
            each_stored_run_adds_to_a_bounded_history_oldest_first,
            a_cancelled_run_is_kept_as_cancelled_and_a_stale_one_not_at_all,
            a_job_whose_callback_cannot_start_is_put_back_as_it_was,
            a_put_back_job_marked_for_cancelling_becomes_cancelled,
            a_batch_counts_every_move_of_its_jobs_and_completes_once,
            kept_counts_follow_every_change_of_state,
        );
    };
    (@tests $open:expr; $($name:ident,)*) => {
        /// The store's behaviour suite (`store::conformance`), run against this backend.
        mod conformance {
            #[allow(unused_imports)]
            use super::*;

            $(
                #[test]
                fn $name() {
                    $crate::store::conformance::run($open, $crate::store::conformance::$name);
                }
            )*
        }
    };
}
pub(crate) use conformance_suite;

/// Runs `behaviour` on a fresh store from `open`, then drops the store before its guard. A
/// backend that needs a server its tests may lack returns `None` from `open` (having said why,
/// and failed under CI): the behaviour is then not run.
pub(crate) fn run<G, S: Store>(
    open: impl FnOnce() -> Option<(G, S)>,
    behaviour: fn(&mut dyn Store),
) {
    let Some((guard, mut store)) = open() else {
        return;
    };
    behaviour(&mut store);
    // Every behaviour changes jobs its own way: the kept counts must have followed each.
    assert_counts_agree(&store);
    drop(store);
    drop(guard);
}

/// The kept counts of `state_counts` against the jobs counted one by one.
pub(crate) fn assert_counts_agree(store: &dyn Store) {
    let mut kept = store.state_counts().expect("kept counts");
    kept.sort_by(|a, b| (&a.0, a.1.as_str()).cmp(&(&b.0, b.1.as_str())));
    let mut counted: std::collections::BTreeMap<(String, &'static str), u64> =
        std::collections::BTreeMap::new();
    for record in store
        .list(&ListFilter::default(), 1_000_000)
        .expect("list every job")
    {
        *counted
            .entry((record.queue.clone(), record.state.as_str()))
            .or_default() += 1;
    }
    let kept: Vec<(String, &str, u64)> = kept
        .into_iter()
        .map(|(queue, state, count)| (queue, state.as_str(), count))
        .collect();
    let counted: Vec<(String, &str, u64)> = counted
        .into_iter()
        .map(|((queue, state), count)| (queue, state, count))
        .collect();
    assert_eq!(
        kept, counted,
        "kept counts (left) against the jobs there are"
    );
}

/// The kept counts after an upgrade of a schema holding the jobs the upgrade tests of both
/// backends insert: one FINISHED and one READY in `general`, one READY in `other`.
pub(crate) fn assert_upgraded_counts(store: &dyn Store) {
    let mut counts = store.state_counts().expect("counts");
    counts.sort_by(|a, b| (&a.0, a.1.as_str()).cmp(&(&b.0, b.1.as_str())));
    assert_eq!(
        counts,
        [
            ("general".to_owned(), JobState::Finished, 1),
            ("general".to_owned(), JobState::Ready, 1),
            ("other".to_owned(), JobState::Ready, 1),
        ]
    );
}

/// Claims one job of `queue` for `run` among `callbacks` (no limit per callback).
pub(crate) fn claim(
    store: &mut dyn Store,
    queue: &str,
    run: i64,
    now: Millis,
    callbacks: &[&str],
) -> anyhow::Result<Option<ClaimedJob>> {
    let callbacks: Vec<(&str, usize)> = callbacks.iter().map(|name| (*name, usize::MAX)).collect();
    let request = ClaimRequest {
        queue,
        run,
        now,
        limit: 1,
        callbacks: &callbacks,
        limits: &[],
        blocking: &[],
    };
    Ok(store
        .settle_and_claim(&[], &request, &mut Tally::default(), true)?
        .claimed
        .pop())
}

/// The `process` that the tests' runs are recorded as.
pub(crate) fn me() -> ProcessRecord {
    ProcessRecord {
        pid: 1,
        started: 1,
        boot_id: "test".to_owned(),
    }
}

/// A job of queue `general` for `callback`, in serial `group` if given.
pub(crate) fn job(callback: &str, group: Option<&str>) -> NewJob {
    NewJob {
        queue: "general".to_owned(),
        callback: callback.to_owned(),
        payload: Payload::Json(serde_json::json!({"n": 1}))
            .to_msgpack()
            .expect("encodes"),
        serial_group: group.map(str::to_owned),
        identifier: None,
    }
}

/// The claim that holds job `id` now, as its run knows it: the run that claimed it last and
/// the attempts counted.
pub(crate) fn fence_of(store: &dyn Store, id: i64) -> Fence {
    let detail = store.detail(id).expect("read the claim").expect("kept");
    Fence {
        run: detail.claimed_run,
        attempt: detail.record.attempts,
    }
}

/// Publishes `jobs`, due now, with no other schedule; returns their ids in order.
pub(crate) fn publish(
    store: &mut dyn Store,
    jobs: &[NewJob],
    now: Millis,
) -> anyhow::Result<Vec<i64>> {
    match store.publish_with(jobs, &Schedule::default(), now)? {
        Published::Stored { ids, .. } => Ok(ids),
        Published::Existing { id, .. } => Ok(vec![id]),
    }
}

/// Ends the run of job `id` that holds it now in `state` at `at`, printing nothing.
pub(crate) fn finish(store: &mut dyn Store, id: i64, state: JobState, at: Millis) {
    store
        .complete(&Completion {
            id,
            fence: fence_of(store, id),
            state,
            run_at: at,
            due_now: false,
            uncount_attempt: false,
            output: Vec::new(),
            ended_at: at,
            notified: false,
            notice: None,
            ended: end_of(state),
            history: 10,
        })
        .expect("complete");
}

/// How a run that left its job in `state` ended, as a callback's exit would have it.
pub(crate) fn end_of(state: JobState) -> AttemptEnd {
    let (outcome, exit_code) = match state {
        JobState::Finished => (AttemptOutcome::Finished, Some(0)),
        JobState::TemporarilyFailed => (AttemptOutcome::TemporarilyFailed, Some(75)),
        JobState::Waiting => (AttemptOutcome::Waiting, Some(76)),
        JobState::Cancelled => (AttemptOutcome::Cancelled, None),
        _ => (AttemptOutcome::PermanentlyFailed, Some(1)),
    };
    AttemptEnd {
        outcome,
        exit_code,
        signal: None,
    }
}

/// Whether job `id` carries the mark of `bgq cancel --kill`.
pub(crate) fn marked(store: &dyn Store, id: i64) -> bool {
    store
        .detail(id)
        .expect("read")
        .expect("kept")
        .cancel_requested
}

/// Marks job `id` as `bgq cancel --kill` does.
pub(crate) fn cancel(store: &mut dyn Store, id: i64, now: Millis) {
    store
        .change(
            &Selection::Ids(&[id]),
            &Change::Cancel { now },
            false,
            &mut |_: &JobBrief| Ok(true),
        )
        .expect("cancel");
}

/// How a run of job `id` under `fence` ended in `state` at `at`, printing `output`.
pub(crate) fn ended(
    id: i64,
    fence: Fence,
    state: JobState,
    at: Millis,
    output: &[u8],
) -> Completion {
    Completion {
        id,
        fence,
        state,
        run_at: at,
        due_now: state == JobState::TemporarilyFailed,
        uncount_attempt: false,
        output: output.to_vec(),
        ended_at: at,
        notified: false,
        notice: None,
        ended: end_of(state),
        history: 10,
    }
}

pub(crate) fn claims_oldest_first_and_never_twice(store: &mut dyn Store) {
    let ids = publish(store, &[job("a", None), job("a", None)], 1000).expect("publish");
    let run = store.begin_run("general", &me(), 1000, false).expect("run");
    let first = claim(store, "general", run, 1000, &["a"])
        .expect("claim")
        .expect("a job");
    let second = claim(store, "general", run, 1000, &["a"])
        .expect("claim")
        .expect("a job");
    assert_eq!((first.id, second.id), (ids[0], ids[1]));
    assert_eq!(first.attempts, 1);
    assert!(
        claim(store, "general", run, 1000, &["a"])
            .expect("claim")
            .is_none()
    );
}

pub(crate) fn serial_group_holds_younger_jobs_until_the_older_one_ends(store: &mut dyn Store) {
    let ids = publish(
        store,
        &[
            job("a", Some("g")),
            job("a", Some("g")),
            job("a", Some("h")),
        ],
        1000,
    )
    .expect("publish");
    let run = store.begin_run("general", &me(), 1000, false).expect("run");
    let first = claim(store, "general", run, 1000, &["a"])
        .expect("claim")
        .expect("job");
    let other = claim(store, "general", run, 1000, &["a"])
        .expect("claim")
        .expect("job");
    assert_eq!((first.id, other.id), (ids[0], ids[2]));
    assert!(
        claim(store, "general", run, 1000, &["a"])
            .expect("claim")
            .is_none()
    );
    store
        .complete(&Completion {
            id: ids[0],
            fence: fence_of(store, ids[0]),
            state: JobState::PermanentlyFailed,
            run_at: 1000,
            due_now: false,
            uncount_attempt: false,
            output: Vec::new(),
            ended_at: 1001,
            notified: false,
            notice: None,
            ended: end_of(JobState::PermanentlyFailed),
            history: 10,
        })
        .expect("complete");
    let next = claim(store, "general", run, 1001, &["a"])
        .expect("claim")
        .expect("job");
    assert_eq!(next.id, ids[1]);
}

pub(crate) fn claims_several_within_each_callbacks_capacity(store: &mut dyn Store) {
    let ids = publish(
        store,
        &[
            job("a", None),
            job("a", None),
            job("b", None),
            job("a", None),
        ],
        1000,
    )
    .expect("publish");
    let run = store.begin_run("general", &me(), 1000, false).expect("run");
    let request = ClaimRequest {
        queue: "general",
        run,
        now: 1000,
        limit: 3,
        callbacks: &[("a", 1), ("b", usize::MAX)],
        limits: &[],
        blocking: &[],
    };
    let claimed = store
        .settle_and_claim(&[], &request, &mut Tally::default(), true)
        .expect("claim");
    let claimed: Vec<i64> = claimed.claimed.iter().map(|job| job.id).collect();
    assert_eq!(claimed, [ids[0], ids[2]]);
}

pub(crate) fn only_the_given_callbacks_are_claimed(store: &mut dyn Store) {
    let ids = publish(store, &[job("a", None), job("b", None)], 1000).expect("publish");
    let run = store.begin_run("general", &me(), 1000, false).expect("run");
    let claimed = claim(store, "general", run, 1000, &["b"])
        .expect("claim")
        .expect("job");
    assert_eq!(claimed.id, ids[1]);
}

pub(crate) fn a_failed_job_waits_for_a_later_run_even_when_due(store: &mut dyn Store) {
    let ids = publish(store, &[job("a", None)], 1000).expect("publish");
    let run = store.begin_run("general", &me(), 1000, false).expect("run");
    claim(store, "general", run, 1000, &["a"])
        .expect("claim")
        .expect("job");
    store
        .complete(&Completion {
            id: ids[0],
            fence: fence_of(store, ids[0]),
            state: JobState::TemporarilyFailed,
            run_at: 1000,
            due_now: false,
            uncount_attempt: false,
            output: b"boom".to_vec(),
            ended_at: 1000,
            notified: false,
            notice: None,
            ended: end_of(JobState::TemporarilyFailed),
            history: 10,
        })
        .expect("complete");
    assert_eq!(
        store
            .promote_due("general", Some(run), 5000)
            .expect("promote"),
        0
    );
    assert!(
        claim(store, "general", run, 5000, &["a"])
            .expect("claim")
            .is_none()
    );
    let next_run = store.begin_run("general", &me(), 6000, false).expect("run");
    assert_eq!(
        store
            .promote_due("general", Some(next_run), 6000)
            .expect("promote"),
        1
    );
    let again = claim(store, "general", next_run, 6000, &["a"])
        .expect("claim")
        .expect("job");
    assert_eq!(again.attempts, 2);
    let detail = store.detail(ids[0]).expect("read").expect("stored");
    assert_eq!(detail.output, b"boom");
}

pub(crate) fn publish_returns_the_id_of_each_job_across_chunks(store: &mut dyn Store) {
    let jobs: Vec<NewJob> = (0..250)
        .map(|n| NewJob {
            payload: Payload::Json(serde_json::json!({ "n": n }))
                .to_msgpack()
                .expect("encodes"),
            identifier: Some(format!("job-{n}")),
            ..job("a", None)
        })
        .collect();
    let first = publish(store, &jobs[..1], 1000).expect("publish");
    let ids = publish(store, &jobs, 1000).expect("publish");
    assert_eq!(ids.len(), 250);
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(*id, first[0] + 1 + n as i64);
        let record = store.record(*id).expect("read").expect("stored");
        assert_eq!(record.identifier, Some(format!("job-{n}")));
    }
}

pub(crate) fn higher_priority_is_claimed_first_but_never_ahead_of_its_group(store: &mut dyn Store) {
    let low = publish(store, &[job("a", None)], 1000).expect("publish")[0];
    let schedule = |priority| Schedule {
        priority,
        ..Schedule::default()
    };
    let publish = |store: &mut dyn Store, job: NewJob, priority| match store
        .publish_with(&[job], &schedule(priority), 1000)
        .expect("publish")
    {
        Published::Stored { ids, .. } => ids[0],
        other => panic!("{other:?}"),
    };
    let grouped_old = publish(store, job("a", Some("g")), 0);
    let grouped_urgent = publish(store, job("a", Some("g")), 9);
    let urgent = publish(store, job("a", None), 5);
    let run = store.begin_run("general", &me(), 1000, false).expect("run");
    let mut order = Vec::new();
    while let Some(job) = claim(store, "general", run, 1000, &["a"]).expect("claim") {
        order.push(job.id);
        finish(store, job.id, JobState::Finished, 1000);
        store
            .promote_due("general", Some(run), 1000)
            .expect("promote");
    }
    // The urgent grouped job waits for the older job of its group, then comes first.
    assert_eq!(order, [urgent, low, grouped_old, grouped_urgent]);
}

pub(crate) fn a_job_after_others_becomes_due_when_the_last_of_them_finishes(store: &mut dyn Store) {
    let parents = publish(store, &[job("a", None), job("a", None)], 1000).expect("publish");
    let after = Schedule {
        after: parents.clone(),
        ..Schedule::default()
    };
    let Published::Stored { ids, waiting_for } = store
        .publish_with(&[job("b", None)], &after, 1000)
        .expect("publish")
    else {
        panic!("not stored");
    };
    assert_eq!(waiting_for.len(), 2);
    let child = ids[0];
    let run = store.begin_run("general", &me(), 1000, false).expect("run");
    for _ in 0..2 {
        claim(store, "general", run, 1000, &["a"])
            .expect("claim")
            .expect("parent");
    }
    finish(store, parents[0], JobState::Finished, 1000);
    finish(store, parents[1], JobState::PermanentlyFailed, 1000);
    store
        .promote_due("general", Some(run), 1000)
        .expect("promote");
    assert!(
        claim(store, "general", run, 1000, &["b"])
            .expect("claim")
            .is_none()
    );
    let retry = Change::Retry {
        now: 2000,
        payload: None,
    };
    store
        .change(
            &Selection::Ids(&parents[1..]),
            &retry,
            false,
            &mut |_: &JobBrief| Ok(true),
        )
        .expect("retry");
    let run = store.begin_run("general", &me(), 2000, false).expect("run");
    store
        .promote_due("general", Some(run), 2000)
        .expect("promote");
    let again = claim(store, "general", run, 2000, &["a", "b"])
        .expect("claim")
        .expect("the retried parent");
    assert_eq!(again.id, parents[1]);
    assert!(
        claim(store, "general", run, 2000, &["b"])
            .expect("claim")
            .is_none()
    );
    finish(store, parents[1], JobState::Finished, 2000);
    store
        .promote_due("general", Some(run), 2000)
        .expect("promote");
    let claimed = claim(store, "general", run, 2000, &["b"])
        .expect("claim")
        .expect("due now");
    assert_eq!(claimed.id, child);
    let unknown = Schedule {
        after: vec![999],
        ..Schedule::default()
    };
    let err = store
        .publish_with(&[job("b", None)], &unknown, 1000)
        .expect_err("unknown parent");
    assert_eq!(crate::error::exit_code(&err), 2);
    assert!(
        err.to_string().starts_with("--after: no job 999 in "),
        "{err}"
    );
}

pub(crate) fn a_unique_job_is_stored_once_while_unfinished(store: &mut dyn Store) {
    let unique = Schedule {
        unique: true,
        ..Schedule::default()
    };
    let named = NewJob {
        identifier: Some("x".to_owned()),
        ..job("a", None)
    };
    let Published::Stored { ids, .. } = store
        .publish_with(std::slice::from_ref(&named), &unique, 1000)
        .expect("publish")
    else {
        panic!("not stored");
    };
    assert_eq!(
        store
            .publish_with(std::slice::from_ref(&named), &unique, 1000)
            .expect("publish"),
        Published::Existing {
            id: ids[0],
            state: JobState::Ready
        }
    );
    let other_queue = NewJob {
        queue: "other".to_owned(),
        ..named.clone()
    };
    assert!(matches!(
        store
            .publish_with(&[other_queue], &unique, 1000)
            .expect("publish"),
        Published::Stored { .. }
    ));
    let run = store.begin_run("general", &me(), 1000, false).expect("run");
    claim(store, "general", run, 1000, &["a"])
        .expect("claim")
        .expect("job");
    finish(store, ids[0], JobState::Finished, 1000);
    assert!(matches!(
        store
            .publish_with(&[named], &unique, 1000)
            .expect("publish"),
        Published::Stored { .. }
    ));
}

pub(crate) fn a_failed_job_holds_its_group_only_for_blocking_callbacks(store: &mut dyn Store) {
    let ids = publish(store, &[job("a", Some("g")), job("a", Some("g"))], 1000).expect("publish");
    let run = store.begin_run("general", &me(), 1000, false).expect("run");
    let first = claim(store, "general", run, 1000, &["a"])
        .expect("claim")
        .expect("job");
    finish(store, first.id, JobState::PermanentlyFailed, 1000);
    let request = ClaimRequest {
        queue: "general",
        run,
        now: 1000,
        limit: 1,
        callbacks: &[("a", usize::MAX)],
        limits: &[],
        blocking: &["a"],
    };
    let held = store
        .settle_and_claim(&[], &request, &mut Tally::default(), false)
        .expect("claim");
    assert!(held.claimed.is_empty());
    let facts = |blocking: &[&str]| {
        store
            .serial_group_facts("g", ids[1], blocking)
            .expect("read")
    };
    assert_eq!(facts(&["a"]).failed_blocking, Some(ids[0]));
    assert_eq!(group_hold(&facts(&[])), None);
    let next = claim(store, "general", run, 1000, &["a"])
        .expect("claim")
        .expect("skip goes on");
    assert_eq!(next.id, ids[1]);
}

pub(crate) fn a_job_cancelled_while_running_holds_its_group_until_its_callback_ends(
    store: &mut dyn Store,
) {
    let mut other_queue = job("a", Some("g"));
    other_queue.queue = "other".to_owned();
    let first = publish(store, &[job("a", Some("g"))], 1000).expect("publish")[0];
    let second = publish(store, &[other_queue], 1000).expect("publish")[0];
    let run = store.begin_run("general", &me(), 1000, false).expect("run");
    claim(store, "general", run, 1000, &["a"])
        .expect("claim")
        .expect("job");
    cancel(store, first, 2000);
    let record = store.record(first).expect("read").expect("kept");
    assert_eq!(record.state, JobState::Processing);
    assert!(marked(store, first));
    assert_eq!(
        store.cancels_requested("general", run).expect("read"),
        [first]
    );
    let other = store.begin_run("other", &me(), 2000, false).expect("run");
    assert!(
        claim(store, "other", other, 2000, &["a"])
            .expect("claim")
            .is_none(),
        "the group ran two jobs at once"
    );
    finish(store, first, JobState::PermanentlyFailed, 3000);
    let record = store.record(first).expect("read").expect("kept");
    assert_eq!(record.state, JobState::Cancelled, "not PERMANENTLY_FAILED");
    assert_eq!(record.state_changed_at, 3000);
    assert!(store.pending_notices("general").expect("read").is_empty());
    assert!(!marked(store, first));
    let next = claim(store, "other", other, 3000, &["a"])
        .expect("claim")
        .expect("the group goes on");
    assert_eq!(next.id, second);
}

pub(crate) fn a_cancelled_callback_that_exits_0_leaves_its_job_finished(store: &mut dyn Store) {
    let id = publish(store, &[job("a", None)], 1000).expect("publish")[0];
    let run = store.begin_run("general", &me(), 1000, false).expect("run");
    claim(store, "general", run, 1000, &["a"])
        .expect("claim")
        .expect("job");
    cancel(store, id, 2000);
    finish(store, id, JobState::Finished, 3000);
    assert_eq!(store.state_of(id).expect("read"), Some(JobState::Finished));
    assert!(!marked(store, id));
}

pub(crate) fn a_late_outcome_of_a_recovered_claim_changes_nothing(store: &mut dyn Store) {
    let id = publish(store, &[job("a", None)], 1000).expect("publish")[0];
    let old_run = store.begin_run("general", &me(), 1000, false).expect("run");
    let old = claim(store, "general", old_run, 1000, &["a"])
        .expect("claim")
        .expect("job");
    assert_eq!(
        old.fence,
        Fence {
            run: old_run,
            attempt: 1
        }
    );
    // The old run is taken for dead: recovery puts the job back, and a new run claims it.
    let orphan = store.orphans("general").expect("orphans").remove(0);
    assert_eq!(orphan.fence, old.fence);
    let recovered = ended(
        id,
        orphan.fence,
        JobState::TemporarilyFailed,
        2000,
        b"lost\n",
    );
    assert_eq!(
        store.complete(&recovered).expect("recover"),
        Applied::Stored
    );
    let new_run = store.begin_run("general", &me(), 2000, false).expect("run");
    let new = claim(store, "general", new_run, 2000, &["a"])
        .expect("claim")
        .expect("job");
    assert_eq!(new.fence.attempt, 2);

    // The old run's outcome and cancel arrive late: neither touches the job.
    let request = ClaimRequest {
        queue: "general",
        run: old_run,
        now: 3000,
        limit: 0,
        callbacks: &[],
        limits: &[],
        blocking: &[],
    };
    let late = ended(id, old.fence, JobState::Finished, 3000, b"late\n");
    let settled = store
        .settle_and_claim(
            std::slice::from_ref(&late),
            &request,
            &mut Tally::default(),
            true,
        )
        .expect("settle");
    assert_eq!(settled.stale, [(id, old.fence)]);
    assert_eq!(store.complete(&late).expect("complete"), Applied::Stale);
    cancel(store, id, 3000);
    assert!(
        !store
            .end_cancel(id, old.fence, b"late\n", 3000, 10)
            .expect("end")
    );
    let detail = store.detail(id).expect("read").expect("kept");
    assert_eq!(detail.record.state, JobState::Processing);
    assert_eq!(detail.claimed_run, new_run);
    assert_eq!(
        detail.output, b"lost\n",
        "the late run's output reached the job"
    );

    // The claim that holds it is heard.
    let done = ended(id, new.fence, JobState::Finished, 4000, b"done\n");
    assert_eq!(store.complete(&done).expect("complete"), Applied::Stored);
    assert_eq!(store.state_of(id).expect("read"), Some(JobState::Finished));
}

pub(crate) fn end_cancel_ends_only_a_running_job_marked_for_cancelling(store: &mut dyn Store) {
    let ids = publish(store, &[job("a", None), job("a", None)], 1000).expect("publish");
    let run = store.begin_run("general", &me(), 1000, false).expect("run");
    for _ in &ids {
        claim(store, "general", run, 1000, &["a"])
            .expect("claim")
            .expect("job");
    }
    cancel(store, ids[0], 2000);
    assert!(
        !store
            .end_cancel(ids[1], fence_of(store, ids[1]), b"", 2000, 10)
            .expect("end")
    );
    assert_eq!(
        store.state_of(ids[1]).expect("read"),
        Some(JobState::Processing)
    );
    assert!(
        store
            .end_cancel(ids[0], fence_of(store, ids[0]), b"stopped\n", 2000, 10)
            .expect("end")
    );
    let detail = store.detail(ids[0]).expect("read").expect("kept");
    assert_eq!(detail.record.state, JobState::Cancelled);
    assert_eq!(detail.output, b"stopped\n");
    let kept: Vec<(u32, i64, i64, AttemptOutcome, Vec<u8>)> = detail
        .runs
        .iter()
        .map(|r| {
            (
                r.attempt,
                r.started_at,
                r.ended_at,
                r.ended.outcome,
                r.output.clone(),
            )
        })
        .collect();
    assert_eq!(
        kept,
        [(
            1,
            1000,
            2000,
            AttemptOutcome::Cancelled,
            b"stopped\n".to_vec()
        )],
        "its history has the cancelled run"
    );
    assert!(
        !store
            .end_cancel(ids[0], fence_of(store, ids[0]), b"", 2000, 10)
            .expect("end"),
        "once"
    );
    assert_eq!(
        store
            .detail(ids[0])
            .expect("read")
            .expect("kept")
            .runs
            .len(),
        1
    );
    assert!(
        store
            .detail(ids[1])
            .expect("read")
            .expect("kept")
            .runs
            .is_empty()
    );
}

pub(crate) fn delayed_jobs_wait_outside_the_claim_path(store: &mut dyn Store) {
    let later = Schedule {
        run_at: 5000,
        ..Schedule::default()
    };
    store
        .publish_with(&[job("a", None)], &later, 1000)
        .expect("publish");
    let run = store.begin_run("general", &me(), 1000, true).expect("run");
    assert_eq!(
        store.promote_due("general", None, 4999).expect("promote"),
        0
    );
    assert!(
        claim(store, "general", run, 4999, &["a"])
            .expect("claim")
            .is_none()
    );
    assert_eq!(
        store.promote_due("general", None, 5000).expect("promote"),
        1
    );
    assert!(
        claim(store, "general", run, 5000, &["a"])
            .expect("claim")
            .is_some()
    );
    assert!(store.last_run("general").expect("read").expect("run").watch);
}

/// The jobs `orphans` reports are the PROCESSING ones of its queue, each with the claim that
/// holds it and who made it; a cancel requested meanwhile shows, and `end_cancel` under that
/// claim ends it (as recovery does when a run died before ending a cancelled job).
pub(crate) fn orphans_are_the_running_jobs_of_their_queue(store: &mut dyn Store) {
    let ids = publish(store, &[job("a", None), job("a", None)], 1000).expect("publish");
    let mut elsewhere = job("a", None);
    elsewhere.queue = "other".to_owned();
    publish(store, &[elsewhere], 1000).expect("publish");
    let run = store.begin_run("general", &me(), 1000, false).expect("run");
    let running = claim(store, "general", run, 1000, &["a"])
        .expect("claim")
        .expect("job");
    let other = store.begin_run("other", &me(), 1000, false).expect("run");
    claim(store, "other", other, 1000, &["a"])
        .expect("claim")
        .expect("job");

    let orphans = store.orphans("general").expect("orphans");
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    let orphan = &orphans[0];
    assert_eq!(orphan.id, ids[0]);
    assert_eq!(orphan.callback, "a");
    assert_eq!(orphan.attempts, 1);
    assert_eq!(orphan.claimed_by, Some(me()));
    assert!(!orphan.notified);
    assert!(!orphan.cancel_requested);
    assert_eq!(orphan.fence, running.fence);

    cancel(store, ids[0], 2000);
    let orphan = store.orphans("general").expect("orphans").remove(0);
    assert!(orphan.cancel_requested);
    assert!(
        store
            .end_cancel(ids[0], orphan.fence, b"gone\n", 3000, 10)
            .expect("end")
    );
    assert!(store.orphans("general").expect("orphans").is_empty());
    let detail = store.detail(ids[0]).expect("read").expect("kept");
    assert_eq!(detail.record.state, JobState::Cancelled);
    assert_eq!(detail.record.state_changed_at, 3000);
    assert_eq!(detail.output, b"gone\n");
    assert_eq!(store.state_of(ids[1]).expect("read"), Some(JobState::Ready));
}

/// A WAITING outcome gives its attempt back, and the job runs again in a later run.
pub(crate) fn a_waiting_job_does_not_count_the_attempt(store: &mut dyn Store) {
    let id = publish(store, &[job("a", None)], 1000).expect("publish")[0];
    let run = store.begin_run("general", &me(), 1000, false).expect("run");
    let claimed = claim(store, "general", run, 1000, &["a"])
        .expect("claim")
        .expect("job");
    let waiting = Completion {
        uncount_attempt: true,
        ..ended(id, claimed.fence, JobState::Waiting, 1000, b"")
    };
    assert_eq!(store.complete(&waiting).expect("complete"), Applied::Stored);
    let record = store.record(id).expect("read").expect("kept");
    assert_eq!((record.state, record.attempts), (JobState::Waiting, 0));
    assert_eq!(
        store
            .promote_due("general", Some(run), 2000)
            .expect("promote"),
        0
    );
    let next = store.begin_run("general", &me(), 2000, false).expect("run");
    assert_eq!(
        store
            .promote_due("general", Some(next), 2000)
            .expect("promote"),
        1
    );
    let again = claim(store, "general", next, 2000, &["a"])
        .expect("claim")
        .expect("job");
    assert_eq!(again.attempts, 1);
}

/// `retry` puts a failed job back as new: READY, attempts and notice reset, new parameters if
/// given, due for the next run but never again for the run that started it.
pub(crate) fn a_retried_job_runs_again_in_a_later_run_with_its_new_parameters(
    store: &mut dyn Store,
) {
    let id = publish(store, &[job("a", None)], 1000).expect("publish")[0];
    let run = store.begin_run("general", &me(), 1000, false).expect("run");
    let claimed = claim(store, "general", run, 1000, &["a"])
        .expect("claim")
        .expect("job");
    let failed = Completion {
        notified: true,
        ..ended(id, claimed.fence, JobState::PermanentlyFailed, 1000, b"")
    };
    store.complete(&failed).expect("complete");
    assert!(store.detail(id).expect("read").expect("kept").notified);

    let parameters = Payload::Json(serde_json::json!({"n": 2}));
    let retry = Change::Retry {
        now: 2000,
        payload: Some(parameters.to_msgpack().expect("encodes")),
    };
    let decided = store
        .change(
            &Selection::Ids(&[id]),
            &retry,
            false,
            &mut |_: &JobBrief| Ok(true),
        )
        .expect("retry");
    assert_eq!(decided.len(), 1);
    let (brief, applied) = &decided[0];
    assert!(*applied);
    assert_eq!(
        (brief.id, brief.state, brief.attempts, brief.claimed_run),
        (id, JobState::PermanentlyFailed, 1, run)
    );
    let detail = store.detail(id).expect("read").expect("kept");
    assert_eq!(detail.record.state, JobState::Ready);
    assert_eq!(detail.record.attempts, 0);
    assert_eq!(detail.record.state_changed_at, 2000);
    assert!(!detail.notified);

    assert_eq!(
        store
            .promote_due("general", Some(run), 2000)
            .expect("promote"),
        0,
        "one run starts a job at most once"
    );
    let next = store.begin_run("general", &me(), 2000, false).expect("run");
    assert_eq!(
        store
            .promote_due("general", Some(next), 2000)
            .expect("promote"),
        1
    );
    let again = claim(store, "general", next, 2000, &["a"])
        .expect("claim")
        .expect("job");
    assert_eq!(again.attempts, 1);
    assert_eq!(again.payload, Ok(parameters));
}

/// `change` reads the jobs of its selection oldest first and applies its change to those
/// `decide` accepts, all in one transaction: nothing on a dry run, nothing when `decide` refuses
/// one of them, and an unknown id is a usage error.
pub(crate) fn a_change_applies_to_the_jobs_decided_or_to_none(store: &mut dyn Store) {
    let mut elsewhere = job("a", None);
    elsewhere.queue = "other".to_owned();
    let ids = publish(
        store,
        &[job("a", None), job("b", None), elsewhere, job("a", None)],
        1000,
    )
    .expect("publish");
    let cancel = Change::Cancel { now: 2000 };
    let ready = [JobState::Ready];
    let selection = Selection::Matching {
        states: &ready,
        queue: Some("general"),
        callback: Some("a"),
        batch: None,
    };
    let selected = |decided: &[(JobBrief, bool)]| -> Vec<(i64, bool)> {
        decided
            .iter()
            .map(|(brief, apply)| (brief.id, *apply))
            .collect()
    };

    let dry = store
        .change(&selection, &cancel, true, &mut |_: &JobBrief| Ok(true))
        .expect("dry run");
    assert_eq!(selected(&dry), [(ids[0], true), (ids[3], true)]);
    let refused = store.change(&selection, &cancel, false, &mut |brief: &JobBrief| {
        if brief.id == ids[3] {
            anyhow::bail!("not this one")
        }
        Ok(true)
    });
    assert!(refused.is_err());
    let unknown = store
        .change(
            &Selection::Ids(&[ids[0], 999]),
            &cancel,
            false,
            &mut |_: &JobBrief| Ok(true),
        )
        .expect_err("no job 999");
    assert_eq!(crate::error::exit_code(&unknown), 2);
    for id in &ids {
        assert_eq!(store.state_of(*id).expect("read"), Some(JobState::Ready));
    }

    let done = store
        .change(&selection, &cancel, false, &mut |brief: &JobBrief| {
            Ok(brief.id == ids[0])
        })
        .expect("cancel");
    assert_eq!(selected(&done), [(ids[0], true), (ids[3], false)]);
    let record = store.record(ids[0]).expect("read").expect("kept");
    assert_eq!(
        (record.state, record.state_changed_at),
        (JobState::Cancelled, 2000)
    );
    let run = store.begin_run("general", &me(), 2000, false).expect("run");
    let claimed = claim(store, "general", run, 2000, &["a"])
        .expect("claim")
        .expect("job");
    assert_eq!(claimed.id, ids[3], "a cancelled job does not run");
}

/// `clear` deletes, batch by batch, the FINISHED jobs that finished before the cutoff and no
/// other; an id it deleted is never handed out again, and a job published `--after` one runs as
/// if after a FINISHED job.
pub(crate) fn clear_deletes_only_jobs_finished_before_the_cutoff(store: &mut dyn Store) {
    let ids = publish(
        store,
        &[
            job("b", None),
            job("a", None),
            job("a", None),
            job("a", None),
            job("a", None),
        ],
        1000,
    )
    .expect("publish");
    let run = store.begin_run("general", &me(), 1000, false).expect("run");
    for _ in 1..ids.len() {
        claim(store, "general", run, 1000, &["a"])
            .expect("claim")
            .expect("job");
    }
    finish(store, ids[1], JobState::Finished, 1000);
    finish(store, ids[2], JobState::PermanentlyFailed, 1000);
    finish(store, ids[3], JobState::Finished, 3000);
    finish(store, ids[4], JobState::Finished, 1500);

    let mut deleted = 0;
    let mut after = Some(0);
    for _ in 0..=ids.len() {
        let Some(from) = after else { break };
        let (count, next) = store
            .clear_batch(JobState::Finished, 2500, from, 1)
            .expect("clear");
        assert!(count <= 1, "a batch of one deleted {count}");
        assert!(
            next.is_none_or(|next| next > from),
            "clear went back from {from}"
        );
        deleted += count;
        after = next;
    }
    assert_eq!(after, None, "clear did not end");
    assert_eq!(deleted, 2);
    let kept: Vec<bool> = ids
        .iter()
        .map(|id| store.record(*id).expect("read").is_some())
        .collect();
    assert_eq!(kept, [true, false, true, true, false]);
    assert_eq!(store.state_of(ids[4]).expect("read"), None);

    let after_cleared = Schedule {
        after: vec![ids[1]],
        ..Schedule::default()
    };
    let Published::Stored {
        ids: child,
        waiting_for,
    } = store
        .publish_with(&[job("c", None)], &after_cleared, 4000)
        .expect("publish after a cleared job")
    else {
        panic!("not stored");
    };
    assert!(waiting_for.is_empty(), "{waiting_for:?}");
    assert!(child[0] > ids[4], "id {} handed out again", child[0]);
    let detail = store.detail(child[0]).expect("read").expect("stored");
    assert_eq!(detail.after, [(ids[1], None)]);
    assert_eq!(detail.waits_for().count(), 0);
    let claimed = claim(store, "general", run, 4000, &["c"])
        .expect("claim")
        .expect("due at once");
    assert_eq!(claimed.id, child[0]);
}

/// A notice is stored with the outcome that carries it, per queue, and kept until deleted; it
/// shows its job as it is now, or none once `clear` deleted it. An outcome that changes nothing
/// stores no notice.
pub(crate) fn notices_wait_with_their_outcome_until_deleted(store: &mut dyn Store) {
    let mut elsewhere = job("a", None);
    elsewhere.queue = "other".to_owned();
    let ids = publish(store, &[job("a", None), job("a", None)], 1000).expect("publish");
    publish(store, &[elsewhere], 1000).expect("publish");
    let run = store.begin_run("general", &me(), 1000, false).expect("run");
    let mut claimed = Vec::new();
    for _ in &ids {
        claimed.push(
            claim(store, "general", run, 1000, &["a"])
                .expect("claim")
                .expect("job"),
        );
    }
    let failed = Completion {
        notice: Some((NoticeKind::Failed, "exit status 1".to_owned())),
        ..ended(
            ids[0],
            claimed[0].fence,
            JobState::PermanentlyFailed,
            1000,
            b"out\n",
        )
    };
    assert_eq!(store.complete(&failed).expect("complete"), Applied::Stored);
    let recovered = Completion {
        notice: Some((NoticeKind::Recovered, "finished".to_owned())),
        ..ended(ids[1], claimed[1].fence, JobState::Finished, 1000, b"")
    };
    assert_eq!(
        store.complete(&recovered).expect("complete"),
        Applied::Stored
    );
    assert_eq!(
        store.complete(&failed).expect("complete again"),
        Applied::Stale
    );

    assert!(store.pending_notices("other").expect("read").is_empty());
    let notices = store.pending_notices("general").expect("read");
    assert_eq!(notices.len(), 2, "{notices:?}");
    let first = &notices[0];
    assert_eq!(first.job_id, ids[0]);
    assert_eq!(first.kind, NoticeKind::Failed);
    assert_eq!(first.reason, "exit status 1");
    assert_eq!(first.output, b"out\n");
    let job = first.job.as_ref().expect("the job is kept");
    assert_eq!((job.id, job.state), (ids[0], JobState::PermanentlyFailed));
    assert_eq!(
        (notices[1].job_id, notices[1].kind),
        (ids[1], NoticeKind::Recovered)
    );

    let (deleted, _) = store
        .clear_batch(JobState::Finished, 2000, 0, 100)
        .expect("clear");
    assert_eq!(deleted, 1);
    let notices = store.pending_notices("general").expect("read");
    assert_eq!(notices.len(), 2);
    assert!(notices[1].job.is_none(), "{:?}", notices[1].job);

    store.delete_notices(&[notices[0].id]).expect("delete");
    let left: Vec<i64> = store
        .pending_notices("general")
        .expect("read")
        .iter()
        .map(|notice| notice.job_id)
        .collect();
    assert_eq!(left, [ids[1]]);
}

/// A `process` run is recorded from its start to its end, and the latest run of each queue is
/// found.
pub(crate) fn runs_are_recorded_from_start_to_end(store: &mut dyn Store) {
    let first = store.begin_run("general", &me(), 1000, false).expect("run");
    let watching = store.begin_run("other", &me(), 1500, true).expect("run");
    let last = store.begin_run("general", &me(), 2000, false).expect("run");
    assert!(first != watching && watching != last && first != last);

    let started = store.run(first).expect("read").expect("recorded");
    assert_eq!(started.id, first);
    assert_eq!(started.queue, "general");
    assert_eq!(started.runner, me());
    assert_eq!(started.started_at, 1000);
    assert_eq!(started.finished_at, None);
    assert_eq!((started.jobs, started.failed), (0, 0));
    assert_eq!(started.error, None);
    assert!(!started.watch);
    assert!(store.run(watching).expect("read").expect("recorded").watch);

    store.end_run(first, 1800, 5, 2, Some("boom")).expect("end");
    let ended = store.run(first).expect("read").expect("recorded");
    assert_eq!(ended.finished_at, Some(1800));
    assert_eq!((ended.jobs, ended.failed), (5, 2));
    assert_eq!(ended.error.as_deref(), Some("boom"));

    assert_eq!(
        store.last_run("general").expect("read").map(|run| run.id),
        Some(last)
    );
    assert!(store.last_run("none").expect("read").is_none());
    let mut latest: Vec<(String, i64)> = store
        .last_runs()
        .expect("read")
        .into_iter()
        .map(|run| (run.queue, run.id))
        .collect();
    latest.sort();
    assert_eq!(
        latest,
        [("general".to_owned(), last), ("other".to_owned(), watching)]
    );
}

/// How runs of jobs ended is counted per queue for `stats`: `settle_and_claim` keeps the counts
/// in its tally until written, `complete` writes its own at once, and an outcome that changes
/// nothing is not counted.
pub(crate) fn outcomes_are_counted_once_written(store: &mut dyn Store) {
    let ids = publish(
        store,
        &[job("a", None), job("a", None), job("a", None)],
        1000,
    )
    .expect("publish");
    let run = store.begin_run("general", &me(), 1000, false).expect("run");
    let request = ClaimRequest {
        queue: "general",
        run,
        now: 1000,
        limit: 3,
        callbacks: &[("a", usize::MAX)],
        limits: &[],
        blocking: &[],
    };
    let mut tally = Tally::default();
    let claimed = store
        .settle_and_claim(&[], &request, &mut tally, false)
        .expect("claim")
        .claimed;
    assert_eq!(claimed.len(), 3);
    let done = [
        ended(ids[0], claimed[0].fence, JobState::Finished, 1000, b""),
        ended(
            ids[1],
            claimed[1].fence,
            JobState::TemporarilyFailed,
            1000,
            b"",
        ),
    ];
    let nothing = ClaimRequest {
        limit: 0,
        ..request.clone()
    };
    let settled = store
        .settle_and_claim(&done, &nothing, &mut tally, false)
        .expect("settle");
    assert_eq!(settled.failed, 1);
    assert!(settled.stale.is_empty());
    assert!(store.outcomes_since(0).expect("read").is_empty());
    assert!(!tally.is_empty());
    store.write_tally(&mut tally).expect("write");
    assert!(tally.is_empty());
    assert_eq!(
        store.outcomes_since(0).expect("read"),
        [("general".to_owned(), [1, 1, 0])]
    );

    let failed = ended(
        ids[2],
        claimed[2].fence,
        JobState::PermanentlyFailed,
        1000,
        b"",
    );
    assert_eq!(store.complete(&failed).expect("complete"), Applied::Stored);
    assert_eq!(store.complete(&done[0]).expect("again"), Applied::Stale);
    assert_eq!(
        store.outcomes_since(0).expect("read"),
        [("general".to_owned(), [1, 1, 1])]
    );
    assert!(store.outcomes_since(120_000).expect("read").is_empty());
}

/// What the read commands count: jobs per queue and state, the due jobs, the callbacks a config
/// does not know, the unfinished identifiers; `list` newest first, by filter, within its limit.
pub(crate) fn the_read_side_sees_what_is_stored(store: &mut dyn Store) {
    let named = |callback: &str, queue: &str, identifier: Option<&str>| NewJob {
        queue: queue.to_owned(),
        identifier: identifier.map(str::to_owned),
        ..job(callback, None)
    };
    let mut ids = publish(
        store,
        &[
            named("a", "general", Some("x")),
            named("b", "general", Some("y")),
            named("a", "other", Some("x")),
        ],
        1000,
    )
    .expect("publish");
    ids.extend(publish(store, &[named("c", "general", None)], 1100).expect("publish"));
    let run = store.begin_run("general", &me(), 1000, false).expect("run");
    claim(store, "general", run, 1000, &["a"])
        .expect("claim")
        .expect("job");
    finish(store, ids[0], JobState::Finished, 1000);
    let later = Schedule {
        run_at: 9000,
        ..Schedule::default()
    };
    store
        .publish_with(&[named("a", "general", None)], &later, 1000)
        .expect("publish");

    let mut counts: Vec<(String, &str, u64)> = store
        .state_counts()
        .expect("count")
        .into_iter()
        .map(|(queue, state, count)| (queue, state.as_str(), count))
        .collect();
    counts.sort();
    let count = |queue: &str, state: JobState, count| (queue.to_owned(), state.as_str(), count);
    assert_eq!(
        counts,
        [
            count("general", JobState::Finished, 1),
            count("general", JobState::Ready, 3),
            count("other", JobState::Ready, 1),
        ]
    );

    let mut due: Vec<(String, i64, Millis, u64)> = store
        .due_jobs(2000)
        .expect("due")
        .into_iter()
        .map(|due| (due.queue, due.oldest, due.since, due.count))
        .collect();
    due.sort();
    assert_eq!(
        due,
        [
            ("general".to_owned(), ids[1], 1000, 2),
            ("other".to_owned(), ids[2], 1000, 1),
        ]
    );
    let mut unknown = store.waiting_callbacks_not_in(&["a"]).expect("read");
    unknown.sort();
    assert_eq!(
        unknown,
        [
            ("general".to_owned(), "b".to_owned(), 1),
            ("general".to_owned(), "c".to_owned(), 1),
        ]
    );
    let mut due_unknown = store
        .due_callbacks_not_in("general", &["a", "c"])
        .expect("read");
    due_unknown.sort();
    assert_eq!(due_unknown, [("b".to_owned(), 1)]);

    let mut identifiers = store
        .unfinished_identifiers(&ListFilter::default())
        .expect("read");
    identifiers.sort();
    assert_eq!(identifiers, ["x", "y"]);
    let general = ListFilter {
        queue: Some("general".to_owned()),
        ..ListFilter::default()
    };
    assert_eq!(store.unfinished_identifiers(&general).expect("read"), ["y"]);

    let listed = |store: &dyn Store, filter: &ListFilter, limit| -> Vec<i64> {
        store
            .list(filter, limit)
            .expect("list")
            .iter()
            .map(|record| record.id)
            .collect()
    };
    let delayed = ids[3] + 1;
    assert_eq!(
        listed(store, &general, 10),
        [delayed, ids[3], ids[1], ids[0]]
    );
    assert_eq!(listed(store, &general, 2), [delayed, ids[3]]);
    let finished = ListFilter {
        states: vec![JobState::Finished],
        ..general.clone()
    };
    assert_eq!(listed(store, &finished, 10), [ids[0]]);
    let by_identifier = ListFilter {
        identifiers: vec!["x".to_owned()],
        ..ListFilter::default()
    };
    assert_eq!(listed(store, &by_identifier, 10), [ids[2], ids[0]]);
    let by_callback = ListFilter {
        callback: Some("a".to_owned()),
        ..ListFilter::default()
    };
    assert_eq!(listed(store, &by_callback, 10), [delayed, ids[2], ids[0]]);
    assert_eq!(store.count(&by_callback).expect("count"), 3);
    assert_eq!(store.count(&general).expect("count"), 4);
    assert_eq!(store.count(&finished).expect("count"), 1);
    assert_eq!(store.count(&ListFilter::default()).expect("count"), 5);

    assert!(store.record(999).expect("read").is_none());
    assert!(store.state_of(999).expect("read").is_none());
    assert!(store.detail(999).expect("read").is_none());
}

/// `shift_schedule` moves the due times of waiting jobs earlier, as a clock that jumped does.
pub(crate) fn a_shifted_schedule_makes_delayed_jobs_due_sooner(store: &mut dyn Store) {
    let later = Schedule {
        run_at: 10_000,
        ..Schedule::default()
    };
    let Published::Stored { ids, .. } = store
        .publish_with(&[job("a", None)], &later, 1000)
        .expect("publish")
    else {
        panic!("not stored");
    };
    assert!(store.due_jobs(1000).expect("due").is_empty());
    assert_eq!(store.shift_schedule("other", 9000).expect("shift"), 0);
    assert_eq!(store.shift_schedule("general", 9000).expect("shift"), 1);
    assert_eq!(
        store.record(ids[0]).expect("read").expect("kept").run_at,
        1000
    );
    assert_eq!(
        store.promote_due("general", None, 1000).expect("promote"),
        1
    );
    let run = store.begin_run("general", &me(), 1000, true).expect("run");
    let claimed = claim(store, "general", run, 1000, &["a"])
        .expect("claim")
        .expect("due now");
    assert_eq!(claimed.id, ids[0]);
}

/// A small deterministic random source for the agreement test (splitmix64).
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

/// The job the group rule says a claim must take now: among due, unblocked jobs, those that
/// `group_hold` lets start, the highest priority first, then the oldest.
/// The job the group rule says a claim from `queue` must take at `now`, once due jobs were
/// promoted: among its unblocked jobs whose time has come, those that `group_hold` lets start,
/// the highest priority first, then the oldest.
fn expected_claim(store: &dyn Store, queue: &str, blocking: &[&str], now: Millis) -> Option<i64> {
    let filter = ListFilter {
        states: vec![
            JobState::Ready,
            JobState::TemporarilyFailed,
            JobState::Waiting,
        ],
        queue: Some(queue.to_owned()),
        ..ListFilter::default()
    };
    let mut due: Vec<_> = store
        .list(&filter, 1_000_000)
        .expect("list")
        .into_iter()
        .filter(|job| job.blocked_by == 0 && job.run_at <= now)
        .collect();
    due.sort_by_key(|job| (std::cmp::Reverse(job.priority), job.id));
    due.into_iter()
        .find(|job| {
            job.serial_group.as_deref().is_none_or(|group| {
                let facts = store
                    .serial_group_facts(group, job.id, blocking)
                    .expect("facts");
                group_hold(&facts).is_none()
            })
        })
        .map(|job| job.id)
}

/// On random queues (groups, priorities, failures that block and that do not, retries of
/// older jobs while younger ones run), every claim takes exactly the job the group rule of
/// `queue::eligibility` names, which `explain` reports: the two cannot drift apart.
///
/// Each seed has its queue and groups of its own in the one store.
pub(crate) fn claims_agree_with_the_group_rule(store: &mut dyn Store) {
    let blocking = ["a"];
    let capacity = [("a", usize::MAX), ("b", usize::MAX)];
    for seed in 0..40 {
        let queue = format!("q{seed}");
        let queue = queue.as_str();
        let groups = [0, 1, 2].map(|n| format!("s{seed}-g{n}"));
        let mut dice = Dice(seed);
        let jobs: Vec<NewJob> = (0..10)
            .map(|_| {
                let callback = if dice.below(2) == 0 { "a" } else { "b" };
                let group = groups.get(dice.below(4) as usize).map(String::as_str);
                NewJob {
                    queue: queue.to_owned(),
                    ..job(callback, group)
                }
            })
            .collect();
        for new in &jobs {
            let schedule = Schedule {
                priority: i64::try_from(dice.below(2)).expect("small"),
                ..Schedule::default()
            };
            store
                .publish_with(std::slice::from_ref(new), &schedule, 1000)
                .expect("publish");
        }
        let run = store.begin_run(queue, &me(), 1000, false).expect("run");
        let mut running: Vec<ClaimedJob> = Vec::new();
        for step in 0..60 {
            match dice.below(4) {
                0 | 1 => {
                    // As a watching run does: what a retry made due joins the claim path.
                    store.promote_due(queue, None, 2000).expect("promote");
                    let expected = expected_claim(&*store, queue, &blocking, 2000);
                    let request = ClaimRequest {
                        queue,
                        run,
                        now: 2000,
                        limit: 1,
                        callbacks: &capacity,
                        limits: &[],
                        blocking: &blocking,
                    };
                    let claimed = store
                        .settle_and_claim(&[], &request, &mut Tally::default(), false)
                        .expect("claim")
                        .claimed
                        .pop();
                    assert_eq!(
                        claimed.as_ref().map(|job| job.id),
                        expected,
                        "seed {seed}, step {step}"
                    );
                    running.extend(claimed);
                }
                2 if !running.is_empty() => {
                    let job = running.remove(dice.below(running.len() as u64) as usize);
                    let state = [
                        JobState::Finished,
                        JobState::PermanentlyFailed,
                        JobState::TemporarilyFailed,
                    ][dice.below(3) as usize];
                    store
                        .complete(&ended(job.id, job.fence, state, 2000, b""))
                        .expect("complete");
                }
                _ => {
                    let failed: Vec<i64> = store
                        .list(
                            &ListFilter {
                                states: vec![JobState::PermanentlyFailed],
                                queue: Some(queue.to_owned()),
                                ..ListFilter::default()
                            },
                            100,
                        )
                        .expect("list")
                        .iter()
                        .map(|record| record.id)
                        .collect();
                    if let Some(id) = failed.get(dice.below(failed.len().max(1) as u64) as usize) {
                        store
                            .change(
                                &Selection::Ids(&[*id]),
                                &Change::Retry {
                                    now: 2000,
                                    payload: None,
                                },
                                false,
                                &mut |_: &JobBrief| Ok(true),
                            )
                            .expect("retry");
                    }
                }
            }
        }
    }
}

pub(crate) fn paused_jobs_are_not_claimed_until_resumed(store: &mut dyn Store) {
    let ids = publish(store, &[job("a", None), job("b", None)], 1000).expect("publish");
    let run = store.begin_run("general", &me(), 1000, false).expect("run");
    assert!(store.pause(None, Some("a"), 1000).expect("pause"));
    assert!(
        !store.pause(None, Some("a"), 1001).expect("pause"),
        "already paused"
    );
    let claimed = claim(store, "general", run, 1000, &["a", "b"]).expect("claim");
    assert_eq!(claimed.map(|job| job.id), Some(ids[1]), "b is not paused");
    assert!(
        claim(store, "general", run, 1000, &["a", "b"])
            .expect("claim")
            .is_none()
    );
    assert_eq!(
        store.record(ids[0]).expect("read").expect("kept").attempts,
        0,
        "a paused job spends no attempt"
    );
    // Every queue, every callback.
    assert!(store.pause(None, None, 1002).expect("pause"));
    assert_eq!(
        store.resume(None, Some("a")).expect("resume"),
        [Pause {
            queue: None,
            callback: Some("a".to_owned()),
            since: 1000
        }]
    );
    assert!(
        claim(store, "general", run, 1000, &["a"])
            .expect("claim")
            .is_none()
    );
    // A queue's pause holds that queue only.
    assert_eq!(store.resume(None, None).expect("resume").len(), 1);
    assert!(store.pause(Some("other"), None, 1003).expect("pause"));
    assert!(
        super::paused(&store.pauses().expect("pauses"), "other", "a").is_some()
            && super::paused(&store.pauses().expect("pauses"), "general", "a").is_none()
    );
    let claimed = claim(store, "general", run, 1000, &["a"]).expect("claim");
    assert_eq!(claimed.map(|job| job.id), Some(ids[0]));
    assert!(
        store
            .resume(Some("general"), None)
            .expect("resume")
            .is_empty()
    );
}

pub(crate) fn a_job_cleared_unfinished_keeps_its_dependents_waiting(store: &mut dyn Store) {
    let parents = publish(store, &[job("a", None), job("a", None)], 1000).expect("publish");
    let waits_for = |store: &mut dyn Store, after: Vec<i64>| match store
        .publish_with(
            &[job("a", None)],
            &Schedule {
                after,
                ..Schedule::default()
            },
            1000,
        )
        .expect("publish")
    {
        Published::Stored { ids, waiting_for } => (ids[0], waiting_for),
        Published::Existing { .. } => panic!("not unique"),
    };
    let (child, _) = waits_for(store, parents.clone());
    let run = store.begin_run("general", &me(), 1000, false).expect("run");
    claim(store, "general", run, 1000, &["a"]).expect("claim");
    finish(store, parents[0], JobState::PermanentlyFailed, 1100);
    let (count, _) = store
        .clear_batch(JobState::PermanentlyFailed, 2000, 0, 100)
        .expect("clear");
    assert_eq!(count, 1);
    assert!(store.record(parents[0]).expect("read").is_none());
    assert_eq!(
        store.after(child).expect("after"),
        [
            (parents[0], Some(JobState::PermanentlyFailed)),
            (parents[1], Some(JobState::Ready))
        ]
    );
    // The other parent finishing recounts: the cleared one still counts as unfinished.
    claim(store, "general", run, 1200, &["a"]).expect("claim");
    finish(store, parents[1], JobState::Finished, 1300);
    store.promote_due("general", None, 1400).expect("promote");
    assert!(
        claim(store, "general", run, 1400, &["a"])
            .expect("claim")
            .is_none(),
        "the child of a cleared failed job was freed"
    );
    // Published after the clear, a job waits for it as for the failed job.
    let (_, waiting_for) = waits_for(store, vec![parents[0]]);
    assert_eq!(waiting_for, [(parents[0], JobState::PermanentlyFailed)]);
    let stuck = store.stuck_after().expect("stuck");
    assert_eq!(
        stuck
            .first()
            .map(|job| (job.id, job.parent, job.parent_gone)),
        Some((child, parents[0], true))
    );
    assert_eq!(
        store
            .dependents_of(&[parents[0]])
            .expect("dependents")
            .len(),
        2
    );
}

pub(crate) fn runs_are_totalled_per_callback_and_outcome(store: &mut dyn Store) {
    let ids = publish(
        store,
        &[job("a", None), job("a", None), job("b", None)],
        1000,
    )
    .expect("publish");
    let run = store.begin_run("general", &me(), 1000, false).expect("run");
    let first = claim(store, "general", run, 1000, &["a", "b"])
        .expect("claim")
        .expect("job");
    // Through settle_and_claim, the drain's path, with no tally written.
    let callbacks = [("a", usize::MAX), ("b", usize::MAX)];
    let request = ClaimRequest {
        queue: "general",
        run,
        now: 1100,
        limit: 2,
        callbacks: &callbacks,
        limits: &[],
        blocking: &[],
    };
    let settled = store
        .settle_and_claim(
            &[ended(first.id, first.fence, JobState::Finished, 1100, b"")],
            &request,
            &mut Tally::default(),
            false,
        )
        .expect("settle");
    assert_eq!(settled.claimed.len(), 2);
    finish(store, ids[1], JobState::Finished, 1200);
    finish(store, ids[2], JobState::PermanentlyFailed, 1200);
    let totals = |store: &dyn Store| store.run_totals().expect("totals");
    let expected = vec![
        (
            "general".to_owned(),
            "a".to_owned(),
            "finished".to_owned(),
            2,
        ),
        (
            "general".to_owned(),
            "b".to_owned(),
            "permanently_failed".to_owned(),
            1,
        ),
    ];
    assert_eq!(totals(store), expected);
    store
        .clear_batch(JobState::Finished, i64::MAX, 0, 100)
        .expect("clear");
    store
        .clear_batch(JobState::PermanentlyFailed, i64::MAX, 0, 100)
        .expect("clear");
    assert_eq!(totals(store), expected, "clear never decrements");
}

pub(crate) fn each_stored_run_adds_to_a_bounded_history_oldest_first(store: &mut dyn Store) {
    let ids = publish(store, &[job("a", None)], 1000).expect("publish");
    let mut runs = Vec::new();
    for turn in 0..4i64 {
        let at = 2000 + turn * 1000;
        let run = store.begin_run("general", &me(), at, true).expect("run");
        runs.push(run);
        store.promote_due("general", None, at).expect("promote");
        let claimed = claim(store, "general", run, at, &["a"])
            .expect("claim")
            .expect("job");
        let mut done = ended(
            ids[0],
            claimed.fence,
            JobState::TemporarilyFailed,
            at,
            format!("turn {turn}").as_bytes(),
        );
        done.ended_at = at + 250;
        done.history = 3;
        assert_eq!(store.complete(&done).expect("complete"), Applied::Stored);
    }
    let detail = store.detail(ids[0]).expect("read").expect("kept");
    let kept: Vec<(u32, i64, i64, i64, Vec<u8>)> = detail
        .runs
        .iter()
        .map(|run| {
            (
                run.attempt,
                run.run,
                run.started_at,
                run.ended_at,
                run.output.clone(),
            )
        })
        .collect();
    assert_eq!(
        kept,
        vec![
            (2, runs[1], 3000, 3250, b"turn 1".to_vec()),
            (3, runs[2], 4000, 4250, b"turn 2".to_vec()),
            (4, runs[3], 5000, 5250, b"turn 3".to_vec()),
        ],
        "the newest three, oldest first"
    );
    assert!(
        detail
            .runs
            .iter()
            .all(|run| run.ended == end_of(JobState::TemporarilyFailed))
    );
    // A retry keeps the history; history = 0 adds nothing.
    store
        .change(
            &Selection::Ids(&ids),
            &Change::Retry {
                now: 6000,
                payload: None,
            },
            false,
            &mut |_: &JobBrief| Ok(true),
        )
        .expect("retry");
    assert_eq!(
        store
            .detail(ids[0])
            .expect("read")
            .expect("kept")
            .runs
            .len(),
        3
    );
    let run = store.begin_run("general", &me(), 7000, true).expect("run");
    store.promote_due("general", None, 7000).expect("promote");
    let claimed = claim(store, "general", run, 7000, &["a"])
        .expect("claim")
        .expect("job");
    let mut done = ended(ids[0], claimed.fence, JobState::Finished, 7100, b"");
    done.ended = end_of(JobState::Finished);
    done.history = 0;
    store.complete(&done).expect("complete");
    assert_eq!(
        store
            .detail(ids[0])
            .expect("read")
            .expect("kept")
            .runs
            .len(),
        3
    );
}

pub(crate) fn a_cancelled_run_is_kept_as_cancelled_and_a_stale_one_not_at_all(
    store: &mut dyn Store,
) {
    let ids = publish(store, &[job("a", None)], 1000).expect("publish");
    let run = store.begin_run("general", &me(), 1000, false).expect("run");
    let claimed = claim(store, "general", run, 1000, &["a"])
        .expect("claim")
        .expect("job");
    cancel(store, ids[0], 1100);
    // The callback was stopped and died of SIGTERM: the decision said PERMANENTLY_FAILED, the
    // mark makes it CANCELLED, and so does its history.
    let mut done = ended(
        ids[0],
        claimed.fence,
        JobState::PermanentlyFailed,
        1200,
        b"bye",
    );
    done.ended = AttemptEnd {
        outcome: AttemptOutcome::PermanentlyFailed,
        exit_code: None,
        signal: Some(15),
    };
    assert_eq!(store.complete(&done).expect("complete"), Applied::Cancelled);
    // A late word under the same fence: stale, no row.
    assert_eq!(store.complete(&done).expect("complete"), Applied::Stale);
    let detail = store.detail(ids[0]).expect("read").expect("kept");
    assert_eq!(detail.record.state, JobState::Cancelled);
    assert_eq!(detail.runs.len(), 1);
    assert_eq!(
        detail.runs[0].ended,
        AttemptEnd {
            outcome: AttemptOutcome::Cancelled,
            exit_code: None,
            signal: Some(15),
        }
    );
    assert_eq!(detail.runs[0].started_at, 1000);
}

pub(crate) fn a_job_whose_callback_cannot_start_is_put_back_as_it_was(store: &mut dyn Store) {
    let ids = publish(store, &[job("a", None), job("b", None)], 1000).expect("publish");
    let run = store.begin_run("general", &me(), 1000, false).expect("run");
    // A first run that failed: TEMPORARILY_FAILED since 1500, due again at 2000.
    let first = claim(store, "general", run, 1000, &["a"])
        .expect("claim")
        .expect("job");
    let mut failed = ended(
        ids[0],
        first.fence,
        JobState::TemporarilyFailed,
        2000,
        b"once",
    );
    failed.ended_at = 1500;
    store.complete(&failed).expect("complete");
    let before = store.detail(ids[0]).expect("read").expect("kept");
    let later = store.begin_run("general", &me(), 3000, false).expect("run");
    let claimed = claim(store, "general", later, 3000, &["a"])
        .expect("claim")
        .expect("job");
    assert_eq!((claimed.id, claimed.attempts), (ids[0], 2));
    assert!(
        store
            .unclaim(ids[0], claimed.fence, "cannot start `x`: gone", 3001)
            .expect("unclaim")
    );
    let after = store.detail(ids[0]).expect("read").expect("kept");
    assert_eq!(after.record.state, JobState::TemporarilyFailed);
    assert_eq!(after.record.attempts, 1, "no attempt spent");
    assert_eq!(after.record.started_at, before.record.started_at);
    assert_eq!(
        after.record.state_changed_at,
        before.record.state_changed_at
    );
    assert_eq!(after.record.run_at, before.record.run_at);
    assert_eq!(after.runs.len(), 1, "no attempt recorded");
    let broken = store.broken_callbacks().expect("broken");
    assert_eq!(broken.len(), 1);
    assert_eq!(
        (
            broken[0].queue.as_str(),
            broken[0].callback.as_str(),
            broken[0].since,
            broken[0].run
        ),
        ("general", "a", 3001, later)
    );
    assert_eq!(broken[0].reason, "cannot start `x`: gone");
    // A fence that no longer holds the job changes nothing.
    assert!(
        !store
            .unclaim(ids[0], claimed.fence, "again", 3002)
            .expect("unclaim")
    );
    // Due at once, for any run: claimed again with the same attempt number.
    let again = store.begin_run("general", &me(), 4000, false).expect("run");
    let retried = claim(store, "general", again, 4000, &["a"])
        .expect("claim")
        .expect("job");
    assert_eq!((retried.id, retried.attempts), (ids[0], 2));
    assert!(
        store
            .unclaim(ids[0], retried.fence, "still gone", 4001)
            .expect("unclaim")
    );
    let broken = store.broken_callbacks().expect("broken");
    assert_eq!(
        (
            broken.len(),
            broken[0].since,
            broken[0].run,
            broken[0].reason.as_str()
        ),
        (1, 3001, again, "still gone"),
        "an older mark keeps its since"
    );
    // A job never run before goes back READY, with no start time.
    let fresh = claim(store, "general", again, 4100, &["b"])
        .expect("claim")
        .expect("job");
    assert!(
        store
            .unclaim(ids[1], fresh.fence, "no b", 4101)
            .expect("unclaim")
    );
    let b = store.detail(ids[1]).expect("read").expect("kept");
    assert_eq!(
        (b.record.state, b.record.attempts, b.record.started_at),
        (JobState::Ready, 0, None)
    );
    assert_eq!(b.record.state_changed_at, 1000);
    store.callback_started("general", "a").expect("started");
    let broken = store.broken_callbacks().expect("broken");
    assert_eq!(
        broken
            .iter()
            .map(|b| b.callback.as_str())
            .collect::<Vec<_>>(),
        ["b"]
    );
}

pub(crate) fn a_put_back_job_marked_for_cancelling_becomes_cancelled(store: &mut dyn Store) {
    let ids = publish(store, &[job("a", None)], 1000).expect("publish");
    let run = store.begin_run("general", &me(), 1000, false).expect("run");
    let claimed = claim(store, "general", run, 1000, &["a"])
        .expect("claim")
        .expect("job");
    cancel(store, ids[0], 1100);
    assert!(
        store
            .unclaim(ids[0], claimed.fence, "cannot start", 1200)
            .expect("unclaim")
    );
    let detail = store.detail(ids[0]).expect("read").expect("kept");
    assert_eq!(
        (
            detail.record.state,
            detail.record.attempts,
            detail.cancel_requested
        ),
        (JobState::Cancelled, 0, false)
    );
    assert!(
        claim(store, "general", run, 1300, &["a"])
            .expect("claim")
            .is_none()
    );
}

/// A batch's counters follow every move of its jobs into and out of a final state (an outcome,
/// a cancel, a retry, the end of a `cancel --kill`); it never completes before its seal; once
/// sealed only a running job of it adds to it; its completion is published with the last
/// outcome, once, with the summary of SPEC section 11, and a retry after it reopens nothing.
pub(crate) fn a_batch_counts_every_move_of_its_jobs_and_completes_once(store: &mut dyn Store) {
    use crate::store::{BatchTarget, NewBatch, Sealed};
    let batch = store
        .new_batch(
            &NewBatch {
                queue: "general".to_owned(),
                description: Some("d".to_owned()),
                on_complete: Some(("done".to_owned(), Some(r#"{"k":1}"#.to_owned()))),
                on_success: Some(("ok".to_owned(), None)),
            },
            1000,
        )
        .expect("new batch");
    let into = |publisher| Schedule {
        batch: Some(BatchTarget {
            id: batch,
            publisher,
        }),
        ..Schedule::default()
    };
    let add = |store: &mut dyn Store, publisher: Option<i64>| {
        store.publish_with(&[job("a", None)], &into(publisher), 1000)
    };
    let ids: Vec<i64> = (0..4)
        .map(|_| match add(store, None).expect("publish") {
            Published::Stored { ids, .. } => ids[0],
            other => panic!("{other:?}"),
        })
        .collect();
    let counts = |store: &dyn Store| {
        let info = store.batch(batch).expect("read").expect("kept");
        (info.unfinished, info.finished, info.failed, info.cancelled)
    };
    assert_eq!(counts(store), (4, 0, 0, 0));
    let run = store.begin_run("general", &me(), 1000, false).expect("run");
    let first = claim(store, "general", run, 1000, &["a"])
        .expect("claim")
        .expect("job");
    assert_eq!((first.id, first.batch), (ids[0], Some(batch)));
    assert_eq!(counts(store), (4, 0, 0, 0), "a claim moves nothing");
    finish(store, ids[0], JobState::Finished, 1100);
    cancel(store, ids[1], 1200);
    assert_eq!(counts(store), (2, 1, 0, 1));
    claim(store, "general", run, 1300, &["a"])
        .expect("claim")
        .expect("job 3");
    finish(store, ids[2], JobState::PermanentlyFailed, 1300);
    assert_eq!(counts(store), (1, 1, 1, 1));
    let retry = Change::Retry {
        now: 1400,
        payload: None,
    };
    store
        .change(
            &Selection::Ids(&[ids[2]]),
            &retry,
            false,
            &mut |_: &JobBrief| Ok(true),
        )
        .expect("retry");
    assert_eq!(counts(store), (2, 1, 0, 1));
    cancel(store, ids[2], 1450);
    claim(store, "general", run, 1500, &["a"])
        .expect("claim")
        .expect("job 4");
    cancel(store, ids[3], 1500);
    assert!(
        store
            .end_cancel(ids[3], fence_of(store, ids[3]), b"", 1600, 10)
            .expect("end cancel")
    );
    assert_eq!(counts(store), (0, 1, 0, 3));
    let info = store.batch(batch).expect("read").expect("kept");
    assert_eq!(info.completed_at, None, "not sealed: not complete");

    let fifth = match add(store, None).expect("still open") {
        Published::Stored { ids, .. } => ids[0],
        other => panic!("{other:?}"),
    };
    assert_eq!(
        store.seal_batch(batch, 1700).expect("seal"),
        Sealed::Now { complete: false }
    );
    assert_eq!(
        store.seal_batch(batch, 1700).expect("seal"),
        Sealed::Already
    );
    for publisher in [None, Some(fifth), Some(ids[0])] {
        let refused = add(store, publisher).expect_err("sealed");
        assert!(
            refused
                .chain()
                .any(|cause| cause.is::<crate::error::UsageError>())
        );
    }
    let next = store.begin_run("general", &me(), 1800, false).expect("run");
    claim(store, "general", next, 1800, &["a"])
        .expect("claim")
        .expect("job 5");
    let sixth = match add(store, Some(fifth)).expect("from a running job") {
        Published::Stored { ids, .. } => ids[0],
        other => panic!("{other:?}"),
    };
    finish(store, fifth, JobState::Finished, 1900);
    assert_eq!(
        store
            .batch(batch)
            .expect("read")
            .expect("kept")
            .completed_at,
        None
    );
    claim(store, "general", next, 2000, &["a"])
        .expect("claim")
        .expect("job 6");
    finish(store, sixth, JobState::Finished, 2000);
    let info = store.batch(batch).expect("read").expect("kept");
    assert_eq!((info.completed_at, info.success_job), (Some(2000), None));
    let completion = info.complete_job.expect("published with the last outcome");
    let claimed = claim(store, "general", next, 2100, &["done"])
        .expect("claim")
        .expect("the completion");
    assert_eq!(claimed.id, completion);
    assert_eq!(
        store
            .batch_completed_by(completion)
            .expect("read")
            .map(|b| b.id),
        Some(batch)
    );
    let Ok(Payload::Json(summary)) = claimed.payload else {
        panic!("{:?}", claimed.payload);
    };
    assert_eq!(
        summary,
        serde_json::json!({
            "batch": batch, "description": "d",
            "counts": {"FINISHED": 3, "PERMANENTLY_FAILED": 0, "CANCELLED": 3},
            "unfinished_ids": [ids[1], ids[2], ids[3]], "params": {"k": 1},
        })
    );
    // Retried after completion: counted again, and its end publishes nothing more.
    store
        .change(
            &Selection::Ids(&[ids[1]]),
            &retry,
            false,
            &mut |_: &JobBrief| Ok(true),
        )
        .expect("retry");
    let last = store.begin_run("general", &me(), 2200, false).expect("run");
    store
        .promote_due("general", Some(last), 2200)
        .expect("promote");
    claim(store, "general", last, 2200, &["a"])
        .expect("claim")
        .expect("job 2");
    finish(store, ids[1], JobState::Finished, 2300);
    let info = store.batch(batch).expect("read").expect("kept");
    assert_eq!(
        (info.unfinished, info.finished, info.complete_job),
        (0, 4, Some(completion))
    );
    let done = store
        .count(&ListFilter {
            callback: Some("done".to_owned()),
            ..ListFilter::default()
        })
        .expect("count");
    assert_eq!(done, 1, "completed once");
}

/// The counts `stats` reads are kept in the same transaction as every change of a job: publish,
/// claim, each outcome, recovery, retry, cancel (of a waiting job, and of a running one when its
/// callback ends), a callback that cannot start, and clear, in two queues.
pub(crate) fn kept_counts_follow_every_change_of_state(store: &mut dyn Store) {
    let mut other = job("b", None);
    other.queue = "other".to_owned();
    let ids = publish(
        store,
        &[
            job("a", None),
            job("a", None),
            job("a", None),
            job("a", None),
            job("b", None),
            other,
        ],
        1000,
    )
    .expect("publish");
    assert_counts_agree(store);
    let run = store.begin_run("general", &me(), 1000, false).expect("run");
    let mut fences = Vec::new();
    for _ in 0..4 {
        let claimed = claim(store, "general", run, 1000, &["a"])
            .expect("claim")
            .expect("job");
        fences.push(claimed.fence);
        assert_counts_agree(store);
    }
    for (id, state) in [
        (ids[0], JobState::Finished),
        (ids[1], JobState::TemporarilyFailed),
        (ids[2], JobState::Waiting),
    ] {
        finish(store, id, state, 1500);
        assert_counts_agree(store);
    }
    // A late outcome changes nothing, and counts nothing.
    store
        .complete(&ended(
            ids[0],
            fences[0],
            JobState::PermanentlyFailed,
            1600,
            b"",
        ))
        .expect("late outcome");
    assert_counts_agree(store);
    // Recovery of the fourth, then a callback that cannot start, then a permanent failure.
    let orphan = store.orphans("general").expect("orphans").remove(0);
    store
        .complete(&ended(
            ids[3],
            orphan.fence,
            JobState::TemporarilyFailed,
            2000,
            b"",
        ))
        .expect("recover");
    assert_counts_agree(store);
    let later = store.begin_run("general", &me(), 3000, false).expect("run");
    store.promote_due("general", None, 3000).expect("promote");
    let claimed = claim(store, "general", later, 3000, &["a"])
        .expect("claim")
        .expect("job");
    assert_counts_agree(store);
    assert!(
        store
            .unclaim(claimed.id, claimed.fence, "cannot start", 3001)
            .expect("unclaim")
    );
    assert_counts_agree(store);
    let claimed = claim(store, "general", later, 3002, &["a"])
        .expect("claim")
        .expect("job");
    finish(store, claimed.id, JobState::PermanentlyFailed, 3100);
    assert_counts_agree(store);
    // Retry of a failed job, cancel of a waiting one and of a running one.
    store
        .change(
            &Selection::Ids(&[claimed.id]),
            &Change::Retry {
                now: 3200,
                payload: None,
            },
            false,
            &mut |_: &JobBrief| Ok(true),
        )
        .expect("retry");
    assert_counts_agree(store);
    cancel(store, ids[4], 3300);
    assert_counts_agree(store);
    let running = claim(store, "general", later, 3400, &["a"])
        .expect("claim")
        .expect("job");
    cancel(store, running.id, 3500);
    assert_counts_agree(store);
    assert!(
        store
            .end_cancel(running.id, running.fence, b"", 3600, 10)
            .expect("end cancel")
    );
    assert_counts_agree(store);
    // Clear of every state it deletes.
    for state in [
        JobState::Finished,
        JobState::Cancelled,
        JobState::PermanentlyFailed,
    ] {
        store.clear_batch(state, 10_000, 0, 100).expect("clear");
        assert_counts_agree(store);
    }
    let counts = store.state_counts().expect("counts");
    assert!(
        counts
            .iter()
            .all(|(_, state, _)| !matches!(state, JobState::Finished | JobState::Cancelled)),
        "{counts:?}"
    );
}
