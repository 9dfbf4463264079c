//! Writing filesystems into a disk image file in place: no loop devices, no mounts.

pub use crate::util::tools::{E2FSCK, MKFS_EXT4, TUNE2FS};
use std::path::Path;

use anyhow::{Context, Result};

use crate::image::gpt::Guid;
use crate::util::run::Cmd;

/// Identity and clock of a filesystem, fixed so two builds of the same tree are bit-identical.
pub struct FsIdentity<'a> {
    pub label: &'a str,
    pub uuid: &'a Guid,
    pub hash_seed: &'a Guid,
    /// Seconds since 1970 for every timestamp mkfs itself writes.
    pub epoch: u64,
}

/// Create an ext4 filesystem of `size` bytes at byte `offset` of `image`, filled from `tree`
/// (`mkfs.ext4 -d`, which keeps owners, modes, setuid bits, hard links and xattrs).
pub fn mkfs_ext4(image: &Path, offset: u64, size: u64, tree: &Path, id: &FsIdentity) -> Result<()> {
    crate::util::tools::require(&[MKFS_EXT4])?;
    // `mkfs -d` copies each file's atime as it stats it, and reading the file for the copy moves
    // the tree's atime to "now": without this, the second build of the same tree differs.
    clamp_times(tree, id.epoch)
        .with_context(|| format!("clamping timestamps in {}", tree.display()))?;
    anyhow::ensure!(
        offset.is_multiple_of(4096) && size.is_multiple_of(4096),
        "ext4 offset and size must be multiples of 4 KiB"
    );
    Cmd::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-T", "default", "-L", id.label])
        // The metadata checksums' seed is kept in the superblock: a node's images, each with its
        // own UUID (set by tune2fs on the shared filesystem's copy), keep the same checksums, so
        // two of them differ only where their files do (`imgbuild update` sends only that).
        .args(["-O", "metadata_csum_seed", "-U"])
        .arg(id.uuid.0.to_ascii_lowercase())
        .arg("-E")
        .arg(format!(
            "offset={offset},hash_seed={},root_owner=0:0,lazy_itable_init=0,nodiscard",
            id.hash_seed.0.to_ascii_lowercase()
        ))
        .arg("-d")
        .arg(tree)
        .arg(image)
        .arg(format!("{}k", size / 1024))
        // e2fsprogs reads its clock from here: superblock and directory times become fixed.
        .env("E2FSPROGS_FAKE_TIME", id.epoch.to_string())
        // 1.47.1+ also clamps copied file times to it (tytso/e2fsprogs#131); 1.47.0, Debian 12's,
        // still copies each file's ctime, so its images are not yet bit-identical.
        .env("SOURCE_DATE_EPOCH", id.epoch.to_string())
        .run()
        .with_context(|| format!("writing the root filesystem of {}", image.display()))?;
    reset_ctimes(image, offset, tree, id.epoch)
}

/// `mkfs -d` in e2fsprogs 1.47.0 copies every file's ctime, which the kernel sets to "now" on
/// any change and nothing can set back; 1.47.1 clamps it (tytso/e2fsprogs#131). Until Debian
/// has that, rewrite every inode's ctime inside the new filesystem with one `debugfs` script.
fn reset_ctimes(image: &Path, offset: u64, tree: &Path, epoch: u64) -> Result<()> {
    use std::fmt::Write as _;
    let mut script = String::new();
    crate::util::fs::walk(tree, |rel, _| {
        let name = rel
            .to_str()
            .with_context(|| format!("{} is not UTF-8", rel.display()))?;
        anyhow::ensure!(
            !name.contains(['"', '\n']),
            "cannot script a path with quotes or newlines: {name:?}"
        );
        let _ = writeln!(script, "set_inode_field \"/{name}\" ctime @{epoch}");
        Ok(true)
    })?;
    let cmds = image.with_extension(format!("ctimes-{}.debugfs", std::process::id()));
    std::fs::write(&cmds, script).with_context(|| format!("writing {}", cmds.display()))?;
    let result = Cmd::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&cmds)
        .arg(format!("{}?offset={offset}", image.display()))
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .run();
    let _ = std::fs::remove_file(&cmds);
    result.with_context(|| format!("fixing inode times in {}", image.display()))?;
    Ok(())
}

/// Set every atime in `tree` to `epoch` and cap every mtime at it (SOURCE_DATE_EPOCH clamping),
/// never following symlinks.
pub fn clamp_times(tree: &Path, epoch: u64) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    crate::util::fs::walk(tree, |rel, m| {
        let p = tree.join(rel);
        let mtime = (m.mtime().max(0) as u64).min(epoch) as i64;
        let times = [
            libc::timespec {
                tv_sec: epoch as i64,
                tv_nsec: 0,
            },
            libc::timespec {
                tv_sec: mtime,
                tv_nsec: 0,
            },
        ];
        let c = std::ffi::CString::new(p.as_os_str().as_bytes())?;
        let r = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        anyhow::ensure!(
            r == 0,
            "setting times of {}: {}",
            p.display(),
            std::io::Error::last_os_error()
        );
        Ok(true)
    })
}

/// Where a node's tree differs from the shared tree it was hard-linked from, as a `debugfs`
/// script that turns a filesystem made from the shared tree into one of the node's tree; or why
/// it cannot be expressed that way (then the node gets a filesystem of its own from `mkfs -d`).
///
/// Unchanged entries are the shared inodes themselves (same device and inode number), so the
/// walk compares inode numbers, never contents. Every created or changed entry gets the owner,
/// mode and (clamped) times it has in the node's tree, as `mkfs -d` would have given it.
pub fn delta_script(common: &Path, node: &Path, epoch: u64) -> Result<Result<String, String>> {
    let mut script = String::new();
    match delta_dir(common, node, Path::new(""), epoch, &mut script)? {
        Some(why) => Ok(Err(why)),
        None => Ok(Ok(script)),
    }
}

fn quoted(rel: &Path) -> Result<String, String> {
    let s = rel
        .to_str()
        .ok_or_else(|| format!("{} is not UTF-8", rel.display()))?;
    if s.contains(['"', '\n']) {
        return Err(format!("{s:?} cannot be quoted for debugfs"));
    }
    Ok(format!("\"/{s}\""))
}

/// `set_inode_field` lines giving `path` the metadata it has in the tree.
fn attributes(script: &mut String, path: &str, m: &std::fs::Metadata, epoch: u64) {
    use std::fmt::Write as _;
    use std::os::unix::fs::MetadataExt;
    let mtime = (m.mtime().max(0) as u64).min(epoch);
    let _ = writeln!(script, "set_inode_field {path} mode 0{:o}", m.mode());
    let _ = writeln!(script, "set_inode_field {path} uid {}", m.uid());
    let _ = writeln!(script, "set_inode_field {path} gid {}", m.gid());
    for (field, t) in [("atime", epoch), ("mtime", mtime), ("ctime", epoch)] {
        let _ = writeln!(script, "set_inode_field {path} {field} @{t}");
    }
}

fn has_xattrs(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
        return true;
    };
    unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) != 0 }
}

/// One directory level of [`delta_script`]; `Some(reason)` when the delta is not scriptable.
// Long on purpose: one directory level, every file-type pair (dir, file, symlink, missing on either
// side) in one place, so no case can be forgotten between two functions.
fn delta_dir(
    common: &Path,
    node: &Path,
    rel: &Path,
    epoch: u64,
    script: &mut String,
) -> Result<Option<String>> {
    use std::fmt::Write as _;
    use std::os::unix::fs::MetadataExt;
    let names = |dir: &Path| -> Result<std::collections::BTreeSet<std::ffi::OsString>> {
        match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .map(|e| Ok(e?.file_name()))
                .collect::<std::io::Result<_>>()
                .with_context(|| format!("reading {}", dir.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
        }
    };
    let in_node = names(&node.join(rel))?;
    let in_common = match std::fs::symlink_metadata(common.join(rel)) {
        Ok(m) if m.is_dir() => names(&common.join(rel))?,
        _ => Default::default(),
    };
    // Entries only the shared tree has: removed from the node's.
    for name in in_common.difference(&in_node) {
        let r = rel.join(name);
        if std::fs::symlink_metadata(common.join(&r))?.is_dir() {
            return Ok(Some(format!("directory /{} removed", r.display())));
        }
        let q = match quoted(&r) {
            Ok(q) => q,
            Err(why) => return Ok(Some(why)),
        };
        let _ = writeln!(script, "rm {q}");
    }
    for name in &in_node {
        let r = rel.join(name);
        let q = match quoted(&r) {
            Ok(q) => q,
            Err(why) => return Ok(Some(why)),
        };
        let n = node.join(&r);
        let nm = std::fs::symlink_metadata(&n).with_context(|| format!("stat {}", n.display()))?;
        let cm = std::fs::symlink_metadata(common.join(&r)).ok();
        if nm.is_dir() {
            match &cm {
                Some(cm) if cm.is_dir() => {
                    let clamp = |m: &std::fs::Metadata| (m.mtime().max(0) as u64).min(epoch);
                    if (cm.mode(), cm.uid(), cm.gid(), clamp(cm))
                        != (nm.mode(), nm.uid(), nm.gid(), clamp(&nm))
                    {
                        attributes(script, &q, &nm, epoch);
                    }
                }
                other => {
                    if other.is_some() {
                        let _ = writeln!(script, "rm {q}");
                    }
                    let _ = writeln!(script, "mkdir {q}");
                    attributes(script, &q, &nm, epoch);
                }
            }
            if let Some(why) = delta_dir(common, node, &r, epoch, script)? {
                return Ok(Some(why));
            }
            continue;
        }
        match &cm {
            Some(cm) if cm.is_dir() => {
                return Ok(Some(format!(
                    "directory /{} replaced by a file",
                    r.display()
                )));
            }
            Some(cm) if (cm.dev(), cm.ino()) == (nm.dev(), nm.ino()) => continue,
            Some(_) => {
                let _ = writeln!(script, "rm {q}");
            }
            None => {}
        }
        if has_xattrs(&n) {
            return Ok(Some(format!("/{} has extended attributes", r.display())));
        }
        let ft = nm.file_type();
        if ft.is_file() {
            if nm.nlink() != 1 {
                return Ok(Some(format!("/{} is a new hard link", r.display())));
            }
            let src = n
                .to_str()
                .filter(|s| !s.contains(['"', '\n']))
                .with_context(|| format!("{} cannot be quoted for debugfs", n.display()))?;
            let _ = writeln!(script, "write \"{src}\" {q}");
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&n)?;
            let t = match target.to_str() {
                Some(t) if !t.contains(['"', '\n']) => t.to_string(),
                _ => return Ok(Some(format!("/{}: unusual symlink target", r.display()))),
            };
            let _ = writeln!(script, "symlink {q} \"{t}\"");
        } else {
            return Ok(Some(format!("/{} is a special file", r.display())));
        }
        attributes(script, &q, &nm, epoch);
    }
    Ok(None)
}

/// The shared tree's filesystem, made once by `mkfs -d` and kept at `path` (written under a
/// temporary name, renamed when complete) for every node whose root partition has this size.
pub fn template(path: &Path, size: u64, common: &Path, id: &FsIdentity) -> Result<()> {
    if path.is_file() {
        return Ok(());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("root");
    let staging = crate::util::fs::Staging::new(dir, &format!("{name}.tmp-"))?;
    let tmp = staging.path();
    std::fs::File::create(tmp)
        .with_context(|| format!("creating {}", tmp.display()))?
        .set_len(size)?;
    mkfs_ext4(tmp, 0, size, common, id)?;
    staging.rename_to(path)
}

/// Copy the allocated extents of `src` (holes stay holes; see [`super::bmap::allocated`]) into
/// `dst` at byte `offset`, in the kernel.
pub fn copy_sparse(src: &Path, dst: &Path, offset: u64) -> Result<()> {
    use std::os::fd::AsRawFd;
    let s = std::fs::File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let d = std::fs::OpenOptions::new()
        .write(true)
        .open(dst)
        .with_context(|| format!("opening {}", dst.display()))?;
    let ranges =
        super::bmap::allocated(&s).with_context(|| format!("mapping {}", src.display()))?;
    for (start, end) in ranges {
        let (mut from, mut to) = (start as i64, (offset + start) as i64);
        let mut left = end - start;
        while left > 0 {
            let n = unsafe {
                libc::copy_file_range(
                    s.as_raw_fd(),
                    &mut from,
                    d.as_raw_fd(),
                    &mut to,
                    left.min(1 << 30) as usize,
                    0,
                )
            };
            anyhow::ensure!(
                n > 0,
                "copying {} into {}: {}",
                src.display(),
                dst.display(),
                if n == 0 {
                    "unexpected end of file".to_string()
                } else {
                    std::io::Error::last_os_error().to_string()
                }
            );
            left -= n as u64;
        }
    }
    Ok(())
}

/// Turn the copy of the template at `offset` of `image` into this node's filesystem: its UUID
/// and hash seed, then the node's changes (`script` from [`delta_script`]), then re-index the
/// directories for the new hash seed and check the result.
pub fn personalise(image: &Path, offset: u64, id: &FsIdentity, script: &str) -> Result<()> {
    crate::util::tools::require(&[TUNE2FS, E2FSCK])?;
    let spec = format!("{}?offset={offset}", image.display());
    let clock = id.epoch.to_string();
    Cmd::new("tune2fs")
        .arg("-U")
        .arg(id.uuid.0.to_ascii_lowercase())
        .arg(&spec)
        .env("E2FSPROGS_FAKE_TIME", &clock)
        .run()
        .with_context(|| format!("setting the root filesystem's UUID in {}", image.display()))?;
    let cmds = image.with_extension(format!("delta-{}.debugfs", std::process::id()));
    let full = format!(
        "set_super_value hash_seed {}\n{script}",
        id.hash_seed.0.to_ascii_lowercase()
    );
    std::fs::write(&cmds, &full).with_context(|| format!("writing {}", cmds.display()))?;
    let out = Cmd::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&cmds)
        .arg(&spec)
        .env("E2FSPROGS_FAKE_TIME", &clock)
        .output();
    let _ = std::fs::remove_file(&cmds);
    let out = out?;
    // debugfs goes on after a failed command and exits 0: its stderr is the only report.
    let errors: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    anyhow::ensure!(
        out.status.success() && errors.is_empty(),
        "applying the node's files to its root filesystem in {} failed:\n{}",
        image.display(),
        errors.join("\n")
    );
    // -D rebuilds every directory index with the new hash seed; exit 1 means "changed", fine.
    let fix = Cmd::new("e2fsck")
        .args(["-f", "-y", "-D"])
        .arg(&spec)
        // e2fsck's own clock (the superblock's last-check and write times), not E2FSPROGS_FAKE_TIME.
        .env("E2FSCK_TIME", &clock)
        .env("E2FSPROGS_FAKE_TIME", &clock)
        .output()?;
    anyhow::ensure!(
        matches!(fix.status.code(), Some(0 | 1)),
        "e2fsck -fyD on the root filesystem of {} failed ({}):\n{}",
        image.display(),
        fix.status,
        String::from_utf8_lossy(&fix.stdout)
    );
    Cmd::new("e2fsck")
        .args(["-f", "-n"])
        .arg(&spec)
        .env("E2FSCK_TIME", &clock)
        .run()
        .with_context(|| format!("checking the root filesystem of {}", image.display()))?;
    Ok(())
}
