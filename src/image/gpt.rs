//! GUID partition tables, written and read in-process (UEFI spec 2.10 §5.3).
//!
//! Disk images need a GPT with identifiers derived from the recipe (so two builds are
//! bit-identical), and flashing to a bigger disk needs the backup header moved to the disk's
//! end. Both are a few hundred bytes of well-specified structure; the tests check the result
//! with `sfdisk --verify` and `sfdisk --json`.

use std::fs::File;
use std::os::unix::fs::FileExt;

use anyhow::{Context, Result, bail, ensure};

pub const SECTOR: u64 = 512;
const ENTRIES: u64 = 128;
const ENTRY_SIZE: u64 = 128;
/// Sectors taken by the entry array (128 × 128 bytes).
const ENTRY_SECTORS: u64 = ENTRIES * ENTRY_SIZE / SECTOR;

/// EFI system partition.
pub const ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// Linux root (x86-64), from the Discoverable Partitions Specification.
pub const LINUX_ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";

pub use crate::util::ids::Guid;

/// On-disk form of a GUID: the first three fields little-endian, the rest as written.
fn guid_bytes(g: &Guid) -> [u8; 16] {
    let raw = g.raw();
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&[raw[3], raw[2], raw[1], raw[0]]);
    b[4..6].copy_from_slice(&[raw[5], raw[4]]);
    b[6..8].copy_from_slice(&[raw[7], raw[6]]);
    b[8..].copy_from_slice(&raw[8..]);
    b
}

fn guid_from_bytes(b: &[u8]) -> Guid {
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&[b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6]]);
    raw[8..].copy_from_slice(&b[8..16]);
    Guid::from_raw(&raw)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub type_guid: Guid,
    pub guid: Guid,
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpt {
    pub disk_guid: Guid,
    pub partitions: Vec<Partition>,
}

/// First and last LBA usable by partitions on a disk of `sectors` sectors.
pub fn usable(sectors: u64) -> (u64, u64) {
    (2 + ENTRY_SECTORS, sectors - 2 - ENTRY_SECTORS)
}

fn header(g: &Gpt, sectors: u64, primary: bool, entries_crc: u32) -> [u8; SECTOR as usize] {
    let (first, last) = usable(sectors);
    let (current, backup, entries_lba) = if primary {
        (1, sectors - 1, 2)
    } else {
        (sectors - 1, 1, sectors - 1 - ENTRY_SECTORS)
    };
    let mut h = [0u8; SECTOR as usize];
    h[0..8].copy_from_slice(b"EFI PART");
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&92u32.to_le_bytes());
    h[24..32].copy_from_slice(&current.to_le_bytes());
    h[32..40].copy_from_slice(&backup.to_le_bytes());
    h[40..48].copy_from_slice(&first.to_le_bytes());
    h[48..56].copy_from_slice(&last.to_le_bytes());
    h[56..72].copy_from_slice(&guid_bytes(&g.disk_guid));
    h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
    h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
    h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
    let crc = crc32fast::hash(&h[..92]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

fn entries(g: &Gpt) -> Result<Vec<u8>> {
    let mut e = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    for (i, p) in g.partitions.iter().enumerate() {
        let o = i * ENTRY_SIZE as usize;
        e[o..o + 16].copy_from_slice(&guid_bytes(&p.type_guid));
        e[o + 16..o + 32].copy_from_slice(&guid_bytes(&p.guid));
        e[o + 32..o + 40].copy_from_slice(&p.first_lba.to_le_bytes());
        e[o + 40..o + 48].copy_from_slice(&p.last_lba.to_le_bytes());
        let name: Vec<u16> = p.name.encode_utf16().collect();
        ensure!(
            name.len() <= 36,
            "partition name `{}` is longer than 36 UTF-16 units",
            p.name
        );
        for (j, u) in name.iter().enumerate() {
            e[o + 56 + 2 * j..o + 58 + 2 * j].copy_from_slice(&u.to_le_bytes());
        }
    }
    Ok(e)
}

fn protective_mbr(sectors: u64) -> [u8; SECTOR as usize] {
    let mut m = [0u8; SECTOR as usize];
    let e = &mut m[446..462];
    e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    e[4] = 0xEE;
    e[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    e[8..12].copy_from_slice(&1u32.to_le_bytes());
    e[12..16].copy_from_slice(&(u32::try_from(sectors - 1).unwrap_or(u32::MAX)).to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xAA;
    m
}

impl Gpt {
    /// Write protective MBR, primary and backup GPT onto a disk (or image file) of `bytes` bytes.
    pub fn write(&self, f: &File, bytes: u64) -> Result<()> {
        ensure!(
            bytes.is_multiple_of(SECTOR),
            "disk size {bytes} is not a multiple of {SECTOR}"
        );
        let sectors = bytes / SECTOR;
        ensure!(
            sectors > 2 * (2 + ENTRY_SECTORS),
            "disk of {bytes} bytes is too small for a GPT"
        );
        let (first, last) = usable(sectors);
        let mut sorted: Vec<&Partition> = self.partitions.iter().collect();
        sorted.sort_by_key(|p| p.first_lba);
        for (i, p) in sorted.iter().enumerate() {
            ensure!(
                p.first_lba >= first && p.last_lba <= last && p.first_lba <= p.last_lba,
                "partition `{}` ({}..{}) is outside the usable sectors {first}..{last}",
                p.name,
                p.first_lba,
                p.last_lba
            );
            if let Some(next) = sorted.get(i + 1) {
                ensure!(
                    p.last_lba < next.first_lba,
                    "partitions `{}` and `{}` overlap",
                    p.name,
                    next.name
                );
            }
        }
        let e = entries(self)?;
        let crc = crc32fast::hash(&e);
        f.write_all_at(&protective_mbr(sectors), 0)
            .context("writing the protective MBR")?;
        f.write_all_at(&header(self, sectors, true, crc), SECTOR)
            .context("writing the GPT header")?;
        f.write_all_at(&e, 2 * SECTOR)
            .context("writing the GPT entries")?;
        f.write_all_at(&e, (sectors - 1 - ENTRY_SECTORS) * SECTOR)
            .context("writing the backup GPT entries")?;
        f.write_all_at(&header(self, sectors, false, crc), (sectors - 1) * SECTOR)
            .context("writing the backup GPT header")?;
        Ok(())
    }

    /// Read and check the primary GPT (signature, header and entry CRCs).
    pub fn read(f: &File) -> Result<Gpt> {
        Gpt::read_at(f, 1)
    }

    /// Read and check the GPT whose header is at `lba` (1: the primary; the disk's last sector:
    /// the backup).
    pub fn read_at(f: &File, lba: u64) -> Result<Gpt> {
        let mut h = [0u8; SECTOR as usize];
        f.read_exact_at(&mut h, lba * SECTOR)
            .context("reading the GPT header")?;
        if &h[..8] != b"EFI PART" {
            bail!("no GPT header at LBA {lba}");
        }
        let size = u32::from_le_bytes(h[12..16].try_into()?) as usize;
        ensure!((92..=512).contains(&size), "bad GPT header size {size}");
        let stored = u32::from_le_bytes(h[16..20].try_into()?);
        let mut copy = h;
        copy[16..20].fill(0);
        ensure!(
            crc32fast::hash(&copy[..size]) == stored,
            "GPT header checksum mismatch"
        );
        let entries_lba = u64::from_le_bytes(h[72..80].try_into()?);
        let n = u32::from_le_bytes(h[80..84].try_into()?) as usize;
        let esize = u32::from_le_bytes(h[84..88].try_into()?) as usize;
        ensure!(
            n <= 1024 && (128..=4096).contains(&esize),
            "implausible GPT entry array ({n} × {esize})"
        );
        let mut e = vec![0u8; n * esize];
        f.read_exact_at(&mut e, entries_lba * SECTOR)
            .context("reading the GPT entries")?;
        ensure!(
            crc32fast::hash(&e) == u32::from_le_bytes(h[88..92].try_into()?),
            "GPT entries checksum mismatch"
        );
        let mut partitions = Vec::new();
        for chunk in e.chunks(esize) {
            if chunk[..16].iter().all(|b| *b == 0) {
                continue;
            }
            let name: Vec<u16> = chunk[56..128]
                .chunks(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|u| *u != 0)
                .collect();
            partitions.push(Partition {
                type_guid: guid_from_bytes(&chunk[..16]),
                guid: guid_from_bytes(&chunk[16..32]),
                first_lba: u64::from_le_bytes(chunk[32..40].try_into()?),
                last_lba: u64::from_le_bytes(chunk[40..48].try_into()?),
                name: String::from_utf16_lossy(&name),
            });
        }
        Ok(Gpt {
            disk_guid: guid_from_bytes(&h[56..72]),
            partitions,
        })
    }
}

/// After an image was written to a bigger disk of `bytes` bytes: rewrite the GPT so the backup
/// sits at the disk's end and the usable area covers the whole disk (partitions unchanged), as
/// `sgdisk -e` does. The root partition can then grow at first boot.
pub fn relocate_backup(f: &File, bytes: u64) -> Result<()> {
    let g = Gpt::read(f).context("reading the GPT to relocate")?;
    g.write(f, bytes)
}
