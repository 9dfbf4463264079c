//! imgbuild as a library: the binary in `main.rs` dispatches into these modules.

pub mod cli;
pub mod cmd;
pub mod diag;
pub mod plan;
pub mod recipe;
pub mod srcmap;
pub mod template;
