//! The identifiers of a node's disk, derived once in the plan and used by whoever writes or
//! names the disk (the GPT, the filesystems, fstab and the kernel command line).

use crate::util::ids::{Guid, uuid_v4};

/// The identifiers of a node's disk image, each derived from (cluster, node, label): the same
/// recipe gives the same disk, another node or cluster a different one, and editing the recipe
/// elsewhere leaves this node's identifiers (and so its unchanged image) alone.
#[derive(Debug, Clone)]
pub struct DiskIds {
    pub disk: Guid,
    pub esp_partition: Guid,
    pub root_partition: Guid,
    /// The root ext4's UUID (root=UUID=… on the kernel command line, fstab).
    pub root_fs: Guid,
    pub root_hash_seed: Guid,
    /// The EFI system partition's FAT serial.
    pub esp_serial: u32,
    /// The FAT seed volume's serial.
    pub seed_serial: u32,
}

impl DiskIds {
    pub fn derive(cluster: &str, node: &str) -> DiskIds {
        let g =
            |label: &str| Guid::derived(&format!("imgbuild disk\0{}\0{}\0{label}", cluster, node));
        let serial = |label: &str| {
            let b = uuid_v4(format!("imgbuild disk\0{}\0{}\0{label}", cluster, node).as_bytes());
            u32::from_be_bytes([b[0], b[1], b[2], b[3]])
        };
        DiskIds {
            disk: g("disk"),
            esp_partition: g("esp-partition"),
            root_partition: g("root-partition"),
            root_fs: g("root-fs"),
            root_hash_seed: g("root-hash-seed"),
            esp_serial: serial("esp"),
            seed_serial: serial("cidata"),
        }
    }
}
