//! `imgbuild cache import` and `cache prune`: the cache against what the recipe pins. A file
//! brought from elsewhere is taken only when its digest is one an artifact pins (its lock
//! entry's sha256, or the recipe's inline digest); pruning keeps exactly those blobs.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::cache::{Cache, Record};
use super::checksum;
use super::lock::{LockEntry, LockFile};
use crate::plan::{Algorithm, Artifact, DigestSource};

/// The recipe's artifacts as the cache sees them, with the lock file beside it.
pub struct Pins<'a> {
    pub artifacts: &'a [Artifact],
    pub lock: Option<&'a LockFile>,
    pub lock_path: &'a Path,
    /// The recipe, as errors name it.
    pub recipe: &'a Path,
}

/// A digest an artifact is pinned by: algorithm, hex, the artifact, its lock entry if any.
type Pinned<'a> = (Algorithm, String, &'a Artifact, Option<&'a LockEntry>);

/// Every digest known without a network: lock entries, else inline digests.
fn pinned<'a>(p: &Pins<'a>) -> Result<Vec<Pinned<'a>>> {
    let mut out = Vec::new();
    for a in p.artifacts {
        match p
            .lock
            .map(|l| l.entry(a, p.lock_path))
            .transpose()?
            .flatten()
        {
            Some(e) => out.push((Algorithm::Sha256, e.sha256.clone(), a, Some(e))),
            None => {
                if let DigestSource::Inline { algorithm, value } = &a.digest {
                    out.push((*algorithm, value.clone(), a, None));
                }
            }
        }
    }
    Ok(out)
}

/// Take each file whose digest an artifact pins into the cache, with its record (printing one
/// line each); an error naming every file that matches none (and the artifacts only pinned
/// online), after the others were taken.
pub fn import(p: &Pins, cache: &Cache, files: &[PathBuf]) -> Result<()> {
    let pinned = pinned(p)?;
    let mut failures = Vec::new();
    for file in files {
        let hashes =
            checksum::hash_file(file).with_context(|| format!("reading {}", file.display()))?;
        let Some((_, _, a, entry)) = pinned
            .iter()
            .find(|(alg, hex, _, _)| hashes.get(*alg) == hex)
        else {
            failures.push(format!(
                "{}: sha256 {} matches no pinned artifact of {}",
                file.display(),
                hashes.sha256,
                p.recipe.display()
            ));
            continue;
        };
        cache.import(file, &hashes)?;
        let record = Record {
            name: a.name.to_string(),
            version: a.version.clone(),
            url: entry.map_or_else(|| a.urls[0].clone(), |e| e.url.clone()),
            fetched_from: format!("import:{}", file.display()),
            size: hashes.size,
            sha256: hashes.sha256.clone(),
            sha512: hashes.sha512.clone(),
            fingerprint: entry.and_then(|e| e.fingerprint.clone()),
        };
        cache.write_record(&Cache::record_key(a), &record)?;
        eprintln!(
            "imported {} as {} {} (sha256 {})",
            file.display(),
            a.name,
            a.version,
            &hashes.sha256[..16]
        );
    }
    if !failures.is_empty() {
        let unpinned: Vec<&str> = p
            .artifacts
            .iter()
            .filter(|a| !pinned.iter().any(|x| x.2.name == a.name))
            .map(|a| a.name.name())
            .collect();
        let mut msg = failures.join("\n");
        if !unpinned.is_empty() {
            msg.push_str(&format!(
                "\n\nhint: {} are only pinned by a checksum file online; run `imgbuild lock` where upstream is reachable and bring {} along",
                unpinned.join(", "),
                p.lock_path.display()
            ));
        }
        bail!(msg);
    }
    Ok(())
}

/// The blobs (by sha256) the recipe and its lock need: what `cache prune` keeps.
pub fn needed(p: &Pins, cache: &Cache) -> HashSet<String> {
    let mut keep = HashSet::new();
    for a in p.artifacts {
        if let Some(r) = cache.record(&Cache::record_key(a)) {
            keep.insert(r.sha256);
        }
        if let DigestSource::Inline { algorithm, value } = &a.digest
            && let Some(path) = cache.find(*algorithm, value)
            && let Some(name) = path.file_name().and_then(|n| n.to_str())
        {
            keep.insert(name.to_string());
        }
    }
    if let Some(l) = p.lock {
        keep.extend(l.artifacts.values().map(|e| e.sha256.clone()));
    }
    keep
}
