//! A `process` SIGKILLed at random moments, again and again, then left to finish (the long
//! version is `stress/crash-loop.sh`). No job is lost, none runs twice at the same time, every
//! rerun is explained by a reported recovery, and each recovery names a job that was in flight
//! when its run died. The jobs form one sealed batch: its completion is published exactly
//! once, after the last of them, with every job counted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{TestEnv, TestResult, callback_toml, read_lines, send_signal, wait_for};

const JOBS: usize = 150;
const KILLS: usize = 10;

/// A xorshift generator: enough randomness for kill moments, and a seed to repeat a run with.
struct Rng(u64);

impl Rng {
    /// Seeded from `BGQ_TEST_SEED` when set, else from the clock.
    fn from_env() -> (Rng, u64) {
        let seed = std::env::var("BGQ_TEST_SEED")
            .ok()
            .and_then(|seed| seed.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |since| since.as_nanos() as u64)
            });
        (Rng(seed | 1), seed)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound.max(1)
    }
}

/// One run of a callback as its `start`/`end` records tell it.
#[derive(Debug)]
struct Run {
    shell: u32,
    start: u128,
    end: Option<u128>,
}

/// Parses `start ID PID NS` / `end ID PID NS` records into runs per job id, each sorted by start.
fn runs(log: &Path) -> TestResult<BTreeMap<i64, Vec<Run>>> {
    let mut out: BTreeMap<i64, Vec<Run>> = BTreeMap::new();
    for line in read_lines(log) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [kind, id, shell, ns] = parts[..] else {
            return Err(format!("bad log line {line:?}").into());
        };
        let (id, shell, ns): (i64, u32, u128) = (id.parse()?, shell.parse()?, ns.parse()?);
        let runs = out.entry(id).or_default();
        match kind {
            "start" => runs.push(Run {
                shell,
                start: ns,
                end: None,
            }),
            "end" => {
                let run = runs
                    .iter_mut()
                    .rev()
                    .find(|run| run.shell == shell && run.end.is_none())
                    .ok_or_else(|| format!("`{line}` has no start"))?;
                run.end = Some(ns);
            }
            _ => return Err(format!("bad log line {line:?}").into()),
        }
    }
    for runs in out.values_mut() {
        runs.sort_by_key(|run| run.start);
    }
    Ok(out)
}

/// How many callback runs have started so far.
fn starts(log: &Path) -> usize {
    read_lines(log)
        .iter()
        .filter(|line| line.starts_with("start "))
        .count()
}

/// Ids of jobs `bgq list` shows PROCESSING.
fn processing(env: &TestEnv) -> TestResult<BTreeSet<i64>> {
    Ok(env
        .jobs()?
        .iter()
        .filter(|job| job["state"] == "PROCESSING")
        .filter_map(|job| job["id"].as_i64())
        .collect())
}

/// Job ids of the `bgq: recovered job N ...` lines in `stderr`.
fn recovered(stderr: &str) -> TestResult<BTreeSet<i64>> {
    let mut ids = BTreeSet::new();
    for line in stderr.lines() {
        if let Some(rest) = line.strip_prefix("bgq: recovered job ") {
            let id = rest.split_whitespace().next().unwrap_or("");
            if !ids.insert(id.parse()?) {
                return Err(format!("job {id} recovered twice by one run:\n{stderr}").into());
            }
        }
    }
    Ok(ids)
}

/// Checks that no two runs of one job overlapped, and that every job has a run that ended.
///
/// A run without an `end` record was killed (recovery kills a dead run's callback group before
/// the job runs again), so only runs that ended can be seen to overlap a later one.
fn check_runs(runs: &BTreeMap<i64, Vec<Run>>) -> Result<(), String> {
    for (id, runs) in runs {
        for pair in runs.windows(2) {
            if let Some(end) = pair[0].end
                && end > pair[1].start
            {
                return Err(format!("job {id} ran twice at the same time: {runs:?}"));
            }
        }
        if runs.iter().all(|run| run.end.is_none()) {
            return Err(format!("job {id} never completed a run: {runs:?}"));
        }
    }
    Ok(())
}

#[test]
fn process_killed_at_random_moments_loses_nothing_and_runs_nothing_twice_at_once() -> TestResult {
    let (mut rng, seed) = Rng::from_env();
    let context = format!("(BGQ_TEST_SEED={seed} repeats this run)");
    let env = TestEnv::new("")?;
    let log = env.path("runs.log");
    let ran = env.path("ran.log");
    // 5 to 30 ms of work, spread by job id; every 25th job 300 ms, so that kills catch some
    // callbacks mid-run and recovery has to kill them.
    let cb = env.script(
        "cb.sh",
        &format!(
            "echo \"start $BGQ_JOB_ID $$ $(date +%s%N)\" >> {log}\n\
             if [ $((BGQ_JOB_ID % 25)) -eq 0 ]; then sleep 0.3\n\
             else sleep $(printf '0.%03d' $((BGQ_JOB_ID % 26 + 5))); fi\n\
             echo \"end $BGQ_JOB_ID $$ $(date +%s%N)\" >> {log}\n\
             echo $BGQ_JOB_ID >> {ran}",
            log = log.display(),
            ran = ran.display()
        ),
    )?;
    let summaries = env.path("done.log");
    let done_cb = env.script("done.sh", &format!("cat >> {}", summaries.display()))?;
    env.write_config(&format!(
        "concurrency = 4\n{}{}",
        callback_toml("cb", &cb, ""),
        callback_toml("done", &done_cb, "")
    ))?;
    let batch = crate::support::stdout_of(&env, &["batch", "new", "--on-complete", "done"])?;
    let batch = batch.trim();
    let lines: String = (0..JOBS).map(|i| format!("{{\"n\":{i}}}\n")).collect();
    let out = env
        .bgq()
        .args(["publish", "cb", "--jsonl", "-", "--batch", batch])
        .write_stdin(lines)
        .output()?;
    assert!(out.status.success(), "{}", crate::support::describe(&out));
    crate::support::stdout_of(&env, &["batch", "seal", batch])?;
    let ids: BTreeSet<i64> = env
        .jobs()?
        .iter()
        .filter_map(|j| j["id"].as_i64())
        .collect();
    assert_eq!(ids.len(), JOBS);

    let mut recoveries = 0;
    let mut in_flight = BTreeSet::new();
    // Every run's stderr, to explain a failure.
    let mut said = String::new();
    let mut kills = 0;
    for round in 0..KILLS {
        let before = starts(&log);
        let mut run = env.spawn(&["process"])?;
        let early = rng.below(5) == 0;
        if early {
            // Now and then during start-up or recovery.
            std::thread::sleep(Duration::from_millis(rng.below(15)));
        } else {
            let mut exited = false;
            wait_for(
                "a callback of this run to start",
                Duration::from_secs(10),
                || {
                    exited = matches!(run.child.try_wait(), Ok(Some(_)));
                    exited || starts(&log) > before
                },
            )?;
            if !exited {
                std::thread::sleep(Duration::from_millis(rng.below(100)));
            }
        }
        let finished_alone = run.child.try_wait()?.is_some();
        if !finished_alone {
            send_signal(run.pid(), "KILL")?;
            kills += 1;
        }
        run.wait_exit(Duration::from_secs(10))?;
        let stderr = run.stderr();
        said.push_str(&format!("--- round {round}, pid {}:\n{stderr}", run.pid()));
        assert!(!stderr.contains("panicked"), "{stderr}");
        let got = recovered(&stderr)?;
        assert!(
            got.is_subset(&in_flight),
            "round {round}: recovered {got:?}, but only {in_flight:?} were in flight {context}\n{stderr}"
        );
        if !early || finished_alone {
            // It reached its jobs, so it recovered (and reported) every orphan first.
            assert_eq!(
                got, in_flight,
                "round {round}: every job in flight is recovered and reported {context}\n{stderr}"
            );
        }
        recoveries += got.len();
        in_flight = processing(&env)?;
        if finished_alone {
            break;
        }
    }

    let started = Instant::now();
    let stderr = env.process(&[])?;
    said.push_str(&format!("--- last run:\n{stderr}"));
    let got = recovered(&stderr)?;
    assert_eq!(
        got, in_flight,
        "the last run recovers and reports every job in flight {context}\n{stderr}"
    );
    recoveries += got.len();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the last run took {:?}",
        started.elapsed()
    );

    let jobs = env.jobs()?;
    let unfinished: Vec<_> = jobs.iter().filter(|j| j["state"] != "FINISHED").collect();
    assert!(
        unfinished.is_empty(),
        "every job FINISHED {context}: {unfinished:?}"
    );
    // The completion, published once with the last outcome (and run at least once: a kill
    // during its run reruns it, with the same summary).
    let completions: Vec<_> = jobs.iter().filter(|j| j["callback"] == "done").collect();
    assert_eq!(completions.len(), 1, "one completion job {context}");
    let summaries = read_lines(&summaries);
    assert!(!summaries.is_empty(), "the completion ran {context}");
    for summary in &summaries {
        let summary: serde_json::Value = serde_json::from_str(summary)?;
        assert_eq!(
            summary["counts"]["FINISHED"], JOBS,
            "every job counted once {context}"
        );
    }
    let jobs: Vec<_> = jobs.into_iter().filter(|j| j["callback"] == "cb").collect();
    let done: BTreeSet<i64> = read_lines(&ran)
        .iter()
        .map(|l| l.parse())
        .collect::<Result<_, _>>()?;
    assert_eq!(done, ids, "every job completed a run {context}");

    let runs = runs(&log)?;
    check_runs(&runs).map_err(|err| format!("{err} {context}\n{said}"))?;
    let total: usize = runs.values().map(Vec::len).sum();
    let killed = runs
        .values()
        .flatten()
        .filter(|run| run.end.is_none())
        .count();
    let reruns = total - runs.len();
    assert!(
        reruns <= recoveries,
        "{reruns} reruns but only {recoveries} recoveries reported {context}"
    );
    for job in &jobs {
        let id = job["id"].as_i64().ok_or("no id")?;
        let attempts = job["attempts"].as_u64().ok_or("no attempts")?;
        let count = runs.get(&id).map_or(0, Vec::len) as u64;
        assert!(
            attempts >= count,
            "job {id} ran {count} times but counts {attempts} attempts {context}"
        );
    }
    eprintln!(
        "crash loop {context}: {kills} kills, {recoveries} recoveries, {reruns} reruns of {JOBS} \
         jobs, {killed} callbacks killed mid-run"
    );
    Ok(())
}
