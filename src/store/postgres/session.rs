//! A run's session: the connection whose life is the run's life to every other host. It holds
//! the run's advisory lock (released by the server when the session ends, however it ends) and
//! writes a heartbeat every second, by the server's clock. A heartbeat that lands on another
//! server process than the one holding the lock means a pooler switched sessions under us
//! (PgBouncer in transaction mode): a run needs a real session, and says so.
//!
//! When no heartbeat has got through for `coord::fleet::GIVE_UP_AFTER`, the run is told
//! (`on_lost`) from the watchdog's thread, whatever its main thread is blocked on: it must stop
//! its callbacks before other hosts judge it dead (`coord::fleet::DEAD_AFTER`, counted from the
//! last heartbeat the server saw, which was sent no earlier than the one we count from).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use postgres::types::Type;

use crate::config::PostgresTarget;
use crate::coord::fleet::GIVE_UP_AFTER;
use crate::store::postgres::{Purpose, connect, in_schema};

/// How often the heartbeat is written.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// How often the watchdog looks at the last heartbeat.
const WATCH_EVERY: Duration = Duration::from_millis(100);
/// A watchdog that slept this much longer than it meant to was stopped with its process.
const RESUMED_AFTER: Duration = Duration::from_secs(2);

/// The server-side settings of a session: the server drops a silent client within seconds
/// (keepalives for an idle connection, the user timeout for unacknowledged data).
const SESSION_SETTINGS: &str = "SET tcp_keepalives_idle = 2; SET tcp_keepalives_interval = 1;
    SET tcp_keepalives_count = 3; SET tcp_user_timeout = 6000; SET statement_timeout = 5000";

/// The same keepalives for a run's other connection (claims, outcomes, recovery): cut off
/// mid-transaction, it would otherwise keep its row locks, and stall every host that waits on
/// them, until the server's own TCP gave up (hours).
pub const SERVER_KEEPALIVES: &str = "SET tcp_keepalives_idle = 2; SET tcp_keepalives_interval = 1;
    SET tcp_keepalives_count = 3; SET tcp_user_timeout = 6000";

/// The second key of run `run`'s advisory lock (the first is the schema's `run_lock_space()`).
pub fn lock_key(run: i64) -> i32 {
    i32::try_from(run.rem_euclid(1 << 31)).unwrap_or_default()
}

/// What `process` says behind a transaction pool.
const NEEDS_A_SESSION: &str = "`process` needs a session of its own, but its connection is shared with other clients between transactions (a transaction pool such as PgBouncer's pool_mode = transaction): connect `process` to PostgreSQL directly or through a session pool";

/// Fails when `session`'s server process also serves other client connections (a transaction
/// pool): marks the session, then looks for the mark from a second connection, which a pool
/// hands the same server process while the first is idle.
fn refuse_a_shared_session(conninfo: &str, session: &mut postgres::Client) -> anyhow::Result<()> {
    let mark = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos())
    );
    session.query_typed(
        "SELECT set_config('bgq.session_mark', $1, false)",
        &[(&mark, Type::TEXT)],
    )?;
    let mut probe = connect(conninfo, Purpose::Command)?;
    let seen: Option<String> = probe
        .query_typed_one("SELECT current_setting('bgq.session_mark', true)", &[])?
        .get(0);
    if seen.as_deref() == Some(mark.as_str()) {
        bail!(NEEDS_A_SESSION);
    }
    Ok(())
}

/// A live run's session; `end` releases it.
pub struct Session {
    stop: Arc<AtomicBool>,
    /// Wakes the heartbeat at once when the session ends (dropped: ended).
    wake: Option<mpsc::Sender<()>>,
    heartbeat: Option<thread::JoinHandle<()>>,
}

impl Session {
    /// Opens run `run`'s session, takes its lock and starts the heartbeat and its watchdog.
    pub fn start(
        target: &PostgresTarget,
        run: i64,
        on_lost: Box<dyn FnOnce(String) + Send>,
    ) -> anyhow::Result<Session> {
        let mut client = connect(&target.conninfo, Purpose::Session)?;
        client.batch_execute(SESSION_SETTINGS)?;
        // Before the lock: a lock taken on a pooled server process would outlive us there.
        refuse_a_shared_session(&target.conninfo, &mut client)?;
        let schema = target.schema.clone();
        let key = lock_key(run);
        let row = client.query_typed_one(
            &in_schema(
                &schema,
                "SELECT pg_try_advisory_lock(@.run_lock_space(), $1), pg_backend_pid()",
            ),
            &[(&key, Type::INT4)],
        )?;
        let locked: bool = row.get(0);
        let backend: i32 = row.get(1);
        if !locked {
            bail!("another session holds the lock of run {run}");
        }
        let heartbeat_sql = in_schema(
            &schema,
            "UPDATE @.runs SET heartbeat_at = clock_timestamp(), backend_pid = pg_backend_pid()
             WHERE id = $1 AND (backend_pid IS NULL OR backend_pid = pg_backend_pid())",
        );
        let beat = move |client: &mut postgres::Client| -> anyhow::Result<()> {
            let updated = client.execute_typed(&heartbeat_sql, &[(&run, Type::INT8)])?;
            if updated == 0 {
                bail!(
                    "{NEEDS_A_SESSION} (its heartbeat reached another server process than the one holding its lock, pid {backend})"
                );
            }
            Ok(())
        };
        beat(&mut client).context("cannot write the run's first heartbeat")?;
        let stop = Arc::new(AtomicBool::new(false));
        // When the last heartbeat that got through was sent, and why the latest did not.
        let last_ok = Arc::new(Mutex::new((Instant::now(), None::<String>)));
        let (wake, woken) = mpsc::channel::<()>();
        let heartbeat = {
            let stop = Arc::clone(&stop);
            let last_ok = Arc::clone(&last_ok);
            let unlock = in_schema(&schema, "SELECT pg_advisory_unlock(@.run_lock_space(), $1)");
            thread::Builder::new()
                .name("bgq-heartbeat".to_owned())
                .spawn(move || {
                    let mut broken = false;
                    while !stop.load(Ordering::SeqCst) {
                        // A sleep that `end` cuts short: a run does not wait out a heartbeat to exit.
                        if woken.recv_timeout(HEARTBEAT_EVERY)
                            != Err(mpsc::RecvTimeoutError::Timeout)
                        {
                            break;
                        }
                        if broken || stop.load(Ordering::SeqCst) {
                            continue;
                        }
                        let sent = Instant::now();
                        let result = beat(&mut client);
                        let mut last = last_ok.lock().unwrap_or_else(|poison| poison.into_inner());
                        match result {
                            Ok(()) => *last = (sent, None),
                            Err(err) => {
                                // A session that broke stays broken: its lock is gone.
                                broken = client.is_closed();
                                last.1 = Some(format!("{err:#}"));
                            }
                        }
                    }
                    if !broken {
                        let _ = client.query_typed(&unlock, &[(&key, Type::INT4)]);
                    }
                })
                .context("cannot start the heartbeat thread")?
        };
        {
            let stop = Arc::clone(&stop);
            let last_ok = Arc::clone(&last_ok);
            thread::Builder::new()
                .name("bgq-watchdog".to_owned())
                .spawn(move || {
                    let mut looked = Instant::now();
                    while !stop.load(Ordering::SeqCst) {
                        thread::sleep(WATCH_EVERY);
                        if looked.elapsed() > RESUMED_AFTER {
                            // The whole process was stopped (SIGSTOP, a suspended VM), the
                            // heartbeat too: while it was, its session kept its jobs. Give the
                            // heartbeat its full time again rather than count the stop.
                            let mut last =
                                last_ok.lock().unwrap_or_else(|poison| poison.into_inner());
                            last.0 = last.0.max(Instant::now());
                        }
                        looked = Instant::now();
                        let (sent, why) = last_ok
                            .lock()
                            .map(|last| last.clone())
                            .unwrap_or_else(|poison| poison.into_inner().clone());
                        if sent.elapsed() >= GIVE_UP_AFTER {
                            let why = why.unwrap_or_else(|| "no answer".to_owned());
                            on_lost(format!(
                                "lost the database for {} s ({why})",
                                GIVE_UP_AFTER.as_secs()
                            ));
                            return;
                        }
                    }
                })
                .context("cannot start the heartbeat's watchdog")?;
        }
        Ok(Session {
            stop,
            wake: Some(wake),
            heartbeat: Some(heartbeat),
        })
    }

    /// Ends the session: releases the run's lock and stops the heartbeat.
    pub fn end(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        drop(self.wake.take());
        if let Some(heartbeat) = self.heartbeat.take() {
            let _ = heartbeat.join();
        }
    }
}
