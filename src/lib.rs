//! imgbuild as a library: the binary in `main.rs` dispatches into these modules.

pub mod checksum;
pub mod cli;
pub mod cmd;
pub mod diag;
pub mod pgp;
pub mod plan;
pub mod recipe;
pub mod srcmap;
pub mod template;
