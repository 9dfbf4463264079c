//! imgbuild as a library: the binary in `main.rs` dispatches into these modules, one per stage of
//! the pipeline (recipe → plan → fetch → rootfs → image → vm / flash → update), plus the command layer
//! (`cli`, `cmd`, `report`) and `util`, which every stage may use and which uses none of them.

pub mod apply;
pub mod cli;
pub mod cmd;
pub mod fetch;
pub mod flash;
pub mod image;
pub mod layout;
pub mod monitor;
pub mod pki;
pub mod plan;
pub mod recipe;
pub mod report;
pub mod roll;
pub mod rootfs;
pub mod update;
pub mod util;
pub mod vm;
