//! Content-addressed download cache: verified blobs by SHA-256, partial downloads, records.
//!
//! Layout under the cache root (`$XDG_CACHE_HOME/imgbuild` by default):
//! - `blobs/sha256/<hex>`: verified content, named by its SHA-256; only ever created by rename.
//! - `index/sha512/<hex>`: the SHA-256 of the blob with that SHA-512.
//! - `records/<key>.json`: which blob an artifact (name, version, primary URL) resolved to, once verified.
//! - `partial/<hash of URL>`: an unfinished download, resumed with a Range request; locked while in use.
//! - `tmp/`: files being written; renamed into place when complete.
//!
//! Nothing unverified ever reaches `blobs/`, so a failed or killed download leaves no entry.
//! Two processes can share the cache: writes are atomic renames and partials are file-locked.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fetch::checksum::Hashes;
use crate::plan::Algorithm;

#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// What a verified artifact resolved to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    pub version: String,
    /// The recipe URL the content came from (before mirror rewriting).
    pub url: String,
    /// Where it was actually fetched from (after mirror rewriting), or `import:<file>`.
    pub fetched_from: String,
    pub size: u64,
    pub sha256: String,
    pub sha512: String,
    pub fingerprint: Option<String>,
}

impl Record {
    pub fn digest(&self, algorithm: Algorithm) -> &str {
        match algorithm {
            Algorithm::Sha256 => &self.sha256,
            Algorithm::Sha512 => &self.sha512,
        }
    }
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Write `bytes` to `path` atomically: a temporary name beside it, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.{}-{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

impl Cache {
    /// Open (creating) the cache at `dir`, or the default location.
    pub fn open(dir: Option<&Path>) -> Result<Cache> {
        let root = match dir {
            Some(d) => d.to_path_buf(),
            None => default_dir().context(
                "cannot find a cache directory: set XDG_CACHE_HOME or HOME, or pass --cache-dir",
            )?,
        };
        for sub in ["blobs/sha256", "index/sha512", "records", "partial", "tmp"] {
            let d = root.join(sub);
            fs::create_dir_all(&d)
                .with_context(|| format!("creating cache directory {}", d.display()))?;
        }
        Ok(Cache { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(sha256)
    }

    /// The verified blob with this digest, if the cache has it.
    pub fn find(&self, algorithm: Algorithm, hex: &str) -> Option<PathBuf> {
        let sha256 = match algorithm {
            Algorithm::Sha256 => hex.to_string(),
            Algorithm::Sha512 => fs::read_to_string(self.root.join("index/sha512").join(hex))
                .ok()?
                .trim()
                .to_string(),
        };
        let p = self.blob_path(&sha256);
        p.is_file().then_some(p)
    }

    /// Where a download of `url` accumulates until it is complete and verified.
    pub fn partial_path(&self, url: &str) -> PathBuf {
        self.root
            .join("partial")
            .join(hex::encode(&Sha256::digest(url.as_bytes())[..16]))
    }

    /// A fresh temporary path inside the cache (same filesystem as the blobs, so rename works).
    pub fn tmp_path(&self) -> PathBuf {
        self.root.join("tmp").join(format!(
            "{}-{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// Move a verified file into the store under its SHA-256 (the file must be inside the cache).
    pub fn insert(&self, file: &Path, hashes: &Hashes) -> Result<PathBuf> {
        let dest = self.blob_path(&hashes.sha256);
        File::open(file)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("syncing {}", file.display()))?;
        fs::rename(file, &dest)
            .with_context(|| format!("moving {} into the cache", file.display()))?;
        write_atomic(
            &self.root.join("index/sha512").join(&hashes.sha512),
            hashes.sha256.as_bytes(),
        )?;
        Ok(dest)
    }

    /// Copy a file from outside into the store (the air-gapped import path).
    pub fn import(&self, src: &Path, hashes: &Hashes) -> Result<PathBuf> {
        if let Some(p) = self.find(Algorithm::Sha256, &hashes.sha256) {
            return Ok(p);
        }
        let tmp = self.tmp_path();
        let result = fs::copy(src, &tmp)
            .with_context(|| format!("copying {} into the cache", src.display()))
            .and_then(|_| {
                // Re-check what landed in the cache, not what we read before.
                let got = crate::fetch::checksum::hash_file(&tmp)
                    .with_context(|| format!("hashing {}", tmp.display()))?;
                anyhow::ensure!(
                    got == *hashes,
                    "{} changed while it was being imported",
                    src.display()
                );
                self.insert(&tmp, hashes)
            });
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Key of an artifact's record: everything that decides what content is acceptable — name,
    /// version, URLs, digest source and pinned signing keys. Changing any of them (say, dropping
    /// a key you no longer trust) makes earlier verifications count for nothing.
    pub fn record_key(artifact: &crate::plan::Artifact) -> String {
        let policy = serde_json::to_string(artifact).unwrap_or_default();
        hex::encode(&Sha256::digest(policy.as_bytes())[..16])
    }

    pub fn record(&self, key: &str) -> Option<Record> {
        let text =
            fs::read_to_string(self.root.join("records").join(format!("{key}.json"))).ok()?;
        let r: Record = serde_json::from_str(&text).ok()?;
        self.blob_path(&r.sha256).is_file().then_some(r)
    }

    pub fn write_record(&self, key: &str, record: &Record) -> Result<()> {
        let json = serde_json::to_vec_pretty(record)?;
        write_atomic(
            &self.root.join("records").join(format!("{key}.json")),
            &json,
        )
    }

    /// Every record, sorted by name and version.
    pub fn records(&self) -> Vec<Record> {
        let mut out: Vec<Record> = fs::read_dir(self.root.join("records"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| serde_json::from_str(&fs::read_to_string(e.path()).ok()?).ok())
            .collect();
        out.sort_by(|a: &Record, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        out
    }

    /// Every blob: (sha256, size).
    pub fn blobs(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = fs::read_dir(self.root.join("blobs/sha256"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                Some((
                    e.file_name().to_str()?.to_string(),
                    e.metadata().ok()?.len(),
                ))
            })
            .collect();
        out.sort();
        out
    }

    /// Remove blobs not in `keep`, their records and index entries, stale partials and temporaries.
    /// Returns (files removed, bytes freed).
    pub fn prune(&self, keep: &std::collections::HashSet<String>) -> Result<(usize, u64)> {
        let mut removed = 0;
        let mut freed = 0;
        for (sha, size) in self.blobs() {
            if !keep.contains(&sha) {
                fs::remove_file(self.blob_path(&sha))
                    .with_context(|| format!("removing blob {sha}"))?;
                removed += 1;
                freed += size;
            }
        }
        let remove_if = |dir: &str, pred: &dyn Fn(&Path) -> bool| -> (usize, u64) {
            let mut n = (0, 0);
            for e in fs::read_dir(self.root.join(dir))
                .into_iter()
                .flatten()
                .flatten()
            {
                let p = e.path();
                if pred(&p) {
                    let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                    // A partial locked by a running download is skipped.
                    let busy = File::open(&p)
                        .map(|f| f.try_lock().is_err())
                        .unwrap_or(false);
                    if !busy && fs::remove_file(&p).is_ok() {
                        n.0 += 1;
                        n.1 += len;
                    }
                }
            }
            n
        };
        let dangling = |p: &Path| {
            fs::read_to_string(p).ok().and_then(|t| {
                let r: Record = serde_json::from_str(&t).ok()?;
                Some(!keep.contains(&r.sha256))
            }) != Some(false)
        };
        for (dir, pred) in [
            ("records", &dangling as &dyn Fn(&Path) -> bool),
            ("index/sha512", &|p: &Path| {
                fs::read_to_string(p)
                    .map(|s| !keep.contains(s.trim()))
                    .unwrap_or(true)
            }),
            ("partial", &|_: &Path| true),
            ("tmp", &|_: &Path| true),
        ] {
            let (n, b) = remove_if(dir, pred);
            removed += n;
            freed += b;
        }
        Ok((removed, freed))
    }
}

fn default_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("imgbuild"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::checksum::hash_file;

    #[test]
    fn insert_find_prune() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(Some(dir.path())).unwrap();
        let tmp = cache.tmp_path();
        fs::write(&tmp, b"hello").unwrap();
        let h = hash_file(&tmp).unwrap();
        let blob = cache.insert(&tmp, &h).unwrap();
        assert!(!tmp.exists());
        assert_eq!(cache.find(Algorithm::Sha256, &h.sha256), Some(blob.clone()));
        assert_eq!(cache.find(Algorithm::Sha512, &h.sha512), Some(blob.clone()));
        let rec = Record {
            name: "x".into(),
            version: "1".into(),
            url: "https://e/x".into(),
            fetched_from: "https://e/x".into(),
            size: 5,
            sha256: h.sha256.clone(),
            sha512: h.sha512.clone(),
            fingerprint: None,
        };
        cache.write_record("k", &rec).unwrap();
        assert_eq!(cache.record("k"), Some(rec));
        fs::write(cache.partial_path("https://e/y"), b"half").unwrap();
        let (n, _) = cache.prune(&std::collections::HashSet::new()).unwrap();
        assert_eq!(n, 4, "blob, record, index entry, partial");
        assert_eq!(cache.find(Algorithm::Sha256, &h.sha256), None);
        assert_eq!(cache.record("k"), None);
    }
}
