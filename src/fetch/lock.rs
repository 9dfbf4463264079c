//! The lock file next to a recipe: the exact content every artifact resolved to.
//!
//! `imgbuild lock` writes `<recipe>.lock.json` (e.g. `recipes/cluster.lock.json`); later fetches and
//! builds take each artifact's digests from it and fail when upstream content no longer matches.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::fetch::cache::write_atomic;
use crate::plan::Artifact;

pub const LOCK_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockFile {
    pub lock_version: u32,
    /// sha256 of the recipe the lock was made from (informational: a changed recipe may still
    /// match every entry).
    pub recipe_sha256: String,
    pub artifacts: BTreeMap<String, LockEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockEntry {
    pub version: String,
    /// The recipe URL that served it (before mirror rewriting).
    pub url: String,
    /// Where it was fetched from (after mirror rewriting and redirects).
    pub final_url: String,
    pub size: u64,
    pub sha256: String,
    pub sha512: String,
    /// The key whose signature was verified, if the recipe asks for one.
    pub fingerprint: Option<String>,
}

/// `recipes/cluster.yaml` → `recipes/cluster.lock.json`.
pub fn path_for(recipe: &Path) -> PathBuf {
    crate::util::fs::beside(recipe, "lock.json")
}

pub fn read(path: &Path) -> Result<Option<LockFile>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading lock file {}", path.display())),
    };
    let lock: LockFile = serde_json::from_str(&text)
        .with_context(|| format!("parsing lock file {}", path.display()))?;
    anyhow::ensure!(
        lock.lock_version == LOCK_VERSION,
        "lock file {} has version {}, this imgbuild reads version {LOCK_VERSION}",
        path.display(),
        lock.lock_version
    );
    Ok(Some(lock))
}

pub fn write(path: &Path, lock: &LockFile) -> Result<()> {
    let mut json = serde_json::to_vec_pretty(lock)?;
    json.push(b'\n');
    write_atomic(path, &json)
}

impl LockFile {
    /// The entry for `artifact`, or an error if the lock was made for a different version or URL.
    pub fn entry(&self, artifact: &Artifact, lock_path: &Path) -> Result<Option<&LockEntry>> {
        let Some(e) = self.artifacts.get(artifact.name.name()) else {
            return Ok(None);
        };
        if e.version != artifact.version || !artifact.urls.contains(&e.url) {
            anyhow::bail!(
                "{} is out of date for {}: it pins {} from {}, the recipe asks for {} from {}\n\nhint: run `imgbuild lock` to re-resolve",
                lock_path.display(),
                artifact.name,
                e.version,
                e.url,
                artifact.version,
                artifact.urls[0]
            );
        }
        Ok(Some(e))
    }
}
