//! One module per command; each exposes `run(config, args)`.

pub mod cancel;
pub mod check;
pub mod clear;
pub mod explain;
pub mod generate;
pub mod list;
pub mod process;
pub mod publish;
pub mod retry;
pub mod show;
pub mod stats;
pub mod status;
