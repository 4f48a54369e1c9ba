//! Connecting to PostgreSQL: the connection string (a `postgres://` URL or libpq's key=value
//! form), the defaults libpq users expect from the environment (`PGHOST`, `PGPORT`, `PGUSER`,
//! `PGDATABASE`, `PGPASSWORD`, `PGPASSFILE` or `~/.pgpass`, `PGSSLMODE`, `PGSSLROOTCERT`,
//! `PGCONNECT_TIMEOUT`, `PGAPPNAME`), TLS as libpq's `sslmode` means it (see `tls`), timeouts
//! that turn a dead or silent server into an error within seconds, and a name for the database
//! that holds no secret.
//!
//! The client library parses most of the string; what it does not know of libpq's (`sslmode`
//! beyond `require`, `sslrootcert`, `passfile`) is taken out here first and acted on here.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context;

use super::tls::{self, SslMode};

/// What a connection is for: it sets how fast a dead peer is noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A command's own connection (publish, list, a run's claims).
    Command,
    /// A run's session, which holds its liveness lock and heartbeat: keepalives tight enough
    /// that the server drops it within seconds of the host going silent.
    Session,
}

/// How long connecting may take, handshake and login included, before it is an error.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a connection as `conninfo` says, completed within the connect timeout.
pub fn connect(conninfo: &str, purpose: Purpose) -> anyhow::Result<postgres::Client> {
    let target = Target::parse(conninfo, &Environment::of_process())?;
    let deadline = target.timeout;
    let name = identity(conninfo);
    let tls = tls::connector(target.ssl_mode, target.root_cert.as_deref())
        .with_context(|| format!("cannot connect to {name}"))?;
    let mut config = target.config;
    config.keepalives(true);
    match purpose {
        Purpose::Command => {
            config.keepalives_idle(Duration::from_secs(5));
            config.keepalives_interval(Duration::from_secs(1));
            config.keepalives_retries(3);
        }
        Purpose::Session => {
            config.keepalives_idle(Duration::from_secs(2));
            config.keepalives_interval(Duration::from_secs(1));
            config.keepalives_retries(3);
        }
    }
    // Unacknowledged data: the peer is gone however the keepalives fare.
    config.tcp_user_timeout(Duration::from_secs(6));
    // The client library bounds only the socket's connect; a server that accepts and then says
    // nothing (stopped, overloaded, a black hole behind a proxy) would hang the handshake. The
    // attempt runs beside us, and we stop waiting at the deadline: a command then fails, and
    // the abandoned attempt ends with the process or when the socket's timeouts end it.
    let (sender, receiver) = mpsc::channel();
    std::thread::Builder::new()
        .name("bgq-connect".to_owned())
        .spawn(move || {
            let _ = sender.send(match tls {
                Some(tls) => config.connect(tls),
                None => config.connect(postgres::NoTls),
            });
        })
        .context("cannot start a thread to connect")?;
    match receiver.recv_timeout(deadline) {
        Ok(connected) => connected
            .map_err(|err| anyhow::Error::from(err).context(format!("cannot connect to {name}"))),
        Err(_) => Err(anyhow::anyhow!(
            "cannot connect to {name}: no answer within {} s",
            deadline.as_secs()
        )),
    }
}

/// A name for the database `conninfo` names, without its password: lock names and messages.
pub fn identity(conninfo: &str) -> String {
    crate::config::redact_password(conninfo)
}

/// The environment a connection string is completed from (a seam for the tests).
#[derive(Debug, Default, Clone)]
struct Environment {
    vars: Vec<(String, String)>,
    home: Option<PathBuf>,
}

impl Environment {
    fn of_process() -> Environment {
        Environment {
            vars: std::env::vars()
                .filter(|(key, _)| key.starts_with("PG"))
                .collect(),
            home: std::env::var_os("HOME").map(PathBuf::from),
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(name, value)| name == key && !value.is_empty())
            .map(|(_, value)| value.as_str())
    }
}

/// A parsed connection string, completed from the environment.
struct Target {
    config: postgres::Config,
    ssl_mode: SslMode,
    root_cert: Option<PathBuf>,
    timeout: Duration,
}

/// libpq's keys that the client library does not take, or takes only in part.
const OURS: &[&str] = &["sslmode", "sslrootcert", "passfile"];

impl Target {
    fn parse(conninfo: &str, env: &Environment) -> anyhow::Result<Target> {
        let (mut rest, ours) = split_ours(conninfo)?;
        if let Some(port) = env.get("PGPORT") {
            // A URL's host without a port gets 5432 from the client library, where libpq
            // takes PGPORT.
            rest = url_with_default_port(&rest, port);
        }
        let invalid = |err: &dyn std::fmt::Display| {
            crate::error::usage(format!(
                "invalid connection string {}: {err}",
                identity(conninfo)
            ))
        };
        let mut config: postgres::Config = rest.parse().map_err(|err| invalid(&err))?;
        let own = |key: &str| {
            ours.iter()
                .find(|(name, _)| name == key)
                .map(|(_, value)| value.clone())
        };
        let ssl_mode = match own("sslmode").or_else(|| env.get("PGSSLMODE").map(str::to_owned)) {
            Some(mode) => mode.parse().map_err(|err: String| invalid(&err))?,
            None => SslMode::Prefer,
        };
        config.ssl_mode(ssl_mode.negotiation());
        if config.get_hosts().is_empty() {
            match env.get("PGHOST") {
                Some(hosts) => {
                    for host in hosts.split(',') {
                        config.host(host);
                    }
                }
                // libpq's default on Debian: the local socket.
                None if Path::new("/var/run/postgresql").is_dir() => {
                    config.host_path("/var/run/postgresql");
                }
                None => {
                    config.host("localhost");
                }
            }
        }
        if config.get_ports().is_empty()
            && let Some(port) = env.get("PGPORT")
        {
            let port = port
                .parse()
                .map_err(|_| invalid(&format!("PGPORT={port:?} is not a port")))?;
            config.port(port);
        }
        if config.get_user().is_none()
            && let Some(user) = env.get("PGUSER")
        {
            config.user(user);
        }
        if config.get_dbname().is_none()
            && let Some(dbname) = env.get("PGDATABASE")
        {
            config.dbname(dbname);
        }
        if config.get_application_name().is_none() {
            config.application_name(env.get("PGAPPNAME").unwrap_or("bgq"));
        }
        let timeout = match config.get_connect_timeout() {
            Some(timeout) => *timeout,
            None => match env.get("PGCONNECT_TIMEOUT") {
                Some(seconds) => Duration::from_secs(seconds.parse().map_err(|_| {
                    invalid(&format!(
                        "PGCONNECT_TIMEOUT={seconds:?} is not a number of seconds"
                    ))
                })?),
                None => CONNECT_TIMEOUT,
            },
        };
        // libpq: 0 (or less) waits for ever; ours never does, and never for less than 2 s.
        let timeout = if timeout.is_zero() {
            CONNECT_TIMEOUT
        } else {
            timeout.max(Duration::from_secs(2))
        };
        config.connect_timeout(timeout);
        if config.get_password().is_none() {
            if let Some(password) = env.get("PGPASSWORD") {
                config.password(password);
            } else {
                let file = own("passfile")
                    .map(PathBuf::from)
                    .or_else(|| env.get("PGPASSFILE").map(PathBuf::from))
                    .or_else(|| env.home.as_ref().map(|home| home.join(".pgpass")));
                if let Some(password) = file.and_then(|file| password_from_file(&file, &config)) {
                    config.password(password);
                }
            }
        }
        let root_cert = own("sslrootcert")
            .or_else(|| env.get("PGSSLROOTCERT").map(str::to_owned))
            .map(PathBuf::from)
            .or_else(|| {
                env.home
                    .as_ref()
                    .map(|home| home.join(".postgresql/root.crt"))
                    .filter(|file| file.exists() || ssl_mode.verifies())
            });
        Ok(Target {
            config,
            ssl_mode,
            root_cert,
            timeout,
        })
    }
}

/// Takes libpq's keys of [`OURS`] out of `conninfo`: the rest, for the client library, and
/// those keys with their values.
fn split_ours(conninfo: &str) -> anyhow::Result<(String, Vec<(String, String)>)> {
    let mut ours = Vec::new();
    if conninfo.starts_with("postgres://") || conninfo.starts_with("postgresql://") {
        let Some((base, query)) = conninfo.split_once('?') else {
            return Ok((conninfo.to_owned(), ours));
        };
        let mut kept = Vec::new();
        for param in query.split('&') {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            let key = percent_decode(key);
            if OURS.contains(&key.as_str()) {
                ours.push((key, percent_decode(value)));
            } else {
                kept.push(param);
            }
        }
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, ours));
    }
    let mut kept = Vec::new();
    for (key, value) in keyword_pairs(conninfo)? {
        if OURS.contains(&key.as_str()) {
            ours.push((key, value));
        } else {
            kept.push(format!(
                "{key}='{}'",
                value.replace('\\', "\\\\").replace('\'', "\\'")
            ));
        }
    }
    Ok((kept.join(" "), ours))
}

/// `url` with `:port` after each of its hosts when none names a port; anything else as it is.
fn url_with_default_port(url: &str, port: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    let names_port = |host: &str| {
        host.rsplit_once(']')
            .map_or(host, |(_, after)| after)
            .contains(':')
    };
    if hosts.is_empty() || hosts.split(',').any(names_port) {
        return url.to_owned();
    }
    let hosts: Vec<String> = hosts
        .split(',')
        .map(|host| format!("{host}:{port}"))
        .collect();
    let userinfo = userinfo.map_or(String::new(), |userinfo| format!("{userinfo}@"));
    format!("{scheme}://{userinfo}{}{tail}", hosts.join(","))
}

/// The `key = value` pairs of libpq's keyword form: a value is a word or single-quoted, and
/// a backslash escapes the next character in either.
fn keyword_pairs(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    let bad = |why: &str| crate::error::usage(format!("invalid connection string: {why}"));
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(bad(&format!("`{key}` has no `=`")));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(bad(&format!("the value of `{key}` has no closing quote"))),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |at: usize| {
            bytes
                .get(at)
                .and_then(|b| char::from(*b).to_digit(16))
                .and_then(|d| u8::try_from(d).ok())
        };
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(high), Some(low)) => {
                out.push(high * 16 + low);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The password for `config`'s first host, port, database and user in a libpq password file
/// (`host:port:db:user:password`, `*` matching anything, `\` escaping `:` and `\`). As libpq
/// does, a file that others may read is ignored, with a warning.
fn password_from_file(file: &Path, config: &postgres::Config) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(file).ok()?;
    if !meta.is_file() {
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        crate::diagnostic!(
            "bgq: warning: password file {} is ignored: others may read it (chmod 600 it)",
            file.display()
        );
        return None;
    }
    let text = std::fs::read_to_string(file).ok()?;
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(name)) => name.clone(),
        // libpq matches a socket directory as `localhost`.
        Some(postgres::config::Host::Unix(_)) | None => "localhost".to_owned(),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let user = config
        .get_user()
        .map(str::to_owned)
        .or_else(current_user)
        .unwrap_or_default();
    let dbname = config
        .get_dbname()
        .map_or_else(|| user.clone(), str::to_owned);
    let wanted = [host.as_str(), port.as_str(), dbname.as_str(), user.as_str()];
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(passfile_fields)
        .find(|fields| {
            fields
                .iter()
                .zip(wanted)
                .all(|(field, wanted)| field == "*" || field == wanted)
        })
        .map(|mut fields| fields.swap_remove(4))
}

/// The five fields of a password file's line, unescaped; `None` for a line of another shape.
fn passfile_fields(line: &str) -> Option<Vec<String>> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut()?.extend(chars.next()),
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut()?.push(c),
        }
    }
    (fields.len() == 5).then_some(fields)
}

fn current_user() -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|user| user.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn env(vars: &[(&str, &str)], home: Option<&Path>) -> Environment {
        Environment {
            vars: vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            home: home.map(Path::to_path_buf),
        }
    }

    #[test]
    fn libpq_keys_the_client_library_lacks_are_taken_out_of_both_forms() {
        let (rest, ours) = split_ours(
            "postgres://u@h/db?sslmode=verify-full&application_name=x&sslrootcert=%2Fca%20dir%2Froot.crt",
        )
        .expect("url");
        assert_eq!(rest, "postgres://u@h/db?application_name=x");
        assert_eq!(
            ours,
            [
                ("sslmode".to_owned(), "verify-full".to_owned()),
                ("sslrootcert".to_owned(), "/ca dir/root.crt".to_owned())
            ]
        );
        let (rest, ours) = split_ours(
            "host=db user = 'o\\'brien' password='a b' sslmode=verify-ca passfile=/p\\ q",
        )
        .expect("keywords");
        assert_eq!(rest, "host='db' user='o\\'brien' password='a b'");
        assert_eq!(
            ours,
            [
                ("sslmode".to_owned(), "verify-ca".to_owned()),
                ("passfile".to_owned(), "/p q".to_owned())
            ]
        );
        assert!(split_ours("host=db user").is_err());
        assert!(split_ours("host='db").is_err());
    }

    #[test]
    fn the_environment_fills_what_the_string_leaves_out() {
        let vars = [
            ("PGHOST", "envhost"),
            ("PGPORT", "6543"),
            ("PGUSER", "envuser"),
            ("PGDATABASE", "envdb"),
            ("PGPASSWORD", "envpw"),
            ("PGSSLMODE", "require"),
            ("PGCONNECT_TIMEOUT", "3"),
        ];
        let target = Target::parse("postgres://", &env(&vars, None)).expect("parse");
        assert_eq!(
            target.config.get_hosts(),
            [postgres::config::Host::Tcp("envhost".to_owned())]
        );
        assert_eq!(target.config.get_ports(), [6543]);
        assert_eq!(target.config.get_user(), Some("envuser"));
        assert_eq!(target.config.get_dbname(), Some("envdb"));
        assert_eq!(target.config.get_password(), Some(&b"envpw"[..]));
        assert_eq!(target.ssl_mode, SslMode::Require);
        assert_eq!(target.timeout, Duration::from_secs(3));
        // What the string says wins.
        let target = Target::parse("postgres://u:pw@h:1/d?sslmode=disable", &env(&vars, None))
            .expect("parse");
        assert_eq!(target.config.get_user(), Some("u"));
        assert_eq!(target.config.get_password(), Some(&b"pw"[..]));
        assert_eq!(target.config.get_ports(), [1]);
        assert_eq!(target.ssl_mode, SslMode::Disable);
        let target =
            Target::parse("postgres://h/d?connect_timeout=0", &env(&[], None)).expect("parse");
        assert_eq!(target.timeout, CONNECT_TIMEOUT, "0 never waits for ever");
        assert!(Target::parse("postgres://h/d?sslmode=sometimes", &env(&[], None)).is_err());
        assert!(Target::parse("postgres://h/d", &env(&[("PGPORT", "x")], None)).is_err());
        let target =
            Target::parse("postgres://u@h1,h2/d", &env(&[("PGPORT", "7")], None)).expect("parse");
        assert_eq!(target.config.get_ports(), [7, 7]);
        let target =
            Target::parse("postgres://u@h:8/d", &env(&[("PGPORT", "7")], None)).expect("parse");
        assert_eq!(target.config.get_ports(), [8]);
        let target = Target::parse("host=h", &env(&[("PGPORT", "7")], None)).expect("parse");
        assert_eq!(target.config.get_ports(), [7]);
    }

    #[test]
    fn a_password_file_matches_as_libpq_does_and_is_ignored_when_others_may_read_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join(".pgpass");
        std::fs::write(
            &file,
            "# comment\nother:*:*:*:wrong\ndb.example:5432:app:bgq:first\n*:*:*:bgq:a\\:b\\\\c\n",
        )
        .expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let home = env(&[], Some(dir.path()));
        let password = |conninfo: &str, env: &Environment| {
            Target::parse(conninfo, env)
                .expect("parse")
                .config
                .get_password()
                .map(|p| String::from_utf8_lossy(p).into_owned())
        };
        assert_eq!(
            password("postgres://bgq@db.example/app", &home).as_deref(),
            Some("first")
        );
        assert_eq!(
            password("postgres://bgq@elsewhere:1/x", &home).as_deref(),
            Some("a:b\\c")
        );
        assert_eq!(password("postgres://nobody@elsewhere/x", &home), None);
        let named = env(
            &[("PGPASSFILE", file.to_str().expect("utf-8"))],
            Some(Path::new("/nonexistent")),
        );
        assert_eq!(
            password("postgres://bgq@db.example/app", &named).as_deref(),
            Some("first")
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert_eq!(password("postgres://bgq@db.example/app", &home), None);
    }
}
