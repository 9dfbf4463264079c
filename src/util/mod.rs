//! Helpers every stage shares and none owns: running external tools and the list of them, stable
//! ids, sizes and dates for people, stale temporaries and the root check, the stage timer, test
//! failpoints. Nothing here uses any other module of the crate.

pub mod failpoint;
pub mod fmt;
pub mod fs;
pub mod ids;
pub mod run;
pub mod stage;
pub mod tools;
