//! Coordination of `process` runs, apart from storage: who holds a queue, which runs are alive,
//! which callbacks a run started and how to stop those of a dead one.
//!
//! The store records runs and which run claimed a job; it never judges them. What a recorded
//! run is now, alive or dead, is this module's to say, through [`Coordination`]: recovery takes
//! the jobs of runs known to be dead, and only those. [`Local`] serves backends whose runs all
//! live on this machine (SQLite): the queue's lock is a file (`lock`), the callbacks a run
//! started are noted in it (`running_log`), and a run or callback is known by its /proc
//! identity (`process_group`), from files no other user could have written (`trust`). A
//! backend that spans machines brings its own: a run of another host is never this host's to
//! judge dead or to kill.

pub mod fleet;
pub mod guard;
pub mod lock;
pub mod process_group;
pub mod running_log;
pub mod share;
pub mod trust;

use process_group::ProcessRecord;

/// What is known of a recorded `process` run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// It runs: its jobs are its own, however long they take.
    Alive,
    /// It is gone: its jobs may be recovered, and what is left of its callbacks stopped.
    Dead,
}

/// How runs are known alive or dead.
pub trait Coordination {
    /// What is known of the run recorded as `runner` (`None`: its record was pruned).
    fn liveness(&self, runner: Option<&ProcessRecord>) -> Liveness;

    /// Whether the run recorded as `runner` is known to run now.
    fn is_alive(&self, runner: &ProcessRecord) -> bool {
        self.liveness(Some(runner)) == Liveness::Alive
    }
}

/// Coordination of runs that all live on this machine (a SQLite queue).
#[derive(Debug, Clone, Copy, Default)]
pub struct Local;

impl Coordination for Local {
    fn liveness(&self, runner: Option<&ProcessRecord>) -> Liveness {
        // One machine: a run from an earlier boot died in the reboot, and a pruned record is of a
        // run a hundred runs ago. A zombie is dead (see `process_group::is_alive`).
        match runner {
            Some(runner) if process_group::is_alive(runner) => Liveness::Alive,
            _ => Liveness::Dead,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_run_of_another_boot_is_dead() {
        let me = i32::try_from(std::process::id())
            .ok()
            .and_then(process_group::identify)
            .expect("own identity");
        assert_eq!(Local.liveness(Some(&me)), Liveness::Alive);
        let rebooted = ProcessRecord {
            boot_id: "an earlier boot".to_owned(),
            ..me
        };
        assert_eq!(Local.liveness(Some(&rebooted)), Liveness::Dead);
        assert_eq!(Local.liveness(None), Liveness::Dead);
    }
}
