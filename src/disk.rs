//! Writing filesystems into a disk image file in place: no loop devices, no mounts.

use std::path::Path;

use anyhow::{Context, Result};

use crate::gpt::Guid;
use crate::run::Cmd;
use crate::tools::Tool;

pub const MKFS_EXT4: Tool = Tool {
    command: "mkfs.ext4",
    why: "writes the root filesystem into the disk image",
    package: "e2fsprogs",
};

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
    crate::tools::require(&[MKFS_EXT4])?;
    // `mkfs -d` copies each file's atime as it stats it, and reading the file for the copy moves
    // the tree's atime to "now": without this, the second build of the same tree differs.
    clamp_times(tree, id.epoch)
        .with_context(|| format!("clamping timestamps in {}", tree.display()))?;
    anyhow::ensure!(
        offset.is_multiple_of(4096) && size.is_multiple_of(4096),
        "ext4 offset and size must be multiples of 4 KiB"
    );
    Cmd::new("mkfs.ext4")
        .args([
            "-q", "-F", "-b", "4096", "-T", "default", "-L", id.label, "-U",
        ])
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
    let mut script = format!("set_inode_field / ctime @{epoch}\n");
    let mut stack = vec![tree.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            let rel = e
                .path()
                .strip_prefix(tree)
                .map(|p| p.to_path_buf())
                .unwrap_or_default();
            let name = rel
                .to_str()
                .with_context(|| format!("{} is not UTF-8", rel.display()))?;
            anyhow::ensure!(
                !name.contains(['"', '\n']),
                "cannot script a path with quotes or newlines: {name:?}"
            );
            let _ = writeln!(script, "set_inode_field \"/{name}\" ctime @{epoch}");
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            }
        }
    }
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
    let mut stack = vec![tree.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).with_context(|| format!("stat {}", p.display()))?;
        if m.is_dir() {
            for e in std::fs::read_dir(&p).with_context(|| format!("reading {}", p.display()))? {
                stack.push(e?.path());
            }
        }
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
    }
    Ok(())
}
