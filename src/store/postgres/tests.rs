//! PostgreSQL's test server and throwaway schemas, and the conformance suite run against it.
//!
//! The server comes from `BGQ_TEST_POSTGRES` (a URL; `tests/run.sh` starts one and sets it).
//! Without it these tests say so and pass, except under `CI=true`, where they fail: CI must
//! never pass without having run them.

use super::*;

/// The test server's URL, or `None` (with a note) when none was given outside CI.
pub(super) fn test_server() -> Option<String> {
    match std::env::var("BGQ_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "BGQ_TEST_POSTGRES must name a PostgreSQL server in CI (tests/run.sh starts one)"
            );
            println!("skipped: BGQ_TEST_POSTGRES names no PostgreSQL server");
            None
        }
    }
}

/// A schema of the test server that no other test uses, empty when made and dropped on drop.
pub(super) struct ThrowawaySchema {
    url: String,
    pub(super) name: String,
}

impl ThrowawaySchema {
    /// A schema named after `what` and this process; `None` without a server.
    pub(super) fn new(what: &str) -> Option<ThrowawaySchema> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let url = test_server()?;
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let schema = ThrowawaySchema {
            url,
            name: format!("u_{what}_{}_{n}", std::process::id()),
        };
        // One left by an earlier run whose process had the same id.
        schema.drop_schema();
        Some(schema)
    }

    /// Where a store of `host` finds this schema.
    pub(super) fn target(&self, host: &str) -> PostgresTarget {
        PostgresTarget {
            conninfo: self.url.clone(),
            schema: self.name.clone(),
            host_id: host.to_owned(),
        }
    }

    fn drop_schema(&self) {
        let dropped = connect(&self.url, Purpose::Command).and_then(|mut client| {
            client
                .batch_execute(&format!(
                    "SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS {} CASCADE",
                    self.name
                ))
                .map_err(anyhow::Error::from)
        });
        if let Err(err) = dropped {
            eprintln!(
                "note: schema {} left on the test server: {err:#}",
                self.name
            );
        }
    }
}

impl Drop for ThrowawaySchema {
    fn drop(&mut self) {
        self.drop_schema();
    }
}

/// A fresh, empty store on a schema of its own; `None` without a server.
fn store() -> Option<(ThrowawaySchema, PostgresStore)> {
    let schema = ThrowawaySchema::new("conformance")?;
    let store = PostgresStore::open(&schema.target("conformance"), Durability::Relaxed)
        .expect("open a store on the test server");
    Some((schema, store))
}

crate::store::conformance::conformance_suite!(store);

#[test]
fn a_schema_with_older_functions_gets_the_new_ones_in_place() {
    let Some(schema) = ThrowawaySchema::new("functions") else {
        return;
    };
    let target = schema.target("functions");
    let store = PostgresStore::open(&target, Durability::Relaxed).expect("open");
    // As the first PostgreSQL release left it: no settle functions, no revision in meta.
    store
        .reader()
        .batch_execute(&in_schema(
            &schema.name,
            "DROP FUNCTION @.settle_and_claim; DROP FUNCTION @.settle;
             DELETE FROM @.meta WHERE key = 'functions'",
        ))
        .expect("make the schema old");
    drop(store);
    let mut store = PostgresStore::open(&target, Durability::Relaxed).expect("open the old one");
    let revision: String = store
        .reader()
        .query_typed_one(
            &in_schema(
                &schema.name,
                "SELECT value FROM @.meta WHERE key = 'functions'",
            ),
            &[],
        )
        .expect("the revision")
        .get(0);
    assert_eq!(revision, FUNCTIONS_REVISION.to_string());
    // And the new functions work: a job published, claimed and finished through them.
    use crate::store::conformance::{claim, ended, job, me, publish};
    let ids = publish(&mut store, &[job("cb", None)], 1000).expect("publish");
    let run = store
        .begin_run("general", &me(), 1000, false)
        .expect("begin a run");
    let claimed = claim(&mut store, "general", run, 1000, &["cb"])
        .expect("claim")
        .expect("the job");
    let applied = store
        .complete(&ended(
            claimed.id,
            claimed.fence,
            JobState::Finished,
            2000,
            b"",
        ))
        .expect("complete");
    assert_eq!(applied, Applied::Stored);
    let id = ids[0];
    assert_eq!(store.state_of(id).expect("state"), Some(JobState::Finished));
}

#[test]
fn a_schema_with_newer_functions_is_used_as_it_is() {
    let Some(schema) = ThrowawaySchema::new("functions_newer") else {
        return;
    };
    let target = schema.target("functions");
    let store = PostgresStore::open(&target, Durability::Relaxed).expect("open");
    store
        .reader()
        .batch_execute(&in_schema(
            &schema.name,
            "UPDATE @.meta SET value = '99' WHERE key = 'functions'",
        ))
        .expect("make the functions newer");
    drop(store);
    PostgresStore::open(&target, Durability::Relaxed).expect("an older bgq keeps working");
    let store = PostgresStore::open(&target, Durability::Relaxed).expect("open");
    let revision: String = store
        .reader()
        .query_typed_one(
            &in_schema(
                &schema.name,
                "SELECT value FROM @.meta WHERE key = 'functions'",
            ),
            &[],
        )
        .expect("the revision")
        .get(0);
    assert_eq!(
        revision, "99",
        "an older bgq must not replace newer functions"
    );
}

#[test]
fn a_version_4_schema_is_upgraded_in_place_keeping_its_jobs() {
    let Some(schema) = ThrowawaySchema::new("upgrade_v4") else {
        return;
    };
    let target = schema.target("upgrade");
    {
        // The schema of version 4 as the first PostgreSQL release made it, with a job.
        let mut client = connect(&target.conninfo, Purpose::Command).expect("connect");
        let mut tx = client.transaction().expect("begin");
        tx.batch_execute(&format!(
            "CREATE SCHEMA {name}; SET LOCAL search_path = {name};",
            name = schema.name
        ))
        .expect("schema");
        tx.batch_execute(include_str!(
            "../../../tests/fixtures/postgres/schema-v4.sql"
        ))
        .expect("the version 4 schema");
        tx.batch_execute(
            "INSERT INTO jobs (queue, callback, params_json, created_at, run_at)
             VALUES ('general', 'cb', '{}', 1000, 1000)",
        )
        .expect("a job");
        tx.commit().expect("commit");
    }
    let mut store = PostgresStore::open(&target, Durability::Relaxed).expect("upgrade");
    let version = store.version().expect("version").expect("a bgq schema");
    assert_eq!(
        (version.version, version.functions),
        (SCHEMA_VERSION, FUNCTIONS_REVISION)
    );
    use crate::store::conformance::{claim, me};
    let run = store
        .begin_run("general", &me(), 2000, false)
        .expect("begin a run");
    let claimed = claim(&mut store, "general", run, 2000, &["cb"])
        .expect("claim")
        .expect("the old job");
    assert_eq!(claimed.attempts, 1);
    let tables: i64 = store
        .reader()
        .query_typed_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = $1
               AND tablename IN ('attempts', 'pauses', 'run_totals', 'broken_callbacks')",
            &[(&schema.name, Type::TEXT)],
        )
        .expect("count tables")
        .get(0);
    assert_eq!(tables, 4);
}

/// An upgrade from the frozen version 5 schema (through batches, version 6, to the kept
/// counts, version 7) keeps its jobs, fills the kept counts from them, and the triggers keep
/// them from then on; the old jobs join no batch, and a batch works at once.
#[test]
fn a_version_5_schema_is_upgraded_in_place_keeping_and_counting_its_jobs() {
    let Some(schema) = ThrowawaySchema::new("upgrade_v5") else {
        return;
    };
    let target = schema.target("upgrade");
    {
        // The schema of version 5 (its functions are replaced by the upgrade), with jobs.
        let mut client = connect(&target.conninfo, Purpose::Command).expect("connect");
        let mut tx = client.transaction().expect("begin");
        tx.batch_execute(&format!(
            "CREATE SCHEMA {name}; SET LOCAL search_path = {name};",
            name = schema.name
        ))
        .expect("schema");
        tx.batch_execute(include_str!(
            "../../../tests/fixtures/postgres/schema-v5.sql"
        ))
        .expect("the version 5 schema");
        tx.batch_execute(
            "INSERT INTO meta (key, value) VALUES ('functions', '3');
             INSERT INTO jobs (queue, callback, params_json, created_at, run_at, state)
             VALUES ('general', 'cb', '{}', 1000, 1000, 'FINISHED'),
                    ('general', 'cb', '{}', 1000, 1000, 'READY'),
                    ('other', 'b', '{}', 1000, 1000, 'READY')",
        )
        .expect("jobs");
        tx.commit().expect("commit");
    }
    let mut store = PostgresStore::open(&target, Durability::Relaxed).expect("upgrade");
    let version = store.version().expect("version").expect("a bgq schema");
    assert_eq!(
        (version.version, version.functions),
        (SCHEMA_VERSION, FUNCTIONS_REVISION)
    );
    crate::store::conformance::assert_upgraded_counts(&store);
    use crate::store::conformance::{assert_counts_agree, claim, me};
    let run = store
        .begin_run("general", &me(), 2000, false)
        .expect("begin a run");
    let claimed = claim(&mut store, "general", run, 2000, &["cb"])
        .expect("claim")
        .expect("the old job");
    assert_eq!((claimed.attempts, claimed.batch), (1, None));
    assert_counts_agree(&store);
    let batch = store
        .new_batch(&crate::store::NewBatch::default(), 3000)
        .expect("a batch");
    assert_eq!(
        store.seal_batch(batch, 3000).expect("seal"),
        crate::store::Sealed::Now { complete: true }
    );
}
