//! imgbuild as a library: the binary in `main.rs` dispatches into these modules.

pub mod bmap;
pub mod cache;
pub mod checksum;
pub mod cli;
pub mod cmd;
pub mod confined;
pub mod diag;
pub mod disk;
pub mod extract;
pub mod fetch;
pub mod gpt;
pub mod ids;
pub mod lock;
pub mod mirror;
pub mod pgp;
pub mod plan;
pub mod recipe;
pub mod render;
pub mod rootfs;
pub mod run;
pub mod srcmap;
pub mod template;
pub mod tools;
