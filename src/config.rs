//! The TOML configuration: where it is found, what it may say, and the resolved `Config` that
//! the rest of bgq reads (absolute paths, `Duration`s, every default filled in).
//!
//! Unknown keys are refused with their line: a typo in a crontab-driven tool must never be
//! silently ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::coord::lock::LockFolder;
use crate::coord::share::Sharing;
use crate::duration::ConfigDuration;
use crate::error::usage;
use crate::queue::backoff::RetryPolicy;

/// The environment variable naming the config file when `--config` is not given.
pub const CONFIG_ENV: &str = "BGQ_CONFIG";
/// The config file looked for in the current directory last.
pub const DEFAULT_CONFIG_FILE: &str = "bgq.toml";

/// How long a callback told to stop gets before SIGKILL, unless its `kill_grace` says.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);

/// The largest payload `publish` takes unless `max_payload` says: 16 MiB.
pub const DEFAULT_MAX_PAYLOAD: u64 = 16 << 20;
/// The largest `max_payload` may be: SQLite stores at most about 1 GB in one value, and a job
/// that large would be read whole by every run that starts it.
pub const MAX_MAX_PAYLOAD: u64 = 512 << 20;

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file it was read from (absolute).
    pub path: PathBuf,
    /// Where the queue is kept.
    pub database: Database,
    /// Where lock files live: `temp_dir`, or bgq's private folder when the config names none.
    pub lock_folder: LockFolder,
    /// Who may use the files bgq creates: its user alone, or the config's `group`.
    pub sharing: Sharing,
    /// Default queue for publish and process.
    pub queue: String,
    /// Callbacks running at once within one `process`.
    pub concurrency: usize,
    /// After this many failed attempts of one job, notify once.
    pub notify_on_attempts: u32,
    /// Command that receives notices as JSON on stdin; `None`: notices go to stderr.
    pub notify: Option<Vec<String>>,
    /// In `process --watch`, how long a WAITING job waits before it runs again.
    pub waiting_delay: Duration,
    /// How many attempts of each job its history keeps, the newest (`bgq show`); 0: none.
    pub history: u32,
    /// Whether every `publish` starts a detached `process` for its queue.
    pub process_on_publish: bool,
    /// What a printed id promises: `durability` (SQLite; PostgreSQL's server decides its own).
    pub durability: PublishDurability,
    /// The largest parameters (`--json`, `--raw`, a `--jsonl` line) `publish` takes, in bytes.
    pub max_payload: u64,
    /// Callbacks by name.
    pub callbacks: BTreeMap<String, Callback>,
}

/// How one callback name is run.
#[derive(Debug, Clone)]
pub struct Callback {
    /// argv, run without a shell.
    pub command: Vec<String>,
    /// Longest a run may take before its process group is killed.
    pub timeout: Duration,
    /// After a timeout, how long SIGTERM has to work before SIGKILL.
    pub kill_grace: Duration,
    /// Working directory of the command.
    pub working_dir: PathBuf,
    /// Variables added to the inherited environment.
    pub env: BTreeMap<String, String>,
    /// At most this many runs of this callback at once within one `process`.
    pub concurrency: Option<usize>,
    /// Retry schedule.
    pub retry: RetryPolicy,
    /// What a PERMANENTLY_FAILED job of this callback does to its serial group.
    pub serial_failure: SerialFailure,
}

/// The `durability` setting: what a published job survives once its id is printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishDurability {
    /// A power cut: the commit is on the disk before the id is printed.
    #[default]
    Full,
    /// A crash of any process, not a power cut or a kernel crash: the commit is in the
    /// operating system's cache when the id is printed.
    Normal,
}

/// What a PERMANENTLY_FAILED job does to its serial group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SerialFailure {
    /// The group goes on past it (SPEC section 7).
    #[default]
    Skip,
    /// It holds the group until an operator retries or cancels it.
    Block,
}

impl Config {
    /// Callbacks whose PERMANENTLY_FAILED jobs hold their serial group.
    pub fn blocking_callbacks(&self) -> Vec<&str> {
        self.callbacks
            .iter()
            .filter(|(_, callback)| callback.serial_failure == SerialFailure::Block)
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// The callback named `name`, or a usage error naming the configured ones.
    pub fn callback(&self, name: &str) -> anyhow::Result<&Callback> {
        self.callbacks.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.callbacks.keys().map(String::as_str).collect();
            let known = if known.is_empty() {
                "none are configured".to_owned()
            } else {
                format!("configured: {}", known.join(", "))
            };
            usage(format!(
                "unknown callback `{name}` in {} ({known})",
                self.path.display()
            ))
        })
    }
}

/// Finds the config file (`--config`, then `BGQ_CONFIG`, then `./bgq.toml`) and loads it.
pub fn load(flag: Option<&Path>) -> anyhow::Result<Config> {
    let path = locate(flag, std::env::var_os(CONFIG_ENV).map(PathBuf::from))?;
    let path = std::path::absolute(&path).map_err(|err| {
        usage(format!(
            "cannot resolve config path {}: {err}",
            path.display()
        ))
    })?;
    let text = std::fs::read(&path).map_err(|err| {
        let message = format!("cannot read config {}: {err}", path.display());
        // A missing file is a wrong path the user gave; any other failure to read it (a
        // folder, a disk error, no permission) is the machine's, not the input's.
        if err.kind() == std::io::ErrorKind::NotFound {
            usage(message)
        } else {
            anyhow::anyhow!(message)
        }
    })?;
    let text = String::from_utf8(text)
        .map_err(|_| usage(format!("{}: config is not valid UTF-8", path.display())))?;
    parse(&text, &path)
}

fn locate(flag: Option<&Path>, env: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = flag {
        return Ok(path.to_owned());
    }
    if let Some(path) = env.filter(|path| !path.as_os_str().is_empty()) {
        return Ok(path);
    }
    let local = PathBuf::from(DEFAULT_CONFIG_FILE);
    if local.exists() {
        return Ok(local);
    }
    Err(usage(format!(
        "no configuration found: pass --config PATH, set {CONFIG_ENV}, or create ./{DEFAULT_CONFIG_FILE}"
    )))
}

/// Parses config `text` read from `path` (absolute); relative paths resolve against its folder.
pub fn parse(text: &str, path: &Path) -> anyhow::Result<Config> {
    let raw: RawConfig = toml::from_str(text).map_err(|err| {
        let message = err.message().replace('\n', " ");
        let Some(start) = err.span().map(|span| span.start.min(text.len())) else {
            return usage(format!("{}: {message}", path.display()));
        };
        let line = text[..start].matches('\n').count() + 1;
        // A bad value's span starts after `key =`: name the key, since the message cannot.
        let before = &text[text[..start].rfind('\n').map_or(0, |at| at + 1)..start];
        match before.rfind('=').map(|eq| before[..eq].trim()) {
            Some(key) if !key.is_empty() => {
                usage(format!("{}:{line}: {key}: {message}", path.display()))
            }
            _ => usage(format!("{}:{line}: {message}", path.display())),
        }
    })?;
    let folder = path.parent().unwrap_or(Path::new("/"));
    resolve(raw, path, folder)
}

fn resolve(raw: RawConfig, path: &Path, folder: &Path) -> anyhow::Result<Config> {
    let base_retry = raw.retry.unwrap_or_default().apply(RetryPolicy::default());
    let callbacks = raw
        .callbacks
        .into_iter()
        .map(|(name, callback)| {
            let resolved = Callback {
                command: resolve_command(callback.command.0, folder),
                timeout: callback.timeout.map_or(Duration::from_secs(60), |t| t.0.0),
                kill_grace: callback.kill_grace.map_or(DEFAULT_KILL_GRACE, |d| d.0),
                working_dir: callback
                    .working_dir
                    .map_or_else(|| folder.to_owned(), |dir| folder.join(dir.0)),
                env: callback.env.0,
                concurrency: callback.concurrency.map(|count| count.0),
                retry: callback.retry.unwrap_or_default().apply(base_retry.clone()),
                serial_failure: callback.serial_failure.unwrap_or_default(),
            };
            (name, resolved)
        })
        .collect();
    if raw.queue.as_deref() == Some("") {
        return Err(usage(format!(
            "{}: queue must not be empty",
            path.display()
        )));
    }
    let sharing = match raw.group {
        None => Sharing::private(),
        Some(name) => Sharing::with_group(&name.0)
            .map_err(|why| usage(format!("{}: group: {why}", path.display())))?,
    };
    Ok(Config {
        path: path.to_owned(),
        database: match (raw.database, raw.schema) {
            (ConfigDatabase::Path(_), Some(_)) => {
                return Err(usage(format!(
                    "{}: schema: applies only to a PostgreSQL database, and `database` names a SQLite file",
                    path.display()
                )));
            }
            (ConfigDatabase::Path(path), None) => Database::Sqlite(folder.join(path)),
            (ConfigDatabase::Postgres(conninfo), schema) => Database::Postgres(PostgresTarget {
                conninfo,
                schema: schema.map_or_else(|| DEFAULT_SCHEMA.to_owned(), |schema| schema.0),
                host_id: host_id(raw.host_id.map(|name| name.0))?,
            }),
        },
        lock_folder: raw.temp_dir.map_or_else(
            || LockFolder::private_default(&sharing),
            |dir| LockFolder::named(folder.join(dir.0)),
        ),
        sharing,
        queue: raw.queue.unwrap_or_else(|| "general".to_owned()),
        concurrency: raw.concurrency.map_or(4, |count| count.0),
        notify_on_attempts: raw.notify_on_attempts.map_or(5, |count| count.0 as u32),
        notify: raw.notify.map(|command| resolve_command(command.0, folder)),
        waiting_delay: raw
            .waiting_delay
            .map_or(Duration::from_secs(60), |delay| delay.0),
        process_on_publish: raw.process_on_publish.unwrap_or(false),
        durability: raw.durability.unwrap_or_default(),
        history: raw.history.map_or(DEFAULT_HISTORY, |history| history.0),
        max_payload: raw.max_payload.map_or(DEFAULT_MAX_PAYLOAD, |size| size.0),
        callbacks,
    })
}

/// A program given as a relative path with a folder in it is relative to the config's folder;
/// a bare name is looked up in PATH as a shell would.
fn resolve_command(mut argv: Vec<String>, folder: &Path) -> Vec<String> {
    if let Some(program) = argv.first_mut()
        && program.contains('/')
        && !program.starts_with('/')
    {
        *program = folder.join(&*program).to_string_lossy().into_owned();
    }
    argv
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    database: ConfigDatabase,
    temp_dir: Option<ConfigPath>,
    group: Option<GroupName>,
    queue: Option<String>,
    concurrency: Option<Count>,
    notify_on_attempts: Option<Count>,
    notify: Option<CommandLine>,
    waiting_delay: Option<ConfigDuration>,
    history: Option<History>,
    process_on_publish: Option<bool>,
    durability: Option<PublishDurability>,
    max_payload: Option<MaxPayload>,
    retry: Option<RawRetry>,
    schema: Option<SchemaName>,
    host_id: Option<HostId>,
    #[serde(default)]
    callbacks: BTreeMap<String, RawCallback>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCallback {
    command: CommandLine,
    timeout: Option<Timeout>,
    kill_grace: Option<ConfigDuration>,
    working_dir: Option<ConfigPath>,
    #[serde(default)]
    env: Environment,
    concurrency: Option<Count>,
    retry: Option<RawRetry>,
    serial_failure: Option<SerialFailure>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    delay: Option<ConfigDuration>,
    multiplier: Option<Multiplier>,
    max_delay: Option<ConfigDuration>,
    jitter: Option<Jitter>,
    max_attempts: Option<Count>,
}

impl RawRetry {
    /// The settings given here, the rest taken from `base`.
    fn apply(self, base: RetryPolicy) -> RetryPolicy {
        RetryPolicy {
            delay: self.delay.map_or(base.delay, |d| d.0),
            multiplier: self.multiplier.map_or(base.multiplier, |m| m.0),
            max_delay: self.max_delay.map_or(base.max_delay, |d| d.0),
            jitter: self.jitter.map_or(base.jitter, |j| j.0),
            max_attempts: self.max_attempts.map_or(base.max_attempts, |c| c.0 as u32),
        }
    }
}

/// A whole number of at least 1 (concurrency, attempts).
struct Count(usize);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = i64::deserialize(deserializer)?;
        match usize::try_from(value) {
            Ok(count) if (1..=u32::MAX as usize).contains(&count) => Ok(Count(count)),
            _ => Err(serde::de::Error::custom(format!(
                "must be a whole number of at least 1, got {value}"
            ))),
        }
    }
}

/// How many attempts of each job are kept unless `history` says otherwise.
pub const DEFAULT_HISTORY: u32 = 10;
/// The most `history` may keep: each attempt keeps its output tail.
const MAX_HISTORY: u32 = 1000;

/// `history`: how many attempts of a job are kept, from 0 (none) to [`MAX_HISTORY`].
struct History(u32);

impl<'de> Deserialize<'de> for History {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = i64::deserialize(deserializer)?;
        match u32::try_from(value) {
            Ok(count) if count <= MAX_HISTORY => Ok(History(count)),
            _ => Err(serde::de::Error::custom(format!(
                "must be a whole number from 0 to {MAX_HISTORY}, got {value}"
            ))),
        }
    }
}

/// `max_payload`: a size from 1 byte to [`MAX_MAX_PAYLOAD`].
struct MaxPayload(u64);

impl<'de> Deserialize<'de> for MaxPayload {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let size = crate::size::ConfigSize::deserialize(deserializer)?.0;
        if !(1..=MAX_MAX_PAYLOAD).contains(&size) {
            return Err(serde::de::Error::custom(format!(
                "must be from 1 byte to {}, got {}",
                crate::size::format(MAX_MAX_PAYLOAD),
                crate::size::format(size)
            )));
        }
        Ok(MaxPayload(size))
    }
}

/// A non-empty argv whose program is not empty.
struct CommandLine(Vec<String>);

/// Reads an argv, and explains a command written as one string (which would need a shell to
/// split) by showing the list it stands for.
struct ArgvVisitor;

impl<'de> serde::de::Visitor<'de> for ArgvVisitor {
    type Value = Vec<String>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of strings, the program first")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
        let words: Vec<String> = text
            .split_whitespace()
            .map(|word| serde_json::Value::from(word).to_string())
            .collect();
        Err(E::custom(format!(
            "must be a list of arguments, not one string (bgq runs it without a shell): write `[{}]`",
            words.join(", ")
        )))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut argv = Vec::new();
        while let Some(arg) = seq.next_element::<String>()? {
            argv.push(arg);
        }
        Ok(argv)
    }
}

impl<'de> Deserialize<'de> for CommandLine {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let argv = deserializer.deserialize_any(ArgvVisitor)?;
        if argv.first().is_none_or(String::is_empty) {
            return Err(serde::de::Error::custom(
                "must be a non-empty array whose first element is the program",
            ));
        }
        if argv.iter().any(|arg| arg.contains('\0')) {
            return Err(serde::de::Error::custom("must not contain NUL bytes"));
        }
        Ok(CommandLine(argv))
    }
}

/// A group name (or number) for `group`: printable, no whitespace or `:`.
struct GroupName(String);

impl<'de> Deserialize<'de> for GroupName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        if name.is_empty()
            || name.len() > 256
            || name
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == ':')
        {
            return Err(serde::de::Error::custom(format!(
                "must be the name of a Unix group, got {name:?}"
            )));
        }
        Ok(GroupName(name))
    }
}

/// A non-empty path without NUL bytes.
struct ConfigPath(PathBuf);

/// A PostgreSQL schema name bgq can use unquoted: lower-case letters, digits and `_`, not
/// starting with a digit, at most 63 bytes (PostgreSQL's limit), not `pg_...`.
struct SchemaName(String);

impl<'de> Deserialize<'de> for SchemaName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        let plain = name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if name.is_empty()
            || name.len() > 63
            || !plain
            || name.starts_with(|c: char| c.is_ascii_digit())
            || name.starts_with("pg_")
        {
            return Err(serde::de::Error::custom(format!(
                "must be a plain PostgreSQL name (lower-case letters, digits and _, at most 63, not starting with a digit or pg_), got {name:?}"
            )));
        }
        Ok(SchemaName(name))
    }
}

/// A host name for `host_id`: printable, no whitespace, at most 200 bytes.
struct HostId(String);

impl<'de> Deserialize<'de> for HostId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        host_id_problem(&name).map_or(Ok(HostId(name)), |problem| {
            Err(serde::de::Error::custom(problem))
        })
    }
}

/// What is wrong with `name` as a host id, if anything.
fn host_id_problem(name: &str) -> Option<String> {
    (name.is_empty()
        || name.len() > 200
        || name.chars().any(|c| c.is_whitespace() || c.is_control()))
    .then(|| format!("must be 1 to 200 printable characters without spaces, got {name:?}"))
}

/// The environment variable that overrides `host_id`.
pub const HOST_ID_ENV: &str = "BGQ_HOST_ID";

/// This host's id: `BGQ_HOST_ID`, else the config's `host_id`, else hostname and boot id.
fn host_id(configured: Option<String>) -> anyhow::Result<String> {
    if let Some(value) = std::env::var_os(HOST_ID_ENV) {
        let value = value.to_string_lossy().into_owned();
        if let Some(problem) = host_id_problem(&value) {
            return Err(usage(format!("{HOST_ID_ENV}: {problem}")));
        }
        return Ok(value);
    }
    if let Some(name) = configured {
        return Ok(name);
    }
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_default();
    let hostname = if hostname.is_empty() {
        "localhost".to_owned()
    } else {
        hostname
    };
    Ok(format!(
        "{hostname}/{}",
        crate::coord::process_group::boot_id()
    ))
}

/// Where the queue is kept: the `database` setting, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file (absolute path).
    Sqlite(PathBuf),
    /// A PostgreSQL database.
    Postgres(PostgresTarget),
}

/// A PostgreSQL database and the schema bgq keeps its queue in.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresTarget {
    /// The connection string as written: a `postgres://` URL or libpq's `key=value` form. It may
    /// hold a password: never print it (see `Display`).
    pub conninfo: String,
    /// The schema of bgq's tables and functions.
    pub schema: String,
    /// This host's name among the runs of the queue: `BGQ_HOST_ID`, else `host_id`, else the
    /// machine's hostname and boot id. Runs with the same name may stop each other's
    /// callbacks; runs of other hosts never do.
    pub host_id: String,
}

impl std::fmt::Debug for PostgresTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PostgresTarget({self})")
    }
}

impl std::fmt::Display for PostgresTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (schema {})",
            redact_password(&self.conninfo),
            self.schema
        )
    }
}

/// The schema bgq uses in a PostgreSQL database unless `schema` says.
pub const DEFAULT_SCHEMA: &str = "bgq";

/// The PostgreSQL database `database` names, written as the `database` setting takes it (a
/// `postgres://` or `postgresql://` URL, or a libpq key=value string), with `schema` checked as
/// the `schema` setting is (default `bgq`), for `bgq migrate --to URL --schema NAME`. Anything
/// else is a usage error that never repeats the value (it may hold a password).
pub fn postgres_target(database: &str, schema: Option<&str>) -> anyhow::Result<PostgresTarget> {
    use serde::de::IntoDeserializer;
    type ValueError = serde::de::value::Error;
    let parsed =
        ConfigDatabase::deserialize(IntoDeserializer::<ValueError>::into_deserializer(database));
    let conninfo = match parsed {
        Ok(ConfigDatabase::Postgres(conninfo)) => conninfo,
        Ok(ConfigDatabase::Path(_)) => {
            return Err(usage(
                "--to: not a PostgreSQL database: give a postgres:// URL or a key=value connection string (host=... dbname=...)",
            ));
        }
        Err(err) => {
            let why = match url_scheme(database) {
                Some(scheme) => format!(
                    "the scheme `{}` is not PostgreSQL's",
                    crate::escape::line(scheme)
                ),
                None => err.to_string(),
            };
            return Err(usage(format!(
                "--to: {why}: give a postgres:// URL or a key=value connection string"
            )));
        }
    };
    let schema = match schema {
        None => DEFAULT_SCHEMA.to_owned(),
        Some(name) => {
            SchemaName::deserialize(IntoDeserializer::<ValueError>::into_deserializer(name))
                .map_err(|err| usage(format!("--schema: {err}")))?
                .0
        }
    };
    Ok(PostgresTarget {
        conninfo,
        schema,
        host_id: host_id(None)?,
    })
}

impl std::fmt::Display for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "{}", path.display()),
            Database::Postgres(target) => write!(f, "{target}"),
        }
    }
}

/// `conninfo` with any password replaced by `***`, fit to print.
pub fn redact_password(conninfo: &str) -> String {
    if url_scheme(conninfo).is_some() {
        // postgres://user:secret@host/db?password=secret
        let (before_query, query) = conninfo
            .split_once('?')
            .map_or((conninfo, None), |(a, b)| (a, Some(b)));
        let mut redacted = match before_query.split_once("://") {
            Some((scheme, rest)) => {
                let (authority, path) = rest
                    .split_once('/')
                    .map_or((rest, None), |(a, p)| (a, Some(p)));
                let authority = match authority.rsplit_once('@') {
                    Some((user, hosts)) => match user.split_once(':') {
                        Some((name, _)) => format!("{name}:***@{hosts}"),
                        None => authority.to_owned(),
                    },
                    None => authority.to_owned(),
                };
                match path {
                    Some(path) => format!("{scheme}://{authority}/{path}"),
                    None => format!("{scheme}://{authority}"),
                }
            }
            None => before_query.to_owned(),
        };
        if let Some(query) = query {
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                    _ => param.to_owned(),
                })
                .collect();
            redacted.push('?');
            redacted.push_str(&params.join("&"));
        }
        redacted
    } else {
        // key=value form: values may be quoted ('it''s'), so rebuild only what follows password=.
        let mut out = String::new();
        let mut rest = conninfo;
        while let Some(at) = find_keyword(rest, "password") {
            out.push_str(&rest[..at]);
            out.push_str("password=***");
            let value = rest[at..]
                .split_once('=')
                .map_or("", |(_, v)| v)
                .trim_start();
            rest = skip_conninfo_value(value);
        }
        out.push_str(rest);
        out
    }
}

/// Where `key=` starts in a key=value connection string (at the start or after whitespace).
fn find_keyword(text: &str, key: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(found) = text[from..].find(key) {
        let at = from + found;
        let before_ok = at == 0 || text[..at].ends_with(char::is_whitespace);
        let after = text[at + key.len()..].trim_start();
        if before_ok && after.starts_with('=') {
            return Some(at);
        }
        from = at + key.len();
    }
    None
}

/// What follows a key=value string's value that starts `value`.
fn skip_conninfo_value(value: &str) -> &str {
    if let Some(quoted) = value.strip_prefix('\'') {
        let mut chars = quoted.char_indices();
        while let Some((at, c)) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '\'' => return &quoted[at + 1..],
                _ => {}
            }
        }
        ""
    } else {
        value
            .find(char::is_whitespace)
            .map_or("", |end| &value[end..])
    }
}

/// The `database` setting as written: a path, or a URL (`scheme://...`). A URL is told from a
/// path by its scheme alone, so that neither is ever taken for the other: a file whose name
/// looks like a URL is written `./name`.
enum ConfigDatabase {
    Path(PathBuf),
    /// A `postgres://` URL or a libpq `key=value` string.
    Postgres(String),
}

/// libpq's connection keywords: a `database` whose first word is `KEYWORD=` is a key=value
/// connection string, not a file name (a file named so is written `./host=...`).
const CONNINFO_KEYWORDS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "passfile",
    "connect_timeout",
    "application_name",
    "options",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "target_session_attrs",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "channel_binding",
    "service",
];

/// Whether `text` is a libpq key=value connection string.
fn is_conninfo(text: &str) -> bool {
    // libpq allows spaces around `=`: `host = db dbname=app`.
    text.split_once('=')
        .is_some_and(|(key, _)| CONNINFO_KEYWORDS.contains(&key.trim()))
}

impl<'de> Deserialize<'de> for ConfigDatabase {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if let Some(scheme) = url_scheme(&text) {
            return match scheme.to_ascii_lowercase().as_str() {
                "postgres" | "postgresql" => Ok(ConfigDatabase::Postgres(text)),
                _ => Err(serde::de::Error::custom(format!(
                    "has the unknown scheme `{scheme}`: give the path of a SQLite file or a postgres:// URL"
                ))),
            };
        }
        if is_conninfo(&text) {
            return Ok(ConfigDatabase::Postgres(text));
        }
        if text.is_empty() || text.contains('\0') {
            return Err(serde::de::Error::custom(
                "must be a non-empty path without NUL bytes",
            ));
        }
        Ok(ConfigDatabase::Path(PathBuf::from(text)))
    }
}

/// The scheme of `text` when it is a URL (`scheme://`, the scheme as RFC 3986 spells one).
fn url_scheme(text: &str) -> Option<&str> {
    let (scheme, _) = text.split_once("://")?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    .then_some(scheme)
}

impl<'de> Deserialize<'de> for ConfigPath {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.is_empty() || text.contains('\0') {
            return Err(serde::de::Error::custom(
                "must be a non-empty path without NUL bytes",
            ));
        }
        Ok(ConfigPath(PathBuf::from(text)))
    }
}

/// Environment variables a callback gets: names without `=` or NUL, values without NUL.
#[derive(Default)]
struct Environment(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for Environment {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let vars = BTreeMap::<String, String>::deserialize(deserializer)?;
        for (name, value) in &vars {
            if name.is_empty() || name.contains(['=', '\0']) {
                return Err(serde::de::Error::custom(format!(
                    "`{}` is not a valid environment variable name",
                    name.escape_debug()
                )));
            }
            if value.contains('\0') {
                return Err(serde::de::Error::custom(format!(
                    "the value of `{name}` contains a NUL byte"
                )));
            }
        }
        Ok(Environment(vars))
    }
}

/// A callback timeout: a duration greater than zero.
struct Timeout(ConfigDuration);

impl<'de> Deserialize<'de> for Timeout {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let duration = ConfigDuration::deserialize(deserializer)?;
        if duration.0.is_zero() {
            return Err(serde::de::Error::custom("must be longer than 0s"));
        }
        Ok(Timeout(duration))
    }
}

/// A backoff multiplier of at least 1.
struct Multiplier(f64);

impl<'de> Deserialize<'de> for Multiplier {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = f64::deserialize(deserializer)?;
        if !(1.0..=1000.0).contains(&value) {
            return Err(serde::de::Error::custom(format!(
                "must be between 1.0 and 1000.0, got {value}"
            )));
        }
        Ok(Multiplier(value))
    }
}

/// A jitter fraction between 0 and 1.
struct Jitter(f64);

impl<'de> Deserialize<'de> for Jitter {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = f64::deserialize(deserializer)?;
        if !(0.0..=1.0).contains(&value) {
            return Err(serde::de::Error::custom(format!(
                "must be between 0.0 and 1.0, got {value}"
            )));
        }
        Ok(Jitter(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Config {
        parse(text, Path::new("/etc/bgq/bgq.toml")).expect("valid config")
    }

    fn parse_err(text: &str) -> String {
        let err = parse(text, Path::new("/etc/bgq/bgq.toml")).expect_err("invalid config");
        assert_eq!(crate::error::exit_code(&err), 2);
        format!("{err:#}")
    }

    #[test]
    fn a_command_written_as_a_string_is_shown_as_the_list_it_means() {
        let err = parse_err(
            "database = \"q.sqlite\"\n[callbacks.x]\ncommand = \"php bin/console app:x\"\n",
        );
        assert!(
            err.contains("bgq.toml:3: command: must be a list of arguments"),
            "{err}"
        );
        assert!(
            err.contains(r#"write `["php", "bin/console", "app:x"]`"#),
            "{err}"
        );
        let err = parse_err("database = \"q.sqlite\"\n[callbacks.x]\ncommand = 7\n");
        assert!(err.contains("an array of strings"), "{err}");
    }

    #[test]
    fn group_names_a_group_of_the_system() {
        let config = parse_ok("database = \"q.sqlite\"\ngroup = \"0\"\n");
        assert_eq!(config.sharing.group().map(|group| group.gid), Some(0));
        assert_eq!(
            parse_ok("database = \"q.sqlite\"\n").sharing,
            Sharing::private()
        );
        let err = parse_err("database = \"q.sqlite\"\ngroup = \"no-such-group-xyz\"\n");
        assert!(
            err.contains("group: there is no group `no-such-group-xyz`"),
            "{err}"
        );
        let err = parse_err("database = \"q.sqlite\"\ngroup = \"a b\"\n");
        assert!(err.contains("must be the name of a Unix group"), "{err}");
    }

    #[test]
    fn database_is_a_path_or_a_url_never_mistaken_for_the_other() {
        for (text, path) in [
            ("var/q.sqlite", "/etc/bgq/var/q.sqlite"),
            ("/srv/q:1.sqlite", "/srv/q:1.sqlite"),
            ("./postgres://x", "/etc/bgq/./postgres://x"),
            ("1x://y", "/etc/bgq/1x://y"),
            ("a b://c", "/etc/bgq/a b://c"),
        ] {
            let config = parse_ok(&format!("database = \"{text}\"\n"));
            assert_eq!(
                config.database,
                Database::Sqlite(PathBuf::from(path)),
                "{text}"
            );
        }
        for conninfo in [
            "postgres://u@db/app",
            "postgresql://db/app",
            "POSTGRES://db",
            "host=db dbname=app",
            "dbname = app user=u",
        ] {
            let config = parse_ok(&format!("database = \"{conninfo}\"\n"));
            let Database::Postgres(target) = &config.database else {
                panic!("{conninfo} is not PostgreSQL: {:?}", config.database);
            };
            assert_eq!(target.conninfo, conninfo);
            assert_eq!(target.schema, "bgq");
        }
        let err = parse_err("database = \"var/q.sqlite\"\nschema = \"x\"\n");
        assert!(
            err.contains("schema: applies only to a PostgreSQL database"),
            "{err}"
        );
        let err = parse_err("database = \"postgres://db/app\"\nschema = \"Bad-Name\"\n");
        assert!(err.contains("must be a plain PostgreSQL name"), "{err}");
        let err = parse_err("database = \"mysql://db/app\"\n");
        assert!(err.contains("has the unknown scheme `mysql`"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }

    #[test]
    fn migrate_targets_are_read_as_the_database_setting() {
        let target = postgres_target("postgresql://u:pw@db/app", None).expect("a URL");
        assert_eq!(
            (target.conninfo.as_str(), target.schema.as_str()),
            ("postgresql://u:pw@db/app", "bgq")
        );
        let target = postgres_target("host=db dbname=app", Some("queue_2")).expect("key=value");
        assert_eq!(target.schema, "queue_2");
        for (to, schema, expected) in [
            (
                "mysql://u:pw@db/app",
                None,
                "--to: the scheme `mysql` is not PostgreSQL's",
            ),
            ("var/q.sqlite", None, "--to: not a PostgreSQL database"),
            ("", None, "--to: must be a non-empty path"),
            (
                "postgres://db/app",
                Some("Bad-Name"),
                "--schema: must be a plain PostgreSQL name",
            ),
            (
                "postgres://db/app",
                Some("pg_x"),
                "--schema: must be a plain PostgreSQL name",
            ),
        ] {
            let err = postgres_target(to, schema).expect_err(to);
            let message = format!("{err:#}");
            assert!(message.starts_with(expected), "{to:?}: {message}");
            assert!(!message.contains("pw"), "{message}");
            assert_eq!(crate::error::exit_code(&err), 2);
        }
    }

    #[test]
    fn passwords_never_show() {
        for (conninfo, shown) in [
            (
                "postgres://u:secret@db:5432/app",
                "postgres://u:***@db:5432/app",
            ),
            (
                "postgres://u@db/app?password=secret&sslmode=require",
                "postgres://u@db/app?password=***&sslmode=require",
            ),
            (
                "host=db password=secret dbname=app",
                "host=db password=*** dbname=app",
            ),
            (
                r"host=db password='it\'s x' dbname=app",
                "host=db password=*** dbname=app",
            ),
            ("postgres://db/app", "postgres://db/app"),
        ] {
            assert_eq!(redact_password(conninfo), shown, "{conninfo}");
        }
    }

    #[test]
    fn minimal_config_gets_every_default() {
        let config = parse_ok("database = \"var/q.sqlite\"\n[callbacks.a]\ncommand = [\"true\"]\n");
        assert_eq!(
            config.database,
            Database::Sqlite(PathBuf::from("/etc/bgq/var/q.sqlite"))
        );
        assert_eq!(
            config.lock_folder,
            LockFolder::private_default(&Sharing::private())
        );
        assert!(config.lock_folder.is_private());
        assert_eq!(config.queue, "general");
        assert_eq!(config.concurrency, 4);
        assert_eq!(config.notify_on_attempts, 5);
        assert!(config.notify.is_none());
        let callback = &config.callbacks["a"];
        assert_eq!(callback.command, ["true"]);
        assert_eq!(callback.timeout, Duration::from_secs(60));
        assert_eq!(callback.working_dir, Path::new("/etc/bgq"));
        assert_eq!(callback.retry, RetryPolicy::default());
        assert_eq!(callback.serial_failure, SerialFailure::Skip);
        assert_eq!(config.waiting_delay, Duration::from_secs(60));
        assert!(!config.process_on_publish);
        assert_eq!(config.durability, PublishDurability::Full);
        assert!(config.blocking_callbacks().is_empty());
    }

    #[test]
    fn durability_is_full_or_normal() {
        let with = |value: &str| {
            format!("database = \"d\"\ndurability = {value}\n[callbacks.a]\ncommand = [\"x\"]\n")
        };
        assert_eq!(
            parse_ok(&with("\"normal\"")).durability,
            PublishDurability::Normal
        );
        assert_eq!(
            parse_ok(&with("\"full\"")).durability,
            PublishDurability::Full
        );
        let err = parse_err(&with("\"fast\""));
        assert!(
            err.contains(":2: durability: unknown variant `fast`, expected `full` or `normal`"),
            "{err}"
        );
        assert!(!err.contains('\n'), "one line: {err}");
        let err = parse_err(&with("true"));
        assert!(err.contains(":2: durability: "), "{err}");
    }

    #[test]
    fn serial_failure_block_is_read_per_callback() {
        let config = parse_ok(
            "database = \"d\"\nwaiting_delay = \"5s\"\nprocess_on_publish = true\n\
             [callbacks.a]\ncommand = [\"x\"]\nserial_failure = \"block\"\n\
             [callbacks.b]\ncommand = [\"x\"]\nserial_failure = \"skip\"\n",
        );
        assert_eq!(config.blocking_callbacks(), ["a"]);
        assert_eq!(config.waiting_delay, Duration::from_secs(5));
        assert!(config.process_on_publish);
        let err = parse_err(
            "database = \"d\"\n[callbacks.a]\ncommand = [\"x\"]\nserial_failure = \"maybe\"\n",
        );
        assert!(
            err.contains(":4: serial_failure: unknown variant `maybe`"),
            "{err}"
        );
    }

    #[test]
    fn relative_paths_resolve_against_the_config_folder() {
        let config = parse_ok(
            "database = \"db.sqlite\"\ntemp_dir = \"locks\"\nnotify = [\"bin/alert\", \"x/y\"]\n\
             [callbacks.a]\ncommand = [\"./run.sh\", \"data/file\"]\nworking_dir = \"app\"\n\
             [callbacks.b]\ncommand = [\"/usr/bin/env\"]\nworking_dir = \"/srv\"\n",
        );
        assert_eq!(config.lock_folder.path(), Path::new("/etc/bgq/locks"));
        assert!(!config.lock_folder.is_private());
        assert_eq!(
            config.notify.as_deref(),
            Some(&["/etc/bgq/bin/alert".to_owned(), "x/y".to_owned()][..])
        );
        assert_eq!(
            config.callbacks["a"].command,
            ["/etc/bgq/./run.sh", "data/file"]
        );
        assert_eq!(config.callbacks["a"].working_dir, Path::new("/etc/bgq/app"));
        assert_eq!(config.callbacks["b"].command, ["/usr/bin/env"]);
        assert_eq!(config.callbacks["b"].working_dir, Path::new("/srv"));
    }

    #[test]
    fn callback_retry_overrides_only_what_it_names() {
        let config = parse_ok(
            "database = \"d\"\n[retry]\ndelay = \"5s\"\nmax_attempts = 3\n\
             [callbacks.a]\ncommand = [\"x\"]\n[callbacks.a.retry]\nmax_attempts = 7\n\
             [callbacks.b]\ncommand = [\"x\"]\n",
        );
        let a = &config.callbacks["a"].retry;
        assert_eq!(a.delay, Duration::from_secs(5));
        assert_eq!(a.max_attempts, 7);
        assert_eq!(config.callbacks["b"].retry.max_attempts, 3);
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let err = parse_err("database = \"d\"\nconcurency = 3\n");
        assert!(
            err.starts_with("/etc/bgq/bgq.toml:2: unknown field `concurency`"),
            "{err}"
        );
        let err =
            parse_err("database = \"d\"\n[callbacks.a]\ncommand = [\"x\"]\ntimout = \"5s\"\n");
        assert!(
            err.starts_with("/etc/bgq/bgq.toml:4: unknown field `timout`"),
            "{err}"
        );
        let err = parse_err("database = \"d\"\n\n[retry]\ndelai = \"5s\"\n");
        assert!(
            err.starts_with("/etc/bgq/bgq.toml:4: unknown field `delai`"),
            "{err}"
        );
    }

    #[test]
    fn invalid_values_are_refused_with_their_line() {
        let cases = [
            (
                "database = \"d\"\nconcurrency = 0\n",
                ":2: concurrency: must be a whole number of at least 1",
            ),
            (
                "database = \"d\"\nconcurrency = -3\n",
                ":2: concurrency: must be a whole number of at least 1",
            ),
            (
                "database = \"d\"\n[callbacks.a]\ncommand = []\n",
                ":3: command: must be a non-empty",
            ),
            (
                "database = \"d\"\n[callbacks.a]\ncommand = [\"\"]\n",
                ":3: command: must be a non-empty",
            ),
            (
                "database = \"d\"\n[retry]\ndelay = \"-5s\"\n",
                ":3: delay: invalid duration `-5s`",
            ),
            (
                "database = \"d\"\n[retry]\njitter = 2.0\n",
                ":3: jitter: must be between",
            ),
            (
                "database = \"d\"\n[retry]\nmultiplier = 0.5\n",
                ":3: multiplier: must be between",
            ),
            (
                "database = \"d\"\n[callbacks.a]\ncommand = [\"x\"]\ntimeout = \"0s\"\n",
                ":4: timeout: must be longer",
            ),
            (
                "database = \"d\"\nconcurrency = \"four\"\n",
                ":2: concurrency: invalid type",
            ),
        ];
        for (text, expected) in cases {
            let err = parse_err(text);
            assert!(err.contains(expected), "{text:?} gave {err}");
        }
    }

    #[test]
    fn paths_and_environment_are_checked() {
        let cases = [
            (
                "database = \"\"\n",
                ":1: database: must be a non-empty path",
            ),
            (
                "database = \"d\"\n[callbacks.a]\ncommand = [\"x\"]\nenv = { \"A=B\" = \"1\" }\n",
                ":4: env: `A=B` is not a valid environment variable name",
            ),
            (
                "database = \"d\"\n[callbacks.a]\ncommand = [\"x\"]\nenv = { A = \"\\u0000\" }\n",
                ":4: env: the value of `A` contains a NUL byte",
            ),
            (
                "database = \"d\"\n[callbacks.a]\ncommand = [\"x\"]\nworking_dir = \"a\\u0000b\"\n",
                ":4: working_dir: must be a non-empty path without NUL bytes",
            ),
        ];
        for (text, expected) in cases {
            let err = parse_err(text);
            assert!(err.contains(expected), "{text:?} gave {err}");
        }
    }

    #[test]
    fn database_is_required() {
        let err = parse_err("queue = \"q\"\n");
        assert!(err.contains("missing field `database`"), "{err}");
    }

    #[test]
    fn unknown_callback_names_the_configured_ones() {
        let config = parse_ok(
            "database = \"d\"\n[callbacks.a]\ncommand = [\"x\"]\n[callbacks.b]\ncommand = [\"x\"]\n",
        );
        let err = config.callback("c").expect_err("unknown");
        assert_eq!(crate::error::exit_code(&err), 2);
        assert_eq!(
            err.to_string(),
            "unknown callback `c` in /etc/bgq/bgq.toml (configured: a, b)"
        );
    }

    #[test]
    fn discovery_prefers_flag_then_env() {
        let flag = Path::new("/a.toml");
        assert_eq!(
            locate(Some(flag), Some("/b.toml".into())).ok(),
            Some(flag.to_owned())
        );
        assert_eq!(
            locate(None, Some("/b.toml".into())).ok(),
            Some(PathBuf::from("/b.toml"))
        );
    }
}
