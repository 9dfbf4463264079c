//! FAT volumes (the EFI system partition, the `cidata` seed) written in place into an image file
//! by mkfs.fat and mtools, then made reproducible: mtools stamps directory entries with the
//! clock whatever SOURCE_DATE_EPOCH says, so every entry's times are reset to the epoch in-process.

pub use crate::util::tools::{MCOPY, MKFS_FAT};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};

use crate::util::fmt::civil_from_days;
use crate::util::run::Cmd;

/// A FAT volume to create.
pub struct Volume<'a> {
    pub label: &'a str,
    /// The 32-bit volume serial (shown as XXXX-XXXX, what fstab's UUID= names).
    pub serial: u32,
    /// Seconds since 1970 for every timestamp in the volume.
    pub epoch: u64,
    /// 16 (small volumes, from 4 MiB) or 32 (the ESP, from 64 MiB).
    pub bits: u8,
}

/// Format `size` bytes at byte `offset` of `image` as FAT16/32 and copy the contents of `tree`
/// (directories and regular files) into its root.
pub fn make(image: &Path, offset: u64, size: u64, tree: &Path, v: &Volume) -> Result<()> {
    crate::util::tools::require(&[MKFS_FAT, MCOPY])?;
    ensure!(
        offset.is_multiple_of(512) && size.is_multiple_of(1024),
        "FAT offset must be sector-aligned and size a multiple of 1 KiB"
    );
    Cmd::new("mkfs.fat")
        .arg("-F")
        .arg(v.bits.to_string())
        // One sector per cluster: enough clusters for FAT32 from 64 MiB, FAT16 from 4 MiB.
        .args(["-S", "512", "-s", "1", "--mbr=n", "-n", v.label, "-i"])
        .arg(format!("{:08X}", v.serial))
        .arg(format!("--offset={}", offset / 512))
        .arg("-h")
        .arg((offset / 512).to_string())
        .arg(image)
        .arg((size / 1024).to_string())
        .env("SOURCE_DATE_EPOCH", v.epoch.to_string())
        .run()
        .with_context(|| format!("formatting the {} volume in {}", v.label, image.display()))?;
    let target = format!("{}@@{offset}", image.display());
    let mut entries: Vec<_> = std::fs::read_dir(tree)
        .with_context(|| format!("reading {}", tree.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    entries.sort();
    if !entries.is_empty() {
        Cmd::new("mcopy")
            .args(["-s", "-m", "-Q", "-i"])
            .arg(&target)
            .args(&entries)
            .arg("::/")
            .env("MTOOLS_SKIP_CHECK", "1")
            .run()
            .with_context(|| format!("copying {} into {target}", tree.display()))?;
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .with_context(|| format!("opening {}", image.display()))?;
    set_times(&f, offset, v.epoch).with_context(|| format!("fixing times in {target}"))
}

/// DOS date and time (UTC) of `epoch`, clamped to the FAT range 1980..2107.
fn dos_datetime(epoch: u64) -> (u16, u16) {
    const MIN: u64 = 315_532_800; // 1980-01-01
    let t = epoch.max(MIN);
    let days = t / 86_400;
    let secs = t % 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    let year = (year - 1980).clamp(0, 127) as u16;
    let date = (year << 9) | ((month as u16) << 5) | day as u16;
    let time = (((secs / 3600) as u16) << 11)
        | ((((secs / 60) % 60) as u16) << 5)
        | ((secs % 60) / 2) as u16;
    (date, time)
}

struct Geometry {
    cluster_bytes: u64,
    fat_start: u64,
    data_start: u64,
    /// FAT32: the root directory's first cluster; FAT16: 0 (a fixed region instead).
    root_cluster: u32,
    /// FAT16's fixed root directory: (byte offset, bytes).
    root_region: (u64, u64),
    clusters: u64,
    fat32: bool,
}

fn geometry(f: &File, offset: u64) -> Result<Geometry> {
    let mut b = [0u8; 512];
    f.read_exact_at(&mut b, offset)?;
    ensure!(
        b[510] == 0x55 && b[511] == 0xAA,
        "no FAT boot sector at byte {offset}"
    );
    let le16 = |i: usize| u64::from(u16::from_le_bytes([b[i], b[i + 1]]));
    let le32 = |i: usize| u64::from(u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]));
    let bps = le16(11);
    let spc = u64::from(b[13]);
    let reserved = le16(14);
    let fats = u64::from(b[16]);
    let root_entries = le16(17);
    let fat_size = if le16(22) != 0 { le16(22) } else { le32(36) };
    let total = if le16(19) != 0 { le16(19) } else { le32(32) };
    ensure!(
        bps >= 512 && spc > 0 && fats > 0 && fat_size > 0,
        "no FAT volume at byte {offset}"
    );
    let root_start = reserved + fats * fat_size;
    let root_bytes = root_entries * 32;
    let data_sector = root_start + root_bytes.div_ceil(bps);
    let clusters = (total - data_sector) / spc;
    // The FAT type follows from the cluster count alone (Microsoft's FAT specification).
    ensure!(
        clusters >= 4085,
        "FAT12 volume at byte {offset}: not supported"
    );
    let fat32 = clusters >= 65525;
    ensure!(
        fat32 == (root_entries == 0),
        "inconsistent FAT boot sector at byte {offset}"
    );
    Ok(Geometry {
        cluster_bytes: bps * spc,
        fat_start: offset + reserved * bps,
        data_start: offset + data_sector * bps,
        root_cluster: if fat32 { le32(44) as u32 } else { 0 },
        root_region: (offset + root_start * bps, root_bytes),
        clusters,
        fat32,
    })
}

/// Set the times of every entry in one directory block; returns whether the block ended the
/// directory, and pushes subdirectories onto `stack`.
fn stamp(buf: &mut [u8], date: u16, time: u16, stack: &mut Vec<u32>) -> bool {
    for e in buf.chunks_exact_mut(32) {
        match e[0] {
            0x00 => return true,
            0xE5 => continue,
            _ => {}
        }
        let attr = e[11];
        if attr & 0x0F == 0x0F {
            continue; // a long-name part: no times
        }
        e[13] = 0;
        e[14..16].copy_from_slice(&time.to_le_bytes());
        e[16..18].copy_from_slice(&date.to_le_bytes());
        e[18..20].copy_from_slice(&date.to_le_bytes());
        e[22..24].copy_from_slice(&time.to_le_bytes());
        e[24..26].copy_from_slice(&date.to_le_bytes());
        let child = u32::from(u16::from_le_bytes([e[26], e[27]]))
            | (u32::from(u16::from_le_bytes([e[20], e[21]])) << 16);
        if attr & 0x10 != 0 && e[0] != b'.' && child != 0 {
            stack.push(child);
        }
    }
    false
}

/// Set the creation, access and modification times of every directory entry to `epoch`.
pub fn set_times(f: &File, offset: u64, epoch: u64) -> Result<()> {
    let g = geometry(f, offset)?;
    let (date, time) = dos_datetime(epoch);
    let mut stack = Vec::new();
    if g.fat32 {
        stack.push(g.root_cluster);
    } else {
        let mut buf = vec![0u8; g.root_region.1 as usize];
        f.read_exact_at(&mut buf, g.root_region.0)?;
        stamp(&mut buf, date, time, &mut stack);
        f.write_all_at(&buf, g.root_region.0)?;
    }
    let mut visited = std::collections::HashSet::new();
    let mut buf = vec![0u8; g.cluster_bytes as usize];
    while let Some(first) = stack.pop() {
        // Follow the directory's cluster chain.
        let mut cluster = first;
        loop {
            ensure!(
                cluster >= 2 && u64::from(cluster) < g.clusters + 2,
                "cluster {cluster} out of range"
            );
            if !visited.insert(cluster) {
                bail!("cluster {cluster} is linked twice");
            }
            let at = g.data_start + (u64::from(cluster) - 2) * g.cluster_bytes;
            f.read_exact_at(&mut buf, at)?;
            let end = stamp(&mut buf, date, time, &mut stack);
            f.write_all_at(&buf, at)?;
            if end {
                break;
            }
            let next = if g.fat32 {
                let mut b = [0u8; 4];
                f.read_exact_at(&mut b, g.fat_start + u64::from(cluster) * 4)?;
                u32::from_le_bytes(b) & 0x0FFF_FFFF
            } else {
                let mut b = [0u8; 2];
                f.read_exact_at(&mut b, g.fat_start + u64::from(cluster) * 2)?;
                let n = u32::from(u16::from_le_bytes(b));
                if n >= 0xFFF8 { 0x0FFF_FFFF } else { n }
            };
            if next >= 0x0FFF_FFF8 {
                break;
            }
            cluster = next;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dos_dates() {
        // 2026-01-01 00:00:00 UTC
        let (d, t) = dos_datetime(1_767_225_600);
        assert_eq!((d >> 9, (d >> 5) & 15, d & 31, t), (46, 1, 1, 0));
        // 2000-02-29 13:45:58
        let (d, t) = dos_datetime(951_831_958);
        assert_eq!((d >> 9, (d >> 5) & 15, d & 31), (20, 2, 29));
        assert_eq!((t >> 11, (t >> 5) & 63, (t & 31) * 2), (13, 45, 58));
        assert_eq!(dos_datetime(0), dos_datetime(315_532_800));
        assert_eq!(crate::util::fmt::serial_text(0x1234_ABCD), "1234-ABCD");
    }
}
