//! Writes into a root filesystem that can never escape it, whatever symlinks the tree contains.
//!
//! Every path is resolved with `openat2(2)` relative to a directory handle on the root:
//! `RESOLVE_IN_ROOT` makes `..` and absolute symlinks stop at the root (as a chroot would), and
//! the strict mode adds `RESOLVE_NO_SYMLINKS` so that no symlink at all is followed (used for
//! component archives, which have no business writing through links). The last path component
//! is always created with an `*at` call that does not follow it (`O_NOFOLLOW`, `O_EXCL`,
//! `AT_SYMLINK_NOFOLLOW`), so a planted symlink cannot redirect a write onto the host.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};

/// How symlinks already in the tree are treated while resolving a path's parent directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// Symlinks resolve as if the root were `/` (base OS trees, which rely on them).
    InRoot,
    /// Any symlink in the path is an error (component trees).
    Never,
}

/// A directory that all writes are confined to.
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A relative path with no `.`, `..` or root components; errors otherwise.
pub fn clean_relative(p: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::CurDir => {}
            Component::ParentDir => bail!("`{}` contains `..`", p.display()),
            Component::RootDir | Component::Prefix(_) => bail!("`{}` is absolute", p.display()),
        }
    }
    Ok(out)
}

impl Root {
    /// Open `dir` (creating it) as a confinement root.
    pub fn open(dir: &Path) -> Result<Root> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let c = cstr(dir)?;
        let fd = check(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC,
            )
        })
        .with_context(|| format!("opening {}", dir.display()))?;
        Ok(Root {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            path: dir.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `openat2` relative to the root.
    fn openat2(
        &self,
        rel: &Path,
        flags: libc::c_int,
        mode: libc::mode_t,
        follow: Follow,
    ) -> io::Result<OwnedFd> {
        let c = cstr(if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        })?;
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (flags | libc::O_CLOEXEC) as u64;
        how.mode = if flags & libc::O_CREAT != 0 {
            u64::from(mode)
        } else {
            0
        };
        how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS | libc::RESOLVE_NO_XDEV;
        if follow == Follow::Never {
            how.resolve |= libc::RESOLVE_NO_SYMLINKS;
        }
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }

    /// The parent directory of `rel` (which must be clean and non-empty) and its last component.
    fn parent<'p>(&self, rel: &'p Path, follow: Follow) -> Result<(OwnedFd, &'p OsStr)> {
        let name = rel
            .file_name()
            .with_context(|| format!("`{}` has no file name", rel.display()))?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        let fd = self
            .openat2(parent, libc::O_PATH | libc::O_DIRECTORY, 0, follow)
            .with_context(|| {
                format!(
                    "resolving {} inside {}",
                    parent.display(),
                    self.path.display()
                )
            })?;
        Ok((fd, name))
    }

    /// Create directory `rel` (with `mode`) and any missing parents (0755); existing directories are kept.
    pub fn mkdir_all(&self, rel: &Path, mode: u32, follow: Follow) -> Result<()> {
        let rel = clean_relative(rel)?;
        let mut sofar = PathBuf::new();
        let last = rel.components().count();
        for (i, c) in rel.components().enumerate() {
            sofar.push(c);
            let (dir, name) = self.parent(&sofar, follow)?;
            let n = cstr(Path::new(name))?;
            let m = if i + 1 == last { mode } else { 0o755 };
            let r = unsafe { libc::mkdirat(dir.as_raw_fd(), n.as_ptr(), m) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::AlreadyExists {
                    return Err(e)
                        .with_context(|| format!("creating directory {}", sofar.display()));
                }
                // Something exists: it must be a directory (a symlink to one counts only in InRoot mode).
                if let Err(e) = self.openat2(&sofar, libc::O_PATH | libc::O_DIRECTORY, 0, follow) {
                    if e.raw_os_error() == Some(libc::ELOOP) {
                        bail!(
                            "{} is a symlink, and writes never go through symlinks here",
                            sofar.display()
                        );
                    }
                    return Err(e).with_context(|| {
                        format!("{} exists and is not a directory", sofar.display())
                    });
                }
            }
        }
        Ok(())
    }

    /// Create a new regular file (fails if anything exists there) and return it for writing.
    pub fn create_file(&self, rel: &Path, mode: u32, follow: Follow) -> Result<File> {
        let rel = clean_relative(rel)?;
        let (dir, name) = self.parent(&rel, follow)?;
        let n = cstr(Path::new(name))?;
        let fd = check(unsafe {
            libc::openat(
                dir.as_raw_fd(),
                n.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                mode,
            )
        })
        .with_context(|| format!("creating {}", rel.display()))?;
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    /// Write a whole file, replacing what was there (a file or symlink, never following it).
    pub fn write_file(&self, rel: &Path, bytes: &[u8], mode: u32, follow: Follow) -> Result<()> {
        self.remove(rel, follow)?;
        let mut f = self.create_file(rel, mode, follow)?;
        f.write_all(bytes)
            .with_context(|| format!("writing {}", rel.display()))?;
        // The umask may have narrowed the mode.
        check(unsafe { libc::fchmod(f.as_raw_fd(), mode) })
            .with_context(|| format!("chmod {}", rel.display()))?;
        Ok(())
    }

    /// Remove a file or symlink if present (directories are left alone).
    pub fn remove(&self, rel: &Path, follow: Follow) -> Result<()> {
        let rel = clean_relative(rel)?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        if let Err(e) = self.openat2(parent, libc::O_PATH | libc::O_DIRECTORY, 0, follow)
            && e.kind() == io::ErrorKind::NotFound
        {
            return Ok(()); // nothing there to remove
        }
        let (dir, name) = self.parent(&rel, follow)?;
        let n = cstr(Path::new(name))?;
        let r = unsafe { libc::unlinkat(dir.as_raw_fd(), n.as_ptr(), 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::NotFound && e.raw_os_error() != Some(libc::EISDIR) {
                return Err(e).with_context(|| format!("removing {}", rel.display()));
            }
        }
        Ok(())
    }

    pub fn symlink(&self, target: &Path, rel: &Path, follow: Follow) -> Result<()> {
        let rel = clean_relative(rel)?;
        let (dir, name) = self.parent(&rel, follow)?;
        let (t, n) = (cstr(target)?, cstr(Path::new(name))?);
        check(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), n.as_ptr()) }).with_context(
            || format!("creating symlink {} -> {}", rel.display(), target.display()),
        )?;
        Ok(())
    }

    /// Hard link `rel` to the existing `existing` (both inside the root; the target is not followed).
    pub fn hardlink(&self, existing: &Path, rel: &Path, follow: Follow) -> Result<()> {
        let (existing, rel) = (clean_relative(existing)?, clean_relative(rel)?);
        let (odir, oname) = self.parent(&existing, follow)?;
        let (ndir, nname) = self.parent(&rel, follow)?;
        let (o, n) = (cstr(Path::new(oname))?, cstr(Path::new(nname))?);
        check(unsafe {
            libc::linkat(
                odir.as_raw_fd(),
                o.as_ptr(),
                ndir.as_raw_fd(),
                n.as_ptr(),
                0,
            )
        })
        .with_context(|| format!("linking {} to {}", rel.display(), existing.display()))?;
        Ok(())
    }

    /// Device node or fifo (base OS trees only; needs root).
    pub fn mknod(&self, rel: &Path, mode: u32, dev: u64, follow: Follow) -> Result<()> {
        let rel = clean_relative(rel)?;
        let (dir, name) = self.parent(&rel, follow)?;
        let n = cstr(Path::new(name))?;
        check(unsafe { libc::mknodat(dir.as_raw_fd(), n.as_ptr(), mode, dev) })
            .with_context(|| format!("creating device node {}", rel.display()))?;
        Ok(())
    }

    /// Owner, mode and modification time of `rel`, never following a final symlink
    /// (the mode is skipped for symlinks, which have none).
    pub fn set_meta(
        &self,
        rel: &Path,
        uid: u32,
        gid: u32,
        mode: Option<u32>,
        mtime: i64,
        follow: Follow,
    ) -> Result<()> {
        let rel = clean_relative(rel)?;
        let (dir, name): (OwnedFd, PathBuf) = if rel.as_os_str().is_empty() {
            (
                self.openat2(Path::new(""), libc::O_PATH | libc::O_DIRECTORY, 0, follow)?,
                PathBuf::from("."),
            )
        } else {
            let (d, n) = self.parent(&rel, follow)?;
            (d, PathBuf::from(n))
        };
        let n = cstr(&name)?;
        check(unsafe {
            libc::fchownat(
                dir.as_raw_fd(),
                n.as_ptr(),
                uid,
                gid,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
        .with_context(|| format!("chown {}", rel.display()))?;
        if let Some(mode) = mode {
            // fchmodat cannot refuse to follow symlinks on Linux; open the inode itself with O_PATH.
            let fd = self.openat2(&rel, libc::O_PATH | libc::O_NOFOLLOW, 0, follow)?;
            let proc = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL");
            check(unsafe { libc::chmod(proc.as_ptr(), mode) })
                .with_context(|| format!("chmod {}", rel.display()))?;
        }
        let times = [
            libc::timespec {
                tv_sec: mtime,
                tv_nsec: 0,
            },
            libc::timespec {
                tv_sec: mtime,
                tv_nsec: 0,
            },
        ];
        check(unsafe {
            libc::utimensat(
                dir.as_raw_fd(),
                n.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
        .with_context(|| format!("setting time of {}", rel.display()))?;
        Ok(())
    }

    /// Read a whole file inside the root (symlinks resolve inside the root, never onto the host).
    /// `Ok(None)` when it does not exist.
    pub fn read_file(&self, rel: &Path) -> Result<Option<Vec<u8>>> {
        let rel = clean_relative(rel)?;
        match self.openat2(&rel, libc::O_RDONLY, 0, Follow::InRoot) {
            Ok(fd) => {
                let mut f = File::from(fd);
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut f, &mut buf)
                    .with_context(|| format!("reading {}", rel.display()))?;
                Ok(Some(buf))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("opening {}", rel.display())),
        }
    }

    /// Owner, group and permission bits of `rel` (not following a final symlink), if it exists.
    pub fn stat(&self, rel: &Path) -> Result<Option<(u32, u32, u32)>> {
        let rel = clean_relative(rel)?;
        let fd = match self.openat2(&rel, libc::O_PATH | libc::O_NOFOLLOW, 0, Follow::InRoot) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("opening {}", rel.display())),
        };
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let empty = CString::new("").expect("no NUL");
        check(unsafe {
            libc::fstatat(fd.as_raw_fd(), empty.as_ptr(), &mut st, libc::AT_EMPTY_PATH)
        })
        .with_context(|| format!("stat {}", rel.display()))?;
        Ok(Some((st.st_uid, st.st_gid, st.st_mode & 0o7777)))
    }

    /// Names in directory `rel` inside the root (empty when it does not exist).
    pub fn list_dir(&self, rel: &Path) -> Result<Vec<std::ffi::OsString>> {
        let rel = clean_relative(rel)?;
        let fd = match self.openat2(&rel, libc::O_RDONLY | libc::O_DIRECTORY, 0, Follow::InRoot) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(e).with_context(|| format!("opening directory {}", rel.display()));
            }
        };
        // Read it through /proc/self/fd: the handle is already confined.
        let proc = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        let mut names: Vec<_> = std::fs::read_dir(&proc)
            .with_context(|| format!("listing {}", rel.display()))?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Set an extended attribute on `rel` without following a final symlink. The inode is pinned
    /// by an O_PATH handle; the call then goes through `/proc/self/fd/N` with the *following*
    /// `setxattr`: that path is itself a (magic) link, and `lsetxattr` would address the link
    /// instead of the file (EOPNOTSUPP).
    pub fn set_xattr(&self, rel: &Path, name: &str, value: &[u8], follow: Follow) -> Result<()> {
        let rel = clean_relative(rel)?;
        let fd = self.openat2(&rel, libc::O_PATH | libc::O_NOFOLLOW, 0, follow)?;
        let proc = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL");
        let n = CString::new(name).with_context(|| format!("xattr name {name:?}"))?;
        check(unsafe {
            libc::setxattr(
                proc.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        })
        .with_context(|| format!("setting xattr {name} on {}", rel.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_cannot_redirect_writes_out_of_the_root() {
        let top = tempfile::tempdir().unwrap();
        let root_dir = top.path().join("root");
        let outside = top.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        let root = Root::open(&root_dir).unwrap();
        // An absolute symlink and a ../ symlink pointing at the host directory.
        std::os::unix::fs::symlink(&outside, root_dir.join("abs")).unwrap();
        std::os::unix::fs::symlink("../outside", root_dir.join("rel")).unwrap();
        for link in ["abs", "rel"] {
            // In-root resolution: the write lands inside the root, or fails; never outside.
            let _ = root.write_file(&Path::new(link).join("f"), b"x", 0o644, Follow::InRoot);
            assert!(
                root.write_file(&Path::new(link).join("f"), b"x", 0o644, Follow::Never)
                    .is_err()
            );
            // Replacing the link itself removes the link, not its target.
            root.write_file(Path::new(link), b"y", 0o644, Follow::InRoot)
                .unwrap();
        }
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "nothing written outside"
        );
        assert!(
            root.write_file(Path::new("../escape"), b"x", 0o644, Follow::InRoot)
                .is_err()
        );
        assert!(
            root.write_file(Path::new("/etc/escape"), b"x", 0o644, Follow::InRoot)
                .is_err()
        );
    }

    #[test]
    fn reads_are_confined_too() {
        let top = tempfile::tempdir().unwrap();
        let secret = top.path().join("host-secret");
        std::fs::write(&secret, b"host data").unwrap();
        let root = Root::open(&top.path().join("root")).unwrap();
        std::fs::create_dir_all(top.path().join("root/etc")).unwrap();
        std::os::unix::fs::symlink(&secret, top.path().join("root/etc/passwd")).unwrap();
        std::os::unix::fs::symlink(top.path(), top.path().join("root/etc/dir")).unwrap();
        // The absolute link resolves inside the root, where nothing is found.
        assert_eq!(root.read_file(Path::new("etc/passwd")).unwrap(), None);
        assert!(root.list_dir(Path::new("etc/dir")).unwrap().is_empty());
        // The link's own owner (whoever runs the test), not the host file's.
        assert_eq!(
            root.stat(Path::new("etc/passwd")).unwrap().map(|s| s.0),
            Some(unsafe { libc::geteuid() })
        );
    }

    #[test]
    fn mkdir_all_and_files() {
        let top = tempfile::tempdir().unwrap();
        let root = Root::open(top.path()).unwrap();
        root.mkdir_all(Path::new("a/b/c"), 0o700, Follow::Never)
            .unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| {
            std::fs::metadata(top.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(
            (mode("a"), mode("a/b"), mode("a/b/c")),
            (0o755, 0o755, 0o700),
            "parents 0755, leaf as asked"
        );
        root.write_file(Path::new("a/b/c/f"), b"hi", 0o640, Follow::Never)
            .unwrap();
        root.write_file(Path::new("a/b/c/f"), b"again", 0o640, Follow::Never)
            .unwrap();
        assert_eq!(std::fs::read(top.path().join("a/b/c/f")).unwrap(), b"again");
        assert_eq!(
            std::fs::metadata(top.path().join("a/b/c/f"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o640
        );
        root.write_file(Path::new("x"), b"", 0o644, Follow::Never)
            .unwrap();
        assert!(
            root.mkdir_all(Path::new("x/y"), 0o755, Follow::Never)
                .is_err(),
            "a file is not a directory"
        );
    }
}
