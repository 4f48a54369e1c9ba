//! SPEC.md section 6 (`process`): concurrency limits, --max-jobs, --max-time, --queue, concurrent runs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::support::{
    TestEnv, TestResult, callback_toml, intervals, max_overlap, read_lines, timed_body, timed_env,
};

/// Counts jobs per state.
fn states(env: &TestEnv) -> TestResult<BTreeMap<String, usize>> {
    let mut out = BTreeMap::new();
    for job in env.jobs()? {
        let state = job["state"].as_str().ok_or("no state")?.to_owned();
        *out.entry(state).or_insert(0) += 1;
    }
    Ok(out)
}

#[test]
fn concurrency_limits_callbacks_running_at_once() -> TestResult {
    let (env, log) = timed_env(2, "0.3")?;
    for _ in 0..6 {
        env.publish("cb", "{}")?;
    }
    let start = Instant::now();
    env.process(&[])?;
    let took = start.elapsed();
    let runs = intervals(&log)?;
    assert_eq!(runs.len(), 6);
    assert_eq!(max_overlap(&runs), 2, "{runs:?}");
    let first = runs.iter().map(|r| r.1).min().ok_or("no runs")?;
    let last = runs.iter().map(|r| r.2).max().ok_or("no runs")?;
    let span = Duration::from_nanos(u64::try_from(last - first)?);
    assert!(
        span < Duration::from_millis(1500),
        "callbacks spanned {span:?}"
    );
    assert!(took < Duration::from_millis(1800), "process took {took:?}");
    assert_eq!(states(&env)?.get("FINISHED"), Some(&6));
    Ok(())
}

#[test]
fn concurrency_option_overrides_the_config() -> TestResult {
    let (env, log) = timed_env(4, "0.15")?;
    for _ in 0..3 {
        env.publish("cb", "{}")?;
    }
    env.process(&["--concurrency", "1"])?;
    let runs = intervals(&log)?;
    assert_eq!(runs.len(), 3);
    assert_eq!(max_overlap(&runs), 1, "{runs:?}");
    // Oldest first.
    let order: Vec<i64> = runs.iter().map(|r| r.0).collect();
    assert_eq!(order, [1, 2, 3]);
    Ok(())
}

#[test]
fn max_jobs_runs_exactly_that_many() -> TestResult {
    let env = TestEnv::new("")?;
    let log = env.path("ran");
    let cb = env.script("cb.sh", &format!("echo $BGQ_JOB_ID >> {}", log.display()))?;
    env.write_config(&format!(
        "concurrency = 4\n{}",
        callback_toml("cb", &cb, "")
    ))?;
    for _ in 0..5 {
        env.publish("cb", "{}")?;
    }
    env.process(&["--max-jobs", "3"])?;
    let mut ran = read_lines(&log);
    ran.sort();
    assert_eq!(ran, ["1", "2", "3"], "the 3 oldest");
    let counts = states(&env)?;
    assert_eq!(counts.get("FINISHED"), Some(&3));
    assert_eq!(counts.get("READY"), Some(&2));
    env.process(&["--max-jobs", "3"])?;
    assert_eq!(read_lines(&log).len(), 5);
    Ok(())
}

#[test]
fn max_time_stops_starting_new_jobs() -> TestResult {
    let env = TestEnv::new("")?;
    let log = env.path("ran");
    let cb = env.script(
        "cb.sh",
        &format!("echo $BGQ_JOB_ID >> {}\nsleep 0.4", log.display()),
    )?;
    env.write_config(&format!(
        "concurrency = 1\n{}",
        callback_toml("cb", &cb, "")
    ))?;
    for _ in 0..10 {
        env.publish("cb", "{}")?;
    }
    let start = Instant::now();
    env.process(&["--max-time", "1s"])?;
    let took = start.elapsed();
    let ran = read_lines(&log).len();
    assert!((2..=4).contains(&ran), "{ran} jobs started in about 1 s");
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    let counts = states(&env)?;
    assert_eq!(counts.get("FINISHED"), Some(&ran), "{counts:?}");
    assert_eq!(counts.get("READY"), Some(&(10 - ran)), "{counts:?}");
    Ok(())
}

#[test]
fn two_process_runs_at_once_run_every_job_exactly_once() -> TestResult {
    let env = TestEnv::new("")?;
    let log = env.path("ran");
    let cb = env.script(
        "cb.sh",
        &format!("echo $BGQ_JOB_ID >> {}\nsleep 0.02", log.display()),
    )?;
    env.write_config(&format!(
        "concurrency = 4\n{}",
        callback_toml("cb", &cb, "")
    ))?;
    let jsonl = env.path("jobs.jsonl");
    let lines: String = (0..40).map(|i| format!("{{\"i\":{i}}}\n")).collect();
    std::fs::write(&jsonl, lines)?;
    let out = env
        .bgq()
        .args(["publish", "cb", "--jsonl"])
        .arg(&jsonl)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout)?, "40\n");

    let mut first = env.spawn(&["process"])?;
    let mut second = env.spawn(&["process"])?;
    let s1 = first.wait_exit(Duration::from_secs(30))?;
    let s2 = second.wait_exit(Duration::from_secs(30))?;
    assert!(s1.success(), "{}", first.stderr());
    assert!(s2.success(), "{}", second.stderr());
    assert_eq!(first.stderr(), "");
    assert_eq!(second.stderr(), "");

    let mut ran: Vec<i64> = read_lines(&log)
        .iter()
        .map(|l| l.parse())
        .collect::<Result<_, _>>()?;
    ran.sort_unstable();
    assert_eq!(ran, (1..=40).collect::<Vec<i64>>(), "each job exactly once");
    assert_eq!(states(&env)?.get("FINISHED"), Some(&40));
    Ok(())
}

#[test]
fn per_callback_concurrency_limits_that_callback_only() -> TestResult {
    let env = TestEnv::new("")?;
    let log = env.path("times");
    let cb = env.script("cb.sh", &timed_body(&log, "0.3"))?;
    env.write_config(&format!(
        "concurrency = 4\n{}{}",
        callback_toml("one", &cb, "concurrency = 1"),
        callback_toml("many", &cb, "")
    ))?;
    let mut one = Vec::new();
    let mut many = Vec::new();
    for _ in 0..3 {
        one.push(env.publish("one", "{}")?);
    }
    for _ in 0..3 {
        many.push(env.publish("many", "{}")?);
    }
    env.process(&[])?;
    let runs = intervals(&log)?;
    assert_eq!(runs.len(), 6);
    let one_runs: Vec<_> = runs
        .iter()
        .copied()
        .filter(|r| one.contains(&r.0))
        .collect();
    let many_runs: Vec<_> = runs
        .iter()
        .copied()
        .filter(|r| many.contains(&r.0))
        .collect();
    assert_eq!(max_overlap(&one_runs), 1, "{one_runs:?}");
    assert!(
        max_overlap(&runs) >= 2,
        "the other callback runs beside it: {runs:?}"
    );
    assert!(max_overlap(&many_runs) >= 2, "{many_runs:?}");
    assert_eq!(states(&env)?.get("FINISHED"), Some(&6));
    Ok(())
}

#[test]
fn queue_option_processes_only_that_queue() -> TestResult {
    let env = TestEnv::new("")?;
    let log = env.path("ran");
    let cb = env.script(
        "cb.sh",
        &format!("echo \"$BGQ_JOB_ID $BGQ_QUEUE\" >> {}", log.display()),
    )?;
    env.write_config(&callback_toml("cb", &cb, ""))?;
    let q1 = env.publish_with("cb", "{}", &["--queue", "q1"])?;
    let default = env.publish("cb", "{}")?;
    let q2 = env.publish_with("cb", "{}", &["--queue", "q2"])?;
    let q1b = env.publish_with("cb", "{}", &["--queue", "q1"])?;
    env.process(&["--queue", "q1"])?;
    let mut ran = read_lines(&log);
    ran.sort();
    assert_eq!(ran, [format!("{q1} q1"), format!("{q1b} q1")]);
    assert_eq!(env.state(default)?, "READY");
    assert_eq!(env.state(q2)?, "READY");
    env.process(&[])?;
    assert_eq!(env.state(default)?, "FINISHED");
    assert_eq!(env.state(q2)?, "READY");
    Ok(())
}
