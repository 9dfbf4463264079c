//! Composing root filesystems: the tree every node shares (base OS, components, service users,
//! units), built once per input hash, then each node's tree on top of it, and a deterministic
//! tarball of the result.
//!
//! Layout under the build directory:
//! - `common/<hash>/rootfs`: the shared tree; `<hash>` covers every input, so a changed input
//!   builds a new one and an unchanged one is reused ("common: cached").
//! - `nodes/<node>/rootfs`: a hard-link copy of the shared tree plus the node's own files. Node
//!   files are always written by unlink-and-create, never in place, so the shared inodes are
//!   never modified.

pub mod confined;
pub mod extract;
pub mod props;
pub mod render;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::fetch::Fetched;
use crate::layout::FileSpec;
use crate::plan::Plan;
use crate::plan::services::Component;
use crate::recipe::BaseKind;
use crate::rootfs::confined::{Follow, Root};
use crate::rootfs::extract::{Limits, Policy};
use crate::rootfs::render::SERVICE_USERS;
use crate::util::fs::{Staging, require_root};

/// The input hash of the shared tree.
fn common_key(plan: &Plan, fetched: &[Fetched]) -> String {
    let mut h = Sha256::new();
    h.update(concat!("imgbuild ", env!("CARGO_PKG_VERSION"), "\0"));
    let kafka_mode = plan.kafka.as_ref().map(|k| k.mode);
    h.update(format!("{kafka_mode:?}\0"));
    h.update(serde_json::to_vec(&plan.base).unwrap_or_default());
    for f in fetched {
        h.update(format!("{}\0{}\0{}\0", f.name, f.version, f.record.sha256));
    }
    for spec in render::units(kafka_mode.unwrap_or(crate::recipe::KafkaMode::Kraft))
        .iter()
        .chain(&render::sysusers_and_tmpfiles())
    {
        h.update(spec.path.as_os_str().as_bytes());
        h.update(&spec.content);
    }
    hex::encode(&h.finalize()[..10])
}

/// The shared tree a build is using: derefs to its `rootfs` directory, and holds a shared lock on
/// its `complete` marker for as long as it lives, so that a concurrent build's [`prune_common`]
/// leaves it alone.
pub struct Common {
    rootfs: PathBuf,
    _in_use: fs::File,
}

impl std::ops::Deref for Common {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.rootfs
    }
}

/// How many shared trees a build directory keeps: the one in use and the newest other (a user
/// going back and forth between two recipes, or undoing a change, rebuilds nothing). Each is the
/// size of the base OS plus the components, twice (the tree and its filesystem template).
const COMMON_KEPT: usize = 2;

/// Build (or reuse) the shared tree for `plan`'s cluster, then remove older ones.
pub fn common_tree(plan: &Plan, fetched: &[Fetched], build: &Path) -> Result<Common> {
    let key = common_key(plan, fetched);
    let dir = build.join("common").join(&key);
    let rootfs = if dir.join("complete").is_file() {
        eprintln!("common   cached {key} (built once, shared by every node)");
        dir.join("rootfs")
    } else {
        require_root("composing the base OS")?;
        crate::util::stage::stage("common", || {
            let staging = Staging::new(&build.join("common"), &format!("{key}.tmp-"))?;
            build_common(plan, fetched, &staging.path().join("rootfs"), build)?;
            crate::util::failpoint::hit("common");
            fs::write(staging.path().join("complete"), format!("{key}\n"))?;
            if dir.exists() {
                fs::remove_dir_all(&dir)
                    .with_context(|| format!("removing incomplete {}", dir.display()))?;
            }
            staging.rename_to(&dir)?;
            Ok((
                dir.join("rootfs"),
                format!(
                    "built {key}: base, {} components, users, units",
                    fetched.iter().filter(|f| is_component(f)).count()
                ),
            ))
        })?
    };
    let marker = dir.join("complete");
    let in_use =
        fs::File::open(&marker).with_context(|| format!("opening {}", marker.display()))?;
    in_use
        .lock_shared()
        .with_context(|| format!("locking {}", marker.display()))?;
    // Its modification time says when it was last used: the newest are kept.
    in_use.set_modified(std::time::SystemTime::now()).ok();
    prune_common(&build.join("common"), &key)?;
    Ok(Common {
        rootfs,
        _in_use: in_use,
    })
}

/// Remove the shared trees of `common/` beyond the [`COMMON_KEPT`] most recently used, never
/// `keep` and never one another build holds (its `complete` is locked). A tree without `complete`
/// is a dead build's staging, which [`Staging`] removes.
fn prune_common(common: &Path, keep: &str) -> Result<()> {
    let mut others: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(common)
        .with_context(|| format!("reading {}", common.display()))?
        .flatten()
        .filter(|e| e.file_name().to_str() != Some(keep))
        .filter_map(|e| {
            let t = fs::metadata(e.path().join("complete"))
                .ok()?
                .modified()
                .ok()?;
            Some((t, e.path()))
        })
        .collect();
    others.sort_by_key(|t| std::cmp::Reverse(t.0));
    let (mut n, mut bytes) = (0, 0);
    for (_, dir) in others.into_iter().skip(COMMON_KEPT - 1) {
        let Ok(marker) = fs::File::open(dir.join("complete")) else {
            continue;
        };
        if marker.try_lock().is_err() {
            continue;
        }
        let size = allocated(&dir);
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        n += 1;
        bytes += size;
    }
    if n > 0 {
        eprintln!(
            "common   removed {n} older shared tree{} ({}), keeping the {COMMON_KEPT} last used",
            if n == 1 { "" } else { "s" },
            crate::util::fmt::human(bytes)
        );
    }
    Ok(())
}

/// The disk space a directory's files take (blocks allocated, so sparse files count as what they
/// hold, and hard links once per link: an upper bound of what removing it frees).
fn allocated(dir: &Path) -> u64 {
    let mut bytes = 0;
    let _ = crate::util::fs::walk(dir, |_, m| {
        bytes += m.blocks() * 512;
        Ok(true)
    });
    bytes
}

/// A fetched component (laid out under /opt), not the base or its keyring.
fn is_component(f: &Fetched) -> bool {
    f.name != "base" && f.name != crate::fetch::KEYRING
}

// Long on purpose: the shared tree's five numbered steps (base, components, users, units, no
// identity) over one confined root, each a few lines.
fn build_common(plan: &Plan, fetched: &[Fetched], dest: &Path, build: &Path) -> Result<()> {
    let root = Root::open(dest)?;
    let by_name = |n: &str| fetched.iter().find(|f| f.name == n);
    // 1. The base OS: built with mmdebstrap, or the verified tarball.
    let (tarball, what) = match plan.base.kind {
        BaseKind::Mmdebstrap => {
            let t = mmdebstrap_base(plan, by_name(crate::fetch::KEYRING), build)?;
            let what = t.display().to_string();
            (t, what)
        }
        _ => {
            let base = by_name("base").context("the base artifact was not fetched")?;
            (base.path.clone(), base.record.url.clone())
        }
    };
    let r = extract::extract(
        extract::open_archive(&tarball)?,
        &root,
        &Policy::Base,
        Limits::BASE,
    )
    .with_context(|| format!("extracting base {what}"))?;
    eprintln!(
        "common   base: {} entries, {}",
        r.entries,
        crate::util::fmt::human(r.bytes)
    );
    if r.dropped_acls > 0 {
        eprintln!(
            "common   note: {} POSIX ACLs dropped (the build filesystem has no ACL support; systemd-tmpfiles re-applies the journal's at boot)",
            r.dropped_acls
        );
    }
    // 2. Components at /opt/<name>-<version>, with /opt/<name> pointing at them.
    root.mkdir_all(Path::new("opt"), 0o755, Follow::InRoot)?;
    for f in fetched.iter().filter(|f| is_component(f)) {
        let versioned = format!("{}-{}", f.name, f.version);
        let into = Path::new("opt").join(&versioned);
        if let Some(jar) = Component::from_name(&f.name).and_then(Component::jar) {
            // One verified jar, laid out under a name that does not change with its version.
            let bytes = fs::read(&f.path)
                .with_context(|| format!("reading {} ({})", f.name, f.path.display()))?;
            root.mkdir_all(&into, 0o755, Follow::InRoot)?;
            root.write_file(&into.join(jar), &bytes, 0o644, Follow::InRoot)?;
        } else {
            let r = extract::extract(
                extract::open_archive(&f.path)?,
                &root,
                &Policy::Component { into: into.clone() },
                Limits::COMPONENT,
            )
            .with_context(|| format!("extracting {} {} ({})", f.name, f.version, f.record.url))?;
            if !r.stripped.is_empty() {
                eprintln!(
                    "common   {}: removed setuid/setgid bits from {} files",
                    f.name,
                    r.stripped.len()
                );
            }
        }
        root.remove(&Path::new("opt").join(&f.name), Follow::InRoot)?;
        root.symlink(
            Path::new(&versioned),
            &Path::new("opt").join(&f.name),
            Follow::InRoot,
        )?;
    }
    // 3. Service users, present in the image itself so the first boot needs no sysusers run.
    let ids = add_service_users(&root)?;
    for (name, home, _) in SERVICE_USERS {
        let (uid, gid) = ids[*name];
        for d in [
            home.trim_start_matches('/').to_string(),
            format!("var/log/{name}"),
        ] {
            root.mkdir_all(Path::new(&d), 0o750, Follow::InRoot)?;
            root.set_meta(Path::new(&d), uid, gid, Some(0o750), 0, Follow::InRoot)?;
        }
    }
    let (kuid, kgid) = ids["kafka"];
    root.mkdir_all(Path::new("var/lib/kafka/data"), 0o750, Follow::InRoot)?;
    root.set_meta(
        Path::new("var/lib/kafka/data"),
        kuid,
        kgid,
        Some(0o750),
        0,
        Follow::InRoot,
    )?;
    // 4. Units (all installed; nodes enable theirs), sysusers.d and tmpfiles.d.
    let mode = plan
        .kafka
        .as_ref()
        .map(|k| k.mode)
        .unwrap_or(crate::recipe::KafkaMode::Kraft);
    for spec in render::units(mode)
        .into_iter()
        .chain(render::sysusers_and_tmpfiles())
    {
        write_spec(&root, &spec, &ids)?;
    }
    // 5. No identity in the shared tree: every machine gets its own id and SSH host keys at first boot.
    root.remove(Path::new("var/lib/dbus/machine-id"), Follow::InRoot)?;
    for name in root.list_dir(Path::new("etc/ssh"))? {
        if name.to_string_lossy().starts_with("ssh_host_") {
            root.remove(&Path::new("etc/ssh").join(&name), Follow::InRoot)?;
        }
    }
    Ok(())
}

/// Build the base OS with mmdebstrap into a tarball under the build directory, keyed by its
/// inputs (suite, mirror, components, packages, keyring): built once, reused after.
fn mmdebstrap_base(plan: &Plan, keyring: Option<&Fetched>, build: &Path) -> Result<PathBuf> {
    let b = &plan.base;
    let key = {
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(b)?);
        if let Some(k) = keyring {
            h.update(k.record.sha256.as_bytes());
        }
        h.update(BASE_HOOKS.as_bytes());
        hex::encode(&h.finalize()[..10])
    };
    let out = build.join("base").join(format!("mmdebstrap-{key}.tar"));
    if out.is_file() {
        eprintln!("base     cached {}", out.display());
        return Ok(out);
    }
    crate::util::tools::require(&[crate::util::tools::MMDEBSTRAP])?;
    crate::util::stage::stage("base", || {
        fs::create_dir_all(out.parent().unwrap_or(build))?;
        let tmp = out.with_extension(format!("tmp-{}.tar", std::process::id()));
        let suite = b
            .suite
            .as_deref()
            .context("mmdebstrap base without a suite")?;
        let mirror = b
            .mirror
            .as_deref()
            .context("mmdebstrap base without a mirror")?;
        let mut cmd = crate::util::run::Cmd::new("mmdebstrap")
            .args(["--mode=root", "--variant=minbase", "--format=tar"])
            .arg(format!("--components={}", b.apt_components.join(",")))
            .args(BASE_HOOKS.lines());
        if !b.packages.is_empty() {
            cmd = cmd.arg(format!("--include={}", b.packages.join(",")));
        }
        // With keys named in the recipe, the archive is trusted through them alone: a sources
        // line with `signed-by` (apt then ignores every other key for it). `--keyring` is not
        // enough: a file replaces only apt's Trusted file, the host's trusted.gpg.d stays
        // trusted, and mmdebstrap goes looking for a matching signed-by keyring among the
        // host's /usr/share/keyrings (found by a test pinning a key that does not sign the archive).
        let source = match trusted_keys(b, keyring, &out)? {
            Some(files) => {
                let dir = files[0].parent().unwrap_or(&out).to_path_buf();
                cmd = cmd
                    .arg(format!("--keyring={}", dir.display()))
                    .arg(format!("--keyring={}", dir.with_extension("gpg").display()))
                    // The image's apt trusts its own keyring package, not a build-host path.
                    .arg(
                        "--customize-hook=sed -i 's| \\[signed-by=[^]]*\\]||' \"$1/etc/apt/sources.list\"",
                    );
                format!(
                    "deb [signed-by={}] {mirror} {suite} {}",
                    files
                        .iter()
                        .map(|f| f.display().to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                    b.apt_components.join(" ")
                )
            }
            None => mirror.to_string(),
        };
        let result = cmd.arg(suite).arg(&tmp).arg(&source).run();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(e.context(format!("building the {suite} base from {mirror}")));
        }
        fs::rename(&tmp, &out)?;
        Ok((
            out.clone(),
            format!(
                "built {suite} from {mirror} with mmdebstrap: {}",
                out.display()
            ),
        ))
    })
}

/// The keys, and only the keys, the base's Release file may be signed with: keyring files in a
/// directory beside `out` (plus an empty `<dir>.gpg` for apt's single Trusted file); None when
/// the recipe names none (apt then trusts the build machine's keys).
fn trusted_keys(
    b: &crate::plan::BasePlan,
    pinned: Option<&Fetched>,
    out: &Path,
) -> Result<Option<Vec<PathBuf>>> {
    let source: PathBuf = match (&b.keyring, pinned) {
        (None, _) => return Ok(None),
        (Some(crate::plan::KeyringPlan::File { path }), _) => PathBuf::from(path),
        (Some(crate::plan::KeyringPlan::Pinned { .. }), Some(k)) => k.path.clone(),
        (Some(crate::plan::KeyringPlan::Pinned { url, .. }), None) => {
            bail!("the base's archive keys from {url} were not fetched")
        }
    };
    let dir = out.with_extension("keys");
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // apt reads signed-by paths from wherever mmdebstrap runs it: make them absolute.
    let dir = fs::canonicalize(&dir).with_context(|| format!("resolving {}", dir.display()))?;
    let mut files = Vec::new();
    let mut copy = |from: &Path| -> Result<()> {
        let name = from.file_name().context("keyring without a file name")?;
        let mut to = dir.join(name);
        if to.extension().is_none_or(|e| e != "gpg" && e != "asc") {
            to.set_extension("gpg");
        }
        fs::copy(from, &to).with_context(|| format!("copying keyring {}", from.display()))?;
        files.push(to);
        Ok(())
    };
    if source.is_dir() {
        for e in fs::read_dir(&source).with_context(|| format!("reading {}", source.display()))? {
            let p = e?.path();
            if p.extension().is_some_and(|e| e == "gpg" || e == "asc") {
                copy(&p)?;
            }
        }
    } else {
        copy(&source)?;
    }
    anyhow::ensure!(
        !files.is_empty(),
        "{}: no keyring (.gpg or .asc) in it",
        source.display()
    );
    fs::write(dir.with_extension("gpg"), b"")?;
    Ok(Some(files))
}

/// mmdebstrap options every base gets: no documentation or translations (some postinsts need
/// man1 to exist anyway) but each package's copyright file (its license terms travel with it, as
/// in Ubuntu's minimized images; the SBOM reads their DEP-5 licenses), and no machine identity.
const BASE_HOOKS: &str = "--dpkgopt=path-exclude=/usr/share/man/*
--dpkgopt=path-exclude=/usr/share/doc/*
--dpkgopt=path-include=/usr/share/doc/*/copyright
--dpkgopt=path-exclude=/usr/share/locale/*
--dpkgopt=path-include=/usr/share/locale/locale.alias
--setup-hook=mkdir -p \"$1/usr/share/man/man1\"
--customize-hook=rm -f \"$1\"/etc/ssh/ssh_host_*";

/// Add the service users and groups to passwd/group/shadow/gshadow, keeping existing entries.
/// Ids are allocated downwards from 999 like systemd-sysusers, so the same base gives the same ids.
fn add_service_users(root: &Root) -> Result<BTreeMap<String, (u32, u32)>> {
    // Read through the confined root: a hostile base could make etc/passwd a link to the host's shadow.
    let read = |p: &str| -> Result<String> {
        Ok(
            String::from_utf8_lossy(&root.read_file(Path::new(p))?.unwrap_or_default())
                .into_owned(),
        )
    };
    let (mut passwd, mut group, mut shadow, mut gshadow) = (
        read("etc/passwd")?,
        read("etc/group")?,
        read("etc/shadow")?,
        read("etc/gshadow")?,
    );
    let ids_in = |text: &str| -> Vec<(String, u32)> {
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                Some((f.first()?.to_string(), f.get(2)?.parse().ok()?))
            })
            .collect()
    };
    let mut out = BTreeMap::new();
    for (name, home, desc) in SERVICE_USERS {
        let users = ids_in(&passwd);
        let groups = ids_in(&group);
        if let Some((_, uid)) = users.iter().find(|(n, _)| n == name) {
            let gid = groups.iter().find(|(n, _)| n == name).map_or(*uid, |g| g.1);
            out.insert(name.to_string(), (*uid, gid));
            continue;
        }
        let taken = |id: u32| users.iter().any(|u| u.1 == id) || groups.iter().any(|g| g.1 == id);
        let id = (100..1000)
            .rev()
            .find(|id| !taken(*id))
            .context("no free system user id below 1000")?;
        for (text, line) in [
            (
                &mut passwd,
                format!("{name}:x:{id}:{id}:{desc}:{home}:/usr/sbin/nologin"),
            ),
            (&mut group, format!("{name}:x:{id}:")),
            (&mut shadow, format!("{name}:!*:::::::")),
            (&mut gshadow, format!("{name}:!::")),
        ] {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&line);
            text.push('\n');
        }
        out.insert(name.to_string(), (id, id));
    }
    root.mkdir_all(Path::new("etc"), 0o755, Follow::InRoot)?;
    for (p, text, mode) in [
        ("etc/passwd", &passwd, 0o644),
        ("etc/group", &group, 0o644),
        ("etc/shadow", &shadow, 0o640),
        ("etc/gshadow", &gshadow, 0o640),
    ] {
        // Keep the base's owner (shadow is root:shadow on Debian/Ubuntu).
        let meta = root.stat(Path::new(p))?;
        root.write_file(Path::new(p), text.as_bytes(), mode, Follow::InRoot)?;
        if let Some((uid, gid, mode)) = meta {
            root.set_meta(Path::new(p), uid, gid, Some(mode), 0, Follow::InRoot)?;
        }
    }
    Ok(out)
}

fn write_spec(root: &Root, spec: &FileSpec, ids: &BTreeMap<String, (u32, u32)>) -> Result<()> {
    if let Some(parent) = spec.path.parent() {
        root.mkdir_all(parent, 0o755, Follow::InRoot)?;
    }
    root.write_file(&spec.path, &spec.content, spec.mode, Follow::InRoot)?;
    if let Some(owner) = spec.owner {
        let (uid, gid) = ids
            .get(owner)
            .copied()
            .with_context(|| format!("no user {owner}"))?;
        root.set_meta(&spec.path, uid, gid, Some(spec.mode), 0, Follow::InRoot)?;
    }
    Ok(())
}

fn service_ids(root: &Root) -> Result<BTreeMap<String, (u32, u32)>> {
    let passwd =
        String::from_utf8_lossy(&root.read_file(Path::new("etc/passwd"))?.unwrap_or_default())
            .into_owned();
    Ok(passwd
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((
                f.first()?.to_string(),
                (f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?),
            ))
        })
        .collect())
}

/// Build the node's tree from the shared one. Returns its `rootfs` directory.
pub fn node_tree(
    plan: &Plan,
    common: &Path,
    build: &Path,
    extra: &[FileSpec],
    overlays: &[PathBuf],
) -> Result<PathBuf> {
    let name = &plan.node.name;
    if plan.firewall.enabled && std::fs::symlink_metadata(common.join("usr/sbin/nft")).is_err() {
        bail!(
            "{name}: the base has no /usr/sbin/nft, which the firewall needs (every port would stay open)\n\n\
             hint: add nftables to base.packages, or set `firewall: {{enabled: false}}` in {}",
            plan.recipe
        );
    }
    if plan.node_exporter_port().is_some()
        && std::fs::symlink_metadata(
            common.join(crate::layout::NODE_EXPORTER_BIN.trim_start_matches('/')),
        )
        .is_err()
    {
        bail!(
            "{name}: the base has no {}, the node exporter that `metrics` runs on every node \
             (no disk, memory or clock metrics)\n\n\
             hint: add prometheus-node-exporter to base.packages, or set `metrics: {{enabled: false}}` in {}",
            crate::layout::NODE_EXPORTER_BIN,
            plan.recipe
        );
    }
    crate::util::stage::stage("node", || {
        let dir = build.join("nodes").join(name);
        let staging = Staging::dir(&build.join("nodes"), &format!("{name}.tmp-"))?;
        let staging = staging.path();
        let result = (|| {
            crate::util::tools::require(&[crate::util::tools::CP])?;
            // A hard-link copy: cheap, and safe because node files never modify shared inodes in place.
            crate::util::run::Cmd::new("cp")
                .args(["-a", "-l", "--"])
                .arg(common)
                .arg(staging.join("rootfs"))
                .run()?;
            crate::util::failpoint::hit("node");
            let root = Root::open(&staging.join("rootfs"))?;
            let ids = service_ids(&root)?;
            for spec in render::node_files(plan).iter().chain(extra) {
                write_spec(&root, spec, &ids)?;
            }
            // Where fstab mounts the EFI system partition.
            root.mkdir_all(Path::new("boot/efi"), 0o755, Follow::InRoot)?;
            for (link, target) in render::enablement(plan) {
                root.mkdir_all(
                    link.parent().unwrap_or(Path::new("")),
                    0o755,
                    Follow::InRoot,
                )?;
                root.remove(&link, Follow::InRoot)?;
                root.symlink(&target, &link, Follow::InRoot)?;
            }
            let mut applied = 0;
            for dir in overlays {
                applied += apply_overlay(&root, dir)?;
            }
            Ok::<_, anyhow::Error>(applied)
        })();
        let applied = result?;
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("removing old {}", dir.display()))?;
        }
        fs::rename(staging, &dir)?;
        Ok((
            dir.join("rootfs"),
            format!(
                "{name}: identity, configs, {} units enabled, {applied} overlay files",
                plan.units.len()
            ),
        ))
    })
}

/// Copy an overlay directory over the tree (files replace, directories merge). Returns files applied.
fn apply_overlay(root: &Root, dir: &Path) -> Result<usize> {
    if !dir.is_dir() {
        return Ok(0);
    }
    let mut n = 0;
    crate::util::fs::walk(dir, |r, m| {
        let name = r.file_name().unwrap_or_default();
        if r.as_os_str().is_empty() {
            return Ok(true);
        }
        if name == ".gitkeep" || name == "README.md" && r.parent() == Some(Path::new("")) {
            return Ok(false);
        }
        let src = dir.join(r);
        if m.file_type().is_symlink() {
            root.remove(r, Follow::InRoot)?;
            root.symlink(&fs::read_link(&src)?, r, Follow::InRoot)?;
        } else if m.is_dir() {
            root.mkdir_all(r, m.mode() & 0o7777, Follow::InRoot)?;
        } else if m.is_file() {
            let bytes = fs::read(&src)
                .with_context(|| format!("reading overlay file {}", src.display()))?;
            root.write_file(r, &bytes, m.mode() & 0o777, Follow::InRoot)?;
        } else {
            bail!(
                "overlay {}: only files, directories and symlinks are allowed",
                src.display()
            );
        }
        n += 1;
        Ok(true)
    })
    .with_context(|| format!("applying overlay {}", dir.display()))?;
    Ok(n)
}

/// Write `tree` as a deterministic tar: sorted entries, numeric owners, every mtime `mtime`,
/// hard links kept, xattrs in PAX headers. Written to a temporary name and renamed.
pub fn write_tar(tree: &Path, out: &Path, mtime: u64) -> Result<u64> {
    let parent = out.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = out
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("rootfs.tar");
    let staging = Staging::new(parent, &format!(".{name}.tmp-"))?;
    let tmp = staging.path();
    let result = (|| -> Result<u64> {
        let f = fs::File::create(tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut b = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, f));
        b.mode(tar::HeaderMode::Deterministic);
        let mut paths = Vec::new();
        crate::util::fs::walk(tree, |rel, _| {
            if !rel.as_os_str().is_empty() {
                paths.push(rel.to_path_buf());
            }
            Ok(true)
        })?;
        paths.sort_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
        let mut seen: BTreeMap<(u64, u64), PathBuf> = BTreeMap::new();
        for rel in &paths {
            append_entry(&mut b, tree, rel, mtime, &mut seen)?;
        }
        let mut w = b.into_inner()?;
        w.flush()?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        Ok(paths.len() as u64)
    })();
    let n = result.with_context(|| format!("writing {}", out.display()))?;
    staging.rename_to(out)?;
    Ok(n)
}

/// One entry of [`write_tar`]: `rel`'s header (owners, mode, `mtime`, xattrs) and content; a
/// second link to a file already written (`seen`) as a hard link to it.
fn append_entry<W: Write>(
    b: &mut tar::Builder<W>,
    tree: &Path,
    rel: &Path,
    mtime: u64,
    seen: &mut BTreeMap<(u64, u64), PathBuf>,
) -> Result<()> {
    let full = tree.join(rel);
    let m = fs::symlink_metadata(&full)?;
    let mut h = tar::Header::new_gnu();
    h.set_mtime(mtime);
    h.set_uid(u64::from(m.uid()));
    h.set_gid(u64::from(m.gid()));
    h.set_mode(m.mode() & 0o7777);
    let xattrs = xattrs(&full);
    if !xattrs.is_empty() {
        b.append_pax_extensions(xattrs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
    }
    let ft = m.file_type();
    let name = if ft.is_dir() {
        rel.join("")
    } else {
        rel.to_path_buf()
    };
    if ft.is_file() && m.nlink() > 1 {
        if let Some(first) = seen.get(&(m.dev(), m.ino())) {
            h.set_entry_type(tar::EntryType::Link);
            h.set_size(0);
            b.append_link(&mut h, &name, first)?;
            return Ok(());
        }
        seen.insert((m.dev(), m.ino()), rel.to_path_buf());
    }
    if ft.is_dir() {
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        b.append_data(&mut h, &name, std::io::empty())?;
    } else if ft.is_file() {
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(m.len());
        b.append_data(&mut h, &name, fs::File::open(&full)?)?;
    } else if ft.is_symlink() {
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, &name, fs::read_link(&full)?)?;
    } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
        h.set_entry_type(if ft.is_char_device() {
            tar::EntryType::Char
        } else if ft.is_block_device() {
            tar::EntryType::Block
        } else {
            tar::EntryType::Fifo
        });
        h.set_size(0);
        let rdev = m.rdev();
        h.set_device_major(libc::major(rdev))?;
        h.set_device_minor(libc::minor(rdev))?;
        b.append_data(&mut h, &name, std::io::empty())?;
    }
    Ok(())
}

/// Extended attributes of a path (not following symlinks), as PAX `SCHILY.xattr.*` pairs.
fn xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return Vec::new();
    };
    let mut names = vec![0u8; 4096];
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for name in names[..n as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
    {
        let Ok(cn) = CString::new(name) else { continue };
        let mut val = vec![0u8; 65536];
        let len =
            unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
        if len >= 0 {
            val.truncate(len as usize);
            out.push((
                format!("SCHILY.xattr.{}", String::from_utf8_lossy(name)),
                val,
            ));
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    /// A shared tree `key` under `common`, last used `age_secs` ago.
    fn tree(common: &Path, key: &str, age_secs: u64) {
        let dir = common.join(key);
        fs::create_dir_all(dir.join("rootfs/etc")).unwrap();
        fs::write(dir.join("rootfs/etc/hostname"), "x\n").unwrap();
        fs::write(dir.join("complete"), format!("{key}\n")).unwrap();
        let f = fs::File::options()
            .write(true)
            .open(dir.join("complete"))
            .unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(age_secs))
            .unwrap();
    }

    #[test]
    fn prune_keeps_the_tree_in_use_and_the_newest_other_and_locked_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let common = tmp.path();
        tree(common, "current", 1000); // in use: kept whatever its age
        tree(common, "newer", 10); // the newest other: kept
        tree(common, "old", 100);
        tree(common, "held", 200); // another build holds it: kept
        tree(common, "oldest", 300);
        fs::create_dir_all(common.join("dead.tmp-1")).unwrap(); // no marker: not ours to judge
        let held = fs::File::open(common.join("held/complete")).unwrap();
        held.lock_shared().unwrap();

        prune_common(common, "current").unwrap();

        let mut left: Vec<String> = fs::read_dir(common)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["current", "dead.tmp-1", "held", "newer"]);
    }

    #[test]
    fn allocated_counts_the_blocks_of_every_file() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("a/b")).unwrap();
        fs::write(tmp.path().join("a/b/f"), vec![1u8; 64 * 1024]).unwrap();
        assert!(allocated(tmp.path()) >= 64 * 1024);
        assert_eq!(allocated(&tmp.path().join("missing")), 0);
    }
}
