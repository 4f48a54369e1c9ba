//! PostgreSQL's races between hosts, made to happen: commits that the single writer of SQLite
//! would have put one after the other, here held at the same point by a third connection and
//! then let go together.
//!
//! Needs the test server (`store::postgres::tests`).

use std::time::Duration;

use super::tests::ThrowawaySchema;
use super::*;
use crate::store::conformance::{claim, ended, job, me, publish};
use crate::store::{ClaimedJob, Schedule};

/// Two stores (two hosts) on one fresh schema, and where a third finds it; `None` without a
/// server.
fn two_hosts(
    name: &str,
) -> Option<(
    PostgresStore,
    PostgresStore,
    PostgresTarget,
    ThrowawaySchema,
)> {
    let schema = ThrowawaySchema::new(&format!("races_{name}"))?;
    let first = PostgresStore::open(&schema.target("one"), Durability::Relaxed).expect("open");
    let second = PostgresStore::open(&schema.target("two"), Durability::Relaxed).expect("open");
    Some((first, second, schema.target("three"), schema))
}

/// Waits, up to 20 s, until `waiters` sessions of the database wait for a lock (one that `hold`
/// holds); panics with `never` after that.
fn wait_for_lock_waiters(hold: &mut postgres::Transaction<'_>, waiters: i64, never: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 = hold
            .query_typed_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE wait_event_type = 'Lock' AND datname = current_database()",
                &[],
            )
            .expect("look at the waiters")
            .get(0);
        if waiting >= waiters {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{never}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn two_parents_finishing_at_once_on_two_hosts_both_count() {
    let Some((mut one, mut two, target, _schema)) = two_hosts("parents") else {
        return;
    };
    let parents = publish(&mut one, &[job("a", None), job("a", None)], 1000).expect("parents");
    let schedule = Schedule {
        after: parents.clone(),
        ..Schedule::default()
    };
    let Published::Stored { ids, .. } = one
        .publish_with(&[job("a", None)], &schedule, 1000)
        .expect("child")
    else {
        panic!("stored");
    };
    let child = ids[0];
    let run_one = one.begin_run("general", &me(), 1000, false).expect("run");
    let run_two = two.begin_run("general", &me(), 1000, false).expect("run");
    let first = claim(&mut one, "general", run_one, 1000, &["a"])
        .expect("claim")
        .expect("a job");
    let second = claim(&mut two, "general", run_two, 1000, &["a"])
        .expect("claim")
        .expect("a job");
    // A third connection holds the child, so that both outcomes reach it before either commits.
    let mut holder = connect(&target.conninfo, Purpose::Command).expect("connect");
    let mut hold = holder.transaction().expect("begin");
    hold.query_typed(
        &in_schema(
            &target.schema,
            "SELECT id FROM @.jobs WHERE id = $1 FOR UPDATE",
        ),
        &[(&child, Type::INT8)],
    )
    .expect("hold the child");
    let finish = |mut store: PostgresStore, claimed: ClaimedJob| {
        std::thread::spawn(move || {
            store
                .complete(&ended(
                    claimed.id,
                    claimed.fence,
                    JobState::Finished,
                    2000,
                    b"",
                ))
                .expect("complete");
        })
    };
    let threads = [finish(one, first), finish(two, second)];
    // Let go once both outcomes wait for the child's lock.
    wait_for_lock_waiters(&mut hold, 2, "the outcomes never reached the child");
    hold.commit().expect("let go");
    for thread in threads {
        thread.join().expect("a completion");
    }
    let mut reader = PostgresStore::open(&target, Durability::Relaxed).expect("open");
    let detail = reader.detail(child).expect("read").expect("kept");
    assert_eq!(
        detail.record.blocked_by, 0,
        "the child still waits for a parent that FINISHED"
    );
    let run = reader
        .begin_run("general", &me(), 3000, false)
        .expect("run");
    reader.promote_due("general", None, 3000).expect("promote");
    let claimed = claim(&mut reader, "general", run, 3000, &["a"]).expect("claim");
    assert_eq!(claimed.map(|job| job.id), Some(child));
}

/// A run ending a `cancel --kill`ed job of a batch while a command (`cancel --batch`, `retry
/// --batch`) holds the batch and then asks for the job: both take the batch before the job, so
/// the run waits and neither deadlocks.
#[test]
fn ending_a_killed_job_of_a_batch_waits_for_a_command_on_its_batch() {
    let Some((mut one, _two, target, _schema)) = two_hosts("end_cancel") else {
        return;
    };
    let batch = one
        .new_batch(&crate::store::NewBatch::default(), 1000)
        .expect("a batch");
    let schedule = Schedule {
        batch: Some(crate::store::BatchTarget {
            id: batch,
            publisher: None,
        }),
        ..Schedule::default()
    };
    one.publish_with(&[job("a", None)], &schedule, 1000)
        .expect("a job of the batch");
    let run = one.begin_run("general", &me(), 1000, false).expect("run");
    let running = claim(&mut one, "general", run, 1000, &["a"])
        .expect("claim")
        .expect("the job");
    crate::store::conformance::cancel(&mut one, running.id, 1500);
    // The command: the batch first, as select_briefs takes it.
    let mut holder = connect(&target.conninfo, Purpose::Command).expect("connect");
    let mut hold = holder.transaction().expect("begin");
    hold.query_typed(
        &in_schema(
            &target.schema,
            "SELECT id FROM @.batches WHERE id = $1 FOR UPDATE",
        ),
        &[(&batch, Type::INT8)],
    )
    .expect("hold the batch");
    let (id, fence) = (running.id, running.fence);
    let ender = std::thread::spawn(move || {
        one.end_cancel(id, fence, b"", 2000, 10)
            .expect("end cancel")
    });
    wait_for_lock_waiters(&mut hold, 1, "the end of the run never reached the batch");
    // Then the job, as the command's selection does: free, since the run waits on the batch.
    hold.query_typed(
        &in_schema(
            &target.schema,
            "SELECT id FROM @.jobs WHERE id = $1 FOR UPDATE",
        ),
        &[(&id, Type::INT8)],
    )
    .expect("the job, with no deadlock");
    hold.commit().expect("let go");
    assert!(
        ender.join().expect("the run's end"),
        "the job ended CANCELLED"
    );
    let reader = PostgresStore::open(&target, Durability::Relaxed).expect("open");
    let info = reader.batch(batch).expect("read").expect("kept");
    assert_eq!((info.unfinished, info.cancelled), (0, 1));
}
