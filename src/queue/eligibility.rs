//! Whether a serial group lets one of its jobs start (SPEC section 7): the one rule that the
//! claim applies and that `explain` reports, so that they cannot disagree.
//!
//! A job of a group waits while an older job of the group is unfinished (READY, PROCESSING,
//! TEMPORARILY_FAILED, WAITING), while any job of the group is running (a retried older job
//! must not start beside a younger one that started meanwhile), and, for callbacks with
//! `serial_failure = "block"`, while an older job of the group failed permanently. A store
//! gathers the facts ([`GroupFacts`]); its claim must pick exactly the jobs for which
//! [`group_hold`] is `None` (a test in each backend checks this on random queues).

use crate::job::JobState;

/// What a job's serial group holds, as seen from that job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupFacts {
    /// The oldest unfinished job of the group older than the job, with its state.
    pub older_unfinished: Option<(i64, JobState)>,
    /// A job of the group that is running, older or younger than the job.
    pub running: Option<i64>,
    /// The oldest PERMANENTLY_FAILED job of the group older than the job, of a callback whose
    /// failures hold the group.
    pub failed_blocking: Option<i64>,
}

/// Why a serial group holds a job back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupHold {
    /// This older job of the group is unfinished, in this state.
    Older(i64, JobState),
    /// This job of the group, younger than the job, is running.
    Running(i64),
    /// This older job of the group failed permanently, and its callback blocks the group.
    Failed(i64),
}

impl GroupHold {
    /// The job that holds the group.
    pub fn blocker(self) -> i64 {
        match self {
            GroupHold::Older(id, _) | GroupHold::Running(id) | GroupHold::Failed(id) => id,
        }
    }
}

/// What holds the job back, if anything: the oldest older blocker first (the one whose end
/// frees the group soonest), else a younger running job.
pub fn group_hold(facts: &GroupFacts) -> Option<GroupHold> {
    let older = facts
        .older_unfinished
        .map(|(id, state)| GroupHold::Older(id, state));
    let failed = facts.failed_blocking.map(GroupHold::Failed);
    older
        .into_iter()
        .chain(failed)
        .min_by_key(|hold| hold.blocker())
        .or(facts.running.map(GroupHold::Running))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_group_holds_nothing() {
        assert_eq!(group_hold(&GroupFacts::default()), None);
    }

    #[test]
    fn a_younger_running_job_holds_an_older_one_retried_meanwhile() {
        let facts = GroupFacts {
            running: Some(9),
            ..GroupFacts::default()
        };
        assert_eq!(group_hold(&facts), Some(GroupHold::Running(9)));
    }

    #[test]
    fn the_oldest_older_blocker_is_named_first() {
        let facts = GroupFacts {
            older_unfinished: Some((5, JobState::TemporarilyFailed)),
            running: Some(7),
            failed_blocking: Some(3),
        };
        assert_eq!(group_hold(&facts), Some(GroupHold::Failed(3)));
        let facts = GroupFacts {
            failed_blocking: Some(6),
            ..facts
        };
        assert_eq!(
            group_hold(&facts),
            Some(GroupHold::Older(5, JobState::TemporarilyFailed))
        );
    }
}
