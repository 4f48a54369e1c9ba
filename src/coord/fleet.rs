//! Coordination of runs on many hosts sharing one database (PostgreSQL): a run is alive while
//! its database session holds the run's lock. A session that ended is not yet proof of death
//! (the server may have restarted, or dropped a run that still works and has not noticed): the
//! run is dead once its heartbeat has also been silent for [`DEAD_AFTER`], longer than a live
//! run keeps its callbacks without reaching the database ([`GIVE_UP_AFTER`]), so a recovered
//! job never runs beside its old callback. On this host, /proc knows sooner: a run of this host
//! and boot whose process is gone is dead at once.

use crate::coord::Liveness;
use crate::coord::process_group::{self, ProcessRecord};
use crate::job::Millis;

/// A run that cannot reach its database for this long stops its callbacks and exits.
pub const GIVE_UP_AFTER: std::time::Duration = std::time::Duration::from_secs(10);
/// A run whose session ended and whose heartbeat has been silent this long is dead.
pub const DEAD_AFTER: Millis = 12_000;

/// What the database says of a recorded run's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionFacts {
    /// The host it runs on (`host_id`).
    pub host_id: String,
    /// Whether its session still holds the run's lock.
    pub held: bool,
    /// How long its heartbeat has been silent, by the server's clock.
    pub silent_for: Millis,
}

/// Judges runs of a shared queue from this host.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// This host's `host_id`.
    pub host_id: String,
}

impl Fleet {
    /// What is known of the run recorded as `runner` with `session` (`None`: its record was
    /// pruned, a hundred runs ago).
    pub fn liveness(
        &self,
        runner: Option<&ProcessRecord>,
        session: Option<&SessionFacts>,
    ) -> Liveness {
        let Some(session) = session else {
            return Liveness::Dead;
        };
        if session.held {
            return Liveness::Alive;
        }
        if session.silent_for >= DEAD_AFTER {
            return Liveness::Dead;
        }
        match runner {
            // Same host and boot: /proc is certain, and a zombie is dead.
            Some(runner) if self.is_here(session) && runner.boot_id == process_group::boot_id() => {
                if process_group::is_alive(runner) {
                    Liveness::Alive
                } else {
                    Liveness::Dead
                }
            }
            _ => Liveness::Alive,
        }
    }

    /// Whether the run with `session` runs on this host: only then are its process groups
    /// this host's to stop.
    pub fn is_here(&self, session: &SessionFacts) -> bool {
        session.host_id == self.host_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(host: &str, held: bool, silent_for: Millis) -> SessionFacts {
        SessionFacts {
            host_id: host.to_owned(),
            held,
            silent_for,
        }
    }

    #[test]
    fn a_held_session_is_alive_however_silent_and_a_dead_one_waits_out_the_grace() {
        let fleet = Fleet {
            host_id: "here".to_owned(),
        };
        let me = i32::try_from(std::process::id())
            .ok()
            .and_then(process_group::identify)
            .expect("own identity");
        let gone = ProcessRecord {
            pid: i32::MAX - 7,
            ..me.clone()
        };
        // A stopped run (SIGSTOP) or one busy for hours: its session holds.
        assert_eq!(
            fleet.liveness(Some(&gone), Some(&facts("far", true, 3_600_000))),
            Liveness::Alive
        );
        // Another host's session ended a moment ago: maybe a server restart; wait.
        assert_eq!(
            fleet.liveness(Some(&gone), Some(&facts("far", false, 2_000))),
            Liveness::Alive
        );
        assert_eq!(
            fleet.liveness(Some(&gone), Some(&facts("far", false, DEAD_AFTER))),
            Liveness::Dead
        );
        // This host's: /proc says at once.
        assert_eq!(
            fleet.liveness(Some(&gone), Some(&facts("here", false, 500))),
            Liveness::Dead
        );
        assert_eq!(
            fleet.liveness(Some(&me), Some(&facts("here", false, 500))),
            Liveness::Alive
        );
        assert_eq!(fleet.liveness(None, None), Liveness::Dead);
    }
}
