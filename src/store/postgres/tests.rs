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
