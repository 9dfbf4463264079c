//! The image `imgbuild update` brings: read from `images/NODE/`, checked against its manifest and
//! SHA256SUMS, and its root partition streamed as mapped ranges and holes.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use sha2::{Digest, Sha256};

use crate::image::SlotRecord;

/// A node's built image as update needs it.
pub struct NewImage {
    pub dir: PathBuf,
    pub raw: PathBuf,
    pub record: SlotRecord,
    pub cmdline: String,
    /// The root partition's byte range in the raw image (the filesystem fills it).
    pub root: (u64, u64),
    /// The bytes of data (not holes) in the root partition.
    pub root_data: u64,
}

#[derive(serde::Deserialize)]
struct Part {
    name: String,
    filesystem_id: String,
    first_lba: u64,
    last_lba: u64,
}

#[derive(serde::Deserialize)]
struct Manifest {
    node: String,
    #[serde(default)]
    build_key: String,
    #[serde(default)]
    boot: BTreeMap<String, String>,
    #[serde(default)]
    partitions: Vec<Part>,
    build_inputs: Option<BTreeMap<String, String>>,
    #[serde(default)]
    outputs: Vec<crate::image::Output>,
}

/// Read `images/NODE/` for `node` of `cluster`; refuse an image of another node or cluster, of a
/// loader update cannot drive, or one that does not match its manifest.
pub fn open(images: &Path, node: &str, cluster: &str) -> Result<NewImage> {
    let dir = images.join(node);
    let mpath = dir.join("manifest.json");
    let bytes = std::fs::read(&mpath).with_context(|| {
        format!(
            "{node}: no image to bring ({} is missing: build it with `imgbuild {node}`)",
            mpath.display()
        )
    })?;
    let m: Manifest = serde_json::from_slice(&bytes)
        .with_context(|| format!("{node}: {} is not a manifest", mpath.display()))?;
    ensure!(
        m.node == node,
        "{node}: {} is the image of node {}, not {node}",
        dir.display(),
        m.node
    );
    let inputs = m.build_inputs.with_context(|| {
        format!(
            "{node}: {} records no build inputs (built by an older imgbuild): rebuild it",
            mpath.display()
        )
    })?;
    // Plan fields are recorded as JSON values.
    let built_for = inputs
        .get("plan.cluster")
        .and_then(|v| serde_json::from_str::<String>(v).ok())
        .unwrap_or_else(|| "?".into());
    ensure!(
        built_for == cluster,
        "{node}: {} was built for cluster {built_for}, the recipe's is {cluster}",
        dir.display()
    );
    let loader = m.boot.get("loader").map(String::as_str).unwrap_or("?");
    ensure!(
        loader == "shim+grub",
        "{node}: the image boots through {loader}; update switches root slots with GRUB's boot counter (a base with shim-signed and grub-efi-amd64-signed)"
    );
    let root = m
        .partitions
        .iter()
        .find(|p| p.name == "root")
        .with_context(|| format!("{node}: {} names no root partition", mpath.display()))?;
    let range = (
        root.first_lba * 512,
        (root.last_lba + 1 - root.first_lba) * 512,
    );
    let raw = dir.join(crate::image::raw_name(node));
    let want = m
        .outputs
        .iter()
        .find(|o| Some(o.file.as_str()) == raw.file_name().and_then(|n| n.to_str()))
        .with_context(|| format!("{node}: {} lists no raw image", mpath.display()))?;
    let (sha, root_data) = hash(&raw, range)?;
    ensure!(
        sha == want.sha256,
        "{node}: {} does not match its manifest (sha256 {sha}, recorded {}): rebuild it",
        raw.display(),
        want.sha256
    );
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap_or_default();
    ensure!(
        sums.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == [want.sha256.as_str(), want.file.as_str()]),
        "{node}: {}/SHA256SUMS does not list {} with the manifest's digest",
        dir.display(),
        want.file
    );
    Ok(NewImage {
        record: SlotRecord {
            node: m.node,
            build_key: m.build_key,
            root_uuid: root.filesystem_id.clone(),
            kernel: m.boot.get("kernel").cloned().unwrap_or_default(),
            build_inputs: inputs,
        },
        cmdline: m.boot.get("cmdline").cloned().unwrap_or_default(),
        dir,
        raw,
        root: range,
        root_data,
    })
}

/// SHA-256 of the whole file, and the data bytes (not holes) in `range` of it.
fn hash(path: &Path, (start, len): (u64, u64)) -> Result<(String, u64)> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = f.metadata()?.len();
    ensure!(
        start + len <= size,
        "{}: the root partition ends past the image",
        path.display()
    );
    let data: u64 = extents(&f, start, start + len)?
        .iter()
        .filter(|e| e.data)
        .map(|e| e.len)
        .sum();
    let mut whole = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    // SEEK_DATA / SEEK_HOLE moved the offset.
    std::io::Seek::rewind(&mut f)?;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        whole.update(&buf[..n]);
    }
    Ok((hex::encode(whole.finalize()), data))
}

/// A run of the file: data or a hole.
#[derive(Debug, Clone, Copy)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    pub data: bool,
}

/// The data and holes of `[from, to)` of `f` (SEEK_DATA / SEEK_HOLE).
fn extents(f: &File, from: u64, to: u64) -> Result<Vec<Extent>> {
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    let mut pos = from;
    while pos < to {
        let data = unsafe { libc::lseek(fd, pos as i64, libc::SEEK_DATA) };
        let data = if data < 0 { to } else { (data as u64).min(to) };
        if data > pos {
            out.push(Extent {
                offset: pos,
                len: data - pos,
                data: false,
            });
        }
        if data >= to {
            break;
        }
        let hole = unsafe { libc::lseek(fd, data as i64, libc::SEEK_HOLE) };
        let hole = if hole < 0 { to } else { (hole as u64).min(to) };
        out.push(Extent {
            offset: data,
            len: hole - data,
            data: true,
        });
        pos = hole;
    }
    Ok(out)
}

/// A piece of the root partition as `slot receive` is told it: data (at most [`CHUNK`] bytes,
/// with its SHA-256) or a hole (zeros).
#[derive(Debug, Clone)]
pub struct Piece {
    /// Offset within the partition.
    pub offset: u64,
    pub len: u64,
    /// None: a hole.
    pub sha256: Option<String>,
}

/// The most bytes of one data piece: what the node compares, copies or receives as one.
pub const CHUNK: u64 = 4 << 20;

/// The root partition as pieces: every byte of it in exactly one, in order.
pub fn pieces(img: &NewImage) -> Result<Vec<Piece>> {
    let (start, len) = img.root;
    let mut f = File::open(&img.raw).with_context(|| format!("opening {}", img.raw.display()))?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; CHUNK as usize];
    for e in extents(&f, start, start + len)? {
        if !e.data {
            out.push(Piece {
                offset: e.offset - start,
                len: e.len,
                sha256: None,
            });
            continue;
        }
        let mut done = 0;
        while done < e.len {
            let n = (e.len - done).min(CHUNK);
            use std::io::Seek;
            f.seek(std::io::SeekFrom::Start(e.offset + done))?;
            f.read_exact(&mut buf[..n as usize])?;
            out.push(Piece {
                offset: e.offset - start + done,
                len: n,
                sha256: Some(hex::encode(Sha256::digest(&buf[..n as usize]))),
            });
            done += n;
        }
    }
    Ok(out)
}

/// The plan `slot receive` reads first: `data OFFSET LENGTH SHA256` and `zero OFFSET LENGTH`
/// lines, then `plan-end`.
pub fn write_plan(pieces: &[Piece], out: &mut impl Write) -> Result<()> {
    for p in pieces {
        match &p.sha256 {
            Some(h) => writeln!(out, "data {} {} {h}", p.offset, p.len)?,
            None => writeln!(out, "zero {} {}", p.offset, p.len)?,
        }
    }
    writeln!(out, "plan-end")?;
    out.flush()?;
    Ok(())
}

/// After the node named the data pieces it lacks (their indexes in `pieces`): each of them as
/// `piece INDEX` and its bytes, then `end`.
pub fn write_pieces(
    img: &NewImage,
    pieces: &[Piece],
    need: &[usize],
    out: &mut impl Write,
) -> Result<u64> {
    let mut f = File::open(&img.raw).with_context(|| format!("opening {}", img.raw.display()))?;
    let mut buf = vec![0u8; CHUNK as usize];
    let mut sent = 0;
    for &i in need {
        let p = pieces
            .get(i)
            .filter(|p| p.sha256.is_some())
            .with_context(|| format!("the node asked for piece {i}, which is no data piece"))?;
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(img.root.0 + p.offset))?;
        f.read_exact(&mut buf[..p.len as usize])?;
        writeln!(out, "piece {i}")?;
        out.write_all(&buf[..p.len as usize])?;
        sent += p.len;
    }
    writeln!(out, "end")?;
    out.flush()?;
    Ok(sent)
}

/// The bytes a slot must have room for.
pub fn root_bytes(img: &NewImage) -> u64 {
    img.root.1
}

/// Refuse a root partition bigger than the node's slot, naming both.
pub fn fits(img: &NewImage, node: &str, slot: char, slot_bytes: u64) -> Result<()> {
    if img.root.1 > slot_bytes {
        bail!(
            "{node}: the new root filesystem is {} MiB, root slot {slot} only {} MiB: reflash the node with `imgbuild flash` (the data partition is kept)",
            img.root.1 >> 20,
            slot_bytes >> 20
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sparse "raw image" with data at known places: the pieces cover the root partition's
    /// range exactly, in order, data pieces at most CHUNK with the SHA-256 of their bytes, holes
    /// where the file has none.
    #[test]
    fn pieces_cover_the_root_exactly_with_digests_of_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("n.raw");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&raw)
            .unwrap();
        f.set_len(64 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        // Before the root (must not appear), a 9 MiB run inside it, a 4 KiB block near its end.
        f.write_all_at(&[1u8; 4096], 1 << 20).unwrap();
        f.write_all_at(&vec![7u8; 9 << 20], 10 << 20).unwrap();
        f.write_all_at(&[9u8; 4096], 60 << 20).unwrap();
        drop(f);
        let img = NewImage {
            dir: dir.path().to_path_buf(),
            raw: raw.clone(),
            record: SlotRecord {
                node: "n".into(),
                build_key: "k".into(),
                root_uuid: "u".into(),
                kernel: "v".into(),
                build_inputs: BTreeMap::new(),
            },
            cmdline: String::new(),
            root: (8 << 20, 56 << 20),
            root_data: 0,
        };
        let ps = pieces(&img).unwrap();
        let mut pos = 0;
        for p in &ps {
            assert_eq!(p.offset, pos, "{ps:?}");
            assert!(
                p.len > 0 && (p.sha256.is_none() || p.len <= CHUNK),
                "{ps:?}"
            );
            pos += p.len;
        }
        assert_eq!(pos, 56 << 20);
        let data: Vec<&Piece> = ps.iter().filter(|p| p.sha256.is_some()).collect();
        let bytes: u64 = data.iter().map(|p| p.len).sum();
        // The filesystem may round data extents to its blocks; the runs are there, in full.
        assert!(((9 << 20) + 4096..12 << 20).contains(&bytes), "{ps:?}");
        let whole = std::fs::read(&raw).unwrap();
        for p in data {
            let at = (img.root.0 + p.offset) as usize;
            let want = hex::encode(Sha256::digest(&whole[at..at + p.len as usize]));
            assert_eq!(p.sha256.as_deref(), Some(want.as_str()));
        }
        let mut plan = Vec::new();
        write_plan(&ps, &mut plan).unwrap();
        let plan = String::from_utf8(plan).unwrap();
        assert!(
            plan.starts_with("zero 0 2097152\ndata 2097152 4194304 "),
            "{plan}"
        );
        assert!(plan.ends_with("plan-end\n"));
    }
}
