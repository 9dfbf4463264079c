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
    let mut x = Extractor {
        root,
        policy,
        limits,
        component: matches!(policy, Policy::Component { .. }),
        follow: match policy {
            Policy::Base => Follow::InRoot,
            Policy::Component { .. } => Follow::Never,
        },
        report: Report::default(),
        declared: 0,
        top: None,
        dirs: Vec::new(),
    };
    for entry in ar.entries().context("reading the archive")? {
        x.entry(&mut entry.context("reading an archive entry")?)?;
    }
    x.finish()
}

/// A directory's metadata, applied after everything inside it is written.
struct DirMeta {
    path: PathBuf,
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: i64,
}

/// One extraction in progress: the policy, the limits and what has been seen so far.
struct Extractor<'a> {
    root: &'a Root,
    policy: &'a Policy,
    limits: Limits,
    component: bool,
    follow: Follow,
    report: Report,
    /// Sum of the sizes the headers declared so far.
    declared: u64,
    /// A component archive's one top-level directory.
    top: Option<PathBuf>,
    /// Directory metadata is applied last, deepest first, so a read-only directory does not
    /// block its children.
    dirs: Vec<DirMeta>,
}

/// The header fields every entry kind needs, and where the entry goes.
struct Placed {
    raw: PathBuf,
    dest: PathBuf,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    size: u64,
}

impl Placed {
    fn what(&self) -> String {
        format!("entry `{}`", self.raw.display())
    }
}

impl Extractor<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<R>) -> Result<()> {
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let Some(e) = self.place(entry)? else {
            return Ok(());
        };
        let (root, follow) = (self.root, self.follow);
        if let Some(parent) = e.dest.parent() {
            root.mkdir_all(parent, 0o755, follow)
                .with_context(|| e.what())?;
        }
        match kind {
            EntryType::Directory => {
                root.mkdir_all(&e.dest, 0o700, follow)
                    .with_context(|| e.what())?;
                self.dirs.push(DirMeta {
                    path: e.dest.clone(),
                    uid: e.uid,
                    gid: e.gid,
                    mode: e.mode & if self.component { 0o777 } else { 0o7777 },
                    mtime: e.mtime,
                });
            }
            EntryType::Regular | EntryType::Continuous => self.file(entry, &e)?,
            EntryType::Symlink => self.symlink(entry, &e)?,
            EntryType::Link => self.hardlink(entry, &e)?,
            EntryType::Char | EntryType::Block | EntryType::Fifo if !self.component => {
                self.device(entry.header(), kind, &e)?
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => bail!(
                "{}: device nodes and fifos are not allowed in a component archive",
                e.what()
            ),
            other => bail!("{}: unsupported entry type {other:?}", e.what()),
        }
        // Extended attributes (file capabilities, SELinux labels) matter for an OS tree only.
        if !self.component
            && let Ok(Some(exts)) = entry.pax_extensions()
        {
            for ext in exts.flatten() {
                if let (Ok(key), value) = (ext.key(), ext.value_bytes())
                    && let Some(name) = key.strip_prefix("SCHILY.xattr.")
                {
                    self.xattr(&e, name, value)?;
                }
            }
        }
        Ok(())
    }

    /// Count the entry against the limits, read its header and decide where it goes: None for
    /// the archive's own top directory (made, nothing else to do).
    fn place<R: Read>(&mut self, entry: &tar::Entry<R>) -> Result<Option<Placed>> {
        self.report.entries += 1;
        if self.report.entries > self.limits.max_entries {
            bail!(
                "more than {} entries: refusing the archive",
                self.limits.max_entries
            );
        }
        let header = entry.header();
        let size = header.size().context("entry size")?;
        self.declared = self.declared.saturating_add(size);
        if self.declared > self.limits.max_bytes {
            bail!(
                "declares more than {} bytes of content: refusing the archive",
                self.limits.max_bytes
            );
        }
        let raw = entry.path().context("entry path")?.into_owned();
        let rel = clean_relative(&raw).with_context(|| format!("entry `{}`", raw.display()))?;
        // Where it goes, and (for components) where the archive's own tree starts.
        let (dest, tree) = match self.policy {
            Policy::Base => (rel, PathBuf::new()),
            Policy::Component { into } => {
                let mut parts = rel.components();
                let Some(first) = parts.next() else {
                    return Ok(None);
                };
                let first = PathBuf::from(first.as_os_str());
                match &self.top {
                    None => self.top = Some(first),
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
        if dest.as_os_str().is_empty() || (self.component && dest == tree) {
            if header.entry_type().is_dir() {
                self.root
                    .mkdir_all(&dest, 0o755, self.follow)
                    .with_context(|| format!("entry `{}`", raw.display()))?;
            }
            return Ok(None);
        }
        Ok(Some(Placed {
            raw,
            dest,
            mode: header.mode().unwrap_or(0o644),
            uid: header.uid().unwrap_or(0) as u32,
            gid: header.gid().unwrap_or(0) as u32,
            mtime: header.mtime().unwrap_or(0) as i64,
            size,
        }))
    }

    /// A regular file: its bytes exactly as declared; a component's without setuid/setgid/sticky
    /// and owned by root.
    fn file<R: Read>(&mut self, entry: &mut tar::Entry<R>, e: &Placed) -> Result<()> {
        let (root, follow) = (self.root, self.follow);
        let m = if self.component {
            if e.mode & 0o7000 != 0 {
                self.report.stripped.push(e.dest.clone());
            }
            e.mode & 0o777
        } else {
            e.mode & 0o7777
        };
        if !self.component {
            root.remove(&e.dest, follow).with_context(|| e.what())?;
        }
        let mut f = root
            .create_file(&e.dest, 0o600, follow)
            .with_context(|| format!("{} (does it repeat an earlier entry?)", e.what()))?;
        let n = std::io::copy(&mut entry.take(e.size), &mut f).with_context(|| e.what())?;
        if n != e.size {
            bail!(
                "{}: truncated archive (declared {} bytes, found {n})",
                e.what(),
                e.size
            );
        }
        self.report.bytes += n;
        drop(f);
        let (u, g) = if self.component {
            (0, 0)
        } else {
            (e.uid, e.gid)
        };
        root.set_meta(&e.dest, u, g, Some(m), e.mtime, follow)
            .with_context(|| e.what())
    }

    /// A symlink; a component's must resolve inside the component's own tree.
    fn symlink<R: Read>(&self, entry: &tar::Entry<R>, e: &Placed) -> Result<()> {
        let (root, follow) = (self.root, self.follow);
        let target = entry
            .link_name()
            .context("symlink target")?
            .with_context(|| format!("{}: symlink without a target", e.what()))?
            .into_owned();
        if let Policy::Component { into } = self.policy {
            let resolved = resolve_link(e.dest.parent().unwrap_or(Path::new("")), &target);
            if target.is_absolute() || !resolved.as_deref().is_some_and(|p| p.starts_with(into)) {
                bail!(
                    "{}: symlink to `{}` points outside the archive",
                    e.what(),
                    target.display()
                );
            }
        } else {
            root.remove(&e.dest, follow).with_context(|| e.what())?;
        }
        root.symlink(&target, &e.dest, follow)
            .with_context(|| e.what())?;
        if !self.component {
            root.set_meta(&e.dest, e.uid, e.gid, None, e.mtime, follow)
                .with_context(|| e.what())?;
        }
        Ok(())
    }

    /// A hard link to an earlier entry; a component's within its own tree.
    fn hardlink<R: Read>(&self, entry: &tar::Entry<R>, e: &Placed) -> Result<()> {
        let (root, follow) = (self.root, self.follow);
        let target = entry
            .link_name()
            .context("hard link target")?
            .with_context(|| format!("{}: hard link without a target", e.what()))?
            .into_owned();
        let target =
            clean_relative(&target).with_context(|| format!("{}: hard link target", e.what()))?;
        let existing = match self.policy {
            Policy::Base => target,
            Policy::Component { into } => {
                let mut parts = target.components();
                let first = parts.next().map(|c| PathBuf::from(c.as_os_str()));
                if first != self.top {
                    bail!(
                        "{}: hard link to `{}` points outside the archive",
                        e.what(),
                        target.display()
                    );
                }
                into.join(parts.as_path())
            }
        };
        if !self.component {
            root.remove(&e.dest, follow).with_context(|| e.what())?;
        }
        root.hardlink(&existing, &e.dest, follow)
            .with_context(|| e.what())
    }

    /// A device node or fifo (base archives only).
    fn device(&self, header: &tar::Header, kind: EntryType, e: &Placed) -> Result<()> {
        let (root, follow) = (self.root, self.follow);
        let fmt = match kind {
            EntryType::Char => libc::S_IFCHR,
            EntryType::Block => libc::S_IFBLK,
            _ => libc::S_IFIFO,
        };
        let (major, minor) = (
            header.device_major().ok().flatten().unwrap_or(0),
            header.device_minor().ok().flatten().unwrap_or(0),
        );
        root.remove(&e.dest, follow).with_context(|| e.what())?;
        root.mknod(
            &e.dest,
            fmt | (e.mode & 0o7777),
            libc::makedev(major, minor),
            follow,
        )
        .with_context(|| e.what())?;
        root.set_meta(
            &e.dest,
            e.uid,
            e.gid,
            Some(e.mode & 0o7777),
            e.mtime,
            follow,
        )
        .with_context(|| e.what())
    }

    /// One extended attribute of a base archive's entry.
    fn xattr(&mut self, e: &Placed, name: &str, value: &[u8]) -> Result<()> {
        let Err(err) = self.root.set_xattr(&e.dest, name, value, self.follow) else {
            return Ok(());
        };
        let unsupported = err
            .root_cause()
            .downcast_ref::<std::io::Error>()
            .and_then(|e| e.raw_os_error())
            == Some(libc::EOPNOTSUPP);
        // POSIX ACLs are re-applied at boot by systemd-tmpfiles (the journal's, for one);
        // anything else, file capabilities above all, must not be lost.
        if unsupported && name.starts_with("system.posix_acl_") {
            self.report.dropped_acls += 1;
            Ok(())
        } else if unsupported {
            Err(err.context(format!(
                "{}: the build directory's filesystem does not support the extended attribute {name}; use one that does (ext4, xfs, btrfs)",
                e.what()
            )))
        } else {
            Err(err.context(e.what()))
        }
    }

    /// Directory metadata, deepest first; a component archive must have had an entry.
    fn finish(mut self) -> Result<Report> {
        self.dirs
            .sort_by_key(|d| std::cmp::Reverse(d.path.components().count()));
        for d in &self.dirs {
            let (u, g) = if self.component {
                (0, 0)
            } else {
                (d.uid, d.gid)
            };
            self.root
                .set_meta(&d.path, u, g, Some(d.mode), d.mtime, self.follow)
                .with_context(|| format!("directory {}", d.path.display()))?;
        }
        if self.component && self.top.is_none() {
            bail!("the archive is empty");
        }
        Ok(self.report)
    }
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
