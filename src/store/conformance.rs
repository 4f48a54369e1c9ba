//! The store's behaviour suite: what every backend must do, written once against the
//! [`Store`] trait and its contract (claim order, priorities, serial groups, `--after`,
//! `--unique`, delays, retry, cancel, fencing of late outcomes, ...). Each behaviour is a plain
//! function of `&mut dyn Store`: no SQL, no connection, no backend type.
//!
//! A backend runs the whole suite by invoking, once, in its `#[cfg(test)]` module:
//!
//! ```ignore
//! crate::store::conformance::conformance_suite!(open);
//! ```
//!
//! where `open()` returns `(guard, store)`: a fresh, empty store of the backend's type and
//! whatever keeps it alive (a temp dir, a throwaway database), dropped after the store. That
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
use crate::queue::eligibility::group_hold;
use crate::store::{
    Applied, Change, ClaimRequest, ClaimedJob, Completion, Fence, JobBrief, Published, Schedule,
    Selection, Store, Tally,
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

/// Runs `behaviour` on a fresh store from `open`, then drops the store before its guard.
pub(crate) fn run<G, S: Store>(open: impl FnOnce() -> (G, S), behaviour: fn(&mut dyn Store)) {
    let (guard, mut store) = open();
    behaviour(&mut store);
    drop(store);
    drop(guard);
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
        })
        .expect("complete");
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
            .end_cancel(id, old.fence, b"late\n", 3000)
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
            .end_cancel(ids[1], fence_of(store, ids[1]), b"", 2000)
            .expect("end")
    );
    assert_eq!(
        store.state_of(ids[1]).expect("read"),
        Some(JobState::Processing)
    );
    assert!(
        store
            .end_cancel(ids[0], fence_of(store, ids[0]), b"stopped\n", 2000)
            .expect("end")
    );
    let detail = store.detail(ids[0]).expect("read").expect("kept");
    assert_eq!(detail.record.state, JobState::Cancelled);
    assert_eq!(detail.output, b"stopped\n");
    assert!(
        !store
            .end_cancel(ids[0], fence_of(store, ids[0]), b"", 2000)
            .expect("end"),
        "once"
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
