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
    fetch::import::import(&pins(&s, cli), &s.cache, files)
}

fn pins<'a>(s: &'a FetchSetup, cli: &'a Cli) -> fetch::import::Pins<'a> {
    fetch::import::Pins {
        artifacts: &s.cluster.artifacts,
        lock: s.lock.as_ref(),
        lock_path: &s.lock_path,
        recipe: &cli.recipe,
    }
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
    let keep = fetch::import::needed(&pins(&s, cli), &s.cache);
    let (n, bytes) = s.cache.prune(&keep)?;
    eprintln!(
        "pruned {n} files ({}); kept {} blobs",
        crate::util::fmt::human(bytes),
        keep.len()
    );
    Ok(())
}
