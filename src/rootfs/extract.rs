//! Safe extraction of downloaded tar archives into a rootfs, through [`crate::rootfs::confined::Root`].
//!
//! Component archives (ZooKeeper, Kafka, Storm, Java, Python) are held to a strict policy: one
//! top-level directory, no `..` or absolute paths, symlinks only to places inside the archive's
//! own tree and never followed while writing, hard links only within the tree, no devices or
//! fifos, setuid/setgid/sticky bits stripped, and bounds on declared size and entry count.
//! Base OS archives keep ownership, modes (setuid included), device nodes and xattrs — they are
//! an operating system — but every write still stays inside the root.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use tar::EntryType;

use crate::rootfs::confined::{Follow, Root, clean_relative};

#[derive(Debug, Clone)]
pub enum Policy {
    /// An operating system tree, extracted at the root.
    Base,
    /// An application archive with one top-level directory, extracted (without that directory)
    /// into `into` (e.g. `opt/zookeeper-3.9.5`).
    Component { into: PathBuf },
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Sum of the sizes the headers declare.
    pub max_bytes: u64,
    pub max_entries: u64,
}

impl Limits {
    pub const COMPONENT: Limits = Limits {
        max_bytes: 4 << 30,
        max_entries: 50_000,
    };
    pub const BASE: Limits = Limits {
        max_bytes: 32 << 30,
        max_entries: 2_000_000,
    };
}

/// What an extraction did, for logs and tests.
#[derive(Debug, Default)]
pub struct Report {
    pub entries: u64,
    pub bytes: u64,
    /// Files whose setuid/setgid/sticky bits were removed.
    pub stripped: Vec<PathBuf>,
    /// POSIX ACLs the build filesystem could not store.
    pub dropped_acls: u64,
}

/// Open an archive file, undoing gzip or xz compression (recognised by magic bytes).
pub fn open_archive(path: &Path) -> Result<Box<dyn Read>> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut magic = [0u8; 6];
    let n = f
        .read(&mut magic)
        .with_context(|| format!("reading {}", path.display()))?;
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let r = std::io::BufReader::with_capacity(1 << 20, f);
    Ok(match &magic[..n] {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(r)),
        [0xfd, b'7', b'z', b'X', b'Z', 0] => {
            Box::new(liblzma::read::XzDecoder::new_multi_decoder(r))
        }
        _ => Box::new(r),
    })
}

/// Extract `archive` into `root` under `policy`. On error the root may hold part of the archive:
/// callers extract into a staging tree that is discarded on failure.
pub fn extract(archive: impl Read, root: &Root, policy: &Policy, limits: Limits) -> Result<Report> {
    let mut ar = tar::Archive::new(archive);
    let mut report = Report::default();
    let mut declared = 0u64;
    let mut top: Option<PathBuf> = None;
    // Directory metadata is applied last, deepest first, so a read-only directory does not block its children.
    let mut dirs: Vec<(PathBuf, u32, u32, u32, i64)> = Vec::new();
    let follow = match policy {
        Policy::Base => Follow::InRoot,
        Policy::Component { .. } => Follow::Never,
    };
    for entry in ar.entries().context("reading the archive")? {
        let mut entry = entry.context("reading an archive entry")?;
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            continue;
        }
        report.entries += 1;
        if report.entries > limits.max_entries {
            bail!(
                "more than {} entries: refusing the archive",
                limits.max_entries
            );
        }
        let size = entry.header().size().context("entry size")?;
        declared = declared.saturating_add(size);
        if declared > limits.max_bytes {
            bail!(
                "declares more than {} bytes of content: refusing the archive",
                limits.max_bytes
            );
        }
        let raw = entry.path().context("entry path")?.into_owned();
        let rel = clean_relative(&raw).with_context(|| format!("entry `{}`", raw.display()))?;
        let header = entry.header();
        let mode = header.mode().unwrap_or(0o644);
        let (uid, gid) = (
            header.uid().unwrap_or(0) as u32,
            header.gid().unwrap_or(0) as u32,
        );
        let mtime = header.mtime().unwrap_or(0) as i64;
        // Where it goes, and (for components) where the archive's own tree starts.
        let (dest, tree) = match policy {
            Policy::Base => (rel.clone(), PathBuf::new()),
            Policy::Component { into } => {
                let mut parts = rel.components();
                let Some(first) = parts.next() else { continue };
                let first = PathBuf::from(first.as_os_str());
                match &top {
                    None => top = Some(first.clone()),
                    Some(t) if *t != first => bail!(
                        "entry `{}` is outside the archive's top-level directory `{}`",
                        raw.display(),
                        t.display()
                    ),
                    Some(_) => {}
                }
                (into.join(parts.as_path()), into.clone())
            }
        };
        let component = matches!(policy, Policy::Component { .. });
        let in_tree = |p: &Path| p.starts_with(&tree);
        let what = || format!("entry `{}`", raw.display());
        if dest.as_os_str().is_empty() || (component && dest == tree) {
            if kind.is_dir() {
                root.mkdir_all(&dest, 0o755, follow).with_context(what)?;
            }
            continue;
        }
        if let Some(parent) = dest.parent() {
            root.mkdir_all(parent, 0o755, follow).with_context(what)?;
        }
        match kind {
            EntryType::Directory => {
                root.mkdir_all(&dest, 0o700, follow).with_context(what)?;
                let m = if component {
                    mode & 0o777
                } else {
                    mode & 0o7777
                };
                dirs.push((dest.clone(), uid, gid, m, mtime));
            }
            EntryType::Regular | EntryType::Continuous => {
                let m = if component {
                    if mode & 0o7000 != 0 {
                        report.stripped.push(dest.clone());
                    }
                    mode & 0o777
                } else {
                    mode & 0o7777
                };
                if !component {
                    root.remove(&dest, follow).with_context(what)?;
                }
                let mut f = root
                    .create_file(&dest, 0o600, follow)
                    .with_context(|| format!("{} (does it repeat an earlier entry?)", what()))?;
                let n = std::io::copy(&mut (&mut entry).take(size), &mut f).with_context(what)?;
                if n != size {
                    bail!(
                        "{}: truncated archive (declared {size} bytes, found {n})",
                        what()
                    );
                }
                report.bytes += n;
                drop(f);
                let (u, g) = if component { (0, 0) } else { (uid, gid) };
                root.set_meta(&dest, u, g, Some(m), mtime, follow)
                    .with_context(what)?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .context("symlink target")?
                    .with_context(|| format!("{}: symlink without a target", what()))?
                    .into_owned();
                if component {
                    let resolved = resolve_link(dest.parent().unwrap_or(Path::new("")), &target);
                    if target.is_absolute() || !resolved.as_deref().is_some_and(in_tree) {
                        bail!(
                            "{}: symlink to `{}` points outside the archive",
                            what(),
                            target.display()
                        );
                    }
                } else {
                    root.remove(&dest, follow).with_context(what)?;
                }
                root.symlink(&target, &dest, follow).with_context(what)?;
                if !component {
                    root.set_meta(&dest, uid, gid, None, mtime, follow)
                        .with_context(what)?;
                }
            }
            EntryType::Link => {
                let target = entry
                    .link_name()
                    .context("hard link target")?
                    .with_context(|| format!("{}: hard link without a target", what()))?
                    .into_owned();
                let target = clean_relative(&target)
                    .with_context(|| format!("{}: hard link target", what()))?;
                let existing = match policy {
                    Policy::Base => target,
                    Policy::Component { into } => {
                        let mut parts = target.components();
                        let first = parts.next().map(|c| PathBuf::from(c.as_os_str()));
                        if first != top {
                            bail!(
                                "{}: hard link to `{}` points outside the archive",
                                what(),
                                target.display()
                            );
                        }
                        into.join(parts.as_path())
                    }
                };
                if !component {
                    root.remove(&dest, follow).with_context(what)?;
                }
                root.hardlink(&existing, &dest, follow).with_context(what)?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo if !component => {
                let fmt = match kind {
                    EntryType::Char => libc::S_IFCHR,
                    EntryType::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                let (major, minor) = (
                    header.device_major().ok().flatten().unwrap_or(0),
                    header.device_minor().ok().flatten().unwrap_or(0),
                );
                root.remove(&dest, follow).with_context(what)?;
                root.mknod(
                    &dest,
                    fmt | (mode & 0o7777),
                    libc::makedev(major, minor),
                    follow,
                )
                .with_context(what)?;
                root.set_meta(&dest, uid, gid, Some(mode & 0o7777), mtime, follow)
                    .with_context(what)?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                bail!(
                    "{}: device nodes and fifos are not allowed in a component archive",
                    what()
                );
            }
            other => bail!("{}: unsupported entry type {other:?}", what()),
        }
        // Extended attributes (file capabilities, SELinux labels) matter for an OS tree only.
        if !component && let Ok(Some(exts)) = entry.pax_extensions() {
            for ext in exts.flatten() {
                if let (Ok(key), value) = (ext.key(), ext.value_bytes())
                    && let Some(name) = key.strip_prefix("SCHILY.xattr.")
                    && let Err(e) = root.set_xattr(&dest, name, value, follow)
                {
                    let unsupported = e
                        .root_cause()
                        .downcast_ref::<std::io::Error>()
                        .and_then(|e| e.raw_os_error())
                        == Some(libc::EOPNOTSUPP);
                    // POSIX ACLs are re-applied at boot by systemd-tmpfiles (the journal's,
                    // for one); anything else, file capabilities above all, must not be lost.
                    if unsupported && name.starts_with("system.posix_acl_") {
                        report.dropped_acls += 1;
                    } else if unsupported {
                        return Err(e.context(format!(
                            "{}: the build directory's filesystem does not support the extended attribute {name}; use one that does (ext4, xfs, btrfs)",
                            what()
                        )));
                    } else {
                        return Err(e.context(what()));
                    }
                }
            }
        }
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0.components().count()));
    for (dir, uid, gid, mode, mtime) in dirs {
        let (u, g) = if matches!(policy, Policy::Component { .. }) {
            (0, 0)
        } else {
            (uid, gid)
        };
        root.set_meta(&dir, u, g, Some(mode), mtime, follow)
            .with_context(|| format!("directory {}", dir.display()))?;
    }
    if let (Policy::Component { .. }, None) = (policy, &top) {
        bail!("the archive is empty");
    }
    Ok(report)
}

/// Lexically resolve a relative symlink `target` placed in directory `dir`; None if it climbs
/// above the root.
fn resolve_link(dir: &Path, target: &Path) -> Option<PathBuf> {
    let mut out: Vec<&std::ffi::OsStr> = dir.components().map(|c| c.as_os_str()).collect();
    for c in target.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop()?;
            }
            _ => return None,
        }
    }
    Some(out.iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_resolution() {
        assert_eq!(
            resolve_link(Path::new("opt/zk/bin"), Path::new("../lib/x")),
            Some(PathBuf::from("opt/zk/lib/x"))
        );
        assert_eq!(resolve_link(Path::new("a"), Path::new("../../x")), None);
    }
}
