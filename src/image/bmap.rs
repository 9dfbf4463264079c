//! Block maps (bmaptool format 2.0) of sparse images: which blocks hold data, with a SHA-256 per
//! range, so flashing writes only those and verifies each range (`bmaptool copy`, `imgbuild flash`).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

pub const BLOCK: u64 = 4096;

/// Mapped block ranges `(first, last)` (inclusive) of a sparse file: its [`allocated`] extents.
pub fn mapped_ranges(f: &File) -> Result<Vec<(u64, u64)>> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for (start, end) in allocated(f)? {
        let (first, last) = (start / BLOCK, end.div_ceil(BLOCK) - 1);
        match ranges.last_mut() {
            Some(r) if first <= r.1 + 1 => r.1 = r.1.max(last),
            _ => ranges.push((first, last)),
        }
    }
    Ok(ranges)
}

/// One extent of FS_IOC_FIEMAP's answer (linux/fiemap.h).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

/// FS_IOC_FIEMAP's request and answer (linux/fiemap.h), with room for [`EXTENTS`] extents.
#[repr(C)]
struct Fiemap {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
    extents: [FiemapExtent; EXTENTS],
}

const EXTENTS: usize = 256;
/// _IOWR('f', 11, struct fiemap): the header is 32 bytes.
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
const FIEMAP_FLAG_SYNC: u32 = 1;
const FIEMAP_EXTENT_LAST: u32 = 1;

/// The byte ranges `[start, end)` of `f` that have blocks: every allocated extent, written or
/// not, from FIEMAP after a sync, in order and within the file's size. Not SEEK_DATA where FIEMAP
/// answers: on ext4 an unwritten extent (what mke2fs's and e2fsck's zeroing leave) is data or a
/// hole to SEEK_DATA depending on what the page cache holds, so the same image got another block
/// map from one build to the next (seen in `make e2e`). SEEK_DATA only where the filesystem has
/// no FIEMAP (tmpfs, which has no unwritten extents either).
pub fn allocated(f: &File) -> Result<Vec<(u64, u64)>> {
    let size = f.metadata()?.len();
    let fd = f.as_raw_fd();
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut m = Box::new(Fiemap {
        start: 0,
        length: 0,
        flags: 0,
        mapped_extents: 0,
        extent_count: 0,
        reserved: 0,
        extents: [FiemapExtent::default(); EXTENTS],
    });
    let mut pos = 0u64;
    while pos < size {
        m.start = pos;
        m.length = u64::MAX - pos;
        m.flags = FIEMAP_FLAG_SYNC;
        m.mapped_extents = 0;
        m.extent_count = EXTENTS as u32;
        if unsafe { libc::ioctl(fd, FS_IOC_FIEMAP, &mut *m as *mut Fiemap) } < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EOPNOTSUPP | libc::ENOTTY) if pos == 0 => seek_data_ranges(f, size),
                _ => Err(e).context("FIEMAP"),
            };
        }
        let n = (m.mapped_extents as usize).min(EXTENTS);
        if n == 0 {
            break;
        }
        for e in &m.extents[..n] {
            let (a, b) = (e.logical.max(pos), (e.logical + e.length).min(size));
            if a < b {
                match out.last_mut() {
                    Some(r) if a <= r.1 => r.1 = r.1.max(b),
                    _ => out.push((a, b)),
                }
            }
        }
        let last = m.extents[n - 1];
        if last.flags & FIEMAP_EXTENT_LAST != 0 {
            break;
        }
        pos = last.logical + last.length;
    }
    Ok(out)
}

/// [`allocated`] by SEEK_DATA/SEEK_HOLE, for a filesystem without FIEMAP.
fn seek_data_ranges(f: &File, size: u64) -> Result<Vec<(u64, u64)>> {
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
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
        out.push((data as u64, (hole as u64).min(size)));
        pos = hole;
    }
    Ok(out)
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
/// A parsed bmap: what to write and how to check it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bmap {
    pub image_size: u64,
    pub block_size: u64,
    /// (first block, last block inclusive, sha256 hex)
    pub ranges: Vec<(u64, u64, String)>,
}

fn tag<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    Some(xml[start..end].trim())
}

/// Parse bmap 2.0 XML (as imgbuild and bmaptool write it) and check its own checksum.
pub fn parse(xml: &str) -> Result<Bmap> {
    let num = |name: &str| -> Result<u64> {
        tag(xml, name)
            .with_context(|| format!("no <{name}>"))?
            .parse()
            .with_context(|| format!("<{name}> is not a number"))
    };
    let image_size = num("ImageSize")?;
    let block_size = num("BlockSize")?;
    anyhow::ensure!(block_size > 0, "<BlockSize> is 0");
    if let Some(t) = tag(xml, "ChecksumType") {
        anyhow::ensure!(
            t == "sha256",
            "checksum type {t} is not supported (sha256 only)"
        );
    }
    let sum = tag(xml, "BmapFileChecksum").context("no <BmapFileChecksum>")?;
    anyhow::ensure!(
        sum.len() == 64 && sum.bytes().all(|b| b.is_ascii_hexdigit()),
        "<BmapFileChecksum> is not a SHA-256"
    );
    let actual = hex::encode(Sha256::digest(
        xml.replacen(sum, &"0".repeat(64), 1).as_bytes(),
    ));
    anyhow::ensure!(
        actual.eq_ignore_ascii_case(sum),
        "the bmap's own checksum does not match (the file was changed): expected {sum}, got {actual}"
    );
    let mut ranges = Vec::new();
    let mut rest = tag(xml, "BlockMap").context("no <BlockMap>")?;
    while let Some(i) = rest.find("<Range") {
        rest = &rest[i..];
        let end = rest.find("</Range>").context("unterminated <Range>")?;
        let elem = &rest[..end];
        let chk = elem
            .split("chksum=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .context("<Range> without chksum")?
            .to_ascii_lowercase();
        let body = elem[elem.find('>').context("bad <Range>")? + 1..].trim();
        let (a, b) = body.split_once('-').unwrap_or((body, body));
        let (first, last): (u64, u64) = (
            a.trim()
                .parse()
                .with_context(|| format!("bad range {body}"))?,
            b.trim()
                .parse()
                .with_context(|| format!("bad range {body}"))?,
        );
        anyhow::ensure!(
            first <= last && last * block_size < image_size + block_size,
            "range {body} is outside the image"
        );
        ranges.push((first, last, chk));
        rest = &rest[end..];
    }
    Ok(Bmap {
        image_size,
        block_size,
        ranges,
    })
}

/// Check every range of `map` against `image`; returns the mapped bytes.
pub fn verify(map: &Bmap, image: &Path) -> Result<u64> {
    let mut f = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let size = f.metadata()?.len();
    anyhow::ensure!(
        size == map.image_size,
        "{} is {size} bytes, the bmap says {}",
        image.display(),
        map.image_size
    );
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    for (first, last, sum) in &map.ranges {
        let start = first * map.block_size;
        let mut left = ((last + 1) * map.block_size).min(size) - start;
        total += left;
        f.seek(SeekFrom::Start(start))?;
        let mut h = Sha256::new();
        while left > 0 {
            let n = f.read(&mut buf[..left.min(1 << 20) as usize])?;
            anyhow::ensure!(n > 0, "{} ended early", image.display());
            h.update(&buf[..n]);
            left -= n as u64;
        }
        let got = hex::encode(h.finalize());
        anyhow::ensure!(
            &got == sum,
            "{}: blocks {first}-{last} do not match the bmap (sha256 {got}, expected {sum})",
            image.display()
        );
    }
    Ok(total)
}
