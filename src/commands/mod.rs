//! One module per command; each exposes `run(config, args)`.

pub mod clear;
pub mod list;
pub mod process;
pub mod publish;
