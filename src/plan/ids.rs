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
    /// The seed of the root ext4's UUID: each image's own is [`DiskIds::root_fs_of`] its build
    /// key, so two images of a node (one in each root slot) never share one.
    pub root_fs: Guid,
    pub root_hash_seed: Guid,
    /// The EFI system partition's FAT serial.
    pub esp_serial: u32,
    /// The FAT seed volume's serial.
    pub seed_serial: u32,
}

impl DiskIds {
    /// The UUID of the root filesystem of the image with build key `key` (root=UUID=… on the
    /// kernel command line): one per image, so GRUB and the initramfs find the slot that holds
    /// this image and not the other slot's.
    pub fn root_fs_of(&self, key: &str) -> Guid {
        Guid::derived(&format!("imgbuild root-fs\0{}\0{key}", self.root_fs.0))
    }

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
