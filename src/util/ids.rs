//! Stable identifiers: UUIDs and GUIDs derived from a seed (the same inputs always give the same
//! UUID), and their textual forms.

use anyhow::{Result, ensure};
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

/// A GUID in its textual form, upper-case with dashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guid(pub String);

impl Guid {
    pub fn parse(s: &str) -> Result<Guid> {
        let hexs: String = s.chars().filter(|c| *c != '-').collect();
        ensure!(
            hexs.len() == 32 && hexs.bytes().all(|b| b.is_ascii_hexdigit()),
            "`{s}` is not a GUID"
        );
        Ok(Guid(s.to_ascii_uppercase()))
    }

    /// A stable random-looking (version 4 layout) GUID from a seed: same seed, same GUID.
    pub fn derived(seed: &str) -> Guid {
        Guid(uuid_text(&uuid_v4(seed.as_bytes())))
    }

    /// The 16 bytes in the order they are written (big-endian fields).
    pub fn raw(&self) -> [u8; 16] {
        let hexs: String = self.0.chars().filter(|c| *c != '-').collect();
        let v = hex::decode(hexs).expect("validated GUID");
        let mut b = [0u8; 16];
        b.copy_from_slice(&v);
        b
    }

    pub fn from_raw(b: &[u8; 16]) -> Guid {
        Guid(uuid_text(b))
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
