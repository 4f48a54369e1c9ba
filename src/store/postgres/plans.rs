//! PostgreSQL's query plans: on a queue of 200,000 jobs, the claim and every listing query
//! read an index, never the whole jobs table (`EXPLAIN`). The claim's query is read from the
//! `claim()` function the schema installed, so the text checked is the text that runs.
//!
//! Needs the test server (`store::postgres::tests`).

use super::tests::ThrowawaySchema;
use super::*;
use crate::job::Payload;
use crate::store::{ListFilter, Schedule};

/// A store on a fresh schema holding 200,000 jobs: most FINISHED, some due, some delayed,
/// some in serial groups; `None` without a server.
fn big_queue(name: &str) -> Option<(PostgresStore, ThrowawaySchema)> {
    let schema = ThrowawaySchema::new(&format!("plans_{name}"))?;
    let mut store =
        PostgresStore::open(&schema.target("plans"), Durability::Relaxed).expect("open");
    let payload = Payload::Json(serde_json::json!({}))
        .to_msgpack()
        .expect("payload");
    let jobs: Vec<NewJob> = (0..200_000)
        .map(|n| NewJob {
            queue: format!("q{}", n % 4),
            callback: format!("cb{}", n % 7),
            payload: payload.clone(),
            serial_group: (n % 10 == 0).then(|| format!("g{}", n % 500)),
            identifier: (n % 3 == 0).then(|| format!("id{n}")),
        })
        .collect();
    store
        .publish_with(&jobs, &Schedule::default(), 1000)
        .expect("publish");
    store
        .reader()
        .batch_execute(&in_schema(
            &schema.name,
            "UPDATE @.jobs SET state = 'FINISHED', due = false, finished_at = 2000 WHERE id % 50 <> 0;
             UPDATE @.jobs SET due = false, run_at = 9000000000000 WHERE id % 100 = 25;
             ANALYZE @.jobs",
        ))
        .expect("shape the queue");
    Some((store, schema))
}

/// The plan of `sql` with `params`, as text.
fn plan(store: &PostgresStore, sql: &str, params: &[Param<'_>]) -> String {
    let rows = store
        .reader()
        .query_typed(&format!("EXPLAIN {sql}"), params)
        .unwrap_or_else(|err| panic!("EXPLAIN {sql}: {err}"));
    rows.iter()
        .map(|row| row.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Asserts that `plan` reads jobs through an index only.
fn uses_an_index(what: &str, plan: &str) {
    assert!(
        !plan.contains("Seq Scan on jobs"),
        "{what} scans the whole table:\n{plan}"
    );
    assert!(plan.contains("Index"), "{what} reads no index:\n{plan}");
}

#[test]
fn the_claim_reads_the_ready_index() {
    let Some((store, schema)) = big_queue("claim") else {
        return;
    };
    let function: String = store
        .reader()
        .query_typed_one(
            &in_schema(
                &schema.name,
                "SELECT pg_get_functiondef('@.claim'::regproc)",
            ),
            &[],
        )
        .expect("claim()")
        .get(0);
    // The candidate query as the function runs it, its variables made parameters.
    let start = function
        .find("SELECT j.id, j.callback, j.serial_group INTO")
        .expect("the candidate query");
    let end = start + function[start..].find("SKIP LOCKED").expect("its end") + "SKIP LOCKED".len();
    let query = function[start..end]
        .replace("INTO v_id, v_callback, v_group ", "")
        .replace("p_queue", "$1")
        .replace("v_allowed", "$2::text[]")
        .replace("v_skipped", "$3::bigint[]")
        .replace("p_blocking", "$4::text[]")
        .replace("jobs ", &format!("{}.jobs ", schema.name))
        .replace(
            "group_lock_space()",
            &format!("{}.group_lock_space()", schema.name),
        );
    let callbacks = vec!["cb1", "cb2", "cb3"];
    let none: Vec<i64> = Vec::new();
    let blocking = vec!["cb2"];
    let plan = plan(
        &store,
        &query,
        &[
            (&"q1", Type::TEXT),
            (&callbacks, Type::TEXT_ARRAY),
            (&none, Type::INT8_ARRAY),
            (&blocking, Type::TEXT_ARRAY),
        ],
    );
    uses_an_index("the claim", &plan);
    assert!(
        plan.contains("jobs_ready"),
        "the claim does not read jobs_ready:\n{plan}"
    );
}

#[test]
fn listing_and_recovery_queries_read_indexes() {
    let Some((store, schema)) = big_queue("lists") else {
        return;
    };
    for filter in [
        ListFilter::default(),
        ListFilter {
            states: vec![JobState::Ready],
            ..ListFilter::default()
        },
        ListFilter {
            queue: Some("q1".to_owned()),
            ..ListFilter::default()
        },
        ListFilter {
            callback: Some("cb3".to_owned()),
            states: vec![JobState::Ready, JobState::Finished],
            ..ListFilter::default()
        },
        ListFilter {
            identifiers: vec!["id3".to_owned(), "id6".to_owned()],
            ..ListFilter::default()
        },
    ] {
        let (sql, conditions) = list_sql(&schema.name, &filter, 50);
        uses_an_index(
            &format!("list {filter:?}"),
            &plan(&store, &sql, &conditions.params()),
        );
    }
    let queue = "q1";
    let run = 7_i64;
    let now = 5000_i64;
    for (what, sql, params) in [
        (
            "orphans",
            "SELECT id FROM @.jobs WHERE queue = $1 AND state = 'PROCESSING' ORDER BY id",
            vec![(&queue as &(dyn ToSql + Sync), Type::TEXT)],
        ),
        (
            "promotion",
            "UPDATE @.jobs SET due = true
             WHERE queue = $1 AND NOT due AND blocked_by = 0
               AND state IN ('READY', 'TEMPORARILY_FAILED', 'WAITING')
               AND run_at <= $3 AND claimed_run < $2",
            vec![(&queue, Type::TEXT), (&run, Type::INT8), (&now, Type::INT8)],
        ),
        (
            "cancel marks",
            "SELECT id FROM @.jobs
             WHERE queue = $1 AND state = 'PROCESSING' AND claimed_run = $2 AND cancel_requested",
            vec![(&queue, Type::TEXT), (&run, Type::INT8)],
        ),
        (
            "clear",
            "SELECT id FROM @.jobs WHERE state = 'FINISHED' AND id > $1 ORDER BY id LIMIT 1 OFFSET 999",
            vec![(&run, Type::INT8)],
        ),
    ] {
        uses_an_index(what, &plan(&store, &in_schema(&schema.name, sql), &params));
    }
}

/// What `stats` and `status` read beside the kept counts: the due jobs and the jobs waiting
/// for a parent that will never finish, each through an index.
#[test]
fn read_commands_read_indexes() {
    let Some((store, schema)) = big_queue("reads") else {
        return;
    };
    let now = 5000_i64;
    // The query of due_jobs() as the function runs it, its parameter made a parameter.
    let function: String = store
        .reader()
        .query_typed_one(
            &in_schema(
                &schema.name,
                "SELECT pg_get_functiondef('@.due_jobs'::regproc)",
            ),
            &[],
        )
        .expect("due_jobs()")
        .get(0);
    let start = function.find("SELECT DISTINCT ON").expect("the due query");
    let end = start + function[start..].find("$function$").expect("its end");
    let query = function[start..end].replace("p_now", "$1");
    store
        .reader()
        .batch_execute(&format!("SET search_path = {}", schema.name))
        .expect("search_path");
    let due = plan(&store, &query, &[(&now, Type::INT8)]);
    uses_an_index("due jobs", &due);
    assert!(due.contains("jobs_schedule"), "{due}");
    let stuck = plan(&store, &in_schema(&schema.name, STUCK_AFTER_SQL), &[]);
    uses_an_index("stuck jobs", &stuck);
    assert!(stuck.contains("jobs_blocked"), "{stuck}");
}

/// The recount of a finished parent's dependents, as settle() runs it, its variables made
/// parameters.
fn recount_query(store: &PostgresStore, schema: &str) -> String {
    let function: String = store
        .reader()
        .query_typed_one(
            &in_schema(schema, "SELECT pg_get_functiondef('@.settle'::regproc)"),
            &[],
        )
        .expect("settle()")
        .get(0);
    let start = function.find("WITH counted AS").expect("the recount");
    let end = start
        + function[start..]
            .find("WHERE r.unfinished = 0")
            .expect("its end")
        + "WHERE r.unfinished = 0".len();
    function[start..end]
        .replace("INTO v_freed ", "")
        .replace("p_ids[v_index]", "$1")
        .replace("p_ended_at[v_index]", "$2")
        .replace("FROM dependencies", &format!("FROM {schema}.dependencies"))
        .replace("JOIN jobs", &format!("JOIN {schema}.jobs"))
        .replace("UPDATE jobs", &format!("UPDATE {schema}.jobs"))
        .replace(
            "FROM cleared_unfinished",
            &format!("FROM {schema}.cleared_unfinished"),
        )
}

#[test]
fn the_recount_of_dependents_reads_indexes_on_a_small_queue() {
    // The shape that once made the planner scan jobs for every finished job: a few thousand
    // jobs, none published --after, so dependencies is empty and never analyzed.
    let Some(schema) = ThrowawaySchema::new("plans_recount") else {
        return;
    };
    let mut store =
        PostgresStore::open(&schema.target("plans"), Durability::Relaxed).expect("open");
    let payload = Payload::Json(serde_json::json!({}))
        .to_msgpack()
        .expect("payload");
    let jobs: Vec<NewJob> = (0..5_000)
        .map(|n| NewJob {
            queue: "q".to_owned(),
            callback: format!("cb{}", n % 3),
            payload: payload.clone(),
            serial_group: None,
            identifier: None,
        })
        .collect();
    store
        .publish_with(&jobs, &Schedule::default(), 1000)
        .expect("publish");
    store
        .reader()
        .batch_execute(&in_schema(
            &schema.name,
            "UPDATE @.jobs SET state = 'FINISHED', due = false WHERE id % 2 = 0;
             UPDATE @.jobs SET blocked_by = 1 WHERE id % 7 = 0; ANALYZE @.jobs",
        ))
        .expect("shape the queue");
    let sql = recount_query(&store, &schema.name);
    let parent = 42_i64;
    let now = 5000_i64;
    let plan = plan(&store, &sql, &[(&parent, Type::INT8), (&now, Type::INT8)]);
    uses_an_index("the recount", &plan);
}
