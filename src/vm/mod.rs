//! Running the built nodes: QEMU virtual machines or systemd-nspawn containers on a private
//! network, the cluster checks (membership, data path, node loss) and what to show when one fails.

pub mod boot;
pub mod checks;
pub mod cluster;
pub mod container;
pub mod disk;
pub mod hostlink;
pub mod member;
pub mod qemu;
