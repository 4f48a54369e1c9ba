//! `bgq process`: under the queue's lock, recovers jobs a dead run left PROCESSING, then runs
//! every due job once, up to `concurrency` at a time, and exits.
//!
//! The main thread owns the database: it claims jobs, starts their callbacks, and commits each
//! outcome before that slot starts another job. One thread per running callback only waits for
//! it (see `runner`), so a crash re-runs at most the jobs that were running.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::backoff::{Retry, RetryPolicy, random_spread};
use crate::cli::ProcessArgs;
use crate::config::Config;
use crate::job::{JobState, Millis, now_millis};
use crate::lock::{Lock, process_lock_path};
use crate::notify::{self, Notice};
use crate::process_group::{self, OrphanGroup};
use crate::runner::{self, Exit, Outcome};
use crate::store::{ClaimedJob, Completion, Durability, Orphan, Store};

/// How often the main loop wakes to look for signals, deadlines and newly due jobs.
const TICK: Duration = Duration::from_millis(100);
/// How often jobs whose time has come are moved into the claim path.
const PROMOTE_EVERY: Duration = Duration::from_secs(1);
/// How long recovery waits for a killed orphan group to be gone.
const ORPHAN_KILL_WAIT: Duration = Duration::from_secs(5);

/// Runs `bgq process`.
pub fn run(config: &Config, args: &ProcessArgs, verbose: bool) -> anyhow::Result<()> {
    let queue = args.queue.as_deref().unwrap_or(&config.queue);
    let stop = stop_on_signals()?;
    let mut store = Store::open(&config.database, Durability::Relaxed)?;
    let canonical = std::fs::canonicalize(store.path())
        .with_context(|| format!("cannot resolve {}", store.path().display()))?;
    let lock_path = process_lock_path(&config.temp_dir, &canonical, queue);
    let Some(_lock) = Lock::try_acquire(&lock_path)? else {
        if verbose {
            eprintln!(
                "bgq: another `process` of queue `{queue}` holds {}; exiting",
                lock_path.display()
            );
        }
        return Ok(());
    };
    let me = i32::try_from(std::process::id())
        .ok()
        .and_then(process_group::identify)
        .context("cannot read this process's start time from /proc")?;
    let run = store.begin_run(queue, &me, now_millis())?;
    let (finished_tx, finished_rx) = mpsc::channel();
    let mut worker = Worker {
        config,
        store,
        queue,
        run,
        running: HashMap::new(),
        running_per_callback: HashMap::new(),
        finished_tx,
        finished_rx,
    };
    worker.recover_orphans()?;
    worker.warn_unknown_callbacks()?;
    let limits = Limits {
        concurrency: args.concurrency.map_or(config.concurrency, |n| {
            usize::try_from(n).unwrap_or(usize::MAX)
        }),
        max_jobs: args.max_jobs,
        deadline: args.max_time.map(|max| Instant::now() + max),
    };
    worker.drain(&limits, &stop)?;
    worker.store.end_run(run, now_millis())?;
    Ok(())
}

/// Configured callbacks that have a free slot under their own `concurrency`.
fn claimable_callbacks<'c>(config: &'c Config, running: &HashMap<String, usize>) -> Vec<&'c str> {
    config
        .callbacks
        .iter()
        .filter(|(name, callback)| {
            callback
                .concurrency
                .is_none_or(|limit| running.get(*name).copied().unwrap_or(0) < limit)
        })
        .map(|(name, _)| name.as_str())
        .collect()
}

/// Sets the returned flag on SIGTERM or SIGINT; a second one ends bgq at once.
fn stop_on_signals() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register_conditional_shutdown(signal, 1, Arc::clone(&stop))
            .context("cannot install signal handlers")?;
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("cannot install signal handlers")?;
    }
    Ok(stop)
}

struct Limits {
    concurrency: usize,
    max_jobs: Option<u64>,
    deadline: Option<Instant>,
}

/// A callback run that ended, sent from its thread to the main loop.
struct Finished {
    id: i64,
    exit: Exit,
    output: Vec<u8>,
}

struct Worker<'a> {
    config: &'a Config,
    store: Store,
    queue: &'a str,
    run: i64,
    running: HashMap<i64, ClaimedJob>,
    running_per_callback: HashMap<String, usize>,
    finished_tx: Sender<Finished>,
    finished_rx: Receiver<Finished>,
}

/// What a run's end does to a job.
struct Transition {
    state: JobState,
    run_at: Millis,
    notice: Option<String>,
    notified_now: bool,
}

impl Worker<'_> {
    fn drain(&mut self, limits: &Limits, stop: &AtomicBool) -> anyhow::Result<()> {
        let mut started: u64 = 0;
        let mut last_promote: Option<Instant> = None;
        loop {
            let accepting = !stop.load(Ordering::Relaxed)
                && limits.max_jobs.is_none_or(|max| started < max)
                && limits.deadline.is_none_or(|at| Instant::now() < at);
            if accepting {
                if last_promote.is_none_or(|at| at.elapsed() >= PROMOTE_EVERY) {
                    self.store.promote_due(self.queue, self.run, now_millis())?;
                    last_promote = Some(Instant::now());
                }
                while self.running.len() < limits.concurrency
                    && limits.max_jobs.is_none_or(|max| started < max)
                {
                    let claimable = claimable_callbacks(self.config, &self.running_per_callback);
                    let Some(job) =
                        self.store
                            .claim(self.queue, self.run, now_millis(), &claimable)?
                    else {
                        break;
                    };
                    started += 1;
                    self.start(job)?;
                }
            }
            if self.running.is_empty() {
                return Ok(());
            }
            match self.finished_rx.recv_timeout(TICK) {
                Ok(finished) => self.settle_running(finished)?,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => bail!("lost track of running callbacks"),
            }
        }
    }

    fn start(&mut self, job: ClaimedJob) -> anyhow::Result<()> {
        let Some(callback) = self.config.callbacks.get(&job.callback) else {
            let why = format!(
                "no callback `{}` in {}",
                job.callback,
                self.config.path.display()
            );
            return self.settle(&job, Exit::NotStarted(why), Vec::new());
        };
        let started = match runner::start(&job, callback, &self.config.path) {
            Ok(started) => started,
            Err(why) => return self.settle(&job, Exit::NotStarted(why), Vec::new()),
        };
        let pgid = started.group().map(|group| group.pid);
        if let Some(group) = started.group()
            && let Err(err) = self.store.record_group(job.id, group)
        {
            // Unrecorded, the group could outlive us unseen: stop it; recovery re-runs the job.
            process_group::signal_group(group.pid, libc::SIGKILL);
            return Err(err);
        }
        let sender = self.finished_tx.clone();
        let id = job.id;
        let spawned = std::thread::Builder::new()
            .name(format!("job-{id}"))
            .spawn(move || {
                let (exit, output) = started.finish();
                // The main loop only stops receiving once nothing runs.
                let _ = sender.send(Finished { id, exit, output });
            });
        if let Err(err) = spawned {
            if let Some(pgid) = pgid {
                process_group::signal_group(pgid, libc::SIGKILL);
            }
            return Err(anyhow::Error::new(err).context("cannot start a thread for a callback"));
        }
        *self
            .running_per_callback
            .entry(job.callback.clone())
            .or_default() += 1;
        self.running.insert(id, job);
        Ok(())
    }

    fn settle_running(&mut self, finished: Finished) -> anyhow::Result<()> {
        let Some(job) = self.running.remove(&finished.id) else {
            bail!(
                "a callback of job {} ended that was not running",
                finished.id
            );
        };
        if let Some(count) = self.running_per_callback.get_mut(&job.callback) {
            *count = count.saturating_sub(1);
        }
        self.settle(&job, finished.exit, finished.output)
    }

    /// Commits how a run ended, then sends its notice if it has one.
    fn settle(&mut self, job: &ClaimedJob, exit: Exit, mut output: Vec<u8>) -> anyhow::Result<()> {
        let now = now_millis();
        if !matches!(exit, Exit::Code(_)) {
            if !output.is_empty() && !output.ends_with(b"\n") {
                output.push(b'\n');
            }
            output.extend_from_slice(format!("bgq: {exit}\n").as_bytes());
        }
        let outcome = Outcome::from_exit(&exit);
        let transition = match outcome {
            Outcome::Finished | Outcome::Waiting => Transition {
                state: if outcome == Outcome::Finished {
                    JobState::Finished
                } else {
                    JobState::Waiting
                },
                run_at: now,
                notice: None,
                notified_now: false,
            },
            Outcome::TemporarilyFailed => self.failed_attempt(
                job.id,
                &job.callback,
                job.attempts,
                job.notified,
                &exit,
                now,
            ),
            Outcome::PermanentlyFailed => Transition {
                state: JobState::PermanentlyFailed,
                run_at: now,
                notice: Some(format!("failed permanently ({exit})")),
                notified_now: false,
            },
        };
        self.store.complete(&Completion {
            id: job.id,
            state: transition.state,
            run_at: transition.run_at,
            due_now: false,
            uncount_attempt: outcome == Outcome::Waiting,
            output: output.clone(),
            ended_at: now,
            notified: transition.notified_now,
        })?;
        if let Some(reason) = transition.notice {
            self.notify(job.id, output, reason)?;
        }
        Ok(())
    }

    /// The retry decision after a failed attempt, and the notice it calls for.
    fn failed_attempt(
        &self,
        id: i64,
        callback: &str,
        attempts: u32,
        notified: bool,
        why: &dyn std::fmt::Display,
        now: Millis,
    ) -> Transition {
        let default_policy = RetryPolicy::default();
        let policy = self
            .config
            .callbacks
            .get(callback)
            .map_or(&default_policy, |callback| &callback.retry);
        match policy.after_failure(attempts, random_spread(id)) {
            Retry::GiveUp => Transition {
                state: JobState::PermanentlyFailed,
                run_at: now,
                notice: Some(format!(
                    "failed permanently: retries used up after {attempts} attempts ({why})"
                )),
                notified_now: false,
            },
            Retry::After(delay) => {
                let notify = !notified && attempts >= self.config.notify_on_attempts;
                let delay = Millis::try_from(delay.as_millis()).unwrap_or(Millis::MAX);
                Transition {
                    state: JobState::TemporarilyFailed,
                    run_at: now.saturating_add(delay),
                    notice: notify
                        .then(|| format!("failed {attempts} attempts ({why}); still retrying")),
                    notified_now: notify,
                }
            }
        }
    }

    fn notify(&self, id: i64, output: Vec<u8>, reason: String) -> anyhow::Result<()> {
        let Some(job) = self.store.record(id)? else {
            bail!("job {id} vanished while it was being settled");
        };
        notify::send(
            self.config.notify.as_deref(),
            &Notice {
                job,
                output,
                reason,
            },
        );
        Ok(())
    }

    /// Puts back jobs a dead run left PROCESSING, after killing what is left of their callbacks.
    fn recover_orphans(&mut self) -> anyhow::Result<()> {
        for orphan in self.store.orphans(self.queue)? {
            if let Some(runner) = orphan
                .claimed_by
                .as_ref()
                .filter(|r| process_group::is_alive(r))
            {
                eprintln!(
                    "bgq: warning: job {} is running under another live `process` (pid {}) that \
                     holds a different lock: give every config of this database the same temp_dir",
                    orphan.id, runner.pid
                );
                continue;
            }
            self.recover(&orphan)?;
        }
        Ok(())
    }

    fn recover(&mut self, orphan: &Orphan) -> anyhow::Result<()> {
        let group = match &orphan.group {
            Some(group) => match process_group::kill_orphan(group, ORPHAN_KILL_WAIT) {
                OrphanGroup::Killed => {
                    format!("its callback (process group {}) was killed", group.pid)
                }
                OrphanGroup::Gone => "its callback was no longer running".to_owned(),
                OrphanGroup::PidReused => {
                    "its callback was no longer running (pid reused)".to_owned()
                }
            },
            None => "its callback had not been recorded".to_owned(),
        };
        let now = now_millis();
        let why = "the `process` run running it died";
        let mut transition = self.failed_attempt(
            orphan.id,
            &orphan.callback,
            orphan.attempts,
            orphan.notified,
            &why,
            now,
        );
        let again = transition.state == JobState::TemporarilyFailed;
        if again {
            // A lost run is no reason to wait: the job is due at once.
            transition.run_at = now;
        }
        let output = format!("bgq: {why}; {group}\n").into_bytes();
        self.store.complete(&Completion {
            id: orphan.id,
            state: transition.state,
            run_at: transition.run_at,
            due_now: again,
            uncount_attempt: false,
            output: output.clone(),
            ended_at: now,
            notified: transition.notified_now,
        })?;
        eprintln!(
            "bgq: recovered job {} ({}): {why}; {group}; attempt {} counted, {}",
            orphan.id,
            orphan.callback,
            orphan.attempts,
            if again {
                "it runs again now"
            } else {
                "no retries left"
            }
        );
        if let Some(reason) = transition.notice {
            self.notify(orphan.id, output, reason)?;
        }
        Ok(())
    }

    /// Due jobs whose callback the config does not define wait; say so, since cron mails stderr.
    fn warn_unknown_callbacks(&mut self) -> anyhow::Result<()> {
        let known: Vec<&str> = self.config.callbacks.keys().map(String::as_str).collect();
        for (callback, count) in self.store.due_callbacks_not_in(self.queue, &known)? {
            eprintln!(
                "bgq: warning: {count} due job(s) of queue `{}` wait for callback `{callback}`, which {} does not define",
                self.queue,
                self.config.path.display()
            );
        }
        Ok(())
    }
}
