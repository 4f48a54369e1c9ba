//! PostgreSQL only: the fleet test (issue 15). Four `process --watch` runs serve one queue as
//! four hosts (each its own temp dir, lock folder and `BGQ_HOST_ID`) while publishers store jobs
//! with serial groups and `--after` chains, and the fleet is hurt: host 1 is SIGKILLed, host 2
//! SIGSTOPped for longer than the recovery delay, host 3 cut off from the database by a proxy
//! that stops forwarding, and PostgreSQL restarted once. Then every job must be FINISHED, no job
//! may have run twice at the same time, serial groups must have kept their order, and every
//! publish that printed an id must be there. Every job belongs to one batch (issue 18), sealed
//! when the publishers stop, whose completion job must be published exactly once, counting every
//! job. It prints a summary (`fleet: ...` lines).
//!
//! The server is the test's own (`tests/postgres-server.sh`), since it restarts it. The test
//! runs in the suite's PostgreSQL pass (`BGQ_TEST_DATABASE` a postgres URL) and says so and
//! returns on SQLite, except in CI without any server, which fails as [`TestEnv::postgres`] does.
//!
//! The test acts as supervisord: a watcher that exits (as one that lost its database must) is
//! started again, except while the test keeps a host down on purpose.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::support::*;

const SERVER_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/postgres-server.sh");
const BGQ: &str = env!("CARGO_BIN_EXE_bgq");

/// How long host 2 stays stopped: longer than `DEAD_AFTER` (12 s), so that a fleet judging
/// runs by a silent heartbeat alone would take its jobs.
const STOPPED_FOR: Duration = Duration::from_secs(15);
/// What the server's own keepalives on a run's session (idle 2 s, then 3 probes 1 s apart)
/// take to drop it once its client is silent. The proxy's kernel answers those probes, which a
/// real partition would leave unanswered, so at this bound the proxy closes its server-side
/// sockets as the server would have; the client side stays open and silent.
const SERVER_NOTICES_AFTER: Duration = Duration::from_secs(5);
/// Recovery of a dead run's jobs, from its death: `DEAD_AFTER` (12 s) after its last heartbeat,
/// looked for every second, with room for a loaded 2-core machine.
const RECOVERY_LIMIT: Duration = Duration::from_secs(25);

/// The nanoseconds since the epoch, the clock of the callbacks' `date +%s%N`.
fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

// ---- The test's own PostgreSQL server.

/// A throwaway server from `tests/postgres-server.sh`, stopped on drop.
struct Server {
    dir: tempfile::TempDir,
    url: String,
    port: u16,
}

impl Server {
    /// Starts one; `None` (with a note) when no PostgreSQL is installed, outside CI.
    fn start() -> TestResult<Option<Server>> {
        // Under /tmp, reachable by the `postgres` user the script runs the server as under root
        // (the script hands it the folder).
        let dir = tempfile::Builder::new()
            .prefix("bgq-fleet-pg.")
            .tempdir_in("/tmp")?;
        let out = Command::new(SERVER_SCRIPT)
            .arg("start")
            .arg(dir.path())
            .output()?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            let _ = Command::new(SERVER_SCRIPT)
                .arg("stop")
                .arg(dir.path())
                .output();
            if stderr.contains("no PostgreSQL found") {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "the fleet test needs PostgreSQL installed in CI: {stderr}"
                );
                println!("skipped: the fleet test starts a PostgreSQL of its own: {stderr}");
                return Ok(None);
            }
            return Err(format!("{SERVER_SCRIPT} start: {}", describe(&out)).into());
        }
        let url = String::from_utf8(out.stdout)?.trim().to_owned();
        let port = url
            .rsplit_once(':')
            .and_then(|(_, rest)| rest.split('/').next())
            .ok_or_else(|| format!("no port in {url:?}"))?
            .parse()?;
        Ok(Some(Server { dir, url, port }))
    }

    /// Restarts it on the same port: every session ends.
    fn restart(&self) -> TestResult {
        let out = Command::new(SERVER_SCRIPT)
            .arg("restart")
            .arg(self.dir.path())
            .output()?;
        if !out.status.success() {
            return Err(format!("{SERVER_SCRIPT} restart: {}", describe(&out)).into());
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new(SERVER_SCRIPT)
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

// ---- A TCP proxy that can cut its connections as a partition would.

/// One proxied connection. Both sockets are kept here so that a cut closes nothing by itself.
struct Link {
    client: TcpStream,
    server: Option<TcpStream>,
    cut: Arc<AtomicBool>,
}

#[derive(Default)]
struct ProxyState {
    cut: AtomicBool,
    stop: AtomicBool,
    links: Mutex<Vec<Link>>,
}

/// Forwards 127.0.0.1:`port` to the server. `cut` stops forwarding in both directions on every
/// connection (what arrives is dropped, nothing is closed) and black-holes new ones; `heal`
/// lets new connections through again (cut ones stay cut).
struct Proxy {
    port: u16,
    state: Arc<ProxyState>,
}

impl Proxy {
    fn start(target: u16) -> TestResult<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let state = Arc::new(ProxyState::default());
        let accepting = Arc::clone(&state);
        thread::Builder::new()
            .name("fleet-proxy".to_owned())
            .spawn(move || accept_loop(&listener, target, &accepting))?;
        Ok(Proxy { port, state })
    }

    fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        for link in lock(&self.state.links).iter() {
            link.cut.store(true, Ordering::SeqCst);
        }
        let state = Arc::clone(&self.state);
        thread::spawn(move || {
            thread::sleep(SERVER_NOTICES_AFTER);
            for link in lock(&state.links).iter() {
                if link.cut.load(Ordering::SeqCst)
                    && let Some(server) = &link.server
                {
                    let _ = server.shutdown(Shutdown::Both);
                }
            }
        });
    }

    fn heal(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        for link in lock(&self.state.links).iter() {
            let _ = link.client.shutdown(Shutdown::Both);
            if let Some(server) = &link.server {
                let _ = server.shutdown(Shutdown::Both);
            }
        }
    }
}

fn accept_loop(listener: &TcpListener, target: u16, state: &Arc<ProxyState>) {
    while !state.stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(_) => {
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if client.set_nonblocking(false).is_err() {
            continue;
        }
        if state.cut.load(Ordering::SeqCst) {
            // Behind a partition nothing answers: the connection is kept open and silent.
            lock(&state.links).push(Link {
                client,
                server: None,
                cut: Arc::new(AtomicBool::new(true)),
            });
            continue;
        }
        let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
            // The server is down (restarting): the client sees its connection refused-like end.
            continue;
        };
        let cut = Arc::new(AtomicBool::new(false));
        let pumps = (
            client.try_clone(),
            server.try_clone(),
            client.try_clone(),
            server.try_clone(),
        );
        let (Ok(c1), Ok(s1), Ok(c2), Ok(s2)) = pumps else {
            continue;
        };
        for (from, to) in [(c1, s1), (s2, c2)] {
            let cut = Arc::clone(&cut);
            let state = Arc::clone(state);
            thread::spawn(move || pump(from, to, &cut, &state));
        }
        lock(&state.links).push(Link {
            client,
            server: Some(server),
            cut,
        });
    }
}

/// Copies `from` to `to` until either ends (then closes both), or drops everything once cut.
fn pump(mut from: TcpStream, mut to: TcpStream, cut: &AtomicBool, state: &ProxyState) {
    // A timeout so that a stopped proxy's threads end.
    let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 16 * 1024];
    let close = |from: &TcpStream, to: &TcpStream| {
        // A partition forwards no end either.
        if !cut.load(Ordering::SeqCst) {
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
        }
    };
    while !state.stop.load(Ordering::SeqCst) {
        match from.read(&mut buf) {
            Ok(0) => return close(&from, &to),
            Ok(n) => {
                if cut.load(Ordering::SeqCst) {
                    continue;
                }
                if to.write_all(&buf[..n]).is_err() {
                    return close(&from, &to);
                }
            }
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return close(&from, &to),
        }
    }
}

// ---- The hosts, and the test as their supervisor.

struct Host {
    name: String,
    dir: PathBuf,
    config: PathBuf,
    child: Option<Child>,
    /// Started again when it exits.
    supervised: bool,
    restart_at: Option<Instant>,
    runs: usize,
    /// `(when, how it ended, its stderr file)` of every run that ended.
    exits: Vec<(u128, String, PathBuf)>,
}

impl Host {
    fn stderr_of(&self, run: usize) -> PathBuf {
        self.dir.join(format!("run-{run}.stderr"))
    }

    fn spawn(&mut self) -> TestResult {
        self.runs += 1;
        let stderr = fs::File::create(self.stderr_of(self.runs))?;
        let child = Command::new(BGQ)
            .current_dir(&self.dir)
            .env_remove("BGQ_CONFIG")
            .env("BGQ_HOST_ID", &self.name)
            .arg("--config")
            .arg(&self.config)
            .args(["process", "--watch"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    fn pid(&self) -> TestResult<u32> {
        Ok(self.child.as_ref().ok_or("the host is not running")?.id())
    }

    /// Notes the exit of its run, if it ended.
    fn reap(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if let Ok(Some(status)) = child.try_wait() {
            self.child = None;
            self.exits
                .push((now_ns(), format!("{status}"), self.stderr_of(self.runs)));
            self.restart_at = Some(Instant::now() + Duration::from_millis(300));
        }
    }
}

struct Fleet {
    hosts: Mutex<Vec<Host>>,
    stop: AtomicBool,
}

impl Fleet {
    /// Reaps ended runs and starts supervised hosts again (after 300 ms, as supervisord would
    /// after a quick exit), until `stop`.
    fn supervise(&self) {
        while !self.stop.load(Ordering::SeqCst) {
            for host in lock(&self.hosts).iter_mut() {
                host.reap();
                let due = host.restart_at.is_none_or(|at| Instant::now() >= at);
                if host.child.is_none()
                    && host.supervised
                    && due
                    && let Err(err) = host.spawn()
                {
                    eprintln!("fleet: cannot start {}: {err}", host.name);
                }
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn with<T>(&self, n: usize, f: impl FnOnce(&mut Host) -> TestResult<T>) -> TestResult<T> {
        let mut hosts = lock(&self.hosts);
        let host = hosts.get_mut(n - 1).ok_or("no such host")?;
        f(host)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for host in lock(&self.hosts).iter_mut() {
            if let Some(mut child) = host.child.take() {
                let _ = send_signal(child.id(), "CONT");
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

// ---- What the callbacks logged.

/// The callback: takes an exclusive lock on its job (and on its serial group) without waiting,
/// so that a second run of either at the same time is caught (`OVERLAP`), logs its start, sleeps
/// the payload's `ms`, logs its end. Lines are appended under a lock of their own.
const CALLBACK: &str = r#"S=@SHARED@
p=$(cat)
case $p in *'"unfinished_ids"'*) printf '%s\n' "$p" >> "$S/completions" ;; esac
ms=$(printf '%s' "$p" | sed -n 's/.*"ms":\([0-9]*\).*/\1/p')
[ -n "$ms" ] || ms=100
log() { { flock 9 && printf '%s\n' "$*" >> "$S/log"; } 9>>"$S/log.lock"; }
g=${BGQ_SERIAL_GROUP:--}
exec 8>"$S/locks/job-$BGQ_JOB_ID"
if ! flock -n 8; then log "OVERLAP job $BGQ_JOB_ID $BGQ_ATTEMPT $BGQ_HOST_ID $(date +%s%N) $g"; exit 1; fi
if [ "$g" != - ]; then
    exec 7>"$S/locks/group-$g"
    if ! flock -n 7; then log "OVERLAP group $BGQ_JOB_ID $BGQ_ATTEMPT $BGQ_HOST_ID $(date +%s%N) $g"; exit 1; fi
fi
log "start $BGQ_JOB_ID $BGQ_ATTEMPT $BGQ_HOST_ID $(date +%s%N) $g"
sleep $((ms / 1000)).$(printf '%03d' $((ms % 1000)))
log "end $BGQ_JOB_ID $BGQ_ATTEMPT $BGQ_HOST_ID $(date +%s%N) $g"
exit 0"#;

#[derive(Debug, Clone)]
struct Event {
    start: bool,
    job: i64,
    attempt: i64,
    host: String,
    ns: u128,
    group: Option<String>,
}

/// The start and end lines of the log, and its `OVERLAP` lines.
fn read_log(path: &Path) -> TestResult<(Vec<Event>, Vec<String>)> {
    let mut events = Vec::new();
    let mut overlaps = Vec::new();
    for line in read_lines(path) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts[..] {
            ["OVERLAP", ..] => overlaps.push(line.clone()),
            [kind @ ("start" | "end"), job, attempt, host, ns, group] => events.push(Event {
                start: kind == "start",
                job: job.parse()?,
                attempt: attempt.parse()?,
                host: host.to_owned(),
                ns: ns.parse()?,
                group: (group != "-").then(|| group.to_owned()),
            }),
            _ => return Err(format!("bad log line {line:?}").into()),
        }
    }
    Ok((events, overlaps))
}

/// The `(job, attempt)` runs `host` has started and not ended.
fn running_on(events: &[Event], host: &str) -> BTreeSet<(i64, i64)> {
    let mut running = BTreeSet::new();
    for event in events.iter().filter(|event| event.host == host) {
        if event.start {
            running.insert((event.job, event.attempt));
        } else {
            running.remove(&(event.job, event.attempt));
        }
    }
    running
}

/// Whether `host` started some job after `ns`.
fn started_since(events: &[Event], host: &str, ns: u128) -> bool {
    events
        .iter()
        .any(|event| event.start && event.host == host && event.ns > ns)
}

/// Every job's runs: `job -> [(attempt, host, start, end if logged)]`, by start.
type Runs = BTreeMap<i64, Vec<(i64, String, u128, Option<u128>)>>;

fn runs_of(events: &[Event]) -> Runs {
    let mut runs: Runs = BTreeMap::new();
    for event in events {
        let list = runs.entry(event.job).or_default();
        if event.start {
            list.push((event.attempt, event.host.clone(), event.ns, None));
        } else if let Some(run) = list.iter_mut().find(|(attempt, host, _, end)| {
            *attempt == event.attempt && *host == event.host && end.is_none()
        }) {
            run.3 = Some(event.ns);
        }
    }
    for list in runs.values_mut() {
        list.sort_by_key(|run| run.2);
    }
    runs
}

/// Waits until every run in `runs` was followed by a run of the same job on another host than
/// `dead`; returns the delays from `since` to each rerun's start.
fn wait_reruns(
    log: &Path,
    runs: &BTreeSet<(i64, i64)>,
    dead: &str,
    since: u128,
) -> TestResult<Vec<(i64, Duration)>> {
    let mut delays = Vec::new();
    wait_for(
        "the dead host's jobs to run elsewhere",
        RECOVERY_LIMIT,
        || {
            let Ok((events, _)) = read_log(log) else {
                return false;
            };
            delays = runs
                .iter()
                .filter_map(|&(job, attempt)| {
                    events
                        .iter()
                        .find(|event| {
                            event.start
                                && event.job == job
                                && event.attempt > attempt
                                && event.host != dead
                        })
                        .map(|event| {
                            let ns = event.ns.saturating_sub(since);
                            (
                                job,
                                Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX)),
                            )
                        })
                })
                .collect();
            delays.len() == runs.len()
        },
    )?;
    Ok(delays)
}

fn describe_delays(delays: &[(i64, Duration)]) -> String {
    if delays.is_empty() {
        return "none running".to_owned();
    }
    delays
        .iter()
        .map(|(job, delay)| format!("job {job} after {:.1} s", delay.as_secs_f64()))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---- Publishers.

/// A publish that printed its id.
#[derive(Debug, Clone)]
struct Acked {
    id: i64,
    group: Option<String>,
    after: Option<i64>,
}

#[derive(Default)]
struct Published {
    acked: Mutex<Vec<Acked>>,
    /// Publishes that exited non-zero (the server restarting): nothing was promised.
    failed: Mutex<Vec<String>>,
    stop: AtomicBool,
}

/// A small xorshift, so that runs differ but a failing one can be told by its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below.max(1)
    }
}

/// Runs `bgq publish` with `args`: `Ok(Some(id))` when it printed one, `Ok(None)` when it
/// failed (noted); an error when it hung.
fn publish_one(config: &Path, args: &[String], published: &Published) -> TestResult<Option<i64>> {
    let dir = tempfile::tempdir()?;
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = Command::new(BGQ)
        .env_remove("BGQ_CONFIG")
        .arg("--config")
        .arg(config)
        .arg("publish")
        .args(args)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path)?)
        .stderr(fs::File::create(&err_path)?)
        .spawn()?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("bgq publish {args:?} hung for 30 s").into());
        }
        thread::sleep(Duration::from_millis(5));
    };
    let stdout = fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = fs::read_to_string(&err_path).unwrap_or_default();
    if status.success() {
        let id = stdout
            .trim()
            .parse()
            .map_err(|err| format!("publish printed {stdout:?}: {err}"))?;
        return Ok(Some(id));
    }
    lock(&published.failed).push(format!("{status}: {}", stderr.trim()));
    Ok(None)
}

/// Publisher `kind` (0: chains of `--after` its own last job; 1: serial groups; 2: `--after`
/// a recent job of anyone), through the configs of `hosts` in turn, until told to stop.
fn publisher(
    kind: u64,
    configs: &[PathBuf],
    published: &Published,
    batch: &str,
    seed: u64,
) -> TestResult {
    let mut rng = Rng(seed | 1);
    let mut own_last = None;
    for n in 0..150u64 {
        if published.stop.load(Ordering::SeqCst) {
            break;
        }
        let long = match kind {
            0 => n % 5 == 4,
            1 => n % 8 == 7,
            _ => n % 4 == 3,
        };
        let ms = if long {
            if kind == 1 { 1500 } else { 2500 }
        } else {
            50 + rng.next(250)
        };
        let mut args = vec![
            "work".to_owned(),
            "--json".to_owned(),
            format!("{{\"kind\":{kind},\"n\":{n},\"ms\":{ms}}}"),
            "--batch".to_owned(),
            batch.to_owned(),
        ];
        let mut group = None;
        let mut after = None;
        match kind {
            0 if n % 3 != 0 => after = own_last,
            1 => group = Some(format!("g{}", n % 3)),
            2 if n % 2 == 1 => {
                let acked = lock(&published.acked);
                let recent = acked.len().saturating_sub(20);
                let pick = usize::try_from(rng.next(20)).unwrap_or(0);
                after = acked.get(recent + pick).map(|job| job.id);
            }
            _ => {}
        }
        if let Some(group) = &group {
            args.extend(["--serial-group".to_owned(), group.clone()]);
        }
        if let Some(after) = after {
            args.extend(["--after".to_owned(), after.to_string()]);
        }
        let config = &configs[usize::try_from(n).unwrap_or(0) % configs.len()];
        if let Some(id) = publish_one(config, &args, published)? {
            own_last = Some(id);
            lock(&published.acked).push(Acked { id, group, after });
        }
        thread::sleep(Duration::from_millis(120));
    }
    Ok(())
}

// ---- The test.

#[test]
fn four_hosts_lose_one_killed_one_stopped_one_cut_off_and_the_server_restarted_and_nothing_goes_wrong()
-> TestResult {
    let began = Instant::now();
    if Backend::from_env()? == Backend::Sqlite {
        assert!(
            std::env::var("CI").as_deref() != Ok("true")
                || std::env::var_os(POSTGRES_VAR).is_some(),
            "the fleet test needs PostgreSQL: in CI, {POSTGRES_VAR} must name a server (tests/run.sh starts one)"
        );
        println!(
            "skipped: the fleet test runs in the suite's PostgreSQL pass ({DATABASE_VAR}), on a server of its own"
        );
        return Ok(());
    }
    let Some(server) = Server::start()? else {
        return Ok(());
    };
    let root = tempfile::tempdir()?;
    let shared = root.path().join("shared");
    fs::create_dir_all(shared.join("locks"))?;
    let log = shared.join("log");
    let script = shared.join("work.sh");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\n{}\n",
            CALLBACK.replace("@SHARED@", &shared.display().to_string())
        ),
    )?;
    fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let proxy = Proxy::start(server.port)?;
    let proxied = server
        .url
        .replace(&format!(":{}/", server.port), &format!(":{}/", proxy.port));

    let mut hosts = Vec::new();
    for n in 1..=4 {
        let dir = root.path().join(format!("host{n}"));
        fs::create_dir_all(dir.join("locks"))?;
        let url = if n == 3 { &proxied } else { &server.url };
        let config = dir.join("bgq.toml");
        fs::write(
            &config,
            format!(
                "database = {}\ntemp_dir = {}\nconcurrency = 4\n\
                 [retry]\ndelay = \"0s\"\njitter = 0.0\n{}",
                toml_str(url),
                toml_str(&dir.join("locks").display().to_string()),
                callback_toml("work", &script, "timeout = \"30s\""),
            ) + &callback_toml("done", &script, "timeout = \"30s\""),
        )?;
        hosts.push(Host {
            name: format!("host-{n}"),
            dir,
            config,
            child: None,
            supervised: true,
            restart_at: None,
            runs: 0,
            exits: Vec::new(),
        });
    }
    let configs: Vec<PathBuf> = hosts.iter().map(|host| host.config.clone()).collect();
    // The schema, made once before the fleet starts, so that what follows is about the fleet;
    // every job joins one batch, whose completion job must be published once, whatever the
    // fleet goes through.
    let out = Command::new(BGQ)
        .arg("--config")
        .arg(&configs[3])
        .args(["batch", "new", "--on-complete", "done"])
        .output()?;
    if !out.status.success() {
        return Err(format!("bgq batch new: {}", describe(&out)).into());
    }
    let batch = String::from_utf8(out.stdout)?.trim().to_owned();

    let fleet = Arc::new(Fleet {
        hosts: Mutex::new(hosts),
        stop: AtomicBool::new(false),
    });
    let supervisor = {
        let fleet = Arc::clone(&fleet);
        thread::spawn(move || fleet.supervise())
    };
    let published = Arc::new(Published::default());
    let seed = u64::try_from(now_ns() % u128::from(u64::MAX)).unwrap_or(1);
    println!("fleet: seed {seed}");
    // Publishers go through hosts 1, 2 and 4: a publish behind the cut would only wait out its
    // connect timeout.
    let direct = vec![configs[0].clone(), configs[1].clone(), configs[3].clone()];
    let publishers: Vec<_> = (0..3u64)
        .map(|kind| {
            let published = Arc::clone(&published);
            let direct = direct.clone();
            let batch = batch.clone();
            thread::spawn(move || {
                publisher(
                    kind,
                    &direct,
                    &published,
                    &batch,
                    seed.wrapping_add(kind * 7919),
                )
                .map_err(|err| err.to_string())
            })
        })
        .collect();

    let result = chaos(&server, &proxy, &fleet, &log);
    published.stop.store(true, Ordering::SeqCst);
    let mut publisher_errors = Vec::new();
    for publisher in publishers {
        match publisher.join() {
            Ok(Ok(())) => {}
            Ok(Err(err)) => publisher_errors.push(err),
            Err(_) => publisher_errors.push("a publisher panicked".to_owned()),
        }
    }
    let timeline = result?;
    if !publisher_errors.is_empty() {
        return Err(format!("publishers: {publisher_errors:?}").into());
    }
    let out = Command::new(BGQ)
        .arg("--config")
        .arg(&configs[3])
        .args(["batch", "seal", &batch])
        .output()?;
    if !out.status.success() {
        return Err(format!("bgq batch seal: {}", describe(&out)).into());
    }

    // Every job finishes.
    let acked = lock(&published.acked).clone();
    let list = |config: &Path| -> TestResult<Vec<Value>> {
        let out = Command::new(BGQ)
            .arg("--config")
            .arg(config)
            .args(["list", "--json", "--limit", "1000000"])
            .output()?;
        if !out.status.success() {
            return Err(format!("bgq list: {}", describe(&out)).into());
        }
        Ok(String::from_utf8(out.stdout)?
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<Vec<Value>, _>>()?)
    };
    let mut jobs = Vec::new();
    let drained = wait_for("every job to finish", Duration::from_secs(60), || {
        thread::sleep(Duration::from_millis(400));
        match list(&configs[3]) {
            Ok(listed) => {
                jobs = listed;
                jobs.iter().all(|job| job["state"] == "FINISHED")
            }
            Err(_) => false,
        }
    });
    fleet.stop.store(true, Ordering::SeqCst);
    let _ = supervisor.join();
    if let Err(err) = drained {
        let unfinished: Vec<String> = jobs
            .iter()
            .filter(|job| job["state"] != "FINISHED")
            .map(|job| format!("{} {}", job["id"], job["state"]))
            .collect();
        return Err(format!("{err}: {unfinished:?}").into());
    }
    // The watchers end as asked.
    let mut ends = Vec::new();
    for host in lock(&fleet.hosts).iter_mut() {
        if let Some(child) = host.child.as_mut() {
            send_signal(child.id(), "TERM")?;
        }
    }
    for host in lock(&fleet.hosts).iter_mut() {
        if let Some(mut child) = host.child.take() {
            let started = Instant::now();
            let status = loop {
                if let Some(status) = child.try_wait()? {
                    break status;
                }
                if started.elapsed() > Duration::from_secs(30) {
                    let _ = child.kill();
                    return Err(format!("{} ignored SIGTERM for 30 s", host.name).into());
                }
                thread::sleep(Duration::from_millis(20));
            };
            ends.push(format!("{} {status}", host.name));
            host.exits.push((
                now_ns(),
                format!("{status} (SIGTERM)"),
                host.stderr_of(host.runs),
            ));
            assert!(status.success(), "{} ended {status} on SIGTERM", host.name);
        }
    }

    // The batch completed once, counting every job (the ones whose publish failed after its
    // commit too), each FINISHED.
    let completions = fs::read_to_string(shared.join("completions")).unwrap_or_default();
    // (Its job may run more than once, as any job: its summary is the same each time.)
    let ran: BTreeSet<&str> = completions.lines().collect();
    assert_eq!(ran.len(), 1, "one completion summary: {completions}");
    let summary: Value = serde_json::from_str(completions.lines().next().unwrap_or_default())?;
    assert_eq!(
        (
            summary["counts"]["FINISHED"].as_u64(),
            summary["unfinished_ids"].as_array().map(Vec::len)
        ),
        (u64::try_from(jobs.len() - 1).ok(), Some(0)),
        "{summary}"
    );
    let done = jobs.iter().filter(|job| job["callback"] == "done").count();
    assert_eq!(done, 1, "one completion job");
    println!("fleet: batch {batch} completed once: {summary}");

    verify(&fleet, &log, &acked, &jobs, &published, &timeline, began)
}

/// When the chaos happened, and what it showed on the way.
struct Timeline {
    notes: Vec<String>,
    kill: u128,
    cut: u128,
    restart: u128,
    /// When `pg_ctl restart` returned: a run started before this may have been cut short by it.
    restarted: u128,
}

/// Hurts the fleet while the publishers publish; returns when every host runs jobs again
/// after the server's restart.
fn chaos(server: &Server, proxy: &Proxy, fleet: &Fleet, log: &Path) -> TestResult<Timeline> {
    let mut notes = Vec::new();
    let events = || read_log(log).map(|(events, _)| events).unwrap_or_default();
    wait_for("every host to run jobs", Duration::from_secs(30), || {
        let events = events();
        (1..=4).all(|n| started_since(&events, &format!("host-{n}"), 0))
    })?;
    let busy = |n: usize| {
        let host = format!("host-{n}");
        wait_for(
            &format!("{host} to be running a job"),
            Duration::from_secs(20),
            || !running_on(&events(), &host).is_empty(),
        )
    };

    // Host 1 dies, and stays down until the others have its jobs (a machine that went away).
    busy(1)?;
    let kill = now_ns();
    fleet.with(1, |host| {
        host.supervised = false;
        send_signal(host.pid()?, "KILL")
    })?;
    let killed = running_on(&events(), "host-1");

    // Host 2 stops, its session held: nobody may take its jobs meanwhile.
    busy(2)?;
    let stop = now_ns();
    let stopped_at = Instant::now();
    fleet.with(2, |host| send_signal(host.pid()?, "STOP"))?;
    let stopped = running_on(&events(), "host-2");

    // Host 3 is cut off: it must stop its callbacks and exit 1 within 10 s or so.
    busy(3)?;
    let cut = now_ns();
    fleet.with(3, |host| {
        host.supervised = false;
        Ok(())
    })?;
    proxy.cut();
    let cut_off = running_on(&events(), "host-3");
    wait_for("host 3 to give up", Duration::from_secs(20), || {
        fleet
            .with(3, |host| {
                host.reap();
                Ok(host.child.is_none())
            })
            .unwrap_or(false)
    })?;
    let gave_up = fleet.with(3, |host| {
        let (when, status, stderr) = host.exits.last().cloned().ok_or("no exit noted")?;
        Ok((when, status, fs::read_to_string(stderr).unwrap_or_default()))
    })?;
    let gave_up_after = Duration::from_nanos(u64::try_from(gave_up.0.saturating_sub(cut))?);
    if !gave_up.1.contains("exit status: 1") || !gave_up.2.contains("lost the database") {
        return Err(format!(
            "host 3, cut off, ended {} saying {:?}",
            gave_up.1, gave_up.2
        )
        .into());
    }
    notes.push(format!(
        "host-3 cut off: exited 1 after {:.1} s ({})",
        gave_up_after.as_secs_f64(),
        gave_up.2.lines().last().unwrap_or("").trim()
    ));

    let from_kill = wait_reruns(log, &killed, "host-1", kill)?;
    notes.push(format!(
        "host-1 SIGKILLed with {} job(s) running: rerun elsewhere: {}",
        killed.len(),
        describe_delays(&from_kill)
    ));
    let from_cut = wait_reruns(log, &cut_off, "host-3", cut)?;
    notes.push(format!(
        "host-3 cut with {} job(s) running: rerun elsewhere: {}",
        cut_off.len(),
        describe_delays(&from_cut)
    ));
    for (job, delay) in &from_cut {
        // Host 3 had 10 s to stop its callbacks before another host could take its jobs.
        assert!(
            *delay >= Duration::from_secs(10),
            "job {job} of the cut-off host ran elsewhere {delay:?} after the cut"
        );
    }
    // Back: host 1 as after a reboot, host 3 with its network.
    proxy.heal();
    for n in [1, 3] {
        fleet.with(n, |host| {
            host.supervised = true;
            Ok(())
        })?;
    }

    // Host 2 goes on after its stop, and nobody took its jobs meanwhile.
    if let Some(rest) = STOPPED_FOR.checked_sub(stopped_at.elapsed()) {
        thread::sleep(rest);
    }
    let resumed = now_ns();
    fleet.with(2, |host| send_signal(host.pid()?, "CONT"))?;
    let during: Vec<String> = events()
        .iter()
        .filter(|event| {
            event.start
                && event.host != "host-2"
                && event.ns > stop
                && event.ns < resumed
                && stopped.iter().any(|&(job, _)| job == event.job)
        })
        .map(|event| format!("job {} on {}", event.job, event.host))
        .collect();
    assert!(
        during.is_empty(),
        "jobs of the stopped host 2 ran elsewhere while it was stopped: {during:?}"
    );
    wait_for("host 2 to run jobs again", Duration::from_secs(20), || {
        started_since(&events(), "host-2", resumed)
    })?;
    let rerun: Vec<i64> = {
        let runs = runs_of(&events());
        stopped
            .iter()
            .filter(|(job, _)| runs.get(job).is_some_and(|list| list.len() > 1))
            .map(|(job, _)| *job)
            .collect()
    };
    assert!(
        rerun.is_empty(),
        "jobs host 2 ran when it was stopped were run again: {rerun:?}"
    );
    let alive = fleet.with(2, |host| {
        host.reap();
        Ok(host.child.is_some() && host.runs == 1)
    })?;
    assert!(alive, "host 2 did not go on after SIGCONT");
    notes.push(format!(
        "host-2 SIGSTOPped {:.1} s with {} job(s) running: none ran elsewhere meanwhile, it went on after SIGCONT",
        Duration::from_nanos(u64::try_from(resumed.saturating_sub(stop))?).as_secs_f64(),
        stopped.len()
    ));

    // Every host runs again before the server restarts.
    wait_for(
        "hosts 1 and 3 to run jobs again",
        Duration::from_secs(20),
        || {
            let events = events();
            started_since(&events, "host-1", resumed) && started_since(&events, "host-3", resumed)
        },
    )?;
    let restart = now_ns();
    server.restart()?;
    let restarted = now_ns();
    let restarted_in = Duration::from_nanos(u64::try_from(restarted.saturating_sub(restart))?);
    wait_for(
        "every host to run jobs after the restart",
        Duration::from_secs(40),
        || {
            let events = events();
            (1..=4).all(|n| {
                started_since(
                    &events,
                    &format!("host-{n}"),
                    restart + restarted_in.as_nanos(),
                )
            })
        },
    )?;
    let back = Duration::from_nanos(u64::try_from(now_ns().saturating_sub(restart))?);
    let exits: Vec<String> = lock(&fleet.hosts)
        .iter()
        .flat_map(|host| {
            host.exits
                .iter()
                .filter(|(when, _, _)| *when > restart)
                .map(|(_, status, _)| format!("{} {status}", host.name))
                .collect::<Vec<_>>()
        })
        .collect();
    notes.push(format!(
        "PostgreSQL restarted in {:.1} s; watchers that ended: {exits:?}; every host ran jobs again {:.1} s after the restart began",
        restarted_in.as_secs_f64(),
        back.as_secs_f64()
    ));
    Ok(Timeline {
        notes,
        kill,
        cut,
        restart,
        restarted,
    })
}

/// The checks on what happened, and the summary.
fn verify(
    fleet: &Fleet,
    log: &Path,
    acked: &[Acked],
    jobs: &[Value],
    published: &Published,
    timeline: &Timeline,
    began: Instant,
) -> TestResult {
    let (events, overlaps) = read_log(log)?;
    assert!(overlaps.is_empty(), "runs at the same time: {overlaps:?}");
    let mut stderr = String::new();
    let mut restarts = Vec::new();
    for host in lock(&fleet.hosts).iter() {
        for run in 1..=host.runs {
            stderr.push_str(&fs::read_to_string(host.stderr_of(run)).unwrap_or_default());
        }
        restarts.push(format!("{} {} run(s)", host.name, host.runs));
    }
    assert!(
        !stderr.contains("panicked"),
        "a watcher panicked:\n{stderr}"
    );

    // No acknowledged publish is lost, and all finished.
    let states: BTreeMap<i64, String> = jobs
        .iter()
        .filter_map(|job| Some((job["id"].as_i64()?, job["state"].as_str()?.to_owned())))
        .collect();
    let lost: Vec<i64> = acked
        .iter()
        .filter(|job| states.get(&job.id).map(String::as_str) != Some("FINISHED"))
        .map(|job| job.id)
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged jobs lost or unfinished: {lost:?}"
    );

    // Each job's runs: one after another, each with a new attempt; the last one ended.
    let runs = runs_of(&events);
    for id in states.keys() {
        let list = runs
            .get(id)
            .ok_or_else(|| format!("job {id} finished but never ran"))?;
        for pair in list.windows(2) {
            assert!(
                pair[1].0 > pair[0].0,
                "job {id} ran twice as attempt {}: {list:?}",
                pair[0].0
            );
            if let Some(end) = pair[0].3 {
                assert!(end <= pair[1].2, "job {id}'s runs overlap: {list:?}");
            }
        }
    }
    let first_start = |id: i64| runs.get(&id).and_then(|list| list.first()).map(|run| run.2);
    let last_end = |id: i64| {
        runs.get(&id)
            .and_then(|list| list.iter().filter_map(|run| run.3).max())
    };
    // Serial order: a later member of a group starts only after the earlier one finished.
    let mut groups: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for job in acked {
        if let Some(group) = &job.group {
            groups.entry(group).or_default().push(job.id);
        }
    }
    // The callback saw the group it was published with (BGQ_SERIAL_GROUP).
    let group_of: BTreeMap<i64, Option<&String>> = acked
        .iter()
        .map(|job| (job.id, job.group.as_ref()))
        .collect();
    for event in &events {
        if let Some(group) = group_of.get(&event.job) {
            assert_eq!(
                event.group.as_ref(),
                *group,
                "job {}'s BGQ_SERIAL_GROUP",
                event.job
            );
        }
    }
    let mut ordered = 0;
    for (group, ids) in &mut groups {
        ids.sort_unstable();
        for pair in ids.windows(2) {
            let (Some(end), Some(start)) = (last_end(pair[0]), first_start(pair[1])) else {
                return Err(format!(
                    "group {group}: job {} or {} never ran to its end",
                    pair[0], pair[1]
                )
                .into());
            };
            assert!(
                end <= start,
                "group {group}: job {} started before job {} finished",
                pair[1],
                pair[0]
            );
            ordered += 1;
        }
    }
    // `--after`: a job starts only after its parent finished.
    let mut chained = 0;
    for job in acked {
        if let Some(parent) = job.after {
            let (Some(end), Some(start)) = (last_end(parent), first_start(job.id)) else {
                return Err(
                    format!("job {} or its parent {parent} never ran to its end", job.id).into(),
                );
            };
            assert!(
                end <= start,
                "job {} started before its parent {parent} finished",
                job.id
            );
            chained += 1;
        }
    }
    // Every rerun follows a reported recovery of its job.
    let mut recovered: BTreeMap<i64, usize> = BTreeMap::new();
    for line in stderr.lines() {
        if let Some(rest) = line.strip_prefix("bgq: recovered job ")
            && let Some(Ok(id)) = rest.split_whitespace().next().map(str::parse::<i64>)
        {
            *recovered.entry(id).or_default() += 1;
        }
    }
    let mut reruns = 0;
    let mut by_cause: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for (id, list) in &runs {
        let again = list.len().saturating_sub(1);
        reruns += again;
        assert!(
            again <= recovered.get(id).copied().unwrap_or(0),
            "job {id} ran {} times but {} recovery(ies) were reported: {list:?}",
            list.len(),
            recovered.get(id).copied().unwrap_or(0)
        );
        for pair in list.windows(2) {
            let (host, start) = (&pair[0].1, pair[0].2);
            let death = if host == "host-1" && start < timeline.kill {
                ("host-1 SIGKILL", timeline.kill)
            } else if host == "host-3" && start < timeline.cut {
                ("host-3 cut", timeline.cut)
            } else if start < timeline.restarted {
                ("server restart", timeline.restart)
            } else {
                ("other", start)
            };
            let delay = pair[1].2.saturating_sub(death.1) as f64 / 1e9;
            by_cause.entry(death.0).or_default().push(delay);
        }
    }
    let total_runs: usize = runs.values().map(Vec::len).sum();
    let completed: Vec<(i64, u128, u128)> = runs
        .iter()
        .flat_map(|(id, list)| {
            list.iter()
                .filter_map(move |run| Some((*id, run.2, run.3?)))
        })
        .collect();
    let max_per_job = runs
        .keys()
        .map(|id| {
            let own: Vec<_> = completed
                .iter()
                .copied()
                .filter(|run| run.0 == *id)
                .collect();
            max_overlap(&own)
        })
        .max()
        .unwrap_or(0);

    println!("fleet: --- summary ---");
    for note in &timeline.notes {
        println!("fleet: {note}");
    }
    println!(
        "fleet: jobs {} ({} acknowledged publishes, {} failed publishes while the server restarted, {} stored without an acknowledgement, 1 completion of their batch)",
        states.len(),
        acked.len(),
        lock(&published.failed).len(),
        states.len().saturating_sub(acked.len() + 1)
    );
    println!(
        "fleet: runs {total_runs}, reruns {reruns}, recoveries reported {}, overlaps 0, max concurrent runs of one job {max_per_job}",
        recovered.values().sum::<usize>()
    );
    for (cause, delays) in &by_cause {
        let min = delays.iter().copied().fold(f64::INFINITY, f64::min);
        let max = delays.iter().copied().fold(0.0, f64::max);
        println!(
            "fleet: reruns after {cause}: {} (start {min:.1}-{max:.1} s after it)",
            delays.len()
        );
    }
    println!(
        "fleet: serial order held over {ordered} consecutive pairs in {} groups; {chained} --after jobs started after their parent finished",
        groups.len()
    );
    println!("fleet: watcher runs: {}", restarts.join(", "));
    println!("fleet: time {:.1} s", began.elapsed().as_secs_f64());
    if let Some(failure) = lock(&published.failed).first() {
        println!("fleet: a failed publish said: {failure}");
    }
    Ok(())
}
