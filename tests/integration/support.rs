//! A temp dir with a config, callback scripts and a way to run the real `bgq` binary in it.
//!
//! The database every test's config names comes from one place, [`Backend::from_env`], which
//! reads the environment variable `BGQ_TEST_DATABASE`:
//!
//! - unset or empty: `database = "bgq.sqlite"`, a SQLite file in each test's own temp dir;
//! - a `postgres://` or `postgresql://` URL: every test gets a schema of its own on that server
//!   (`schema = "t<pid>_<n>"` beside the URL in its config), made empty when the test starts
//!   and dropped when its [`TestEnv`] goes, so that tests running in parallel never see each
//!   other's jobs;
//! - anything else is an error, so that a typo never runs the suite on SQLite unnoticed.
//!
//! Tests of PostgreSQL alone (its SQL functions, PgBouncer) call [`TestEnv::postgres`]: on
//! SQLite they are skipped, except in CI (`CI=true`) when no server was given at all
//! (`BGQ_TEST_POSTGRES`), which fails them, so that CI never passes without PostgreSQL.
//!
//! A test that writes a config of its own takes that line from [`TestEnv::database_line`].
//! Tests that read, edit, corrupt, link or check the mode of the SQLite file itself are
//! SQLite-only by nature: they get its path from [`TestEnv::sqlite_file`] (or, when their own
//! config names a SQLite file, call [`sqlite_only`] first); under another backend these print
//! why the test is skipped and return `None` (or `false`), and the test returns at once rather
//! than fail for the wrong reason. Configs that are refused before any database is opened keep
//! naming `bgq.sqlite`: no backend is involved.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use serde_json::Value;
use tempfile::TempDir;

/// Result type for tests: any error fails the test with its message.
pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// The environment variable that names the database the tests run against (see the module
/// header).
pub const DATABASE_VAR: &str = "BGQ_TEST_DATABASE";

/// The SQLite file of the base settings, relative to the test's temp dir (and so to its config).
pub const SQLITE_FILE: &str = "bgq.sqlite";

/// The database the tests run against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file, [`SQLITE_FILE`], in each test's temp dir.
    Sqlite,
    /// A PostgreSQL server, by the URL given in [`DATABASE_VAR`].
    Postgres(String),
}

impl Backend {
    /// The backend [`DATABASE_VAR`] names: the one place that reads it.
    pub fn from_env() -> TestResult<Backend> {
        match std::env::var(DATABASE_VAR) {
            Err(std::env::VarError::NotPresent) => Ok(Backend::Sqlite),
            Ok(value) if value.is_empty() => Ok(Backend::Sqlite),
            Ok(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Backend::Postgres(url))
            }
            Ok(other) => Err(format!(
                "{DATABASE_VAR}={other:?}: expected it unset (SQLite) or a postgres:// URL"
            )
            .into()),
            Err(err) => Err(format!("{DATABASE_VAR}: {err}").into()),
        }
    }

    /// True on SQLite; otherwise prints why a SQLite-only test is skipped.
    fn runs_sqlite_only_test(&self) -> bool {
        if *self == Backend::Sqlite {
            return true;
        }
        eprintln!(
            "skipped: this test is about the SQLite file itself, and {DATABASE_VAR} names another database"
        );
        false
    }
}

/// True when the tests run on SQLite. Otherwise prints why the calling test, which only makes
/// sense for a SQLite file (its own config names one, or it reads the file itself), is
/// skipped: the test then returns `Ok(())` at once.
pub fn sqlite_only() -> TestResult<bool> {
    Ok(Backend::from_env()?.runs_sqlite_only_test())
}

/// The variable that names a PostgreSQL server for the tests of PostgreSQL alone, set by
/// `tests/run.sh` in both passes of the suite.
pub const POSTGRES_VAR: &str = "BGQ_TEST_POSTGRES";

/// A schema of its own on the test server, for one [`TestEnv`] (or one test, see
/// [`postgres_beside_sqlite`]): empty when made, dropped on drop.
pub struct TestSchema {
    url: String,
    name: String,
}

impl TestSchema {
    fn new(url: &str) -> TestResult<TestSchema> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let schema = TestSchema {
            url: url.to_owned(),
            name: format!("t{}_{n}", std::process::id()),
        };
        // A schema left by an earlier run whose process had the same id.
        schema.drop_schema()?;
        Ok(schema)
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn drop_schema(&self) -> TestResult {
        let mut client = postgres::Client::connect(&self.url, postgres::NoTls)?;
        // A watcher a test left behind may still hold a lock in it: give up rather than hang.
        client.batch_execute(&format!(
            "SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS {} CASCADE",
            self.name
        ))?;
        Ok(())
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        if let Err(err) = self.drop_schema() {
            eprintln!("note: schema {} left on the test server: {err}", self.name);
        }
    }
}

/// A schema of its own on the server [`POSTGRES_VAR`] names, beside a test's SQLite queue, for
/// the tests that need both at once (`bgq migrate`): they run in the suite's SQLite pass. In
/// the PostgreSQL pass, or without a server, prints why the test is skipped and returns
/// `None`; in CI (`CI=true`) a missing server fails the test instead.
pub fn postgres_beside_sqlite() -> TestResult<Option<TestSchema>> {
    if Backend::from_env()? != Backend::Sqlite {
        println!(
            "skipped: this test needs a SQLite queue beside a PostgreSQL one; it runs in the suite's SQLite pass, with {POSTGRES_VAR} as the server"
        );
        return Ok(None);
    }
    match std::env::var(POSTGRES_VAR) {
        Ok(url) if !url.is_empty() => Ok(Some(TestSchema::new(&url)?)),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "this test needs PostgreSQL: in CI, {POSTGRES_VAR} must name a server (tests/run.sh starts one)"
            );
            println!("skipped: this test needs PostgreSQL, and {POSTGRES_VAR} names no server");
            Ok(None)
        }
    }
}

/// One isolated bgq installation: a temp dir holding `bgq.toml`, the database, a lock dir and scripts.
pub struct TestEnv {
    dir: TempDir,
    backend: Backend,
    schema: Option<TestSchema>,
}

impl TestEnv {
    /// A temp dir with `bgq.toml` = the base settings followed by `extra` (callbacks, retry, ...).
    ///
    /// Base settings: [`TestEnv::database_line`], `temp_dir` = `<dir>/locks`.
    pub fn new(extra: &str) -> TestResult<Self> {
        let backend = Backend::from_env()?;
        let schema = match &backend {
            Backend::Sqlite => None,
            Backend::Postgres(url) => Some(TestSchema::new(url)?),
        };
        let env = TestEnv {
            dir: tempfile::tempdir()?,
            backend,
            schema,
        };
        fs::create_dir_all(env.path("locks"))?;
        env.write_config(extra)?;
        Ok(env)
    }

    /// Rewrites `bgq.toml` with the base settings and `extra`.
    pub fn write_config(&self, extra: &str) -> TestResult {
        let text = format!(
            "{}\ntemp_dir = \"{}\"\n{}\n",
            self.database_line(),
            self.path("locks").display(),
            extra
        );
        fs::write(self.config_path(), text)?;
        Ok(())
    }

    /// The `database = ...` line of the base settings, for configs a test writes itself: the
    /// SQLite file [`SQLITE_FILE`] next to the config, or the server of `BGQ_TEST_DATABASE`
    /// followed by a `schema = ...` line naming this test's own schema.
    pub fn database_line(&self) -> String {
        match (&self.backend, &self.schema) {
            (Backend::Postgres(url), Some(schema)) => format!(
                "database = {}\nschema = {}",
                toml_str(url),
                toml_str(&schema.name)
            ),
            _ => format!("database = {}", toml_str(SQLITE_FILE)),
        }
    }

    /// The server URL and schema of this test's PostgreSQL queue, for the tests of PostgreSQL
    /// alone. On SQLite: `None`, with a note that the test is skipped, or a failure in CI when
    /// no server was given at all, so that CI cannot pass without PostgreSQL.
    pub fn postgres(&self) -> Option<(String, String)> {
        if let (Backend::Postgres(url), Some(schema)) = (&self.backend, &self.schema) {
            return Some((url.clone(), schema.name.clone()));
        }
        assert!(
            std::env::var("CI").as_deref() != Ok("true")
                || std::env::var_os(POSTGRES_VAR).is_some(),
            "this test needs PostgreSQL: in CI, {POSTGRES_VAR} must name a server (tests/run.sh starts one)"
        );
        println!(
            "skipped: this test is PostgreSQL's; it runs in the suite's PostgreSQL pass ({DATABASE_VAR})"
        );
        None
    }

    /// True when this test's database is the SQLite file [`SQLITE_FILE`], for the few
    /// assertions of a test that hold only for a file (an error line naming it).
    pub fn on_sqlite(&self) -> bool {
        self.backend == Backend::Sqlite
    }

    /// Whether callbacks outlive a `process` run that dies: on SQLite they do, and the next
    /// run stops them (SPEC section 4); on PostgreSQL, where a job may be recovered on another
    /// host, they die with their run (SPEC section 10).
    pub fn orphans_outlive_their_run(&self) -> bool {
        self.on_sqlite()
    }

    /// After the `process` run of `callbacks` died: on SQLite, asserts they still run; on
    /// PostgreSQL, waits for them to be gone.
    pub fn expect_orphans_after_run_died(&self, callbacks: &[i32]) -> TestResult {
        if self.orphans_outlive_their_run() {
            assert!(
                callbacks.iter().all(|&pid| alive(pid)),
                "the orphaned callbacks live on"
            );
            return Ok(());
        }
        wait_for(
            "the callbacks to die with their run",
            Duration::from_secs(5),
            || callbacks.iter().all(|&pid| !alive(pid)),
        )
    }

    /// The SQLite file of this test's database, for a test that reads, edits, corrupts, links
    /// or checks the mode of the file itself. Under another backend there is no such file:
    /// prints why the test is skipped and returns `None`, and the test returns at once.
    pub fn sqlite_file(&self) -> Option<PathBuf> {
        self.backend
            .runs_sqlite_only_test()
            .then(|| self.path(SQLITE_FILE))
    }

    /// Writes `bgq.toml` with exactly `text` (no base settings).
    pub fn write_raw_config(&self, text: &str) -> TestResult {
        fs::write(self.config_path(), text)?;
        Ok(())
    }

    /// Path of `rel` inside the temp dir.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The temp dir itself.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Path of the config file.
    pub fn config_path(&self) -> PathBuf {
        self.path("bgq.toml")
    }

    /// Writes an executable `/bin/sh` script `name` with `body` and returns its absolute path.
    pub fn script(&self, name: &str, body: &str) -> TestResult<PathBuf> {
        let path = self.path(name);
        fs::write(&path, format!("#!/bin/sh\n{body}\n"))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        Ok(path)
    }

    /// `bgq --config <dir>/bgq.toml`, run in the temp dir, with `BGQ_CONFIG` removed.
    pub fn bgq(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bgq"));
        cmd.current_dir(self.root())
            .env_remove("BGQ_CONFIG")
            .arg("--config")
            .arg(self.config_path())
            .timeout(Duration::from_secs(60));
        cmd
    }

    /// `bgq --config ...` run under `faketime -f OFFSET` (e.g. `-20d`), the monotonic clock left
    /// alone (a faked one hangs Rust's timed waits).
    pub fn bgq_at(&self, offset: &str) -> Command {
        let mut cmd = Command::new("faketime");
        cmd.current_dir(self.root())
            .env_remove("BGQ_CONFIG")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .args(["-f", offset, env!("CARGO_BIN_EXE_bgq"), "--config"])
            .arg(self.config_path())
            .timeout(Duration::from_secs(60));
        cmd
    }

    /// `bgq` run in the temp dir without `--config` (for discovery tests).
    pub fn bgq_bare(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bgq"));
        cmd.current_dir(self.root())
            .env_remove("BGQ_CONFIG")
            .timeout(Duration::from_secs(60));
        cmd
    }

    /// Publishes `json` for `callback` with extra `args`, asserts success, returns the job id.
    pub fn publish_with(&self, callback: &str, json: &str, args: &[&str]) -> TestResult<i64> {
        let out = self
            .bgq()
            .args(["publish", callback, "--json", json])
            .args(args)
            .output()?;
        if !out.status.success() {
            return Err(format!("publish failed: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        Ok(String::from_utf8(out.stdout)?.trim().parse()?)
    }

    /// Publishes `json` for `callback`, returns the job id.
    pub fn publish(&self, callback: &str, json: &str) -> TestResult<i64> {
        self.publish_with(callback, json, &[])
    }

    /// Runs `bgq process` with `args`, asserts exit 0, returns its stderr.
    pub fn process(&self, args: &[&str]) -> TestResult<String> {
        let out = self.bgq().arg("process").args(args).output()?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            return Err(format!("process failed: {stderr}").into());
        }
        Ok(stderr)
    }

    /// Every job as `bgq list --json --limit 1000000` reports it, oldest first.
    pub fn jobs(&self) -> TestResult<Vec<Value>> {
        let out = self
            .bgq()
            .args(["list", "--json", "--limit", "1000000"])
            .output()?;
        if !out.status.success() {
            return Err(format!("list failed: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        let mut jobs = String::from_utf8(out.stdout)?
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<Vec<Value>, _>>()?;
        jobs.reverse();
        Ok(jobs)
    }

    /// The job with `id`, as `bgq list --json` reports it.
    pub fn job(&self, id: i64) -> TestResult<Value> {
        self.jobs()?
            .into_iter()
            .find(|job| job["id"].as_i64() == Some(id))
            .ok_or_else(|| format!("job {id} not listed").into())
    }

    /// The state of job `id`, e.g. `"FINISHED"`.
    pub fn state(&self, id: i64) -> TestResult<String> {
        Ok(self.job(id)?["state"]
            .as_str()
            .ok_or("job has no state")?
            .to_owned())
    }
}

/// Polls `condition` every 20 ms until it holds or `limit` passes; fails with `what` then.
pub fn wait_for(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) -> TestResult {
    let start = Instant::now();
    while start.elapsed() < limit {
        if condition() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("timed out after {limit:?} waiting for {what}").into())
}

/// Reads a file the callback scripts append to, one entry a line; empty when it does not exist.
pub fn read_lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .map(|text| text.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

// ---- Helpers for the `process` tests (protocol, retries, serial groups, concurrency, recovery, signals).

/// A TOML basic string holding `text` (quotes and backslashes escaped).
pub fn toml_str(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A `[callbacks.NAME]` table running `script` (an absolute path) with `extra` lines after `command`.
pub fn callback_toml(name: &str, script: &Path, extra: &str) -> String {
    format!(
        "[callbacks.{name}]\ncommand = [{}]\n{extra}\n",
        toml_str(&script.display().to_string())
    )
}

/// True when process `pid` exists and is not a zombie (a zombie counts as gone).
pub fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Sends `signal` (e.g. `"TERM"`, `"KILL"`) to `pid` with `kill(1)`.
pub fn send_signal(pid: u32, signal: &str) -> TestResult {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()?;
    if !status.success() {
        return Err(format!("kill -{signal} {pid} failed").into());
    }
    Ok(())
}

/// A spawned `bgq` that is SIGKILLed when dropped (so a failing test leaves nothing behind).
pub struct Spawned {
    pub child: std::process::Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Spawned {
    /// The pid of the spawned `bgq`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `limit` for the process to exit; returns its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> TestResult<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if start.elapsed() > limit {
                return Err(format!("bgq did not exit within {limit:?}").into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// What it printed on stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// What it printed on stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl TestEnv {
    /// Starts `bgq --config ... <args>` in the background; stdout/stderr go to files in the temp dir.
    pub fn spawn(&self, args: &[&str]) -> TestResult<Spawned> {
        self.spawn_with_env(args, &[])
    }

    /// [`TestEnv::spawn`] with these variables added to its environment.
    pub fn spawn_with_env(&self, args: &[&str], vars: &[(&str, &Path)]) -> TestResult<Spawned> {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let stdout = self.path(&format!("spawned-{n}.stdout"));
        let stderr = self.path(&format!("spawned-{n}.stderr"));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_bgq"))
            .current_dir(self.root())
            .env_remove("BGQ_CONFIG")
            .envs(vars.iter().copied())
            .arg("--config")
            .arg(self.config_path())
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(fs::File::create(&stdout)?)
            .stderr(fs::File::create(&stderr)?)
            .spawn()?;
        Ok(Spawned {
            child,
            stdout,
            stderr,
        })
    }

    /// Runs `bgq process <args>`, returns (exit code, stdout, stderr) without asserting anything.
    pub fn process_output(&self, args: &[&str]) -> TestResult<(i32, String, String)> {
        let out = self.bgq().arg("process").args(args).output()?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }
}

/// Shell lines that append `start ID NS` / `end ID NS` (nanosecond clock) to `log` around `sleep SECS`.
pub fn timed_body(log: &Path, secs: &str) -> String {
    let log = log.display();
    format!(
        "echo \"start $BGQ_JOB_ID $(date +%s%N)\" >> {log}\nsleep {secs}\necho \"end $BGQ_JOB_ID $(date +%s%N)\" >> {log}"
    )
}

/// A [`TestEnv`] with `concurrency` slots and one callback, `cb`, a [`timed_body`] of `secs`:
/// returns it and the callback's log.
pub fn timed_env(concurrency: usize, secs: &str) -> TestResult<(TestEnv, PathBuf)> {
    let env = TestEnv::new("")?;
    let log = env.path("times");
    let cb = env.script("cb.sh", &timed_body(&log, secs))?;
    env.write_config(&format!(
        "concurrency = {concurrency}\n{}",
        callback_toml("cb", &cb, "")
    ))?;
    Ok((env, log))
}

/// A [`TestEnv`] with one slot and one callback, `cb`, that appends its job id to `started`,
/// sleeps 1 s, then appends it to `ended`: returns it and the two files.
pub fn one_slow_slot_env() -> TestResult<(TestEnv, PathBuf, PathBuf)> {
    let env = TestEnv::new("")?;
    let started = env.path("started");
    let ended = env.path("ended");
    let cb = env.script(
        "cb.sh",
        &format!(
            "echo $BGQ_JOB_ID >> {s}\nsleep 1\necho $BGQ_JOB_ID >> {e}",
            s = started.display(),
            e = ended.display()
        ),
    )?;
    env.write_config(&format!(
        "concurrency = 1\n{}",
        callback_toml("cb", &cb, "")
    ))?;
    Ok((env, started, ended))
}

/// Parses a [`timed_body`] log into `(job id, start ns, end ns)`, sorted by start.
pub fn intervals(log: &Path) -> TestResult<Vec<(i64, u128, u128)>> {
    let mut starts = std::collections::BTreeMap::new();
    let mut out = Vec::new();
    for line in read_lines(log) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [kind, id, ns] = parts[..] else {
            return Err(format!("bad log line {line:?}").into());
        };
        let id: i64 = id.parse()?;
        let ns: u128 = ns.parse()?;
        match kind {
            "start" => {
                starts.insert(id, ns);
            }
            "end" => {
                let start = starts.remove(&id).ok_or("end without start")?;
                out.push((id, start, ns));
            }
            _ => return Err(format!("bad log line {line:?}").into()),
        }
    }
    if !starts.is_empty() {
        return Err(format!("jobs started but never ended: {starts:?}").into());
    }
    out.sort_by_key(|&(_, start, _)| start);
    Ok(out)
}

/// The largest number of intervals running at the same instant (an end at t comes before a start at t).
pub fn max_overlap(intervals: &[(i64, u128, u128)]) -> usize {
    let mut events: Vec<(u128, i32)> = Vec::new();
    for &(_, start, end) in intervals {
        events.push((start, 1));
        events.push((end, -1));
    }
    events.sort();
    let (mut now, mut max) = (0i32, 0i32);
    for (_, delta) in events {
        now += delta;
        max = max.max(now);
    }
    usize::try_from(max).unwrap_or(0)
}

/// The JSON objects a notify script appended to `path` (one after another, any whitespace between).
pub fn notices(path: &Path) -> TestResult<Vec<Value>> {
    let text = fs::read_to_string(path).unwrap_or_default();
    Ok(serde_json::Deserializer::from_str(&text)
        .into_iter::<Value>()
        .collect::<Result<Vec<_>, _>>()?)
}

/// A notify script that appends its stdin (one JSON object) to `notices.jsonl`; returns the `notify = [...]` line.
pub fn notify_line(env: &TestEnv) -> TestResult<String> {
    let out = env.path("notices.jsonl");
    let script = env.script(
        "notify.sh",
        &format!("cat >> {}; echo >> {}", out.display(), out.display()),
    )?;
    Ok(format!(
        "notify = [{}]",
        toml_str(&script.display().to_string())
    ))
}

// ---- Helpers for the config, publish, list, clear, locking and bad-input tests.

/// A [`TestEnv`] whose `bgq.toml` holds `extra` (top-level settings, `[retry]`, ...) followed by one
/// `[callbacks.NAME]` per `(NAME, BODY)`, each running the `/bin/sh` script `NAME.sh` with `BODY`.
///
/// `@ROOT@` in a body stands for the temp dir's absolute path.
pub fn env_with_callbacks(extra: &str, callbacks: &[(&str, &str)]) -> TestResult<TestEnv> {
    let env = TestEnv::new("")?;
    let root = env.root().display().to_string();
    let mut config = format!("{extra}\n");
    for (name, body) in callbacks {
        let script = env.script(&format!("{name}.sh"), &body.replace("@ROOT@", &root))?;
        config.push_str(&callback_toml(name, &script, ""));
    }
    env.write_config(&config)?;
    Ok(env)
}

/// Describes `out` for an error message: exit code, stdout and stderr.
pub fn describe(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\n--- stdout:\n{}--- stderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Checks a refused command: exit `code`, nothing on stdout, no panic, and a last stderr line that
/// starts with `bgq: error: ` and contains every one of `fragments`.
pub fn expect_error(out: &std::process::Output, code: i32, fragments: &[&str]) -> TestResult {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or("");
    let problem = if out.status.code() != Some(code) {
        Some(format!("expected exit {code}"))
    } else if stderr.contains("panicked") {
        Some("it panicked".to_owned())
    } else if !out.stdout.is_empty() {
        Some("expected nothing on stdout".to_owned())
    } else if !last.starts_with("bgq: error: ") {
        Some("expected a last stderr line starting with `bgq: error: `".to_owned())
    } else {
        fragments
            .iter()
            .find(|fragment| !last.contains(*fragment))
            .map(|fragment| format!("expected the error line to contain {fragment:?}"))
    };
    match problem {
        Some(problem) => Err(format!("{problem}; got {}", describe(out)).into()),
        None => Ok(()),
    }
}

/// Checks a refused command: exit in `codes`, nothing on stdout, no panic, and either a last stderr
/// line starting with `bgq: error: ` or (exit 2) the argument parser's own `error: ...` usage message.
pub fn expect_refused(out: &std::process::Output, codes: &[i32]) -> TestResult {
    let code = out.status.code();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let bgq_error = stderr
        .lines()
        .last()
        .is_some_and(|line| line.starts_with("bgq: error: "));
    let usage_error = code == Some(2) && stderr.starts_with("bgq: error: ");
    let problem = if !code.is_some_and(|code| codes.contains(&code)) {
        Some(format!("expected exit {codes:?}"))
    } else if stderr.contains("panicked") {
        Some("it panicked".to_owned())
    } else if !out.stdout.is_empty() {
        Some("expected nothing on stdout".to_owned())
    } else if !bgq_error && !usage_error {
        Some("expected `bgq: error: ...` or a usage error on stderr".to_owned())
    } else {
        None
    };
    match problem {
        Some(problem) => Err(format!("{problem}; got {}", describe(out)).into()),
        None => Ok(()),
    }
}

/// The permission bits of `path` (e.g. `0o600`).
pub fn mode_of(path: &Path) -> TestResult<u32> {
    Ok(fs::metadata(path)?.permissions().mode() & 0o777)
}

/// The `bgq-*.lock` files in `dir`, sorted.
pub fn lock_files(dir: &Path) -> TestResult<Vec<PathBuf>> {
    let mut locks = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with("bgq-") && name.ends_with(".lock") {
            locks.push(dir.join(name));
        }
    }
    locks.sort();
    Ok(locks)
}

/// Whether `faketime` can move the clock here. Without it a test is skipped with a printed
/// reason on a developer's machine, but fails in CI (`CI=true`), which installs it.
pub fn faketime_available() -> TestResult<bool> {
    let found = std::process::Command::new("faketime")
        .args(["-f", "+0d", "true"])
        .output()
        .is_ok_and(|out| out.status.success());
    if found {
        return Ok(true);
    }
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        return Err("faketime is not installed, and CI must run the clock tests".into());
    }
    eprintln!("skipped: faketime is not installed (apt-get install faketime)");
    Ok(false)
}

/// The ids `bgq list --json ARGS` prints, in its order.
pub fn listed_ids(env: &TestEnv, args: &[&str]) -> TestResult<Vec<i64>> {
    let out = env.bgq().args(["list", "--json"]).args(args).output()?;
    if !out.status.success() {
        return Err(format!("list --json {args:?}: {}", describe(&out)).into());
    }
    String::from_utf8(out.stdout)?
        .lines()
        .map(|line| {
            let job: Value = serde_json::from_str(line)?;
            job["id"]
                .as_i64()
                .ok_or_else(|| format!("no integer id in {line}").into())
        })
        .collect()
}

/// A callback script `name` that writes its pid to a file, then sleeps 30 s in that process:
/// returns the script and the pid file (written whole, by a rename).
pub fn hanging_callback(env: &TestEnv, name: &str) -> TestResult<(PathBuf, PathBuf)> {
    hanging_script(env, name, "")
}

/// [`hanging_callback`] that runs the shell lines `head` first.
fn hanging_script(env: &TestEnv, name: &str, head: &str) -> TestResult<(PathBuf, PathBuf)> {
    let pidfile = env.path(&format!("{name}.pid"));
    let script = env.script(
        name,
        &format!(
            "{head}\necho $$ > {p}.tmp\nmv {p}.tmp {p}\nexec sleep 30",
            p = pidfile.display()
        ),
    )?;
    Ok((script, pidfile))
}

/// Waits until a `process` has recorded the process group of job `id`'s callback in its lock
/// file (just after the callback started).
pub fn wait_for_group_record(env: &TestEnv, id: i64) -> TestResult {
    wait_for("the group's record", Duration::from_secs(10), || {
        lock_files(&env.path("locks")).is_ok_and(|locks| {
            locks.iter().any(|lock| {
                read_lines(lock)
                    .iter()
                    .any(|line| line.starts_with(&format!("G {id} ")))
            })
        })
    })
}

/// The process group id of `pid`, from `/proc/PID/stat`.
pub fn pgid_of(pid: i32) -> TestResult<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let (_, rest) = stat.rsplit_once(')').ok_or("bad /proc stat")?;
    // After the command name: state, ppid, pgrp.
    Ok(rest
        .split_whitespace()
        .nth(2)
        .ok_or("no pgrp in /proc stat")?
        .parse()?)
}

/// SIGKILLs process group `.0` when dropped, so a failing test leaves no sleeping callback behind.
pub struct KillGroupOnDrop(pub i32);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        // Never the test binary's own group.
        if pgid_of(std::process::id() as i32).is_ok_and(|own| own == self.0) {
            return;
        }
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0)])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// How [`hanging_job`] sets up its job and starts the run.
pub struct HangingJob<'a> {
    /// Shell lines the callback runs first (`trap '' TERM` makes it ignore SIGTERM).
    pub head: &'a str,
    /// Settings of the callback, after its `command`.
    pub settings: &'a str,
    /// The `bgq` arguments that start the run.
    pub run: &'a [&'a str],
    /// Leave `temp_dir` out of the config and start the run with `TMPDIR` set to this.
    pub tmpdir: Option<&'a Path>,
}

impl Default for HangingJob<'_> {
    fn default() -> Self {
        HangingJob {
            head: "",
            settings: "kill_grace = \"1s\"",
            run: &["process"],
            tmpdir: None,
        }
    }
}

/// One job of callback `hang` (a [`hanging_callback`] that runs `setup.head` first), started by
/// `setup.run`: the job id, the run, the callback's pid once it runs, and a guard that kills its
/// process group.
pub fn hanging_job(
    env: &TestEnv,
    setup: &HangingJob<'_>,
) -> TestResult<(i64, Spawned, i32, KillGroupOnDrop)> {
    let (script, pidfile) = hanging_script(env, "hang.sh", setup.head)?;
    let callback = callback_toml("hang", &script, setup.settings);
    let run = match setup.tmpdir {
        Some(tmpdir) => {
            env.write_raw_config(&format!("{}\n{callback}", env.database_line()))?;
            let id = env.publish("hang", "{}")?;
            (id, env.spawn_with_env(setup.run, &[("TMPDIR", tmpdir)])?)
        }
        None => {
            env.write_config(&callback)?;
            let id = env.publish("hang", "{}")?;
            (id, env.spawn(setup.run)?)
        }
    };
    wait_for("the callback to start", Duration::from_secs(15), || {
        pidfile.exists()
    })?;
    let pid: i32 = fs::read_to_string(&pidfile)?.trim().parse()?;
    let guard = KillGroupOnDrop(pgid_of(pid)?);
    Ok((run.0, run.1, pid, guard))
}

/// A real Unix user other than the one the tests run as, for the tests of what bgq trusts.
pub struct OtherUser {
    /// Its login name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its own group's gid.
    pub gid: u32,
}

impl OtherUser {
    /// `sh -c SCRIPT` run as this user (its own uid and gid, no supplementary groups).
    pub fn sh(&self, script: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new("setpriv");
        cmd.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .args(["--clear-groups", "--", "sh", "-c", script]);
        cmd
    }

    /// Runs `sh -c SCRIPT` as this user and asserts it succeeded.
    pub fn run(&self, script: &str) -> TestResult {
        let out = self.sh(script).output()?;
        if !out.status.success() {
            return Err(format!("`{script}` as {}: {}", self.name, describe(&out)).into());
        }
        Ok(())
    }
}

/// The user `bgq-test-other` with a group of its own, created as a system user the first time. Tests need
/// root for that: without it they are skipped with a printed reason on a developer's machine,
/// and fail in CI (`CI=true`), which runs as root.
pub fn other_user() -> TestResult<Option<OtherUser>> {
    static MADE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    const NAME: &str = "bgq-test-other";
    let _one_at_a_time = MADE
        .lock()
        .map_err(|_| "another test panicked making the user")?;
    let is_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0");
    if !is_root {
        if std::env::var("CI").is_ok_and(|ci| ci == "true") {
            return Err("the tests of other users' files need root, as CI runs them".into());
        }
        eprintln!("skipped: needs root to create the user {NAME}");
        return Ok(None);
    }
    let id_of = |flag: &str| -> Option<u32> {
        let out = std::process::Command::new("id")
            .args([flag, NAME])
            .output()
            .ok()?;
        std::str::from_utf8(&out.stdout).ok()?.trim().parse().ok()
    };
    let uid_of = || id_of("-u");
    if uid_of().is_none() {
        let out = std::process::Command::new("useradd")
            .args(["--system", "--user-group", "--no-create-home"])
            .args(["--shell", "/usr/sbin/nologin", NAME])
            .output()?;
        if !out.status.success() && uid_of().is_none() {
            return Err(format!("useradd {NAME}: {}", describe(&out)).into());
        }
    }
    let uid = uid_of().ok_or("the user was made but has no uid")?;
    let gid = id_of("-g").ok_or("the user was made but has no group")?;
    Ok(Some(OtherUser {
        name: NAME.to_owned(),
        uid,
        gid,
    }))
}

// ---- Helpers for the tests of how `publish` shapes jobs (delays_and_priorities, dependencies,
// unique_jobs, serial_failure), and of `retry` and `cancel`.

/// `[retry]` with no backoff, so a TEMPORARILY_FAILED job is due again in the next run.
const RETRY_NOW: &str = "[retry]\ndelay = \"0s\"\njitter = 0.0\n";

/// The callback of [`flip_env`]: appends `$BGQ_JOB_ID` to `log`; while the file `broken` exists,
/// the payload `"fail"` exits 1 (PERMANENTLY_FAILED) and `"again"` exits 75
/// (TEMPORARILY_FAILED). Any other payload, or any payload once `broken` is gone, finishes.
const FLIP_BODY: &str = "echo $BGQ_JOB_ID >> @ROOT@/log\n\
     p=$(cat)\n\
     if [ \"$p\" = '\"fail\"' ] && [ -e @ROOT@/broken ]; then exit 1; fi\n\
     if [ \"$p\" = '\"again\"' ] && [ -e @ROOT@/broken ]; then exit 75; fi\n\
     exit 0";

/// A [`TestEnv`] with the top-level settings `top`, [`RETRY_NOW`], and one callback per
/// `(NAME, EXTRA)` running [`FLIP_BODY`] with `EXTRA` lines (e.g. `serial_failure = "block"`).
/// The file `broken` exists: failing payloads fail until [`mend`] removes it.
pub fn flip_env(top: &str, callbacks: &[(&str, &str)]) -> TestResult<TestEnv> {
    let env = TestEnv::new("")?;
    let root = env.root().display().to_string();
    let script = env.script("flip.sh", &FLIP_BODY.replace("@ROOT@", &root))?;
    let mut config = format!("{top}\n{RETRY_NOW}");
    for (name, extra) in callbacks {
        config.push_str(&callback_toml(name, &script, extra));
    }
    env.write_config(&config)?;
    fs::write(env.path("broken"), "")?;
    Ok(env)
}

/// The plain [`flip_env`]: default settings and one callback `cb`.
pub fn cb_env() -> TestResult<TestEnv> {
    flip_env("", &[("cb", "")])
}

/// Removes `broken`: from now on every payload finishes.
pub fn mend(env: &TestEnv) -> TestResult {
    fs::remove_file(env.path("broken"))?;
    Ok(())
}

/// The job ids the [`flip_env`] callback ran, in the order it started them (one per run).
pub fn ran(env: &TestEnv) -> TestResult<Vec<i64>> {
    read_lines(&env.path("log"))
        .iter()
        .map(|line| {
            line.trim()
                .parse::<i64>()
                .map_err(|err| format!("bad log line {line:?}: {err}").into())
        })
        .collect()
}

/// `bgq publish cb --json PAYLOAD ARGS...`, not checked.
pub fn publish_out(env: &TestEnv, payload: &str, args: &[&str]) -> TestResult<Output> {
    Ok(env
        .bgq()
        .args(["publish", "cb", "--json", payload])
        .args(args)
        .output()?)
}

/// The id a successful publish printed: exit 0, stdout exactly one id line.
pub fn printed_id(out: &Output) -> TestResult<i64> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !stdout.ends_with('\n') || stdout.lines().count() != 1 {
        return Err(format!("expected exit 0 and one id line: {}", describe(out)).into());
    }
    Ok(stdout.trim().parse()?)
}

/// Runs `bgq ARGS...`, checks exit 0 and no panic, returns stdout.
pub fn stdout_of(env: &TestEnv, args: &[&str]) -> TestResult<String> {
    let out = env.bgq().args(args).output()?;
    if !out.status.success() || String::from_utf8_lossy(&out.stderr).contains("panicked") {
        return Err(format!("bgq {args:?}: {}", describe(&out)).into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// `bgq explain ID`: its one line, which starts with `job ID `.
pub fn explain(env: &TestEnv, id: i64) -> TestResult<String> {
    let text = stdout_of(env, &["explain", &id.to_string()])?;
    let lines: Vec<&str> = text.lines().collect();
    match lines[..] {
        [line] if line.starts_with(&format!("job {id} ")) => Ok(line.to_owned()),
        _ => Err(format!("explain {id}: expected one line `job {id} ...`, got {text:?}").into()),
    }
}

/// Checks that `line` contains every one of `fragments`.
pub fn assert_contains(line: &str, fragments: &[&str]) -> TestResult {
    match fragments.iter().find(|fragment| !line.contains(*fragment)) {
        Some(fragment) => Err(format!("expected {fragment:?} in {line:?}").into()),
        None => Ok(()),
    }
}

/// `bgq show ID --json` as one object.
pub fn show_json(env: &TestEnv, id: i64) -> TestResult<Value> {
    let text = stdout_of(env, &["show", &id.to_string(), "--json"])?;
    Ok(serde_json::from_str(text.trim())?)
}

/// `bgq retry ID` or `bgq cancel ID`, checked for exit 0.
pub fn operate(env: &TestEnv, command: &str, id: i64) -> TestResult {
    stdout_of(env, &[command, &id.to_string()])?;
    Ok(())
}

/// Checks that nothing is stored.
pub fn assert_no_jobs(env: &TestEnv, what: &str) -> TestResult {
    let jobs = env.jobs()?;
    if !jobs.is_empty() {
        return Err(format!("{what}: expected no job stored, got {jobs:?}").into());
    }
    Ok(())
}

/// The `attempts` of job `id` in `list --json`.
pub fn attempts(env: &TestEnv, id: i64) -> TestResult<i64> {
    env.job(id)?["attempts"]
        .as_i64()
        .ok_or_else(|| format!("job {id} has no integer attempts").into())
}

/// Starts `process` on a new job of callback `block`, whose script touches `started-<id>` in the
/// temp dir once it runs (and then waits); returns the job id and the running `process` once
/// the job is PROCESSING.
pub fn running_job(env: &TestEnv) -> TestResult<(i64, Spawned)> {
    let id = env.publish("block", "{}")?;
    let run = env.spawn(&["process"])?;
    let started = env.path(&format!("started-{id}"));
    wait_for("the callback to start", Duration::from_secs(15), || {
        started.exists()
    })?;
    assert_eq!(env.state(id)?, "PROCESSING");
    Ok((id, run))
}

// ---- Helpers for the tests whose callback logs its start and end, and for `--watch` runs.

/// A callback that logs `start ID NS` / `end ID NS` around an optional sleep read from its
/// payload (`{"sleep": "1.5"}`); any payload `"fail"` exits 1.
pub const TIMED_BY_PAYLOAD: &str = "p=$(cat)\n\
     echo \"start $BGQ_JOB_ID $(date +%s%N)\" >> @ROOT@/log\n\
     case \"$p\" in *fail*) exit 1;; esac\n\
     s=$(echo \"$p\" | sed -n 's/.*\"sleep\": *\"\\([0-9.]*\\)\".*/\\1/p')\n\
     [ -n \"$s\" ] && sleep \"$s\"\n\
     echo \"end $BGQ_JOB_ID $(date +%s%N)\" >> @ROOT@/log\n\
     exit 0";

/// The nanosecond time logged as `kind ID NS`, if logged.
pub fn logged(env: &TestEnv, kind: &str, id: i64) -> Option<u128> {
    read_lines(&env.path("log")).iter().find_map(|line| {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts[..] {
            [k, i, ns] if k == kind && i == id.to_string() => ns.parse().ok(),
            _ => None,
        }
    })
}

/// Waits until the watcher's run is recorded (it holds the lock and has looked once).
pub fn wait_for_watcher(env: &TestEnv) -> TestResult {
    wait_for("the watcher to start", Duration::from_secs(10), || {
        env.bgq()
            .args(["status"])
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("process --watch"))
    })
}

/// Polls (every 100 ms, to spare the CPU the parallel tests share) until job `id` is in `state`;
/// `check` runs each round and can fail early (e.g. when the watcher died).
pub fn wait_state_checked(
    env: &TestEnv,
    id: i64,
    state: &str,
    limit: Duration,
    mut check: impl FnMut() -> TestResult,
) -> TestResult {
    let start = Instant::now();
    loop {
        let now = env.state(id)?;
        if now == state {
            return Ok(());
        }
        check()?;
        if start.elapsed() > limit {
            return Err(
                format!("job {id} is still {now} after {limit:?}, expected {state}").into(),
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until job `id` is in `state` (no watcher involved).
pub fn wait_state(env: &TestEnv, id: i64, state: &str, limit: Duration) -> TestResult {
    wait_state_checked(env, id, state, limit, || Ok(()))
}

/// The ids a callback appended to `path`, one a line, sorted.
pub fn sorted_ids(path: &Path) -> TestResult<Vec<i64>> {
    let mut ids = read_lines(path)
        .iter()
        .map(|line| line.trim().parse())
        .collect::<Result<Vec<i64>, _>>()?;
    ids.sort_unstable();
    Ok(ids)
}

/// A [`TestEnv`] with `top` settings and a callback `cb` that appends its job id to `runs`
/// (one line per run), then runs the shell lines `after`.
pub fn env_recording_runs(top: &str, after: &str) -> TestResult<TestEnv> {
    let env = TestEnv::new("")?;
    let cb = env.script(
        "cb.sh",
        &format!("echo $BGQ_JOB_ID >> {}{after}", env.path("runs").display()),
    )?;
    env.write_config(&format!("{top}\n{}", callback_toml("cb", &cb, "")))?;
    Ok(env)
}
