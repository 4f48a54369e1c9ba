//! Eight publishing processes while `process` drains (the long version is
//! `stress/contention.sh`). Every publish succeeds without a word on stderr (no "database is
//! locked" reaches the user, the worker never starves a writer) and every job runs exactly once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::{TestEnv, TestResult, callback_toml, describe, read_lines};

const PUBLISHERS: usize = 8;
const JOBS_EACH: usize = 50;
/// A publish slower than this is taken for a starved writer.
const MAX_LATENCY: Duration = Duration::from_secs(10);

/// What one publisher saw: the ids it was given, its slowest publish, and what went wrong.
#[derive(Default)]
struct Published {
    ids: Vec<i64>,
    slowest: Duration,
    failures: Vec<String>,
}

/// Errors cross threads as text (`TestResult`'s error is not `Send`).
type ThreadResult<T> = Result<T, String>;

fn publisher(env: &TestEnv, publisher: usize) -> ThreadResult<Published> {
    let mut seen = Published::default();
    for job in 0..JOBS_EACH {
        let json = format!("{{\"publisher\":{publisher},\"job\":{job}}}");
        let started = Instant::now();
        let out = env
            .bgq()
            .args(["publish", "cb", "--json", &json])
            .output()
            .map_err(|err| err.to_string())?;
        seen.slowest = seen.slowest.max(started.elapsed());
        let id = String::from_utf8_lossy(&out.stdout).trim().parse::<i64>();
        match id {
            Ok(id) if out.status.success() && out.stderr.is_empty() => seen.ids.push(id),
            _ => seen.failures.push(format!(
                "publisher {publisher} job {job}: {}",
                describe(&out)
            )),
        }
    }
    Ok(seen)
}

#[test]
fn eight_publishers_and_a_draining_process_lose_nothing() -> TestResult {
    let env = TestEnv::new("")?;
    let ran = env.path("ran");
    let cb = env.script("cb.sh", &format!("echo $BGQ_JOB_ID >> {}", ran.display()))?;
    env.write_config(&format!(
        "concurrency = 4\n{}",
        callback_toml("cb", &cb, "")
    ))?;
    // The database is created by whichever publish or process comes first.

    let publishing = AtomicBool::new(true);
    let (published, drained) = std::thread::scope(|scope| {
        let drainer = scope.spawn(|| -> ThreadResult<(usize, Vec<String>)> {
            // `process` exits once nothing is due: start it again until publishing is over.
            let mut runs = 0;
            let mut failures = Vec::new();
            while publishing.load(Ordering::SeqCst) {
                let out = env
                    .bgq()
                    .arg("process")
                    .output()
                    .map_err(|err| err.to_string())?;
                runs += 1;
                if !out.status.success() || !out.stderr.is_empty() {
                    failures.push(format!("process run {runs}: {}", describe(&out)));
                }
            }
            Ok((runs, failures))
        });
        let publishers: Vec<_> = (0..PUBLISHERS)
            .map(|p| {
                let env = &env;
                scope.spawn(move || publisher(env, p))
            })
            .collect();
        let published: Vec<ThreadResult<Published>> = publishers
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|_| Err("publisher panicked".to_owned()))
            })
            .collect();
        publishing.store(false, Ordering::SeqCst);
        let drained = drainer
            .join()
            .unwrap_or_else(|_| Err("drainer panicked".to_owned()));
        (published, drained)
    });
    let (runs, process_failures) = drained?;
    let mut ids = Vec::new();
    let mut failures = process_failures;
    let mut slowest = Duration::ZERO;
    for result in published {
        let seen = result?;
        ids.extend(seen.ids);
        failures.extend(seen.failures);
        slowest = slowest.max(seen.slowest);
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        slowest < MAX_LATENCY,
        "the slowest publish took {slowest:?}"
    );
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        ids.len(),
        PUBLISHERS * JOBS_EACH,
        "every publish got its own id"
    );

    // What was published after the drainer's last run.
    let stderr = env.process(&[])?;
    assert_eq!(stderr, "");
    let jobs = env.jobs()?;
    assert_eq!(jobs.len(), PUBLISHERS * JOBS_EACH);
    let unfinished: Vec<_> = jobs.iter().filter(|j| j["state"] != "FINISHED").collect();
    assert!(unfinished.is_empty(), "{unfinished:?}");
    let mut done: Vec<i64> = read_lines(&ran)
        .iter()
        .map(|l| l.parse())
        .collect::<Result<_, _>>()?;
    done.sort_unstable();
    assert_eq!(done, ids, "every job ran exactly once");
    eprintln!(
        "contention: {} publishes by {PUBLISHERS} processes, slowest {slowest:?}, {runs} process runs",
        ids.len()
    );
    Ok(())
}
