//! The queue's rules as plain code, with no storage and no processes in them: what a run's end
//! does to its job, the retry schedule, and when a serial group lets a job start. Every backend and every kind of run (cron,
//! `--watch`, recovery) applies these same functions.

pub mod backoff;
pub mod eligibility;
pub mod outcome;
