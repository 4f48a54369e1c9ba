//! One integration-test binary: each module covers one area of SPEC.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bad_input;
mod clear;
mod concurrency;
mod config;
mod list;
mod locking;
mod protocol;
mod publish;
mod recovery;
mod retries;
mod serial_groups;
mod signals;
mod support;
