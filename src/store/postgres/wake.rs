//! The wake-up of `process --watch` on PostgreSQL: a connection of its own that LISTENs on the
//! schema's channel (see `wake_channel()` in schema.sql beside this file), to which publish, retry and
//! a finished parent notify. Notifications can be lost (a dropped connection): the listener
//! reconnects, and wakes the run once it has, since it may have missed some; `--watch` polls
//! meanwhile.

use std::thread;
use std::time::Duration;

use anyhow::Context;

use crate::config::PostgresTarget;
use crate::store::postgres::{Purpose, connect};

/// How long a listener waits before it connects again after losing its connection.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// Calls `wake` from another thread on every notification of the schema's channel, until
/// `wake` returns false.
pub fn listen(target: &PostgresTarget, wake: Box<dyn Fn() -> bool + Send>) -> anyhow::Result<()> {
    let listen = format!("LISTEN {}_wake", target.schema);
    let mut client = connect(&target.conninfo, Purpose::Session)?;
    client
        .batch_execute(&listen)
        .context("cannot LISTEN for new jobs")?;
    let conninfo = target.conninfo.clone();
    thread::Builder::new()
        .name("bgq-listen".to_owned())
        .spawn(move || {
            loop {
                let mut lost = false;
                {
                    let mut notifications = client.notifications();
                    let mut iter = notifications.timeout_iter(Duration::from_secs(60));
                    loop {
                        match postgres::fallible_iterator::FallibleIterator::next(&mut iter) {
                            Ok(Some(_)) => {
                                if !wake() {
                                    return;
                                }
                            }
                            Ok(None) => break,
                            Err(_) => {
                                lost = true;
                                break;
                            }
                        }
                    }
                }
                if !lost && !client.is_closed() {
                    continue;
                }
                loop {
                    thread::sleep(RECONNECT_AFTER);
                    if let Ok(mut fresh) = connect(&conninfo, Purpose::Session)
                        && fresh.batch_execute(&listen).is_ok()
                    {
                        client = fresh;
                        break;
                    }
                }
                if !wake() {
                    return;
                }
            }
        })
        .context("cannot start the listener thread")?;
    Ok(())
}
