//! `imgbuild fetch`, `lock` and `cache`: the artifacts, verified into the cache.

use super::*;

/// What fetching needs: the resolved recipe, its cache, mirrors and lock file.
pub(super) struct FetchSetup {
    pub(super) cluster: ClusterPlan,
    pub(super) cache: Cache,
    pub(super) mirrors: Mirrors,
    pub(super) lock_path: std::path::PathBuf,
    pub(super) lock: Option<LockFile>,
}

pub(super) fn fetch_setup(cli: &Cli) -> Result<FetchSetup> {
    let cluster = resolve(&cli.recipe)?;
    let cache = Cache::open(cli.cache_dir.as_deref())?;
    let env = std::env::var(mirror::ENV).ok();
    let mirrors = Mirrors::new(&cli.mirrors, env.as_deref(), &cluster.mirrors)?;
    let lock_path = lock::path_for(&cli.recipe);
    let lock = lock::read(&lock_path)?;
    Ok(FetchSetup {
        cluster,
        cache,
        mirrors,
        lock_path,
        lock,
    })
}

pub(super) fn fetch_options(cli: &Cli) -> fetch::Options {
    fetch::Options {
        offline: cli.offline,
        jobs: cli.jobs,
        ..fetch::Options::default()
    }
}

/// `imgbuild fetch`: every artifact of the recipe, verified, into the cache.
pub fn fetch(cli: &Cli) -> Result<Vec<Fetched>> {
    let s = fetch_setup(cli)?;
    fetch_with(cli, &s)
}

pub(super) fn fetch_with(cli: &Cli, s: &FetchSetup) -> Result<Vec<Fetched>> {
    let lock = s.lock.as_ref().map(|l| (l, s.lock_path.as_path()));
    if let Some((_, p)) = lock {
        eprintln!("using lock file {}", p.display());
    }
    let fetcher = Fetcher::new(&s.cache, &s.mirrors, lock, fetch_options(cli))?;
    let t = std::time::Instant::now();
    let mut fetched = fetcher.fetch_all(&s.cluster.artifacts)?;
    // An mmdebstrap base's pinned archive keys (every node shares the base).
    if let Some(crate::plan::KeyringPlan::Pinned { url, fingerprints }) = s
        .cluster
        .nodes
        .first()
        .and_then(|p| p.base.keyring.as_ref())
    {
        fetched.push(fetcher.pinned_keyring(url, fingerprints)?);
    }
    let total: u64 = fetched.iter().map(|f| f.record.size).sum();
    let new = fetched.iter().filter(|f| !f.from_cache).count();
    eprintln!(
        "fetched {} artifacts ({}, {new} downloaded, {} from cache) in {:.1}s into {}",
        fetched.len(),
        crate::util::fmt::human(total),
        fetched.len() - new,
        t.elapsed().as_secs_f64(),
        s.cache.root().display()
    );
    Ok(fetched)
}

/// `imgbuild lock`: resolve every artifact afresh (ignoring any existing lock) and pin it.
pub fn lock(cli: &Cli) -> Result<()> {
    let s = fetch_setup(cli)?;
    let opts = fetch::Options {
        refresh: true,
        ..fetch_options(cli)
    };
    let fetcher = Fetcher::new(&s.cache, &s.mirrors, None, opts)?;
    let fetched = fetcher.fetch_all(&s.cluster.artifacts)?;
    let artifacts = fetched
        .iter()
        .map(|f| {
            let r = &f.record;
            let entry = LockEntry {
                version: r.version.clone(),
                url: r.url.clone(),
                final_url: r.fetched_from.clone(),
                size: r.size,
                sha256: r.sha256.clone(),
                sha512: r.sha512.clone(),
                fingerprint: r.fingerprint.clone(),
            };
            (f.name.clone(), entry)
        })
        .collect();
    let recipe_sha256 = s
        .cluster
        .nodes
        .first()
        .map(|n| n.recipe_sha256.clone())
        .unwrap_or_default();
    let new = LockFile {
        lock_version: lock::LOCK_VERSION,
        recipe_sha256,
        artifacts,
    };
    let verb = match &s.lock {
        Some(old) if old.artifacts == new.artifacts => "unchanged",
        Some(_) => "updated",
        None => "wrote",
    };
    lock::write(&s.lock_path, &new)?;
    eprintln!(
        "{verb} {} ({} artifacts)",
        s.lock_path.display(),
        new.artifacts.len()
    );
    Ok(())
}

/// `imgbuild cache import FILE...`: accept files whose digest an artifact pins.
pub fn cache_import(cli: &Cli, files: &[std::path::PathBuf]) -> Result<()> {
    let s = fetch_setup(cli)?;
    // Every digest known without a network: lock entries and inline digests.
    let mut pinned: Vec<(Algorithm, String, &plan::Artifact, Option<&LockEntry>)> = Vec::new();
    for a in &s.cluster.artifacts {
        match s
            .lock
            .as_ref()
            .map(|l| l.entry(a, &s.lock_path))
            .transpose()?
            .flatten()
        {
            Some(e) => pinned.push((Algorithm::Sha256, e.sha256.clone(), a, Some(e))),
            None => {
                if let DigestSource::Inline { algorithm, value } = &a.digest {
                    pinned.push((*algorithm, value.clone(), a, None));
                }
            }
        }
    }
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
                cli.recipe.display()
            ));
            continue;
        };
        s.cache.import(file, &hashes)?;
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
        s.cache.write_record(&Cache::record_key(a), &record)?;
        eprintln!(
            "imported {} as {} {} (sha256 {})",
            file.display(),
            a.name,
            a.version,
            &hashes.sha256[..16]
        );
    }
    if !failures.is_empty() {
        let unpinned: Vec<&str> = s
            .cluster
            .artifacts
            .iter()
            .filter(|a| !pinned.iter().any(|p| p.2.name == a.name))
            .map(|a| a.name.name())
            .collect();
        let mut msg = failures.join("\n");
        if !unpinned.is_empty() {
            msg.push_str(&format!(
                "\n\nhint: {} are only pinned by a checksum file online; run `imgbuild lock` where upstream is reachable and bring {} along",
                unpinned.join(", "),
                s.lock_path.display()
            ));
        }
        anyhow::bail!(msg);
    }
    Ok(())
}

/// `imgbuild cache list`
pub fn cache_list(cli: &Cli) -> Result<()> {
    let cache = Cache::open(cli.cache_dir.as_deref())?;
    let mut out = std::io::stdout().lock();
    let records = cache.records();
    for r in &records {
        writeln!(
            out,
            "{:<10} {:<12} {:>10}  {}  {}",
            r.name,
            r.version,
            crate::util::fmt::human(r.size),
            &r.sha256,
            r.url
        )?;
    }
    for (sha, size) in cache.blobs() {
        if !records.iter().any(|r| r.sha256 == sha) {
            writeln!(
                out,
                "{:<10} {:<12} {:>10}  {sha}  (no record)",
                "-",
                "-",
                crate::util::fmt::human(size)
            )?;
        }
    }
    Ok(())
}

/// `imgbuild cache prune`: keep what the recipe and its lock need, remove the rest.
pub fn cache_prune(cli: &Cli) -> Result<()> {
    let s = fetch_setup(cli)?;
    let mut keep = std::collections::HashSet::new();
    for a in &s.cluster.artifacts {
        if let Some(r) = s.cache.record(&Cache::record_key(a)) {
            keep.insert(r.sha256);
        }
        if let DigestSource::Inline { algorithm, value } = &a.digest
            && let Some(p) = s.cache.find(*algorithm, value)
            && let Some(name) = p.file_name().and_then(|n| n.to_str())
        {
            keep.insert(name.to_string());
        }
    }
    if let Some(l) = &s.lock {
        keep.extend(l.artifacts.values().map(|e| e.sha256.clone()));
    }
    let (n, bytes) = s.cache.prune(&keep)?;
    eprintln!(
        "pruned {n} files ({}); kept {} blobs",
        crate::util::fmt::human(bytes),
        keep.len()
    );
    Ok(())
}
