//! One module per command; each exposes `run(config, args)`.

pub(crate) mod batch;
pub(crate) mod cancel;
pub(crate) mod check;
pub(crate) mod clear;
pub(crate) mod explain;
pub(crate) mod generate;
pub(crate) mod list;
pub(crate) mod migrate;
pub(crate) mod pause;
pub(crate) mod process;
pub mod publish;
pub(crate) mod retry;
pub(crate) mod show;
pub(crate) mod stats;
pub(crate) mod status;
