//! Files and processes on the build host: stale temporaries of dead builds, and the root check.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Remove `<prefix><pid>` entries of `dir` left by builds that died (killed, power loss).
pub fn remove_stale(dir: &Path, prefix: &str) -> Result<()> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(prefix)
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // Alive (or someone else's): kill(pid, 0) succeeds or says EPERM.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            let p = e.path();
            if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            }
            .with_context(|| format!("removing stale {}", p.display()))?;
        }
    }
    Ok(())
}

/// What belongs to a recipe, beside it: `recipes/cluster.yaml` + `lock.json` →
/// `recipes/cluster.lock.json`.
pub fn beside(recipe: &Path, suffix: &str) -> PathBuf {
    let stem = recipe
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("recipe");
    recipe.with_file_name(format!("{stem}.{suffix}"))
}

pub fn require_root(what: &str) -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "{what} needs root: the base OS keeps its file owners, device nodes and capabilities\n\nhint: run as root, or inside `unshare --map-root-user --mount`"
        );
    }
    Ok(())
}

/// A temporary `<dir>/<prefix><pid>` (file or directory) for an output being made, so that
/// nothing half-made ever has the output's name. Making one removes the temporaries of builds
/// that died; dropping it removes it unless it was moved into place ([`Staging::rename_to`], or
/// by the caller, e.g. an exchange with the previous output).
pub struct Staging {
    path: PathBuf,
}

impl Staging {
    pub fn new(dir: &Path, prefix: &str) -> Result<Staging> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        remove_stale(dir, prefix)?;
        let s = Staging {
            path: dir.join(format!("{prefix}{}", std::process::id())),
        };
        // Ours from an earlier run of this process (or a reused pid of a dead one).
        s.remove()
            .with_context(|| format!("removing {}", s.path.display()))?;
        Ok(s)
    }

    /// As [`Staging::new`], with the directory made.
    pub fn dir(dir: &Path, prefix: &str) -> Result<Staging> {
        let s = Staging::new(dir, prefix)?;
        fs::create_dir(&s.path).with_context(|| format!("creating {}", s.path.display()))?;
        Ok(s)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Move it to `dest` (which must not be a directory).
    pub fn rename_to(self, dest: &Path) -> Result<()> {
        fs::rename(&self.path, dest)
            .with_context(|| format!("moving {} into place", dest.display()))
    }

    fn remove(&self) -> std::io::Result<()> {
        match fs::symlink_metadata(&self.path) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&self.path),
            Ok(_) => fs::remove_file(&self.path),
            Err(_) => Ok(()),
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = self.remove();
    }
}

/// Visit `root` (as the empty path) and everything under it, never following symlinks: a
/// directory before its contents, the entries of each directory in byte order of their names.
/// `f` gets the path relative to `root` and its metadata (of before the walk read it: a
/// directory is listed before `f` is called, so `f` may set its times), and returns whether to
/// descend (only meaningful for directories).
pub fn walk(root: &Path, mut f: impl FnMut(&Path, &fs::Metadata) -> Result<bool>) -> Result<()> {
    fn visit(
        root: &Path,
        rel: &Path,
        f: &mut dyn FnMut(&Path, &fs::Metadata) -> Result<bool>,
    ) -> Result<()> {
        let full = root.join(rel);
        let m = fs::symlink_metadata(&full).with_context(|| format!("stat {}", full.display()))?;
        // Listed before `f` sees it: reading a directory updates its atime (relatime), so a
        // caller setting times must come after the read.
        let mut names = if m.is_dir() {
            fs::read_dir(&full)
                .and_then(|rd| {
                    rd.map(|e| e.map(|e| e.file_name()))
                        .collect::<Result<Vec<_>, _>>()
                })
                .with_context(|| format!("reading {}", full.display()))?
        } else {
            Vec::new()
        };
        if !f(rel, &m)? {
            return Ok(());
        }
        names.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
        for n in names {
            visit(root, &rel.join(n), f)?;
        }
        Ok(())
    }
    visit(root, Path::new(""), &mut f)
}
