//! One integration-test binary: each module covers one area of SPEC.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bad_input;
mod clear;
mod clock;
mod concurrency;
mod config;
mod contention;
mod crash_loop;
mod disk_trouble;
mod durability;
mod hostile_callbacks;
mod hostile_input;
mod list;
mod locking;
mod protocol;
mod publish;
mod recovery;
mod retries;
mod serial_groups;
mod signals;
mod support;
