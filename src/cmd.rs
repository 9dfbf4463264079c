//! One function per subcommand: load, resolve, act, print.

use std::io::Write;

use anyhow::{Context, Result, bail};

use crate::cli::{BootArgs, Cli, FlashArgs};
use crate::fetch::cache::{Cache, Record};
use crate::fetch::checksum;
use crate::fetch::lock::{self, LockEntry, LockFile};
use crate::fetch::{self, Fetched, Fetcher};
use crate::plan::mirror::{self, Mirrors};
use crate::plan::services::Reach;
use crate::plan::{self, Algorithm, ClusterPlan, DigestSource, Plan};
use crate::recipe;
use crate::recipe::diag::{UsageError, did_you_mean};

/// Load and resolve the recipe, printing its warnings to stderr.
fn resolve(path: &std::path::Path) -> Result<ClusterPlan> {
    let loaded = recipe::load(path)?;
    let cluster = plan::resolve(&loaded)?;
    for w in &cluster.warnings {
        eprint!("{w}");
    }
    Ok(cluster)
}

fn node_plan<'a>(cluster: &'a ClusterPlan, path: &std::path::Path, node: &str) -> Result<&'a Plan> {
    if let Some(p) = cluster.node(node) {
        return Ok(p);
    }
    let names = cluster.names();
    let mut msg = format!("no node named `{node}` in the recipe");
    if let Some(m) = did_you_mean(node, names.iter().copied()) {
        msg.push_str(&format!(" (did you mean `{m}`?)"));
    }
    Err(UsageError {
        message: format!("{}: {msg}", path.display()),
        hint: Some(format!("nodes are: {}", names.join(", "))),
    }
    .into())
}

pub fn plan(recipe: &std::path::Path, node: &str, json: bool) -> Result<()> {
    let cluster = resolve(recipe)?;
    let plan = node_plan(&cluster, recipe, node)?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, plan).context("writing plan JSON")?;
        writeln!(out)?;
    } else {
        out.write_all(render_plan(plan).as_bytes())?;
    }
    Ok(())
}

pub fn validate(recipe: &std::path::Path) -> Result<()> {
    let cluster = resolve(recipe)?;
    let names = cluster.names();
    eprintln!(
        "{}: ok ({} node{}: {}; {} warning{})",
        recipe.display(),
        names.len(),
        if names.len() == 1 { "" } else { "s" },
        names.join(", "),
        cluster.warnings.len(),
        if cluster.warnings.len() == 1 { "" } else { "s" },
    );
    Ok(())
}

/// The readable form of a plan (stdout of `imgbuild plan NODE`).
/// `imgbuild plan NODE` as text: one `key value` line per fact, section by section.
pub fn render_plan(p: &Plan) -> String {
    let mut out = PlanLines(String::new());
    plan_identity(p, &mut out);
    plan_services(p, &mut out);
    plan_base(p, &mut out);
    plan_resources(p, &mut out);
    plan_artifacts(p, &mut out);
    out.0
}

struct PlanLines(String);

impl PlanLines {
    fn line(&mut self, k: &str, v: String) {
        self.0.push_str(&format!("  {k:<22} {v}\n"));
    }
}

/// Who the node is: name, address, roles, units, /etc/hosts.
fn plan_identity(p: &Plan, out: &mut PlanLines) {
    let n = &p.node;
    out.line(
        "node",
        format!("{} (id {}) of cluster {}", n.name, n.id, p.cluster),
    );
    out.line(
        "hostname",
        n.fqdn.clone().unwrap_or_else(|| n.hostname.clone()),
    );
    out.line(
        "address",
        format!(
            "{}/{} via {}, dns {}",
            n.ip,
            p.network.prefix_len,
            p.network.gateway,
            join(&p.network.dns)
        ),
    );
    if let Some(mac) = &n.mac {
        out.line("mac", mac.clone());
    }
    out.line("roles", join_with(&p.roles, " "));
    out.line("units", join_with(&p.units, " "));
    for h in &p.hosts {
        out.line("/etc/hosts", format!("{} {}", h.ip, h.names.join(" ")));
    }
    for (reach, what) in [
        (Reach::Cluster, "ports (cluster)"),
        (Reach::Clients, "ports (clients)"),
    ] {
        let ports: Vec<String> = p
            .ports
            .iter()
            .filter(|b| b.reach == reach)
            .map(|b| format!("{} {}", b.port, b.spec().label))
            .collect();
        if !ports.is_empty() {
            out.line(what, ports.join(", "));
        }
    }
    let fw = &p.firewall;
    out.line(
        "firewall",
        if fw.enabled {
            format!(
                "nftables: cluster ports from the {} nodes only; SSH ({}) and client ports from {}",
                fw.nodes.len(),
                crate::plan::firewall::SSH_PORT,
                fw.clients.join(" ")
            )
        } else {
            "off: every port is open to any host on the network".to_string()
        },
    );
    plan_security(p, out);
}

/// Who may talk to the services: TLS or plaintext, Kafka's super users and users with ACLs.
fn plan_security(p: &Plan, out: &mut PlanLines) {
    let sec = &p.security;
    if !sec.tls() {
        out.line(
            "security",
            "plaintext: no TLS, no authentication, no ACLs (labs only)".into(),
        );
        return;
    }
    out.line(
        "security",
        "tls: mutual TLS on ZooKeeper's quorum and client port and every Kafka listener; Kafka clients by certificate (mtls), ACLs on".into(),
    );
    if !sec.super_users.is_empty() {
        out.line(
            "kafka super users",
            sec.super_users
                .iter()
                .map(|n| format!("User:{n}"))
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    for u in &sec.users {
        let acls: Vec<String> = u
            .allow
            .iter()
            .map(|a| {
                let what = match a.resource {
                    crate::plan::security::Resource::Cluster => "cluster".to_string(),
                    r => format!(
                        "{} {}{}",
                        r.name(),
                        a.name,
                        if a.prefixed { "*" } else { "" }
                    ),
                };
                format!("{} on {what}", a.ops.join(","))
            })
            .collect();
        out.line(
            "kafka user",
            format!(
                "User:{}: {}",
                u.name,
                if acls.is_empty() {
                    "no ACL".into()
                } else {
                    acls.join("; ")
                }
            ),
        );
    }
}

/// How its services are wired: ZooKeeper, Kafka, Storm.
fn plan_services(p: &Plan, out: &mut PlanLines) {
    if let Some(z) = &p.zookeeper {
        out.line(
            "zookeeper myid",
            z.myid.map_or("- (client only)".into(), |m| m.to_string()),
        );
        out.line("zookeeper connect", z.connect.clone());
        for srv in &z.servers {
            out.line("zookeeper", srv.to_string());
        }
    }
    if let Some(k) = &p.kafka {
        out.line("kafka mode", format!("{:?}", k.mode).to_lowercase());
        if let Some(id) = k.node_id {
            out.line("kafka node.id", id.to_string());
        }
        if let Some(id) = k.broker_id {
            out.line("kafka broker.id", id.to_string());
        }
        if let Some(r) = &k.process_roles {
            out.line("kafka process.roles", crate::plan::wiring::comma(r));
        }
        if let Some(v) = &k.controller_quorum_voters {
            out.line("kafka voters", crate::plan::wiring::comma(v));
        }
        if let Some(c) = &k.zookeeper_connect {
            out.line("kafka zookeeper", c.clone());
        }
        if let Some(c) = &k.cluster_id {
            out.line("kafka cluster id", c.clone());
        }
        out.line("kafka listeners", crate::plan::wiring::comma(&k.listeners));
    }
    if let Some(st) = &p.storm {
        out.line("storm zookeeper", join(&st.zookeeper_servers));
        out.line("storm nimbus seeds", join(&st.nimbus_seeds));
        out.line("storm local hostname", st.local_hostname.clone());
        out.line("storm slots", join_with(&st.slots, " "));
    }
}

/// The base OS and how it boots.
fn plan_base(p: &Plan, out: &mut PlanLines) {
    let b = &p.base;
    match b.kind {
        recipe::BaseKind::Mmdebstrap => out.line(
            "base",
            format!(
                "mmdebstrap {} from {} [{}]",
                b.suite.as_deref().unwrap_or("-"),
                b.mirror.as_deref().unwrap_or("-"),
                b.apt_components.join(" ")
            ),
        ),
        recipe::BaseKind::UbuntuCloud => out.line("base", "ubuntu-cloud root tarball".into()),
        recipe::BaseKind::Tarball => out.line("base", "root filesystem tarball".into()),
    }
    match &b.keyring {
        Some(crate::plan::KeyringPlan::Pinned { url, fingerprints }) => out.line(
            "base keyring",
            format!("{} from {url}", fingerprints.join(" ")),
        ),
        Some(crate::plan::KeyringPlan::File { path }) => out.line("base keyring", path.clone()),
        None => {}
    }
    if !b.packages.is_empty() {
        out.line("base packages", b.packages.join(" "));
    }
    out.line(
        "base boot",
        match (&b.boot, b.boot.missing()) {
            (_, Some(why)) => format!("CANNOT BOOT: {why}"),
            (crate::plan::BaseBoot::Packages { kernel, loader }, None) => format!(
                "{} UEFI chain, kernel package {}",
                loader.as_deref().unwrap_or("-"),
                kernel.as_deref().unwrap_or("-")
            ),
            _ => "kernel and boot chain found when the tarball is extracted".into(),
        },
    );
}

/// Memory budget, OS tuning, disk size, and who signs the provenance.
fn plan_resources(p: &Plan, out: &mut PlanLines) {
    let m = &p.memory;
    out.line(
        "memory",
        format!(
            "{} MiB for the VM: {} MiB of JVM heaps ({}), their overhead and the OS",
            m.total_mb,
            m.heap_mb,
            m.jvms
                .iter()
                .map(|(what, h)| format!("{what} {h}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let os = &p.os;
    out.line(
        "sysctl",
        os.sysctl
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" "),
    );
    out.line(
        "service limits",
        format!(
            "LimitNOFILE={} LimitNPROC={}",
            os.limit_nofile, os.limit_nproc
        ),
    );
    out.line(
        "time sync",
        if os.ntp.is_empty() {
            "systemd-timesyncd, the distribution's servers".to_string()
        } else {
            format!("systemd-timesyncd from {}", os.ntp.join(" "))
        },
    );
    out.line(
        "disk size",
        match p.disk.size_bytes {
            Some(n) => crate::util::fmt::human(n),
            None => "auto (the content plus headroom; grows to the disk at first boot)".into(),
        },
    );
    if let Some(signer) = &p.provenance_signer {
        out.line("provenance signer", signer.public_key.clone());
    }
    out.line(
        "pki",
        match &p.pki.operator_ca {
            Some((cert, _)) => format!(
                "the operator's CA {}; node certificates in {}",
                cert.display(),
                p.pki.dir.display()
            ),
            None => format!(
                "cluster CA and node certificates in {} (made on the first build, then reused)",
                p.pki.dir.display()
            ),
        },
    );
}

/// Every downloaded artifact with its URLs, digest source and signature.
fn plan_artifacts(p: &Plan, out: &mut PlanLines) {
    for a in &p.artifacts {
        out.line("artifact", format!("{} {}", a.name, a.version));
        for u in &a.urls {
            out.line("  url", u.clone());
        }
        match &a.digest {
            DigestSource::Inline { algorithm, value } => {
                out.line("  digest", format!("{algorithm:?} {value}").to_lowercase())
            }
            DigestSource::ChecksumFile { algorithm, urls } => out.line(
                "  digest",
                format!(
                    "{} from {}",
                    format!("{algorithm:?}").to_lowercase(),
                    urls[0]
                ),
            ),
        }
        if let Some(sig) = &a.signature {
            let over = match sig.signs {
                recipe::Signs::Artifact => "the file",
                recipe::Signs::Checksums => "the checksum file",
            };
            out.line(
                "  signature",
                format!(
                    "{} over {over}, key {}",
                    sig.urls[0],
                    sig.fingerprints.join(" ")
                ),
            );
        }
    }
}

fn join<T: ToString>(v: &[T]) -> String {
    join_with(v, ",")
}

fn join_with<T: ToString>(v: &[T], sep: &str) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(sep)
}

/// What fetching needs: the resolved recipe, its cache, mirrors and lock file.
struct FetchSetup {
    cluster: ClusterPlan,
    cache: Cache,
    mirrors: Mirrors,
    lock_path: std::path::PathBuf,
    lock: Option<LockFile>,
}

fn fetch_setup(cli: &Cli) -> Result<FetchSetup> {
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

fn fetch_options(cli: &Cli) -> fetch::Options {
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

fn fetch_with(cli: &Cli, s: &FetchSetup) -> Result<Vec<Fetched>> {
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

/// `imgbuild rootfs NODE`: fetch, compose the shared tree (once), the node's tree, and tar it.
pub fn rootfs(cli: &Cli, node: &str, output: Option<&std::path::Path>) -> Result<()> {
    let s = fetch_setup(cli)?;
    let plan = node_plan(&s.cluster, &cli.recipe, node)?.clone();
    let fetched = fetch_with(cli, &s)?;
    crate::pki::ensure(&[&plan])?;
    let common = crate::rootfs::common_tree(&plan, &fetched, &cli.build_dir)?;
    let tls = crate::pki::node_files(&plan)?;
    let tree = crate::rootfs::node_tree(&plan, &common, &cli.build_dir, &tls, &plan.overlays)?;
    let out = output.map_or_else(
        || std::path::Path::new("images").join(node).join("rootfs.tar"),
        |p| p.to_path_buf(),
    );
    let epoch = plan
        .source_date_epoch
        .or_else(|| std::env::var("SOURCE_DATE_EPOCH").ok()?.parse().ok())
        .unwrap_or(0);
    crate::util::stage::stage("tar", || {
        let n = crate::rootfs::write_tar(&tree, &out, epoch)?;
        Ok(((), format!("{}: {n} entries, mtime {epoch}", out.display())))
    })
}

/// The plans `names` ask for (`all` = every node), in recipe order, each once.
fn select<'a>(
    cluster: &'a ClusterPlan,
    recipe: &std::path::Path,
    names: &[String],
) -> Result<Vec<&'a Plan>> {
    if names.iter().any(|n| n == "all") {
        return Ok(cluster.nodes.iter().collect());
    }
    let mut out: Vec<&Plan> = Vec::new();
    for n in names {
        let p = node_plan(cluster, recipe, n)?;
        if !out.iter().any(|q| q.node.name == p.node.name) {
            out.push(p);
        }
    }
    Ok(out)
}

/// `imgbuild NODE...` / `imgbuild build NODE...`: fetch, compose, emit images/<node>/ for each.
/// `imgbuild build NODE...`: check, fetch, decide per node whether it is up to date and why
/// not, build the shared tree once and each stale node, report.
pub fn build(cli: &Cli, names: &[String], force: bool, dry_run: bool, json: bool) -> Result<()> {
    let t0 = std::time::Instant::now();
    let s = fetch_setup(cli)?;
    let plans = select(&s.cluster, &cli.recipe, names)?;
    refuse_unbootable(cli, &plans)?;
    if !dry_run {
        crate::util::tools::require(&build_tools(&plans))?;
        crate::util::fs::require_root("building images")?;
        crate::pki::ensure(&plans)?;
    }
    let names: Vec<&str> = plans.iter().map(|p| p.node.name.as_str()).collect();
    eprintln!(
        "building {} from {}",
        names.join(", "),
        cli.recipe.display()
    );
    let t = std::time::Instant::now();
    let fetched = fetch_with(cli, &s)?;
    let fetch_secs = t.elapsed().as_secs_f64();
    let states = assess(cli, &plans, &fetched, force)?;
    if dry_run {
        return report_dry_run(cli, &plans, &states, json, t0);
    }
    let t = std::time::Instant::now();
    let common = if states.iter().all(|st| st.fresh.is_some()) {
        None
    } else {
        Some(crate::rootfs::common_tree(
            plans[0],
            &fetched,
            &cli.build_dir,
        )?)
    };
    let common_secs = t.elapsed().as_secs_f64();
    let mut built = Vec::new();
    for (plan, st) in plans.iter().zip(states.iter().cloned()) {
        let mut stages = crate::image::Stages::new(&plan.node.name);
        if built.is_empty() {
            stages.times.push(("fetch".into(), fetch_secs));
            stages.times.push(("common".into(), common_secs));
        }
        built.push(build_node(
            cli,
            plan,
            st,
            common.as_deref(),
            &fetched,
            stages,
        )?);
    }
    let why = states.into_iter().map(|st| st.why).collect();
    report_built(cli, built, why, json, t0)
}

/// The source date epoch of a node's build: the recipe's, else SOURCE_DATE_EPOCH, else 0.
fn epoch_of(plan: &Plan) -> u64 {
    plan.source_date_epoch
        .or_else(|| std::env::var("SOURCE_DATE_EPOCH").ok()?.parse().ok())
        .unwrap_or(0)
}

/// A disk image needs a kernel and a boot chain: say so before downloading anything.
fn refuse_unbootable(cli: &Cli, plans: &[&Plan]) -> Result<()> {
    let Some(why) = plans.first().and_then(|p| p.base.boot.missing()) else {
        return Ok(());
    };
    let b = &plans[0].base;
    let what = plans[0].base_description();
    bail!(
        "{}: base ({what}) cannot boot: {why}\n\nhint: {}",
        cli.recipe.display(),
        match b.kind {
            recipe::BaseKind::UbuntuCloud =>
                "use `kind: mmdebstrap` with suite noble and linux-generic, initramfs-tools, shim-signed, grub-efi-amd64-signed (as recipes/cluster.yaml does), or build only the root filesystem with `imgbuild rootfs NODE`",
            _ =>
                "add them to base.packages, e.g. linux-generic initramfs-tools shim-signed grub-efi-amd64-signed on Ubuntu (linux-image-amd64 on Debian)",
        }
    );
}

/// Every tool the build of `plans` will run, checked before any work starts.
fn build_tools(plans: &[&Plan]) -> Vec<crate::util::tools::Tool> {
    let mut formats: Vec<crate::plan::DiskFormat> =
        plans.iter().flat_map(|p| p.disk.formats.clone()).collect();
    formats.dedup();
    let mut tools = crate::image::tools(&formats);
    if plans
        .iter()
        .any(|p| p.base.kind == recipe::BaseKind::Mmdebstrap)
    {
        tools.push(crate::util::tools::MMDEBSTRAP);
    }
    if plans.iter().any(|p| p.provenance_signer.is_some()) {
        tools.push(crate::image::sbom::SSH_KEYGEN);
    }
    tools.push(crate::util::tools::OPENSSL);
    tools
}

/// One node's standing before the build: its build key, its outputs when its images already
/// match that key (nothing to do), else why it is rebuilt.
#[derive(Clone)]
struct NodeState {
    key: String,
    fresh: Option<Vec<crate::image::Output>>,
    why: Option<String>,
}

fn assess(cli: &Cli, plans: &[&Plan], fetched: &[Fetched], force: bool) -> Result<Vec<NodeState>> {
    plans
        .iter()
        .map(|p| {
            let key = crate::image::build_key(p, fetched, epoch_of(p))?;
            let fresh = (!force)
                .then(|| crate::image::up_to_date(&cli.images, &p.node.name, &key))
                .flatten();
            // Why it is rebuilt: what changed since its images were built.
            let why = if fresh.is_some() {
                None
            } else if force {
                Some("--force".to_string())
            } else {
                let parts = crate::image::key_parts(p, fetched, epoch_of(p))?;
                Some(crate::image::why_rebuild(&cli.images, &p.node.name, &parts))
            };
            Ok(NodeState { key, fresh, why })
        })
        .collect()
}

/// `build --dry-run`: what would be rebuilt and why, building nothing.
fn report_dry_run(
    cli: &Cli,
    plans: &[&Plan],
    states: &[NodeState],
    json: bool,
    t0: std::time::Instant,
) -> Result<()> {
    if json {
        return crate::report::print(&crate::report::Build {
            schema: 1,
            command: "build",
            recipe: cli.recipe.display().to_string(),
            dry_run: true,
            nodes: plans
                .iter()
                .zip(states)
                .map(|(p, st)| crate::report::BuildNode {
                    node: p.node.name.clone(),
                    dir: cli.images.join(&p.node.name).display().to_string(),
                    rebuild: st.why.is_some(),
                    why: st.why.clone(),
                    outputs: Vec::new(),
                    stages: Vec::new(),
                })
                .collect(),
            seconds: t0.elapsed().as_secs_f64(),
        });
    }
    let mut out = std::io::stdout().lock();
    for (p, st) in plans.iter().zip(states) {
        match &st.why {
            None => writeln!(out, "{}: up to date", p.node.name)?,
            Some(w) => writeln!(out, "{}: would rebuild: {w}", p.node.name)?,
        }
    }
    Ok(())
}

/// One node: left alone when up to date, else its tree over the shared one and its images.
fn build_node(
    cli: &Cli,
    plan: &Plan,
    st: NodeState,
    common: Option<&std::path::Path>,
    fetched: &[Fetched],
    mut stages: crate::image::Stages,
) -> Result<crate::image::Built> {
    let name = &plan.node.name;
    if let Some(outputs) = st.fresh {
        crate::util::fs::remove_stale(&cli.images, &format!(".{name}.tmp-"))?;
        eprintln!(
            "[{name}] up to date: {} matches its inputs (build key {}); nothing rewritten",
            cli.images.join(name).display(),
            &st.key[..12]
        );
        return Ok(crate::image::Built {
            node: name.clone(),
            dir: cli.images.join(name),
            outputs,
            stages: stages.times,
        });
    }
    if let Some(w) = &st.why {
        eprintln!("[{name}] rebuilding: {w}");
    }
    let common = common.expect("built when a node needs it");
    let t = std::time::Instant::now();
    let tls = crate::pki::node_files(plan)?;
    let tree = crate::rootfs::node_tree(plan, common, &cli.build_dir, &tls, &plan.overlays)?;
    stages
        .times
        .push(("node".into(), t.elapsed().as_secs_f64()));
    crate::image::build(
        &crate::image::BuildContext {
            plan,
            tree: &tree,
            common: Some(common),
            fetched,
            build_dir: &cli.build_dir,
            epoch: epoch_of(plan),
            key: &st.key,
        },
        &cli.images,
        &mut stages,
    )
    .with_context(|| format!("{}: node {name}", cli.recipe.display()))
}

/// What was built (or found up to date): each node's outputs with sizes and digests, stage
/// times and the total; or the same as JSON.
fn report_built(
    cli: &Cli,
    built: Vec<crate::image::Built>,
    why: Vec<Option<String>>,
    json: bool,
    t0: std::time::Instant,
) -> Result<()> {
    if json {
        return crate::report::print(&crate::report::Build {
            schema: 1,
            command: "build",
            recipe: cli.recipe.display().to_string(),
            dry_run: false,
            nodes: built
                .into_iter()
                .zip(why)
                .map(|(b, w)| crate::report::BuildNode {
                    node: b.node,
                    dir: b.dir.display().to_string(),
                    rebuild: w.is_some(),
                    why: w,
                    outputs: b.outputs,
                    stages: b.stages,
                })
                .collect(),
            seconds: t0.elapsed().as_secs_f64(),
        });
    }
    let mut out = std::io::stdout().lock();
    for b in &built {
        writeln!(out, "{}: {}", b.node, b.dir.display())?;
        for o in &b.outputs {
            writeln!(
                out,
                "  {:<22} {:>10}  sha256 {}",
                o.file,
                crate::util::fmt::human(o.size),
                o.sha256
            )?;
        }
        let times: Vec<String> = b
            .stages
            .iter()
            .map(|(n, s)| format!("{n} {s:.1}s"))
            .collect();
        writeln!(out, "  time: {}", times.join(", "))?;
    }
    writeln!(
        out,
        "built {} node{} in {:.1}s",
        built.len(),
        if built.len() == 1 { "" } else { "s" },
        t0.elapsed().as_secs_f64()
    )?;
    Ok(())
}

/// `imgbuild verify NODE...`: SHA256SUMS, the bmap and the manifest of images/<node>/.
pub fn verify(cli: &Cli, names: &[String], json: bool) -> Result<()> {
    let cluster = resolve(&cli.recipe)?;
    let plans = select(&cluster, &cli.recipe, names)?;
    let mut failed = Vec::new();
    let mut report = Vec::new();
    for p in plans {
        let dir = cli.images.join(&p.node.name);
        let (ok, detail) = match verify_dir(&dir, p) {
            Ok(note) => {
                eprintln!("{}: ok ({note})", dir.display());
                (true, note)
            }
            Err(e) => {
                eprintln!("{}: FAILED\n  {e:#}", dir.display());
                failed.push(p.node.name.clone());
                (false, format!("{e:#}"))
            }
        };
        report.push(crate::report::VerifyNode {
            node: p.node.name.clone(),
            dir: dir.display().to_string(),
            ok,
            detail,
        });
    }
    if json {
        crate::report::print(&crate::report::Verify {
            schema: 1,
            command: "verify",
            ok: failed.is_empty(),
            nodes: report,
        })?;
    }
    if !failed.is_empty() {
        anyhow::bail!("verification failed for {}", failed.join(", "));
    }
    Ok(())
}

fn verify_dir(dir: &std::path::Path, plan: &Plan) -> Result<String> {
    let node = plan.node.name.as_str();
    let mut problems = Vec::new();
    let (listed, actual) = verify_sums(dir, &mut problems)?;
    verify_manifest(dir, node, &listed, &mut problems)?;
    let bmap_note = verify_bmap(dir, node, &mut problems);
    let prov_note = verify_provenance(dir, plan, &actual, &mut problems);
    anyhow::ensure!(problems.is_empty(), "{}", problems.join("\n  "));
    Ok(format!(
        "{} files match SHA256SUMS, manifest agrees, {bmap_note}, {prov_note}",
        listed.len()
    ))
}

type Digests = std::collections::BTreeMap<String, String>;

/// SHA256SUMS: every line well-formed and matching its file, every file listed. Returns what
/// it lists and what each listed file hashes to now (the provenance is checked against these).
fn verify_sums(dir: &std::path::Path, problems: &mut Vec<String>) -> Result<(Digests, Digests)> {
    let sums_path = dir.join("SHA256SUMS");
    let sums = std::fs::read_to_string(&sums_path)
        .with_context(|| format!("reading {}", sums_path.display()))?;
    let mut listed = Digests::new();
    let mut actual = Digests::new();
    for (i, line) in sums.lines().enumerate() {
        let Some((sha, file)) = line.split_once("  ") else {
            problems.push(format!(
                "{}:{}: not `SHA256  FILE`",
                sums_path.display(),
                i + 1
            ));
            continue;
        };
        if file.contains('/') || file.starts_with('.') {
            problems.push(format!(
                "{}:{}: {file:?} is not a file of this directory",
                sums_path.display(),
                i + 1
            ));
            continue;
        }
        match checksum::sha256_file(&dir.join(file)) {
            Ok(got) => {
                if got != sha {
                    problems.push(format!("{file}: sha256 {got}, SHA256SUMS says {sha}"));
                }
                actual.insert(file.to_string(), got);
            }
            Err(e) => problems.push(format!("{file}: {e}")),
        }
        listed.insert(file.to_string(), sha.to_string());
    }
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if name != "SHA256SUMS" && !listed.contains_key(&name) {
            problems.push(format!("{name}: not listed in SHA256SUMS"));
        }
    }
    Ok((listed, actual))
}

/// The manifest: this node's, and its outputs agree with SHA256SUMS.
fn verify_manifest(
    dir: &std::path::Path,
    node: &str,
    listed: &Digests,
    problems: &mut Vec<String>,
) -> Result<()> {
    let manifest = crate::image::ManifestRecord::read(dir)?;
    if manifest.node != node {
        problems.push(format!(
            "manifest.json is for node {:?}, not {node}",
            manifest.node
        ));
    }
    if manifest.outputs.is_empty() {
        problems.push("manifest.json lists no outputs".into());
    }
    for o in &manifest.outputs {
        if listed.get(&o.file) != Some(&o.sha256) {
            problems.push(format!(
                "manifest.json: {} sha256 {} differs from SHA256SUMS",
                o.file, o.sha256
            ));
        }
    }
    Ok(())
}

/// The bmap: its own checksum and every range against the raw image.
fn verify_bmap(dir: &std::path::Path, node: &str, problems: &mut Vec<String>) -> String {
    let bmap_path = dir.join(crate::image::bmap_name(node));
    if !bmap_path.exists() {
        return "no bmap".into();
    }
    let r = std::fs::read_to_string(&bmap_path)
        .map_err(anyhow::Error::from)
        .and_then(|x| crate::image::bmap::parse(&x))
        .and_then(|m| {
            let bytes = crate::image::bmap::verify(&m, &dir.join(crate::image::raw_name(node)))?;
            Ok((m.ranges.len(), bytes))
        });
    match r {
        Ok((n, bytes)) => format!(
            "bmap: {n} ranges, {} checked",
            crate::util::fmt::human(bytes)
        ),
        Err(e) => {
            problems.push(format!("{}: {e:#}", bmap_path.display()));
            "no bmap".into()
        }
    }
}

/// The provenance: its subjects are the files as they are now; its signature checks against
/// the recipe's key (the one in the signature itself proves nothing).
fn verify_provenance(
    dir: &std::path::Path,
    plan: &Plan,
    actual: &Digests,
    problems: &mut Vec<String>,
) -> String {
    let node = plan.node.name.as_str();
    let prov = crate::image::sbom::provenance_name(node);
    let mut prov_note = String::from("no provenance");
    if dir.join(&prov).exists() {
        let sha = |p: &std::path::Path| -> Result<String> {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            match actual.get(name) {
                Some(s) => Ok(s.clone()),
                None => Ok(checksum::sha256_file(p)?),
            }
        };
        match crate::image::sbom::verify_provenance(dir, node, &sha) {
            Ok(n) => prov_note = format!("provenance: {n} subjects match"),
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    match crate::image::sbom::verify_signature(dir, node, plan.provenance_signer.as_ref()) {
        Ok(Some(note)) => prov_note = format!("{prov_note}, {note}"),
        Ok(None) => {}
        Err(e) => problems.push(format!("{e:#}")),
    }
    prov_note
}

/// `imgbuild boot NODE`: the node's qcow2 (or raw) in QEMU with UEFI firmware.
// Long on purpose: firmware, disk overlay, network, the Vm description and the run-or-check are the
// command's steps in order, each a few lines.
pub fn boot(cli: &Cli, o: &BootArgs) -> Result<()> {
    let node = o.node.as_str();
    use crate::vm::qemu;
    let cluster = resolve(&cli.recipe)?;
    let plan = node_plan(&cluster, &cli.recipe, node)?;
    let mut image = crate::image::bootable(&cli.images, node)?;
    crate::util::tools::require(&[qemu::QEMU])?;
    let fw = qemu::firmware(o.secure_boot)?;
    let work = cli.build_dir.join("boot").join(node);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let disk_size = match &o.disk_size {
        None => None,
        Some(text) => {
            let (overlay, size) = bigger_disk(&image, text, &work)?;
            image = overlay;
            Some(size)
        }
    };
    let vars = work.join("OVMF_VARS.fd");
    std::fs::copy(&fw.vars, &vars)
        .with_context(|| format!("copying {} to {}", fw.vars.display(), vars.display()))?;
    let kvm = qemu::kvm_works(&fw, &work);
    if !kvm {
        eprintln!(
            "note: KVM is not usable here; software emulation (a boot takes a minute or two)"
        );
    }
    let log = o
        .serial_log
        .clone()
        .unwrap_or_else(|| work.join("serial.log"));
    let _ = std::fs::remove_file(&log);
    let net = match crate::vm::cluster::boot_network(plan, &cli.build_dir) {
        Some(net) => net,
        None => {
            let (local, peer) = qemu::free_udp_ports()?;
            qemu::Net::Isolated { local, peer }
        }
    };
    let mac = plan
        .node
        .mac
        .clone()
        .unwrap_or_else(|| qemu::default_mac(node));
    let vm = qemu::Vm {
        name: node,
        image: &image,
        firmware: &fw,
        vars: &vars,
        kvm,
        memory_mb: plan.guest_memory(o.memory)?,
        cpus: o.cpus,
        mac,
        nic: &o.nic,
        net,
        serial_log: &log,
        console: !o.check,
        cdrom: None,
    };
    eprintln!(
        "booting {} ({}{}, {}, snapshot mode); serial log {}",
        image.display(),
        fw.code.display(),
        if fw.secure { ", Secure Boot" } else { "" },
        if kvm { "KVM" } else { "TCG" },
        log.display()
    );
    let mut cmd = vm.command();
    if !o.check {
        // Ctrl-C reaches QEMU (its console is this terminal); SIGTERM to imgbuild is passed on.
        // Either way imgbuild outlives QEMU and removes the record `imgbuild ssh` enters by.
        crate::vm::cluster::catch_signals();
        let status = run_until_stopped(&mut cmd);
        crate::vm::hostlink::forget(&cli.build_dir);
        let status = status?;
        anyhow::ensure!(
            status.success() || crate::vm::cluster::stopping(),
            "QEMU exited with {status}"
        );
        return Ok(());
    }
    let t = std::time::Instant::now();
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let seen = qemu::watch(
        &mut child,
        &log,
        std::time::Duration::from_secs(o.timeout),
        None,
        |s| s.cloud_init_finished && s.login_hostname.is_some() && s.disk.is_some(),
    );
    let _ = child.kill();
    let _ = child.wait();
    crate::vm::hostlink::forget(&cli.build_dir);
    let seen = seen?;
    judge_boot(
        plan,
        &seen,
        o.secure_boot,
        disk_size,
        t.elapsed().as_secs_f64(),
    )
    .map_err(|e| anyhow::anyhow!("{e} (serial log {})", log.display()))
}

/// `boot --check`'s verdict from what the console showed: Secure Boot when asked, the disk
/// size when asked, the root grown to the disk, the node's hostname and address.
fn judge_boot(
    plan: &Plan,
    seen: &crate::vm::qemu::Seen,
    secure_boot: bool,
    disk_size: Option<u64>,
    secs: f64,
) -> Result<()> {
    let node = plan.node.name.as_str();
    let ip = plan.node.ip.to_string();
    let (root_mb, disk_mb) = seen.disk.unwrap_or_default();
    println!(
        "{node}: cloud-init finished after {:.0}s; console shows hostname {} and addresses {}; Secure Boot {}; root filesystem {root_mb} MiB on a {disk_mb} MiB disk",
        secs,
        seen.login_hostname.as_deref().unwrap_or("-"),
        seen.addresses.join(", "),
        match seen.secure_boot {
            Some(true) => "enabled",
            Some(false) => "disabled",
            None => "not reported",
        }
    );
    let mut failures = Vec::new();
    if secure_boot && seen.secure_boot != Some(true) {
        failures.push("secure boot: the kernel did not report \"Secure boot enabled\"".to_string());
    }
    if let Some(size) = disk_size
        && disk_mb != size >> 20
    {
        failures.push(format!(
            "disk: the guest sees {disk_mb} MiB, expected {} MiB",
            size >> 20
        ));
    }
    // The root filesystem fills its disk: grown at first boot when the disk is bigger.
    if root_mb * 100 < disk_mb * 85 {
        failures.push(format!(
            "root filesystem: {root_mb} MiB on a {disk_mb} MiB disk (did growpart and resize2fs run?)"
        ));
    }
    if seen.login_hostname.as_deref() != Some(plan.node.hostname.as_str()) {
        failures.push(format!(
            "hostname: expected {}, the console shows {}",
            plan.node.hostname,
            seen.login_hostname.as_deref().unwrap_or("none")
        ));
    }
    if !seen.addresses.contains(&ip) {
        failures.push(format!(
            "address: expected {ip} on an interface, cloud-init shows {}",
            if seen.addresses.is_empty() {
                "none".to_string()
            } else {
                seen.addresses.join(", ")
            }
        ));
    }
    anyhow::ensure!(failures.is_empty(), "{node}: {}", failures.join("; "));
    Ok(())
}

/// A throwaway qcow2 of `text` (a size) over `image`: the guest sees a bigger disk, the image is
/// untouched. Refused when smaller than the image.
fn bigger_disk(
    image: &std::path::Path,
    text: &str,
    work: &std::path::Path,
) -> Result<(std::path::PathBuf, u64)> {
    let size = crate::plan::parse_size(text)
        .with_context(|| format!("--disk-size {text}: not a size (write it like 16GiB)"))?;
    let have = std::fs::metadata(image.with_extension("raw"))
        .map(|m| m.len())
        .unwrap_or(0);
    anyhow::ensure!(
        size >= have,
        "--disk-size {text} is smaller than the image ({})",
        crate::util::fmt::human(have)
    );
    let overlay = work.join("bigger-disk.qcow2");
    let _ = std::fs::remove_file(&overlay);
    let format = if image.extension().is_some_and(|e| e == "qcow2") {
        "qcow2"
    } else {
        "raw"
    };
    let backing =
        std::fs::canonicalize(image).with_context(|| format!("resolving {}", image.display()))?;
    crate::util::run::Cmd::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
        .arg(&backing)
        .arg(&overlay)
        .arg(size.to_string())
        .run()
        .context("making the bigger virtual disk")?;
    Ok((overlay, size))
}

/// Run `cmd` to its end; on SIGINT/SIGTERM (see `catch_signals`) ask it to quit and wait.
fn run_until_stopped(cmd: &mut std::process::Command) -> Result<std::process::ExitStatus> {
    let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;
    let mut asked = false;
    loop {
        if let Some(status) = child.try_wait().context("waiting for QEMU")? {
            return Ok(status);
        }
        if crate::vm::cluster::stopping() && !asked {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            asked = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// What `flash` writes: the raw image, its bmap if any, and the ranges to write.
fn flash_inputs(
    cli: &Cli,
    o: &FlashArgs,
) -> Result<(
    std::path::PathBuf,
    Option<std::path::PathBuf>,
    crate::flash::WritePlan,
)> {
    use crate::flash;
    let node = o.node.as_str();
    let (image, bmap) = match &o.image {
        Some(img) => {
            let sibling = img.with_extension("bmap");
            (
                img.clone(),
                o.bmap.clone().or(sibling.is_file().then_some(sibling)),
            )
        }
        None => {
            let cluster = resolve(&cli.recipe)?;
            node_plan(&cluster, &cli.recipe, node)?;
            let dir = cli.images.join(node);
            let bmap = dir.join(crate::image::bmap_name(node));
            (
                dir.join(crate::image::raw_name(node)),
                o.bmap.clone().or(bmap.is_file().then_some(bmap)),
            )
        }
    };
    let size = std::fs::metadata(&image)
        .with_context(|| {
            format!(
                "{}: no image to flash (build it with `imgbuild {node}`)",
                image.display()
            )
        })?
        .len();
    let plan = match &bmap {
        Some(b) => {
            let text =
                std::fs::read_to_string(b).with_context(|| format!("reading {}", b.display()))?;
            flash::WritePlan::from_bmap(
                &crate::image::bmap::parse(&text).with_context(|| format!("{}", b.display()))?,
            )
        }
        None => {
            eprintln!(
                "note: no bmap for {}: every block is written and read back",
                image.display()
            );
            flash::WritePlan::whole(size)
        }
    };
    Ok((image, bmap, plan))
}

/// `imgbuild flash NODE DEVICE`
pub fn flash(cli: &Cli, o: &FlashArgs) -> Result<()> {
    use crate::flash;
    let device = o.device.as_path();
    let (image, bmap, plan) = flash_inputs(cli, o)?;
    let target = flash::inspect(device, plan.image_size, o.to_file)?;
    eprintln!("target: {}", target.describe());
    eprintln!(
        "image:  {} ({}), {} to write in {} ranges{}; partition tables last",
        image.display(),
        crate::util::fmt::human(plan.image_size),
        crate::util::fmt::human(plan.bytes()),
        plan.ranges.len(),
        bmap.as_ref()
            .map(|b| format!(" from {}", b.display()))
            .unwrap_or_default()
    );
    if target.size > plan.image_size {
        eprintln!(
            "        the target is {} bigger: the backup GPT will be moved to its end (the root grows at first boot)",
            crate::util::fmt::human(target.size - plan.image_size)
        );
    }
    if o.dry_run {
        let mut out = std::io::stdout().lock();
        for (a, b, _) in &plan.ranges {
            writeln!(
                out,
                "would write bytes {a}..{b} ({})",
                crate::util::fmt::human(b - a)
            )?;
        }
        writeln!(
            out,
            "dry run: nothing written to {} ({} in {} ranges)",
            device.display(),
            crate::util::fmt::human(plan.bytes()),
            plan.ranges.len()
        )?;
        return Ok(());
    }
    if !o.yes {
        flash::confirm(&target)?;
    }
    let f = flash::open(&target)?;
    let rep = flash::write(
        &target,
        &f,
        &flash::Options {
            image: &image,
            plan,
            progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        },
    )?;
    eprintln!(
        "flashed {} onto {}: {} written in {:.1}s ({:.0} MB/s), every range read back and verified{}",
        image.display(),
        device.display(),
        crate::util::fmt::human(rep.written),
        rep.seconds,
        rep.written as f64 / rep.seconds.max(1e-6) / 1e6,
        if rep.relocated {
            "; backup GPT moved to the end"
        } else {
            ""
        }
    );
    Ok(())
}

/// `imgbuild up [NODE...]`
/// `imgbuild ssh NODE [-- CMD...]`: enter the running `up`'s network namespace and exec ssh.
/// Host keys are not recorded: the nodes' keys are made at each boot (the disks are throwaway
/// overlays), and the network they are reached on exists only inside that namespace.
pub fn ssh(
    cli: &Cli,
    node: &str,
    identity: Option<&std::path::Path>,
    user: Option<&str>,
    command: &[String],
) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let cluster = resolve(&cli.recipe)?;
    let plans = select(&cluster, &cli.recipe, &[node.to_string()])?;
    let p = plans.first().context("no such node")?;
    let user = match user {
        Some(u) => u.to_string(),
        None => p
            .users
            .iter()
            .find(|u| !u.ssh_authorized_keys.is_empty())
            .map(|u| u.name.clone())
            .with_context(|| {
                format!(
                    "{}: no user with an SSH key, so nobody can log into {node}\n\nhint: add `users:` with `ssh_authorized_keys`, or name one with -l",
                    cli.recipe.display()
                )
            })?,
    };
    let default_key = cli.build_dir.join("ssh").join("id_ed25519");
    let key = identity
        .map(std::path::Path::to_path_buf)
        .or_else(|| default_key.is_file().then_some(default_key));
    crate::util::tools::require(&[crate::util::tools::Tool {
        command: "ssh",
        why: "logs into the nodes (imgbuild ssh)",
        package: "openssh-client",
    }])?;
    crate::vm::hostlink::enter(&cli.build_dir)?;
    let mut c = std::process::Command::new("ssh");
    c.args([
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=10",
    ]);
    if let Some(k) = &key {
        c.arg("-i").arg(k).args(["-o", "IdentitiesOnly=yes"]);
    }
    c.arg(format!("{user}@{}", p.node.ip));
    if !command.is_empty() {
        c.arg("--").args(command);
    }
    let e = c.exec();
    Err(anyhow::anyhow!("running ssh: {e}"))
}

pub fn up(cli: &Cli, args: &crate::cli::UpArgs) -> Result<()> {
    let (names, o) = (&args.nodes, &args.options());
    let cluster = resolve(&cli.recipe)?;
    let all = vec!["all".to_string()];
    let plans = select(
        &cluster,
        &cli.recipe,
        if names.is_empty() { &all } else { names },
    )?;
    let ip = crate::util::tools::Tool {
        command: "ip",
        why: "sets up the private network namespace the nodes share",
        package: "iproute2",
    };
    match o.runtime {
        crate::vm::cluster::Runtime::Qemu => {
            crate::util::tools::require(&[crate::vm::qemu::QEMU, ip])?
        }
        crate::vm::cluster::Runtime::Container => crate::util::tools::require(&[
            crate::vm::container::NSPAWN,
            crate::vm::container::SCRIPT,
            ip,
        ])?,
    }
    crate::util::fs::require_root("imgbuild up (a private network namespace)")?;
    let Some(r) = crate::vm::cluster::up(&cluster, &plans, &cli.images, &cli.build_dir, o)? else {
        anyhow::ensure!(!o.check, "interrupted before the cluster could be judged");
        return Ok(());
    };
    if o.json {
        crate::report::print(&crate::report::Up {
            schema: 1,
            command: "up",
            runtime: format!("{:?}", o.runtime).to_lowercase(),
            check: o.check,
            ok: o.check && r.failures.is_empty(),
            healthy_after: r.healthy_after,
            ignored: o.ignore.clone(),
            nodes: plans
                .iter()
                .map(|p| {
                    let st = r.states.get(&p.node.name);
                    crate::report::UpNode {
                        node: p.node.name.clone(),
                        ip: p.node.ip.to_string(),
                        summary: st.and_then(|s| s.summary.clone()),
                        checks: st.map(|s| s.checks.clone()).unwrap_or_default(),
                    }
                })
                .collect(),
            phases: r.phases,
            failures: r.failures.clone(),
        })?;
    }
    let failures = r.failures;
    if !failures.is_empty() {
        anyhow::bail!(
            "cluster check failed ({} problem{}):\n  {}",
            failures.len(),
            if failures.len() == 1 { "" } else { "s" },
            failures.join("\n  ")
        );
    }
    if o.check {
        let msg = format!("cluster ok: {} nodes healthy", plans.len());
        if o.json {
            eprintln!("{msg}");
        } else {
            println!("{msg}");
        }
    }
    Ok(())
}

/// `imgbuild down`
pub fn down(cli: &Cli) -> Result<()> {
    let n = crate::vm::cluster::down(&cli.build_dir.join("up"))?;
    eprintln!("stopped {n} VM{}", if n == 1 { "" } else { "s" });
    Ok(())
}
