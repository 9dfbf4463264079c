//! Block maps (bmaptool format 2.0) of sparse images: which blocks hold data, with a SHA-256 per
//! range, so flashing writes only those and verifies each range (`bmaptool copy`, `imgbuild flash`).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

pub const BLOCK: u64 = 4096;

/// Mapped block ranges `(first, last)` (inclusive) of a sparse file, from SEEK_DATA/SEEK_HOLE.
pub fn mapped_ranges(f: &File) -> Result<Vec<(u64, u64)>> {
    let size = f.metadata()?.len();
    let fd = f.as_raw_fd();
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let mut pos = 0i64;
    while (pos as u64) < size {
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // no data after pos
            }
            return Err(e).context("SEEK_DATA");
        }
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error()).context("SEEK_HOLE");
        }
        let first = data as u64 / BLOCK;
        let last = (hole as u64).div_ceil(BLOCK) - 1;
        match ranges.last_mut() {
            Some(r) if first <= r.1 + 1 => r.1 = r.1.max(last),
            _ => ranges.push((first, last)),
        }
        pos = hole;
    }
    Ok(ranges)
}

/// The bmap XML of `image`.
pub fn create(image: &Path) -> Result<String> {
    let mut f = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let size = f.metadata()?.len();
    let ranges = mapped_ranges(&f).with_context(|| format!("mapping {}", image.display()))?;
    let blocks = size.div_ceil(BLOCK);
    let mapped: u64 = ranges.iter().map(|(a, b)| b - a + 1).sum();
    let mut map = String::new();
    let mut buf = vec![0u8; 1 << 20];
    for (first, last) in &ranges {
        f.seek(SeekFrom::Start(first * BLOCK))?;
        let mut left = ((last + 1) * BLOCK).min(size) - first * BLOCK;
        let mut h = Sha256::new();
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = f.read(&mut buf[..want])?;
            anyhow::ensure!(
                n > 0,
                "{} changed while it was being mapped",
                image.display()
            );
            h.update(&buf[..n]);
            left -= n as u64;
        }
        let range = if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        };
        map.push_str(&format!(
            "        <Range chksum=\"{}\"> {range} </Range>\n",
            hex::encode(h.finalize())
        ));
    }
    let zeros = "0".repeat(64);
    let xml = format!(
        "<?xml version=\"1.0\" ?>\n\
         <!-- Block map of {name}, made by imgbuild: only mapped blocks need writing. -->\n\
         <bmap version=\"2.0\">\n    \
         <ImageSize> {size} </ImageSize>\n    \
         <BlockSize> {BLOCK} </BlockSize>\n    \
         <BlocksCount> {blocks} </BlocksCount>\n    \
         <MappedBlocksCount> {mapped} </MappedBlocksCount>\n    \
         <ChecksumType> sha256 </ChecksumType>\n    \
         <!-- SHA-256 of this file with the value below set to zeros. -->\n    \
         <BmapFileChecksum> {zeros} </BmapFileChecksum>\n    \
         <BlockMap>\n{map}    </BlockMap>\n</bmap>\n",
        name = image
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("image"),
    );
    let sum = hex::encode(Sha256::digest(xml.as_bytes()));
    Ok(xml.replacen(&zeros, &sum, 1))
}
