//! Stable identifiers derived from the recipe: the same inputs always give the same UUID.

use sha2::{Digest, Sha256};

/// 16 bytes from a hash of `seed`, with the version-4/variant-1 bits set (so they look like,
/// and are accepted wherever, a random UUID is expected).
pub fn uuid_v4(seed: &[u8]) -> [u8; 16] {
    let h = Sha256::digest(seed);
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    b
}

/// `XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX`, upper case.
pub fn uuid_text(b: &[u8; 16]) -> String {
    let x = hex::encode_upper(b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..]
    )
}

/// The identifiers of a node's disk image, each derived from (cluster, node, label): the same
/// recipe gives the same disk, another node or cluster a different one, and editing the recipe
/// elsewhere leaves this node's identifiers (and so its unchanged image) alone.
#[derive(Debug, Clone)]
pub struct DiskIds {
    pub disk: crate::gpt::Guid,
    pub esp_partition: crate::gpt::Guid,
    pub root_partition: crate::gpt::Guid,
    /// The root ext4's UUID (root=UUID=… on the kernel command line, fstab).
    pub root_fs: crate::gpt::Guid,
    pub root_hash_seed: crate::gpt::Guid,
    /// The EFI system partition's FAT serial.
    pub esp_serial: u32,
    /// The FAT seed volume's serial.
    pub seed_serial: u32,
}

impl DiskIds {
    pub fn for_node(p: &crate::plan::Plan) -> DiskIds {
        let g = |label: &str| {
            crate::gpt::Guid::derived(&format!(
                "imgbuild disk\0{}\0{}\0{label}",
                p.cluster, p.node.name
            ))
        };
        let serial = |label: &str| {
            let b = uuid_v4(
                format!("imgbuild disk\0{}\0{}\0{label}", p.cluster, p.node.name).as_bytes(),
            );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_version_4() {
        let a = uuid_v4(b"node1");
        assert_eq!(a, uuid_v4(b"node1"));
        assert_ne!(a, uuid_v4(b"node2"));
        let t = uuid_text(&a);
        assert_eq!((t.len(), &t[14..15]), (36, "4"));
        assert!(matches!(&t[19..20], "8" | "9" | "A" | "B"));
    }
}
