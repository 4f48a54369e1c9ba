//! Connecting to PostgreSQL: the connection string (a `postgres://` URL or libpq's key=value
//! form), the defaults libpq users expect from the environment, timeouts that turn a dead or
//! silent server into an error within seconds, and a name for the database that holds no secret.

use std::time::Duration;

use anyhow::Context;

/// What a connection is for: it sets how fast a dead peer is noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A command's own connection (publish, list, a run's claims).
    Command,
    /// A run's session, which holds its liveness lock and heartbeat: keepalives tight enough
    /// that the server drops it within seconds of the host going silent.
    Session,
}

/// How long connecting may take before it is an error.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a connection as `conninfo` says.
pub fn connect(conninfo: &str, purpose: Purpose) -> anyhow::Result<postgres::Client> {
    let mut config: postgres::Config = conninfo
        .parse()
        .map_err(|err| crate::error::usage(format!("invalid connection string: {err}")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    config.keepalives(true);
    match purpose {
        Purpose::Command => {
            config.keepalives_idle(Duration::from_secs(5));
        }
        Purpose::Session => {
            config.keepalives_idle(Duration::from_secs(2));
            config.keepalives_interval(Duration::from_secs(1));
            config.keepalives_retries(3);
            config.tcp_user_timeout(Duration::from_secs(6));
        }
    }
    config
        .connect(postgres::NoTls)
        .with_context(|| format!("cannot connect to {}", identity(conninfo)))
}

/// A name for the database `conninfo` names, without its password: lock names and messages.
pub fn identity(conninfo: &str) -> String {
    crate::config::redact_password(conninfo)
}
