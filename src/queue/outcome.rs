//! What the end of a job's run does to the job: its new state, when it runs again, and whether
//! a notice is due (SPEC sections 4 and 5). One pure function of the job, how the run ended,
//! the callback's settings and the time; `process` stores what it returns.

use std::time::Duration;

use crate::job::{JobState, Millis};
use crate::notify::NoticeKind;
use crate::queue::backoff::{Retry, RetryPolicy};
use crate::runner::Exit;
use crate::store::{AttemptEnd, AttemptOutcome};

/// What a callback's exit means for its job (SPEC section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exit 0.
    Finished,
    /// Exit 75 (`EX_TEMPFAIL`) or a timeout: retry after a backoff.
    TemporarilyFailed,
    /// Exit 76: not yet; the next run tries again without counting an attempt.
    Waiting,
    /// Anything else.
    PermanentlyFailed,
}

impl Outcome {
    /// Maps a run's end to its outcome.
    pub fn from_exit(exit: &Exit) -> Outcome {
        match exit {
            Exit::Code(0) => Outcome::Finished,
            Exit::Code(75) | Exit::TimedOut(_) => Outcome::TemporarilyFailed,
            Exit::Code(76) => Outcome::Waiting,
            Exit::Code(_) | Exit::Signal(_) | Exit::NotStarted(_) => Outcome::PermanentlyFailed,
        }
    }
}

/// How a job's run ended.
#[derive(Debug, Clone, Copy)]
pub enum RunEnd<'a> {
    /// Its callback ended so.
    Exited(&'a Exit),
    /// Its callback was stopped for `bgq cancel --kill` and ended so.
    Stopped(&'a Exit),
    /// The `process` running it died; the callback's end is unknown.
    Lost,
}

/// What the rules need to know of the job whose run ended.
#[derive(Debug, Clone, Copy)]
pub struct Attempted {
    /// Counted attempts, this run included.
    pub attempts: u32,
    /// Whether a notice of its failures was already sent.
    pub notified: bool,
}

/// The settings that decide.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    /// The callback's retry schedule.
    pub retry: &'a RetryPolicy,
    /// After this many failed attempts, notify once.
    pub notify_on_attempts: u32,
    /// When a WAITING job runs again: after this delay (`--watch`), or at the next run (`None`).
    pub waiting_delay: Option<Duration>,
}

/// What a run's end does to its job.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// Its new state.
    pub state: JobState,
    /// When it may run again (for the states that run again).
    pub run_at: Millis,
    /// It goes straight back into the claim path, not waiting for a later run.
    pub due_now: bool,
    /// The run was no attempt (WAITING): its count is given back.
    pub uncount_attempt: bool,
    /// The notice due, if any: its kind and the reason it gives.
    pub notice: Option<(NoticeKind, String)>,
    /// This transition sends the one notice of repeated failures.
    pub notified_now: bool,
}

impl Transition {
    fn to(state: JobState, now: Millis) -> Transition {
        Transition {
            state,
            run_at: now,
            due_now: false,
            uncount_attempt: false,
            notice: None,
            notified_now: false,
        }
    }
}

/// How a run that ended so (`end`), leaving its job in `state`, is kept in the job's history.
pub fn attempt_end(end: RunEnd<'_>, state: JobState) -> AttemptEnd {
    let exit = match end {
        RunEnd::Exited(exit) | RunEnd::Stopped(exit) => Some(exit),
        RunEnd::Lost => None,
    };
    let (exit_code, signal) = match exit {
        Some(Exit::Code(code)) => (Some(*code), None),
        Some(Exit::Signal(signal)) => (None, Some(*signal)),
        _ => (None, None),
    };
    let outcome = match (end, state) {
        (RunEnd::Lost, _) => AttemptOutcome::Recovered,
        (_, JobState::Cancelled) => AttemptOutcome::Cancelled,
        _ if matches!(exit, Some(Exit::TimedOut(_))) => AttemptOutcome::Timeout,
        (_, JobState::Finished) => AttemptOutcome::Finished,
        (_, JobState::Waiting) => AttemptOutcome::Waiting,
        (_, JobState::TemporarilyFailed) => AttemptOutcome::TemporarilyFailed,
        _ => AttemptOutcome::PermanentlyFailed,
    };
    AttemptEnd {
        outcome,
        exit_code,
        signal,
    }
}

/// What the end `end` of a run of `job` does to it at `now`, under `rules`. `spread` in [-1, 1]
/// picks where the retry delay falls in its jitter band (random in a run, fixed in tests).
pub fn decide(
    job: &Attempted,
    end: RunEnd<'_>,
    rules: &Rules<'_>,
    now: Millis,
    spread: f64,
) -> Transition {
    let exit = match end {
        // A callback stopped for cancelling that reported success anyway did the work.
        RunEnd::Stopped(exit) if *exit != Exit::Code(0) => {
            return Transition::to(JobState::Cancelled, now);
        }
        RunEnd::Stopped(exit) | RunEnd::Exited(exit) => exit,
        RunEnd::Lost => {
            let mut transition =
                failed_attempt(job, "the `process` run running it died", rules, now, spread);
            if transition.state == JobState::TemporarilyFailed {
                // A lost run is no reason to wait: the job is due at once.
                transition.run_at = now;
                transition.due_now = true;
            }
            return transition;
        }
    };
    match Outcome::from_exit(exit) {
        Outcome::Finished => Transition {
            // Whoever was told it kept failing is told it got through.
            notice: job.notified.then(|| {
                (
                    NoticeKind::Recovered,
                    format!("recovered: FINISHED after {} attempt(s)", job.attempts),
                )
            }),
            ..Transition::to(JobState::Finished, now)
        },
        Outcome::Waiting => Transition {
            run_at: rules
                .waiting_delay
                .map_or(now, |delay| now.saturating_add(millis(delay))),
            uncount_attempt: true,
            ..Transition::to(JobState::Waiting, now)
        },
        Outcome::TemporarilyFailed => failed_attempt(job, exit, rules, now, spread),
        Outcome::PermanentlyFailed => Transition {
            notice: Some((NoticeKind::Failed, format!("failed permanently ({exit})"))),
            ..Transition::to(JobState::PermanentlyFailed, now)
        },
    }
}

/// The retry decision after a failed attempt (`why`), and the notice it calls for.
fn failed_attempt(
    job: &Attempted,
    why: impl std::fmt::Display,
    rules: &Rules<'_>,
    now: Millis,
    spread: f64,
) -> Transition {
    let attempts = job.attempts;
    match rules.retry.after_failure(attempts, spread) {
        Retry::GiveUp => Transition {
            notice: Some((
                NoticeKind::Failed,
                format!("failed permanently: retries used up after {attempts} attempts ({why})"),
            )),
            ..Transition::to(JobState::PermanentlyFailed, now)
        },
        Retry::After(delay) => {
            let notify = !job.notified && attempts >= rules.notify_on_attempts;
            Transition {
                run_at: now.saturating_add(millis(delay)),
                notice: notify.then(|| {
                    (
                        NoticeKind::Attempts,
                        format!("failed {attempts} attempts ({why}); still retrying"),
                    )
                }),
                notified_now: notify,
                ..Transition::to(JobState::TemporarilyFailed, now)
            }
        }
    }
}

fn millis(duration: Duration) -> Millis {
    Millis::try_from(duration.as_millis()).unwrap_or(Millis::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Millis = 1_000_000;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            delay: Duration::from_secs(10),
            multiplier: 2.0,
            max_delay: Duration::from_secs(3600),
            jitter: 0.1,
            max_attempts: 5,
        }
    }

    /// One row: how the run ended, the job's attempts and notified flag, watch mode or not,
    /// and the state, delay from now (ms), notice kind, notified_now and uncount expected.
    struct Case {
        end: RunEnd<'static>,
        attempts: u32,
        notified: bool,
        watch: bool,
        state: JobState,
        delay: Millis,
        notice: Option<NoticeKind>,
        notified_now: bool,
        uncount: bool,
        due_now: bool,
    }

    const fn case(end: RunEnd<'static>, attempts: u32, state: JobState, delay: Millis) -> Case {
        Case {
            end,
            attempts,
            notified: false,
            watch: false,
            state,
            delay,
            notice: None,
            notified_now: false,
            uncount: false,
            due_now: false,
        }
    }

    static OK: Exit = Exit::Code(0);
    static ONE: Exit = Exit::Code(1);
    static TWO: Exit = Exit::Code(2);
    static TEMPFAIL: Exit = Exit::Code(75);
    static WAIT: Exit = Exit::Code(76);
    static EXIT_77: Exit = Exit::Code(77);
    static EXIT_255: Exit = Exit::Code(255);
    static KILLED: Exit = Exit::Signal(9);
    static TIMED_OUT: Exit = Exit::TimedOut(Duration::from_secs(60));

    #[test]
    fn each_end_of_a_run_is_kept_in_the_history_as_what_it_was() {
        use AttemptOutcome as O;
        let cases = [
            (
                RunEnd::Exited(&OK),
                JobState::Finished,
                O::Finished,
                Some(0),
                None,
            ),
            (
                RunEnd::Exited(&TEMPFAIL),
                JobState::TemporarilyFailed,
                O::TemporarilyFailed,
                Some(75),
                None,
            ),
            (
                RunEnd::Exited(&TEMPFAIL),
                JobState::PermanentlyFailed,
                O::PermanentlyFailed,
                Some(75),
                None,
            ),
            (
                RunEnd::Exited(&WAIT),
                JobState::Waiting,
                O::Waiting,
                Some(76),
                None,
            ),
            (
                RunEnd::Exited(&TWO),
                JobState::PermanentlyFailed,
                O::PermanentlyFailed,
                Some(2),
                None,
            ),
            (
                RunEnd::Exited(&KILLED),
                JobState::PermanentlyFailed,
                O::PermanentlyFailed,
                None,
                Some(9),
            ),
            (
                RunEnd::Exited(&TIMED_OUT),
                JobState::TemporarilyFailed,
                O::Timeout,
                None,
                None,
            ),
            (
                RunEnd::Exited(&TIMED_OUT),
                JobState::PermanentlyFailed,
                O::Timeout,
                None,
                None,
            ),
            (
                RunEnd::Stopped(&KILLED),
                JobState::Cancelled,
                O::Cancelled,
                None,
                Some(9),
            ),
            (
                RunEnd::Stopped(&OK),
                JobState::Finished,
                O::Finished,
                Some(0),
                None,
            ),
            (
                RunEnd::Lost,
                JobState::TemporarilyFailed,
                O::Recovered,
                None,
                None,
            ),
        ];
        for (end, state, outcome, exit_code, signal) in cases {
            assert_eq!(
                attempt_end(end, state),
                AttemptEnd {
                    outcome,
                    exit_code,
                    signal
                },
                "{end:?} → {state:?}"
            );
        }
    }

    #[test]
    fn every_end_of_a_run_leads_where_the_spec_says() {
        use JobState::*;
        use NoticeKind as N;
        let cases = [
            // exit 0: done; a job notified earlier says it got through.
            case(RunEnd::Exited(&OK), 1, Finished, 0),
            Case {
                notified: true,
                notice: Some(N::Recovered),
                ..case(RunEnd::Exited(&OK), 6, Finished, 0)
            },
            // Any code but 0, 75 and 76, and death by a signal: permanently failed, notified.
            Case {
                notice: Some(N::Failed),
                ..case(RunEnd::Exited(&ONE), 1, PermanentlyFailed, 0)
            },
            Case {
                notice: Some(N::Failed),
                ..case(RunEnd::Exited(&TWO), 1, PermanentlyFailed, 0)
            },
            Case {
                notice: Some(N::Failed),
                ..case(RunEnd::Exited(&EXIT_77), 1, PermanentlyFailed, 0)
            },
            Case {
                notice: Some(N::Failed),
                ..case(RunEnd::Exited(&EXIT_255), 1, PermanentlyFailed, 0)
            },
            Case {
                notice: Some(N::Failed),
                ..case(RunEnd::Exited(&KILLED), 1, PermanentlyFailed, 0)
            },
            // 75 and a timeout: retried after the backoff (10 s, then 20 s, ...).
            case(RunEnd::Exited(&TEMPFAIL), 1, TemporarilyFailed, 10_000),
            case(RunEnd::Exited(&TIMED_OUT), 2, TemporarilyFailed, 20_000),
            // The attempt that reaches notify_on_attempts (3) notifies, once.
            Case {
                notice: Some(N::Attempts),
                notified_now: true,
                ..case(RunEnd::Exited(&TEMPFAIL), 3, TemporarilyFailed, 40_000)
            },
            Case {
                notified: true,
                ..case(RunEnd::Exited(&TEMPFAIL), 4, TemporarilyFailed, 80_000)
            },
            // The last attempt gives up.
            Case {
                notice: Some(N::Failed),
                ..case(RunEnd::Exited(&TEMPFAIL), 5, PermanentlyFailed, 0)
            },
            // 76: not an attempt; the next cron run, or waiting_delay under --watch.
            Case {
                uncount: true,
                ..case(RunEnd::Exited(&WAIT), 2, Waiting, 0)
            },
            Case {
                uncount: true,
                watch: true,
                ..case(RunEnd::Exited(&WAIT), 2, Waiting, 60_000)
            },
            // Stopped for cancel --kill: cancelled, unless it reported success anyway.
            case(RunEnd::Stopped(&ONE), 1, Cancelled, 0),
            case(RunEnd::Stopped(&KILLED), 1, Cancelled, 0),
            case(RunEnd::Stopped(&OK), 1, Finished, 0),
            // Its run died: the attempt counts, and it is due again at once, or used up.
            Case {
                due_now: true,
                ..case(RunEnd::Lost, 1, TemporarilyFailed, 0)
            },
            Case {
                notice: Some(N::Failed),
                ..case(RunEnd::Lost, 5, PermanentlyFailed, 0)
            },
        ];
        let retry = policy();
        for (row, case) in cases.iter().enumerate() {
            let rules = Rules {
                retry: &retry,
                notify_on_attempts: 3,
                waiting_delay: case.watch.then_some(Duration::from_secs(60)),
            };
            let job = Attempted {
                attempts: case.attempts,
                notified: case.notified,
            };
            let got = decide(&job, case.end, &rules, NOW, 0.0);
            let row = format!("row {row}: {:?} after {} attempts", case.end, case.attempts);
            assert_eq!(got.state, case.state, "{row}");
            assert_eq!(got.run_at, NOW + case.delay, "{row}");
            assert_eq!(got.notice.as_ref().map(|n| n.0), case.notice, "{row}");
            assert_eq!(got.notified_now, case.notified_now, "{row}");
            assert_eq!(got.uncount_attempt, case.uncount, "{row}");
            assert_eq!(got.due_now, case.due_now, "{row}");
        }
    }

    #[test]
    fn notices_say_why() {
        let retry = policy();
        let rules = Rules {
            retry: &retry,
            notify_on_attempts: 3,
            waiting_delay: None,
        };
        let job = |attempts| Attempted {
            attempts,
            notified: false,
        };
        let reason = |t: Transition| t.notice.map(|n| n.1).unwrap_or_default();
        assert_eq!(
            reason(decide(&job(3), RunEnd::Exited(&TEMPFAIL), &rules, NOW, 0.0)),
            "failed 3 attempts (exit code 75); still retrying"
        );
        assert_eq!(
            reason(decide(
                &job(5),
                RunEnd::Exited(&TIMED_OUT),
                &rules,
                NOW,
                0.0
            )),
            "failed permanently: retries used up after 5 attempts (timed out after 1m)"
        );
        assert_eq!(
            reason(decide(&job(1), RunEnd::Exited(&KILLED), &rules, NOW, 0.0)),
            "failed permanently (killed by signal 9)"
        );
        assert_eq!(
            reason(decide(&job(5), RunEnd::Lost, &rules, NOW, 0.0)),
            "failed permanently: retries used up after 5 attempts (the `process` run running it died)"
        );
    }

    #[test]
    fn jitter_spreads_a_retry_within_its_band() {
        let retry = policy();
        let rules = Rules {
            retry: &retry,
            notify_on_attempts: 99,
            waiting_delay: None,
        };
        let job = Attempted {
            attempts: 1,
            notified: false,
        };
        let at = |spread| decide(&job, RunEnd::Exited(&TEMPFAIL), &rules, NOW, spread).run_at;
        assert_eq!(at(-1.0), NOW + 9_000);
        assert_eq!(at(1.0), NOW + 11_000);
        assert_eq!(at(5.0), NOW + 11_000, "a spread past 1 is clamped");
    }

    #[test]
    fn exit_codes_map_to_outcomes() {
        assert_eq!(Outcome::from_exit(&Exit::Code(0)), Outcome::Finished);
        assert_eq!(
            Outcome::from_exit(&Exit::Code(75)),
            Outcome::TemporarilyFailed
        );
        assert_eq!(Outcome::from_exit(&Exit::Code(76)), Outcome::Waiting);
        assert_eq!(
            Outcome::from_exit(&Exit::TimedOut(Duration::from_secs(1))),
            Outcome::TemporarilyFailed
        );
        for exit in [
            Exit::Code(1),
            Exit::Code(74),
            Exit::Code(77),
            Exit::Signal(9),
            Exit::NotStarted("no such file".to_owned()),
        ] {
            assert_eq!(
                Outcome::from_exit(&exit),
                Outcome::PermanentlyFailed,
                "{exit}"
            );
        }
    }
}
