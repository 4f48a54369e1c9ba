//! `bgq process`: under the queue's lock, recovers jobs a dead run left PROCESSING, then runs
//! every due job once, up to `concurrency` at a time, and exits. With `--watch` it stays, and
//! starts jobs as they come and fall due, until a signal or one of its limits ends it.
//!
//! The main thread owns the database: it claims jobs, starts their callbacks, and commits each
//! outcome before that slot starts another job. One thread per running callback only waits for
//! it (see `runner`), so a crash re-runs at most the jobs that were running.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::activity::{Activity, JobEvent};
use crate::cli::ProcessArgs;
use crate::config::Config;
use crate::coord::Liveness;
use crate::coord::guard::Guard;
use crate::coord::lock::{Lock, LockFolder};
use crate::coord::process_group::ProcessRecord;
use crate::coord::process_group::{self, OrphanGroup};
use crate::coord::running_log::{Entry, RunningLog, Started};
use crate::escape;
use crate::job::{JobState, Millis, now_millis};
use crate::notify::{self, Notice, NoticeKind};
use crate::queue::backoff::{RetryPolicy, random_spread};
use crate::queue::outcome::{self, Attempted, Rules, RunEnd};
use crate::runner::{self, Exit, Prepared, StopHandle};
use crate::store::{
    Applied, ClaimRequest, ClaimedJob, Completion, Durability, Fence, Orphan, Store, Tally,
};

/// How often the main loop wakes to look for signals, deadlines and newly published jobs.
const TICK: Duration = Duration::from_millis(100);
/// How often jobs whose time has come are moved into the claim path.
const PROMOTE_EVERY: Duration = Duration::from_secs(1);
/// How long recovery waits for a killed orphan group to be gone.
const ORPHAN_KILL_WAIT: Duration = Duration::from_secs(5);
/// How often the counts of ended runs are written for `stats`.
const TALLY_EVERY: Duration = Duration::from_secs(5);
/// A clock this far behind the last run's last recorded time has been set back.
const CLOCK_SLACK: Millis = 1000;
/// How long a run started by `publish --process` waits for a run that holds the lock to end.
const ON_DEMAND_LOCK_WAIT: Duration = Duration::from_secs(2);
/// How often a waiting run tries the lock again.
const LOCK_RETRY: Duration = Duration::from_millis(20);
/// How often `--watch` sends the notices its jobs stored, as one digest.
const NOTICE_EVERY: Duration = Duration::from_secs(10);
/// How long `--watch` keeps looking for the commit of a write it was woken by.
const RECHECK_FOR: Duration = Duration::from_millis(50);
/// How often it looks meanwhile.
const RECHECK: Duration = Duration::from_millis(2);
/// How often a run of a queue shared by hosts looks for jobs of runs that died elsewhere.
const RECOVER_EVERY: Duration = Duration::from_secs(1);
/// How often `--watch` deletes outcome counts `stats` no longer shows.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Lets glibc keep up to 1 MiB of freed heap instead of the default 128 KiB. A job of a
/// batch runs SQLite's counting trigger in each outcome's transaction, whose statement journal
/// and frames are allocated and freed again at the top of the heap: with the default, each
/// outcome gave the memory back and took it again (brk and page faults), which cost a drain of
/// `/bin/true` jobs in a batch 40 % more time than one of jobs of none (BENCHMARKS.md, "Issue
/// 18"). At most 1 MiB more stays mapped.
fn keep_freed_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes a tunable of the allocator; any value is valid for it.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 20);
    }
}

/// Runs `bgq process`.
pub fn run(config: &Config, args: &ProcessArgs, verbose: bool) -> anyhow::Result<()> {
    keep_freed_heap();
    let queue = args.queue.as_deref().unwrap_or(&config.queue);
    let stop = stop_on_signals()?;
    let mut store = crate::store::open(&config.database, Durability::Relaxed)?;
    let lock_path = config
        .lock_folder
        .process_lock_path(store.identity(), queue);
    let acquired = acquire(&config.lock_folder, &lock_path, args, &stop, verbose);
    let acquired = acquired.inspect_err(|err| record_failure(&mut *store, queue, args, err));
    let Some(lock) = acquired? else {
        if verbose {
            crate::diagnostic!(
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
    let last_seen = store.last_run(queue)?.map(|run| run.last_seen());
    let now = now_millis();
    let run = store.begin_run(queue, &me, now, args.watch)?;
    if let Some(last) = last_seen.filter(|last| *last > now + CLOCK_SLACK) {
        follow_clock_back(&mut *store, queue, last - now)?;
    }
    let (finished_tx, finished_rx) = mpsc::channel();
    if args.watch {
        let wake = finished_tx.clone();
        let written = store.on_change(Box::new(move || wake.send(Event::DatabaseWritten).is_ok()));
        if let Err(err) = written {
            crate::diagnostic!(
                "bgq: warning: {err:#}; new jobs are seen within 0.1 s instead of at once"
            );
        }
    }
    let mut worker = Worker {
        config,
        store,
        queue,
        run,
        me,
        running: HashMap::new(),
        running_per_callback: HashMap::new(),
        log: RunningLog::open(&lock)?,
        waiters: Waiters::new(finished_tx),
        events: finished_rx,
        settled: Vec::new(),
        tally: Tally::default(),
        tally_written: Instant::now(),
        cancels_checked: Instant::now(),
        recovered: Instant::now(),
        started: 0,
        failed: 0,
        blocking: config.blocking_callbacks(),
        watch_poll: args.watch.then_some(args.poll),
        on_demand: args.on_demand,
        groups: RunningGroups::default(),
        guard: None,
        activity: Activity::new(verbose, args.log_format),
        broken: HashMap::new(),
        marked: HashSet::new(),
    };
    if worker.store.spans_hosts() {
        worker.guard = Some(Guard::start()?);
    }
    let groups = Arc::clone(&worker.groups);
    let kept_alive = worker.store.keep_alive(
        run,
        Box::new(move |why| {
            // From the heartbeat's watchdog: the main thread may be stuck on the lost
            // connection. The callbacks must be gone before another host recovers their jobs.
            let stopped = kill_groups(&groups);
            crate::diagnostic!(
                "bgq: error: {why}; stopped {stopped} running callback(s): their jobs run again once this run is known dead"
            );
            std::process::exit(1);
        }),
    );
    if let Err(err) = kept_alive {
        // Best effort: the error is what the user must see.
        let _ = worker
            .store
            .end_run(run, now_millis(), 0, 0, Some(&format!("{err:#}")));
        return Err(err);
    }
    let limits = Limits {
        concurrency: args.concurrency.map_or(config.concurrency, |n| {
            usize::try_from(n).unwrap_or(usize::MAX)
        }),
        max_jobs: args.max_jobs,
        deadline: args.max_time.map(|max| Instant::now() + max),
        max_memory: args.max_memory,
    };
    let mut result = worker.work(&limits, &stop);
    if result.is_err() && worker.store.spans_hosts() {
        // Our jobs may be recovered on another host once we are gone: their callbacks go first.
        kill_groups(&worker.groups);
    }
    let mut error = result.as_ref().err().map(|err| format!("{err:#}"));
    if result.is_ok() && !worker.broken.is_empty() {
        // Said on stderr when it happened: the run's record says why it exits 1.
        let mut broken: Vec<String> = worker
            .broken
            .iter()
            .map(|(callback, broken)| format!("callback `{callback}`: {}", broken.reason))
            .collect();
        broken.sort();
        error = Some(broken.join("; "));
        result = Err(crate::error::Unhealthy.into());
    }
    // Best effort when the run failed: the error is what the user must see.
    let ended = worker.store.end_run(
        run,
        now_millis(),
        worker.started,
        worker.failed,
        error.as_deref(),
    );
    result.and(ended)
}

/// Takes the queue's lock. A cron run gives up at once when another run holds it; a run
/// started by `publish --process` waits briefly (the holder may be ending without having seen
/// the new job); `--watch` waits as a standby until it gets the lock or a signal stops it.
fn acquire(
    folder: &LockFolder,
    path: &std::path::Path,
    args: &ProcessArgs,
    stop: &AtomicBool,
    verbose: bool,
) -> anyhow::Result<Option<Lock>> {
    let give_up = args.on_demand.then(|| Instant::now() + ON_DEMAND_LOCK_WAIT);
    let mut said = false;
    loop {
        if let Some(lock) = Lock::try_acquire(folder, path)? {
            return Ok(Some(lock));
        }
        if !(args.watch || args.on_demand)
            || stop.load(Ordering::Relaxed)
            || give_up.is_some_and(|at| Instant::now() >= at)
        {
            return Ok(None);
        }
        if args.watch && verbose && !said {
            crate::diagnostic!(
                "bgq: another `process` holds {}; waiting for it",
                path.display()
            );
            said = true;
        }
        std::thread::sleep(if args.watch { TICK } else { LOCK_RETRY });
    }
}

/// Records a run that could not take its lock (a lock file another user left, say), so that
/// `stats` and `status` show its error: a run `publish --process` started has no stderr anyone
/// reads. Best effort: the error itself is what the caller reports.
fn record_failure(store: &mut dyn Store, queue: &str, args: &ProcessArgs, err: &anyhow::Error) {
    let me = i32::try_from(std::process::id())
        .ok()
        .and_then(process_group::identify);
    let Some(me) = me else {
        return;
    };
    let now = now_millis();
    if let Ok(run) = store.begin_run(queue, &me, now, args.watch) {
        let _ = store.end_run(run, now_millis(), 0, 0, Some(&format!("{err:#}")));
    }
}

/// A clock jump as people say it: to the second, or to the minute past an hour.
fn rounded(millis: Millis) -> Duration {
    let unit = if millis >= 3_600_000 { 60_000 } else { 1000 };
    let rounded = (millis + unit / 2) / unit * unit;
    Duration::from_millis(u64::try_from(rounded).unwrap_or(0))
}

/// The clock is behind the last run's last recorded time: it was set back. Jobs waiting for their time move
/// back with it, so that each keeps the wait it had left instead of waiting out the jump too.
fn follow_clock_back(store: &mut dyn Store, queue: &str, by: Millis) -> anyhow::Result<()> {
    let moved = store.shift_schedule(queue, by)?;
    crate::diagnostic!(
        "bgq: warning: the clock went back by {} since the last run of queue `{queue}`; \
         {moved} waiting job(s) moved back with it",
        crate::duration::format(rounded(by))
    );
    Ok(())
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
    /// `--watch`: bgq's own resident memory, in bytes, past which it starts nothing new.
    max_memory: Option<u64>,
}

/// What a waiter thread tells the main loop about a callback.
enum Event {
    /// It runs, in this process group if it could be identified.
    Started {
        id: i64,
        group: Option<ProcessRecord>,
    },
    /// It could not be started: a deployment problem, not the job's (SPEC section 5).
    NotStarted { id: i64, why: String },
    /// It ended (or could not start).
    Finished {
        id: i64,
        exit: Exit,
        output: Vec<u8>,
    },
    /// Another process wrote the database (`--watch`): look at it now, not at the next tick.
    DatabaseWritten,
}

/// Threads that wait on running callbacks, one per running callback at most, reused from job
/// to job so that no thread is started per job.
struct Waiters {
    jobs: Sender<(i64, Prepared)>,
    queue: Arc<Mutex<Receiver<(i64, Prepared)>>>,
    finished: Sender<Event>,
    count: usize,
}

impl Waiters {
    fn new(finished: Sender<Event>) -> Waiters {
        let (jobs, queue) = mpsc::channel();
        Waiters {
            jobs,
            queue: Arc::new(Mutex::new(queue)),
            finished,
            count: 0,
        }
    }

    /// Hands a prepared callback to a waiter, which starts it (so that the main loop never
    /// waits for an exec) and waits for it; `running` callbacks (this one included) each need a
    /// waiter, so one more is started when all are busy.
    fn run(&mut self, id: i64, prepared: Prepared, running: usize) -> anyhow::Result<()> {
        if running > self.count {
            let queue = Arc::clone(&self.queue);
            let finished = self.finished.clone();
            std::thread::Builder::new()
                .name(format!("waiter-{}", self.count))
                .spawn(move || {
                    loop {
                        let next = match queue.lock() {
                            Ok(queue) => queue.recv(),
                            Err(_) => return,
                        };
                        let Ok((id, prepared)) = next else { return };
                        let event = match Prepared::spawn(prepared) {
                            Ok(started) => {
                                let group = started.group().cloned();
                                if finished.send(Event::Started { id, group }).is_err() {
                                    return;
                                }
                                let (exit, output) = started.finish();
                                Event::Finished { id, exit, output }
                            }
                            Err(why) => Event::NotStarted { id, why },
                        };
                        if finished.send(event).is_err() {
                            return;
                        }
                    }
                })
                .context("cannot start a thread to wait for callbacks")?;
            self.count += 1;
        }
        self.jobs
            .send((id, prepared))
            .map_err(|_| anyhow::anyhow!("the callback waiters stopped"))
    }
}

struct Worker<'a> {
    config: &'a Config,
    store: Box<dyn Store>,
    queue: &'a str,
    run: i64,
    /// This `process`, as its run is recorded in the database and noted in the lock file.
    me: ProcessRecord,
    running: HashMap<i64, Running>,
    running_per_callback: HashMap<String, usize>,
    /// Where the process groups of running callbacks are recorded, for recovery.
    log: RunningLog,
    waiters: Waiters,
    events: Receiver<Event>,
    /// Ends of runs not yet committed; they go out with the next claim, in one transaction.
    settled: Vec<Completion>,
    /// Counts of ended runs for `stats`, written with a claim every `TALLY_EVERY`.
    tally: Tally,
    tally_written: Instant,
    /// When the marks of `bgq cancel --kill` were last looked for.
    cancels_checked: Instant,
    /// When the jobs of dead runs of other hosts were last looked for.
    recovered: Instant,
    /// Jobs this run started.
    started: u64,
    /// Of those, how many failed (temporarily or permanently).
    failed: u64,
    /// Callbacks whose PERMANENTLY_FAILED jobs hold their serial group.
    blocking: Vec<&'a str>,
    /// `--watch`: its poll interval.
    watch_poll: Option<Duration>,
    /// Started by `publish --process`, with nowhere to print.
    on_demand: bool,
    /// The process groups of running callbacks by job, for stopping them from another thread
    /// when the database is lost (a queue shared by hosts).
    groups: RunningGroups,
    /// Kills the callbacks if this run dies (a queue shared by hosts: see `coord::guard`).
    guard: Option<Guard>,
    /// Where job starts and ends are logged (`-v`, `--log-format`).
    activity: Activity,
    /// Callbacks this run could not start, by name: it claims no more of their jobs (a watch
    /// run tries again every poll).
    broken: HashMap<String, Broken>,
    /// Callbacks of this queue marked broken in the database (by this run or an earlier one):
    /// the mark goes when this run starts one.
    marked: HashSet<String>,
}

/// A callback this run could not start.
struct Broken {
    /// Why, as said on stderr.
    reason: String,
    /// When a job of it last failed to start.
    at: Instant,
}

/// Process groups of running callbacks, by job id.
type RunningGroups = Arc<Mutex<HashMap<i64, i32>>>;

fn lock_groups(groups: &RunningGroups) -> std::sync::MutexGuard<'_, HashMap<i64, i32>> {
    groups.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// Kills every process group in `groups` (SIGKILL): what a run that lost its database does
/// before other hosts may take its jobs.
fn kill_groups(groups: &RunningGroups) -> usize {
    let groups = lock_groups(groups);
    for pgid in groups.values() {
        process_group::signal_group(*pgid, nix::sys::signal::Signal::SIGKILL);
    }
    groups.len()
}

/// A job whose callback is running.
struct Running {
    job: ClaimedJob,
    pipe: u64,
    group: Option<ProcessRecord>,
    /// Stops the callback when `bgq cancel --kill` marks the job.
    stop: StopHandle,
    stop_requested: bool,
    /// When it was handed to its waiter, for the activity log's duration.
    since: Instant,
}

impl Worker<'_> {
    /// The run's work under the lock: recovery, every due job, then the digest of notices.
    fn work(&mut self, limits: &Limits, stop: &AtomicBool) -> anyhow::Result<()> {
        self.read_broken_marks()?;
        self.recover_orphans()?;
        self.warn_unknown_callbacks()?;
        if let Some(poll) = self.watch_poll {
            self.watch(limits, stop, poll)?;
            self.store.write_tally(&mut self.tally)?;
            self.send_notices()?;
            return Ok(());
        }
        loop {
            // Jobs published (or freed by a job that finished) after the last look are due too:
            // look again until a look starts nothing.
            loop {
                let before = self.started;
                self.drain(limits, stop)?;
                if self.started == before {
                    break;
                }
            }
            self.store.write_tally(&mut self.tally)?;
            // A digest can take a while to send: a job published meanwhile would otherwise wait
            // for the next run (its `publish --process` found the lock taken).
            if !self.send_notices()? {
                return Ok(());
            }
        }
    }

    /// How many jobs may start now: the free slots, within what `--max-jobs` leaves.
    fn free_slots(&self, limits: &Limits) -> usize {
        let want = limits.concurrency.saturating_sub(self.running.len());
        match limits.max_jobs {
            Some(max) => {
                let left = max.saturating_sub(self.started);
                want.min(usize::try_from(left).unwrap_or(usize::MAX))
            }
            None => want,
        }
    }

    /// Whether a signal or one of `limits` says to start nothing more.
    fn limit_reached(&self, limits: &Limits, stop: &AtomicBool) -> bool {
        stop.load(Ordering::Relaxed)
            || limits.deadline.is_some_and(|at| Instant::now() >= at)
            || limits.max_jobs.is_some_and(|max| self.started >= max)
            || limits.max_memory.is_some_and(|max| {
                crate::size::resident_bytes().is_some_and(|resident| resident > max)
            })
    }

    /// Starts jobs as they come and fall due until a signal or a limit stops it; then lets the
    /// running ones finish. New jobs are noticed through the database's change counter, at
    /// once; jobs whose time comes, every `poll`.
    fn watch(&mut self, limits: &Limits, stop: &AtomicBool, poll: Duration) -> anyhow::Result<()> {
        let mut last_promote: Option<Instant> = None;
        let mut notices_sent = Instant::now();
        let mut pruned = Instant::now();
        let mut look = true;
        let mut stopping = false;
        // After a write to the database that is not visible yet (its commit is still under
        // way), look again every RECHECK until then.
        let mut recheck_until: Option<Instant> = None;
        let mut written = false;
        loop {
            while let Ok(event) = self.events.try_recv() {
                self.handle_watching(event, &mut look, &mut written)?;
            }
            self.stop_cancelled()?;
            // Recovered jobs are due at once: look for them now, not at the next poll.
            look = self.recover_dead_elsewhere()? || look;
            // A limit reached stays reached: memory that went down again does not restart it.
            stopping = stopping || self.limit_reached(limits, stop);
            let want = if stopping { 0 } else { self.free_slots(limits) };
            if stopping && self.running.is_empty() && self.settled.is_empty() {
                return Ok(());
            }
            // Read only when a job could start, so that a change seen while every slot is busy
            // is still news when one frees.
            let changed = want > 0 && self.store.changed_elsewhere()?;
            if changed {
                recheck_until = None;
            } else if written && want > 0 {
                recheck_until.get_or_insert_with(|| Instant::now() + RECHECK_FOR);
            }
            written = false;
            let time_to_promote = last_promote.is_none_or(|at| at.elapsed() >= poll);
            if want > 0 && (changed || time_to_promote) {
                self.store.promote_due(self.queue, None, now_millis())?;
                last_promote = Some(Instant::now());
                look = true;
            }
            if (want > 0 && look) || !self.settled.is_empty() {
                // A job that finished may free jobs published `--after` it: promote again soon.
                if self
                    .settled
                    .iter()
                    .any(|done| done.state == JobState::Finished)
                {
                    last_promote = None;
                }
                let claimed = self.settle_and_claim(want)?;
                self.started += claimed.len() as u64;
                look = !claimed.is_empty();
                self.start_all(claimed)?;
            }
            if pruned.elapsed() >= PRUNE_EVERY {
                self.store.prune_outcomes(self.queue, now_millis())?;
                pruned = Instant::now();
            }
            if !self.settled.is_empty() {
                continue;
            }
            if self.tally_written.elapsed() >= TALLY_EVERY && !self.tally.is_empty() {
                self.store.write_tally(&mut self.tally)?;
                self.tally_written = Instant::now();
            }
            if notices_sent.elapsed() >= NOTICE_EVERY {
                self.send_notices()?;
                notices_sent = Instant::now();
            }
            let wait = match recheck_until {
                Some(until) if Instant::now() < until => RECHECK,
                _ => {
                    recheck_until = None;
                    TICK
                }
            };
            match self.events.recv_timeout(wait) {
                Ok(event) => self.handle_watching(event, &mut look, &mut written)?,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => bail!("lost track of running callbacks"),
            }
        }
    }

    /// Handles `event` in `--watch`: a callback that started or ended calls for a claim
    /// (`look`); a write to the database only wakes the loop (`written`), since
    /// `changed_elsewhere` tells whether another process committed something.
    fn handle_watching(
        &mut self,
        event: Event,
        look: &mut bool,
        written: &mut bool,
    ) -> anyhow::Result<()> {
        match event {
            Event::DatabaseWritten => *written = true,
            event => {
                self.handle(event)?;
                *look = true;
            }
        }
        Ok(())
    }

    fn drain(&mut self, limits: &Limits, stop: &AtomicBool) -> anyhow::Result<()> {
        let mut last_promote: Option<Instant> = None;
        loop {
            while let Ok(event) = self.events.try_recv() {
                self.handle(event)?;
            }
            self.stop_cancelled()?;
            let want = if self.limit_reached(limits, stop) {
                0
            } else {
                self.free_slots(limits)
            };
            if want > 0 && last_promote.is_none_or(|at| at.elapsed() >= PROMOTE_EVERY) {
                self.store
                    .promote_due(self.queue, Some(self.run), now_millis())?;
                last_promote = Some(Instant::now());
            }
            if want > 0 || !self.settled.is_empty() {
                let claimed = self.settle_and_claim(want)?;
                self.started += claimed.len() as u64;
                self.start_all(claimed)?;
            }
            if !self.settled.is_empty() {
                // Callbacks that could not start: commit that before waiting.
                continue;
            }
            if self.running.is_empty() {
                return Ok(());
            }
            match self.events.recv_timeout(TICK) {
                Ok(event) => self.handle(event)?,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => bail!("lost track of running callbacks"),
            }
        }
    }

    /// Commits the settled runs (with their notices) and claims up to `want` jobs in one
    /// transaction.
    fn settle_and_claim(&mut self, want: usize) -> anyhow::Result<Vec<ClaimedJob>> {
        let capacities: Vec<(&str, usize)> = self
            .config
            .callbacks
            .iter()
            .map(|(name, callback)| {
                let running = self.running_per_callback.get(name).copied().unwrap_or(0);
                let left = callback
                    .concurrency
                    .map_or(usize::MAX, |limit| limit.saturating_sub(running));
                (name.as_str(), if self.held_back(name) { 0 } else { left })
            })
            .collect();
        let limits: Vec<Option<usize>> = self
            .config
            .callbacks
            .values()
            .map(|callback| callback.concurrency)
            .collect();
        let request = ClaimRequest {
            queue: self.queue,
            run: self.run,
            now: now_millis(),
            limit: want,
            callbacks: &capacities,
            limits: &limits,
            blocking: &self.blocking,
        };
        let write_tally = self.tally_written.elapsed() >= TALLY_EVERY;
        let settled =
            self.store
                .settle_and_claim(&self.settled, &request, &mut self.tally, write_tally)?;
        self.failed += settled.failed;
        for (id, fence) in &settled.stale {
            warn_stale(*id, *fence);
        }
        let claimed = settled.claimed;
        if write_tally {
            self.tally_written = Instant::now();
        }
        self.settled.clear();
        Ok(claimed)
    }

    /// Hands the callbacks of `jobs` to waiters, which start them. Each start is recorded in
    /// the lock file's log before the callback can run (its output pipe), and its process group
    /// once it runs, so that recovery finds every callback of a dead run. A job whose callback
    /// cannot be prepared is settled as failed.
    fn start_all(&mut self, jobs: Vec<ClaimedJob>) -> anyhow::Result<()> {
        // Every callback that ended has its outcome committed now (the claim did it), so only
        // the running ones need notes: a long log can shrink here. Looked at first, since this
        // runs for every claim and compacting is rare.
        if self.log.needs_compacting() {
            let running: Vec<Entry<'_>> = self
                .running
                .iter()
                .map(|(id, running)| Entry {
                    id: *id,
                    pipe: running.pipe,
                    group: running.group.as_ref(),
                })
                .collect();
            self.log.compact(&running)?;
        }
        let mut prepared = Vec::with_capacity(jobs.len());
        for job in jobs {
            let attempt = match self.config.callbacks.get(&job.callback) {
                Some(callback) => runner::prepare(&job, callback, &self.config.path),
                None => Err(format!(
                    "no callback `{}` in {}",
                    job.callback,
                    self.config.path.display()
                )),
            };
            match attempt {
                Ok(mut ready) => {
                    if self.store.spans_hosts() {
                        ready.die_with_parent();
                    }
                    prepared.push((job, ready));
                }
                Err(why) => {
                    self.settle(
                        &job,
                        Exit::NotStarted(why),
                        Vec::new(),
                        false,
                        Duration::ZERO,
                    );
                }
            }
        }
        let pipes: Vec<(i64, u64)> = prepared
            .iter()
            .map(|(job, ready)| (job.id, ready.pipe_inode()))
            .collect();
        self.log.starting(&pipes)?;
        for (job, ready) in prepared {
            *self
                .running_per_callback
                .entry(job.callback.clone())
                .or_default() += 1;
            let id = job.id;
            let pipe = ready.pipe_inode();
            let stop = ready.stop_handle();
            self.running.insert(
                id,
                Running {
                    job,
                    pipe,
                    group: None,
                    stop,
                    stop_requested: false,
                    since: Instant::now(),
                },
            );
            self.waiters.run(id, ready, self.running.len())?;
        }
        Ok(())
    }

    fn handle(&mut self, event: Event) -> anyhow::Result<()> {
        match event {
            Event::Started { id, group } => self.callback_started(id, group),
            Event::NotStarted { id, why } => self.not_started(id, &why),
            Event::Finished { id, exit, output } => self.finish_running(id, exit, output),
            Event::DatabaseWritten => Ok(()),
        }
    }

    /// Records the process group of a callback that started (see `start_all`).
    fn record_group(&mut self, id: i64, group: ProcessRecord) -> anyhow::Result<()> {
        if let Err(err) = self.log.started(&[(id, &group)]) {
            // Unrecorded, the group could outlive us unseen: stop it; recovery re-runs the job.
            process_group::signal_group(group.pid, nix::sys::signal::Signal::SIGKILL);
            return Err(err);
        }
        if let Some(running) = self.running.get_mut(&id) {
            lock_groups(&self.groups).insert(id, group.pid);
            if let Some(guard) = &mut self.guard {
                guard
                    .add(group.pid)
                    .context("cannot tell the callbacks' guard of a callback")?;
            }
            running.group = Some(group);
        }
        Ok(())
    }

    fn finish_running(&mut self, id: i64, exit: Exit, output: Vec<u8>) -> anyhow::Result<()> {
        let Running {
            job,
            stop_requested,
            since,
            ..
        } = self.take_running(id)?;
        self.settle(&job, exit, output, stop_requested, since.elapsed());
        Ok(())
    }

    /// Forgets the running job `id`, whose callback ended or could not start.
    fn take_running(&mut self, id: i64) -> anyhow::Result<Running> {
        let Some(running) = self.running.remove(&id) else {
            bail!("a callback of job {id} ended that was not running");
        };
        if let Some(pgid) = lock_groups(&self.groups).remove(&id)
            && let Some(guard) = &mut self.guard
        {
            guard
                .remove(pgid)
                .context("cannot tell the callbacks' guard of a callback's end")?;
        }
        if let Some(count) = self.running_per_callback.get_mut(&running.job.callback) {
            *count = count.saturating_sub(1);
        }
        Ok(running)
    }

    /// The callback of a claimed job started: it is logged, its process group recorded, and a
    /// broken mark of its callback deleted.
    fn callback_started(&mut self, id: i64, group: Option<ProcessRecord>) -> anyhow::Result<()> {
        if let Some(group) = group {
            self.record_group(id, group)?;
        }
        let Some(running) = self.running.get(&id) else {
            return Ok(());
        };
        let job = &running.job;
        self.activity.start(&job_event(job), now_millis());
        if !self.marked.contains(&job.callback) && !self.broken.contains_key(&job.callback) {
            return Ok(());
        }
        let callback = job.callback.clone();
        self.store.callback_started(self.queue, &callback)?;
        self.marked.remove(&callback);
        if self.broken.remove(&callback).is_some() {
            crate::diagnostic!(
                "bgq: callback `{}` of queue `{}` starts again",
                escape::line(&callback),
                escape::line(self.queue)
            );
        }
        Ok(())
    }

    /// The callback of claimed job `id` could not be started (`why`): a deployment problem, not
    /// the job's (SPEC section 5). The job goes back as it was, spending no attempt; this run
    /// starts no more jobs of that callback (a watch run tries again after a poll interval);
    /// stderr hears of it once per run; the run exits 1; `status` reports the callback.
    fn not_started(&mut self, id: i64, why: &str) -> anyhow::Result<()> {
        let Running { job, .. } = self.take_running(id)?;
        // Not a job this run started.
        self.started = self.started.saturating_sub(1);
        let now = now_millis();
        if !self.store.unclaim(id, job.fence, why, now)? {
            warn_stale(id, job.fence);
        }
        self.marked.insert(job.callback.clone());
        self.activity.not_started(&job_event(&job), why, now);
        let first = !self.broken.contains_key(&job.callback);
        self.broken.insert(
            job.callback.clone(),
            Broken {
                reason: why.to_owned(),
                at: Instant::now(),
            },
        );
        if first {
            let retry = match self.watch_poll {
                Some(poll) => format!(
                    "this run tries again every {} and says when it starts",
                    crate::duration::format(poll)
                ),
                None => "this run starts no more of them".to_owned(),
            };
            crate::diagnostic!(
                "bgq: error: callback `{}` of queue `{}` cannot be started: {why}; its jobs stay as they were, spending no attempt (job {id} put back); {retry}",
                escape::line(&job.callback),
                escape::line(self.queue)
            );
        }
        Ok(())
    }

    /// Whether jobs of `callback` wait for now because it could not be started: for the rest
    /// of a cron run, until the next poll of a watch run.
    fn held_back(&self, callback: &str) -> bool {
        self.broken.get(callback).is_some_and(|broken| {
            self.watch_poll
                .is_none_or(|poll| broken.at.elapsed() < poll)
        })
    }

    /// Reads which callbacks of this queue are marked broken.
    fn read_broken_marks(&mut self) -> anyhow::Result<()> {
        self.marked = self
            .store
            .broken_callbacks()?
            .into_iter()
            .filter(|broken| broken.queue == self.queue)
            .map(|broken| broken.callback)
            .collect();
        Ok(())
    }

    /// Stops the callbacks of the running jobs that `bgq cancel --kill` marked, looking at most
    /// every TICK (a mark is not worth a read per job).
    fn stop_cancelled(&mut self) -> anyhow::Result<()> {
        if self.running.is_empty() || self.cancels_checked.elapsed() < TICK {
            return Ok(());
        }
        self.cancels_checked = Instant::now();
        for id in self.store.cancels_requested(self.queue, self.run)? {
            if let Some(running) = self.running.get_mut(&id)
                && !running.stop_requested
            {
                running.stop.request();
                running.stop_requested = true;
            }
        }
        Ok(())
    }

    /// Decides how a run ended; the result is committed with the next claim. A callback
    /// `stopped` for `bgq cancel --kill` that did not exit 0 leaves its job CANCELLED, neither a
    /// failure nor a notice.
    fn settle(
        &mut self,
        job: &ClaimedJob,
        exit: Exit,
        mut output: Vec<u8>,
        stopped: bool,
        ran: Duration,
    ) {
        let now = now_millis();
        let end = if stopped {
            RunEnd::Stopped(&exit)
        } else {
            RunEnd::Exited(&exit)
        };
        let attempted = Attempted {
            attempts: job.attempts,
            notified: job.notified,
        };
        let transition = outcome::decide(
            &attempted,
            end,
            &self.rules(&job.callback),
            now,
            random_spread(job.id),
        );
        let ended = outcome::attempt_end(end, transition.state);
        self.activity.end(
            &job_event(job),
            &ended,
            transition.state,
            Millis::try_from(ran.as_millis()).unwrap_or(Millis::MAX),
            now,
        );
        let cancelled = transition.state == JobState::Cancelled;
        if cancelled {
            end_line(
                &mut output,
                &format!("stopped by `bgq cancel --kill` ({exit})"),
            );
        } else if !matches!(exit, Exit::Code(_)) {
            end_line(&mut output, &exit.to_string());
        }
        self.settled.push(Completion {
            id: job.id,
            fence: job.fence,
            state: transition.state,
            run_at: transition.run_at,
            due_now: transition.due_now,
            uncount_attempt: transition.uncount_attempt,
            output,
            ended_at: now,
            notified: transition.notified_now,
            notice: transition.notice,
            ended,
            history: self.config.history,
        });
    }

    /// The rules that decide what a run's end does to a job of `callback`.
    fn rules(&self, callback: &str) -> Rules<'_> {
        static DEFAULT_POLICY: std::sync::LazyLock<RetryPolicy> =
            std::sync::LazyLock::new(RetryPolicy::default);
        Rules {
            retry: self
                .config
                .callbacks
                .get(callback)
                .map_or(&*DEFAULT_POLICY, |callback| &callback.retry),
            notify_on_attempts: self.config.notify_on_attempts,
            // A cron run leaves a WAITING job to the next run; a watch run to `waiting_delay`.
            waiting_delay: self.watch_poll.map(|_| self.config.waiting_delay),
        }
    }

    /// Sends the notices this run (and any earlier run that died first) stored, as one digest,
    /// then forgets them; returns whether it sent any. A run started by `publish --process`
    /// has no stderr anyone reads: without a `notify` command it leaves them to the next run.
    fn send_notices(&mut self) -> anyhow::Result<bool> {
        if self.on_demand && self.config.notify.is_none() {
            return Ok(false);
        }
        let pending = self.store.pending_notices(self.queue)?;
        if pending.is_empty() {
            return Ok(false);
        }
        let ids: Vec<i64> = pending.iter().map(|notice| notice.id).collect();
        let notices: Vec<Notice> = pending
            .into_iter()
            .map(|pending| Notice {
                job_id: pending.job_id,
                job: pending.job,
                output: pending.output,
                reason: pending.reason,
                kind: pending.kind,
            })
            .collect();
        notify::send_digest(self.config.notify.as_deref(), &notices);
        self.store.delete_notices(&ids)?;
        Ok(true)
    }

    /// Puts back jobs a dead run left PROCESSING, after killing what is left of their callbacks.
    /// The notes of jobs that still run under a live `process` are kept until they are
    /// recovered: that run may yet die.
    fn recover_orphans(&mut self) -> anyhow::Result<()> {
        let notes = self.log.read()?;
        let mut kept = Vec::new();
        let mut live_runs = Vec::new();
        let orphans = self.store.orphans(self.queue)?;
        for orphan in &orphans {
            let runner = orphan.claimed_by.as_ref();
            match orphan.liveness {
                Liveness::Dead => {
                    self.recover(orphan, notes.of(orphan.id, runner))?;
                }
                // Another host's run: its jobs are its own while it lives.
                Liveness::Alive if !orphan.here => {}
                Liveness::Alive if self.store.spans_hosts() => {
                    // A run of this host that holds another lock file: another temp_dir, or
                    // another queue's run started before ours.
                    kept.push(orphan.id);
                    live_runs.extend(runner);
                }
                Liveness::Alive => {
                    let pid = runner.map_or(0, |runner| runner.pid);
                    crate::diagnostic!(
                        "bgq: warning: job {} is running under another live `process` (pid {pid}) that \
                         holds a different lock: give every config of this database the same temp_dir",
                        orphan.id
                    );
                    kept.push(orphan.id);
                    live_runs.extend(runner);
                }
            }
        }
        self.log.begin(&self.me, &notes, &kept, &live_runs)
    }

    /// Recovers the jobs of runs of other hosts that died while this one works (a queue shared
    /// by hosts): at most every `RECOVER_EVERY`, one indexed read when nothing died.
    fn recover_dead_elsewhere(&mut self) -> anyhow::Result<bool> {
        if !self.store.spans_hosts() || self.recovered.elapsed() < RECOVER_EVERY {
            return Ok(false);
        }
        self.recovered = Instant::now();
        let dead: Vec<Orphan> = self
            .store
            .orphans(self.queue)?
            .into_iter()
            .filter(|orphan| orphan.liveness == Liveness::Dead && orphan.fence.run != self.run)
            .collect();
        if dead.is_empty() {
            return Ok(false);
        }
        let notes = self.log.read()?;
        for orphan in &dead {
            self.recover(orphan, notes.of(orphan.id, orphan.claimed_by.as_ref()))?;
        }
        Ok(true)
    }

    fn recover(&mut self, orphan: &Orphan, started: Started) -> anyhow::Result<()> {
        let recorded = match &started {
            Started::Noted(recorded) => recorded.clone(),
            Started::Never | Started::Unknown => Default::default(),
        };
        let by_group = recorded.group.as_ref().map(|group| {
            (
                group.pid,
                process_group::kill_orphan(group, ORPHAN_KILL_WAIT),
            )
        });
        // Whoever still holds its output pipe is part of the callback too: this also finds a
        // callback whose run died before recording its group.
        let by_pipe = recorded.pipe.map_or(0, |pipe| {
            process_group::kill_pipe_holders(pipe, ORPHAN_KILL_WAIT)
        });
        let group = match (by_group, by_pipe) {
            (Some((pgid, OrphanGroup::Killed)), _) => {
                format!("its callback (process group {pgid}) was killed")
            }
            (_, found) if found > 0 => {
                format!("its callback ({found} process(es) holding its output) was killed")
            }
            (Some((_, OrphanGroup::PidReused)), _) => {
                "its callback was no longer running (pid reused)".to_owned()
            }
            (Some((_, OrphanGroup::Gone)), _) => "its callback was no longer running".to_owned(),
            (None, _) if recorded.pipe.is_some() => "its callback was no longer running".to_owned(),
            (None, _) if started == Started::Never => "its callback had not started".to_owned(),
            // Callbacks die with their run (parent-death signal), and the run stops them when
            // it loses the database, before its jobs can be recovered here.
            (None, _) if !orphan.here => {
                "it ran on another host, where its callback stopped with its run".to_owned()
            }
            // Noted elsewhere (another temp_dir), or by a bgq that noted no runs: nothing here
            // names what to stop.
            (None, _) => {
                "whether its callback started is unknown (the lock file has no notes of its run)"
                    .to_owned()
            }
        };
        let now = now_millis();
        let why = "the `process` run running it died";
        if orphan.cancel_requested {
            // `bgq cancel --kill` marked it, and the run died before ending it (or cancel did).
            crate::diagnostic!(
                "bgq: recovered job {} ({}): {why}; {group}; it becomes CANCELLED, as `bgq cancel --kill` asked",
                orphan.id,
                escape::line(&orphan.callback)
            );
            let output = format!("bgq: {why}; {group}\n").into_bytes();
            self.store
                .end_cancel(orphan.id, orphan.fence, &output, now, self.config.history)?;
            return Ok(());
        }
        let attempted = Attempted {
            attempts: orphan.attempts,
            notified: orphan.notified,
        };
        let transition = outcome::decide(
            &attempted,
            RunEnd::Lost,
            &self.rules(&orphan.callback),
            now,
            random_spread(orphan.id),
        );
        let output = format!("bgq: {why}; {group}\n").into_bytes();
        let report = format!(
            "{why}; {group}; attempt {} counted, {}",
            orphan.attempts,
            if transition.due_now {
                "it runs again now"
            } else {
                "no retries left"
            }
        );
        let say = || {
            crate::diagnostic!(
                "bgq: recovered job {} ({}): {report}",
                orphan.id,
                escape::line(&orphan.callback)
            );
        };
        // On one machine, said before it is stored: if we die in between, the line shows twice,
        // never not at all. Where runs of other hosts may recover the same job at the same
        // moment, only the one whose recovery is stored says so (its notice goes out anyway).
        let shared = self.store.spans_hosts();
        if !shared {
            say();
        }
        // The digest carries it too; a retry notice or a permanent failure says more.
        let notice = transition
            .notice
            .unwrap_or((NoticeKind::Orphan, format!("recovered: {report}")));
        let ended = outcome::attempt_end(RunEnd::Lost, transition.state);
        let applied = self.store.complete(&Completion {
            id: orphan.id,
            fence: orphan.fence,
            state: transition.state,
            run_at: transition.run_at,
            due_now: transition.due_now,
            uncount_attempt: false,
            output,
            ended_at: now,
            notified: transition.notified_now,
            notice: Some(notice),
            ended,
            history: self.config.history,
        })?;
        if applied == Applied::Stored {
            let job = JobEvent {
                id: orphan.id,
                queue: self.queue,
                callback: &orphan.callback,
                attempt: orphan.fence.attempt,
            };
            self.activity.end(&job, &ended, transition.state, 0, now);
        }
        match applied {
            Applied::Stored if shared => say(),
            // Another host recovered it first.
            Applied::Stale if shared => {}
            Applied::Stale => warn_stale(orphan.id, orphan.fence),
            Applied::Stored | Applied::Cancelled => {}
        }
        Ok(())
    }

    /// Due jobs whose callback the config does not define wait; say so, since cron mails stderr.
    fn warn_unknown_callbacks(&mut self) -> anyhow::Result<()> {
        let known: Vec<&str> = self.config.callbacks.keys().map(String::as_str).collect();
        for (callback, count) in self.store.due_callbacks_not_in(self.queue, &known)? {
            crate::diagnostic!(
                "bgq: warning: {count} due job(s) of queue `{}` wait for callback `{}`, which {} does not define",
                escape::line(self.queue),
                escape::line(&callback),
                self.config.path.display()
            );
        }
        Ok(())
    }
}

/// What the activity log says of `job`.
fn job_event(job: &ClaimedJob) -> JobEvent<'_> {
    JobEvent {
        id: job.id,
        queue: &job.queue,
        callback: &job.callback,
        attempt: job.attempts,
    }
}

/// Says that an outcome was dropped because its claim no longer held the job.
fn warn_stale(id: i64, fence: Fence) {
    crate::diagnostic!(
        "bgq: warning: the outcome of job {id} (attempt {} of run {}) was dropped: another run recovered the job meanwhile",
        fence.attempt,
        fence.run
    );
}

/// Appends `bgq: WHAT` on a line of its own to a callback's output.
fn end_line(output: &mut Vec<u8>, what: &str) {
    if !output.is_empty() && !output.ends_with(b"\n") {
        output.push(b'\n');
    }
    output.extend_from_slice(format!("bgq: {what}\n").as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_jumps_are_rounded_as_people_say_them() {
        assert_eq!(crate::duration::format(rounded(86_399_781)), "1d");
        assert_eq!(crate::duration::format(rounded(5_400_400)), "90m");
        assert_eq!(crate::duration::format(rounded(61_600)), "62s");
        assert_eq!(crate::duration::format(rounded(1_200)), "1s");
    }
}
