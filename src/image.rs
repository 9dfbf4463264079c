//! Emitting a node's images from its tree: the GPT/UEFI raw disk (ESP + root ext4 written in
//! place), qcow2, NoCloud seed volumes, the rootfs tarball, a bmap, manifest.json and SHA256SUMS.
//!
//! Everything is written into `images/.<node>.tmp-<pid>/` and swapped with `images/<node>/` in
//! one `renameat2(RENAME_EXCHANGE)` once complete and synced: a failed or killed build leaves
//! the previous images as they were (a later build removes the stale temporary directory).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;

use crate::boot;
use crate::confined::Root;
use crate::disk::{self, FsIdentity};
use crate::fat;
use crate::fetch::Fetched;
use crate::gpt::{self, Gpt, Partition};
use crate::ids::DiskIds;
use crate::plan::Plan;
use crate::run::Cmd;
use crate::tools::Tool;

const MIB: u64 = 1 << 20;
const SECTOR: u64 = 512;

pub const QEMU_IMG: Tool = Tool {
    command: "qemu-img",
    why: "converts the raw disk to qcow2",
    package: "qemu-utils",
};
pub const XORRISO: Tool = Tool {
    command: "xorriso",
    why: "writes the ISO9660 NoCloud seed (cidata)",
    package: "xorriso",
};
pub const DEBUGFS: Tool = Tool {
    command: "debugfs",
    why: "fixes inode times so the root filesystem is bit-identical across builds",
    package: "e2fsprogs",
};

/// Every host tool building these formats needs (checked before any work starts).
pub fn tools(formats: &[String]) -> Vec<Tool> {
    let mut t = vec![
        crate::tools::CP,
        disk::MKFS_EXT4,
        DEBUGFS,
        disk::TUNE2FS,
        disk::E2FSCK,
        fat::MKFS_FAT,
        fat::MCOPY,
    ];
    if formats.iter().any(|f| f == "qcow2") {
        t.push(QEMU_IMG);
    }
    if formats.iter().any(|f| f == "seed-iso") {
        t.push(XORRISO);
    }
    t
}

/// File names inside `images/<node>/`.
pub fn raw_name(node: &str) -> String {
    format!("{node}.raw")
}
pub fn bmap_name(node: &str) -> String {
    format!("{node}.bmap")
}

/// The image of `node` to boot: its qcow2, else its raw disk.
pub fn bootable(images: &Path, node: &str) -> Result<PathBuf> {
    let dir = images.join(node);
    [format!("{node}.qcow2"), raw_name(node)]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "no image of {node} in {}: build it first with `imgbuild {node}`",
                dir.display()
            )
        })
}

/// One output file: name, size, sha256.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Output {
    pub file: String,
    pub size: u64,
    pub sha256: String,
}

/// What a node's build produced, for the summary.
pub struct Built {
    pub node: String,
    pub dir: PathBuf,
    pub outputs: Vec<Output>,
    /// (stage, seconds)
    pub stages: Vec<(String, f64)>,
}

/// Stage timing and the progress lines on stderr: `[node1] mkfs  root ext4 … (3.1s)`.
pub struct Stages {
    node: String,
    pub times: Vec<(String, f64)>,
}

impl Stages {
    pub fn new(node: &str) -> Stages {
        Stages {
            node: node.to_string(),
            times: Vec::new(),
        }
    }

    pub fn run<T>(&mut self, name: &str, f: impl FnOnce() -> Result<(T, String)>) -> Result<T> {
        let t = Instant::now();
        let (v, note) = f().with_context(|| format!("{}: stage {name}", self.node))?;
        let secs = t.elapsed().as_secs_f64();
        eprintln!("[{}] {name:<8} {note} ({secs:.1}s)", self.node);
        self.times.push((name.to_string(), secs));
        Ok(v)
    }
}

/// Bytes a tree needs in ext4 (4 KiB blocks, hard links once) and its inode count.
fn tree_usage(tree: &Path) -> Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut stack = vec![tree.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).with_context(|| format!("stat {}", p.display()))?;
        if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
            continue;
        }
        inodes += 1;
        if m.is_dir() {
            bytes += 4096;
            for e in fs::read_dir(&p).with_context(|| format!("reading {}", p.display()))? {
                stack.push(e?.path());
            }
        } else if m.is_file() {
            bytes += m.len().div_ceil(4096) * 4096;
        } else if m.file_type().is_symlink() && m.len() >= 60 {
            bytes += 4096;
        }
    }
    Ok((bytes, inodes))
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

fn human(b: u64) -> String {
    crate::fetch::human(b)
}

/// Partition layout: ESP then root, 1 MiB aligned; the root fills the disk.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub size: u64,
    pub esp: (u64, u64),
    pub root: (u64, u64),
}

/// Room an automatically sized disk leaves beyond what the content needs (logs, Kafka and
/// ZooKeeper data before the root grows onto a bigger disk at first boot); the size is then
/// rounded up to a multiple of [`AUTO_ROUND`].
pub const AUTO_HEADROOM: u64 = 1024 * MIB;
pub const AUTO_ROUND: u64 = 256 * MIB;

/// Lay out a disk of `size` bytes (the recipe's; None: the content plus [`AUTO_HEADROOM`]),
/// refusing one smaller than the content needs.
pub fn layout(
    size: Option<u64>,
    esp_content: u64,
    tree_bytes: u64,
    tree_inodes: u64,
) -> Result<Layout> {
    // FAT overhead is small; keep room for a second kernel + initrd (upgrades install there).
    let esp = round_up((esp_content * 2 + 64 * MIB).max(256 * MIB), MIB);
    // ext4: metadata (~2% for inode tables at 16 KiB/inode), a 64 MiB journal and headroom.
    let root_min = round_up(
        tree_bytes + tree_bytes / 4 + tree_inodes * 256 + 192 * MIB,
        MIB,
    );
    let min = MIB + esp + root_min + MIB;
    let size = size.unwrap_or_else(|| round_up(min + AUTO_HEADROOM, AUTO_ROUND));
    ensure!(
        size >= min,
        "disk.size {} is too small: this node needs at least {} (root tree {} in {} files, EFI partition {})",
        human(size),
        human(round_up(min, MIB)),
        human(tree_bytes),
        tree_inodes,
        human(esp)
    );
    let size = size / MIB * MIB;
    let root_start = MIB + esp;
    // The backup GPT takes the last 33 sectors; the root ends on a MiB boundary before it.
    let (_, last_usable) = gpt::usable(size / SECTOR);
    let root_end = (last_usable + 1) * SECTOR / MIB * MIB;
    Ok(Layout {
        size,
        esp: (MIB, esp),
        root: (root_start, root_end - root_start),
    })
}

/// Build the raw disk at `raw`: root ext4, ESP, GPT.
///
/// The root filesystem: when the node's tree is the shared tree (`common`) plus changes that a
/// `debugfs` script can make, a copy of the shared tree's filesystem (made once by `mkfs -d`,
/// see [`disk::template`]) given the node's UUID, hash seed and files; otherwise `mkfs -d` of
/// the node's whole tree. Returns which of the two, for the progress line.
fn write_raw(
    raw: &Path,
    l: &Layout,
    ids: &DiskIds,
    tree: &Path,
    common: Option<&Path>,
    esp: &Path,
    epoch: u64,
) -> Result<String> {
    let f = File::create(raw).with_context(|| format!("creating {}", raw.display()))?;
    f.set_len(l.size)?;
    let id = FsIdentity {
        label: "root",
        uuid: &ids.root_fs,
        hash_seed: &ids.root_hash_seed,
        epoch,
    };
    let script = match common {
        _ if std::env::var_os("IMGBUILD_NO_TEMPLATE").is_some() => {
            Err("IMGBUILD_NO_TEMPLATE is set".to_string())
        }
        Some(common) => disk::delta_script(common, tree, epoch)?,
        None => Err("no shared tree".to_string()),
    };
    let how = match (script, common) {
        (Ok(script), Some(common)) => {
            let shared = common.parent().unwrap_or(Path::new("."));
            let key = shared.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let name = format!("root-v1-{}-{epoch}.ext4", l.root.1);
            let derive = |what: &str| {
                crate::gpt::Guid::derived(&format!("imgbuild shared root\0{key}\0{name}\0{what}"))
            };
            let (uuid, hash_seed) = (derive("uuid"), derive("hash_seed"));
            let template = shared.join(&name);
            disk::template(
                &template,
                l.root.1,
                common,
                &FsIdentity {
                    label: "root",
                    uuid: &uuid,
                    hash_seed: &hash_seed,
                    epoch,
                },
            )?;
            disk::copy_sparse(&template, raw, l.root.0)?;
            disk::personalise(raw, l.root.0, &id, &script)?;
            let changes = script
                .lines()
                .filter(|l| !l.starts_with("set_inode_field"))
                .count();
            format!("shared root filesystem + {changes} node changes")
        }
        (Err(why), _) => {
            disk::mkfs_ext4(raw, l.root.0, l.root.1, tree, &id)?;
            format!("mkfs of the node's whole tree: {why}")
        }
        (Ok(_), None) => unreachable!("a delta needs the shared tree"),
    };
    crate::failpoint::hit("raw");
    fat::make(
        raw,
        l.esp.0,
        l.esp.1,
        esp,
        &fat::Volume {
            label: "ESP",
            serial: ids.esp_serial,
            epoch,
            bits: 32,
        },
    )?;
    let part = |name: &str, type_guid: &str, guid: &crate::gpt::Guid, (start, len): (u64, u64)| {
        Partition {
            type_guid: crate::gpt::Guid(type_guid.to_string()),
            guid: guid.clone(),
            first_lba: start / SECTOR,
            last_lba: (start + len) / SECTOR - 1,
            name: name.to_string(),
        }
    };
    let table = Gpt {
        disk_guid: ids.disk.clone(),
        partitions: vec![
            part("ESP", gpt::ESP, &ids.esp_partition, l.esp),
            part("root", gpt::LINUX_ROOT_X86_64, &ids.root_partition, l.root),
        ],
    };
    let f = fs::OpenOptions::new().write(true).open(raw)?;
    table.write(&f, l.size)?;
    f.sync_all()?;
    Ok(how)
}

/// Write `files` (relative path, content) under `dir` with every time set to `epoch`.
fn write_tree(dir: &Path, files: &[(PathBuf, Vec<u8>)], epoch: u64) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    for (rel, content) in files {
        let p = dir.join(rel);
        fs::create_dir_all(p.parent().unwrap_or(dir))?;
        fs::write(&p, content).with_context(|| format!("writing {}", p.display()))?;
    }
    disk::clamp_times(dir, epoch)?;
    // clamp_times caps mtimes at the epoch; these files are new, so set them to it exactly.
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            for e in fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch);
        File::open(&p)?.set_times(fs::FileTimes::new().set_accessed(t).set_modified(t))?;
    }
    Ok(())
}

#[derive(Serialize)]
struct ManifestInput<'a> {
    name: &'a str,
    version: &'a str,
    url: &'a str,
    size: u64,
    sha256: &'a str,
    sha512: &'a str,
    signed_by: Option<&'a str>,
}

#[derive(Serialize)]
struct ManifestPartition {
    name: &'static str,
    type_guid: &'static str,
    partition_guid: String,
    filesystem: &'static str,
    filesystem_id: String,
    first_lba: u64,
    last_lba: u64,
}

#[derive(Serialize)]
struct Manifest<'a> {
    manifest_version: u32,
    imgbuild: &'static str,
    /// What the images are a function of (see [`build_key`]): equal keys, identical images.
    build_key: &'a str,
    node: &'a str,
    hostname: &'a str,
    ip: String,
    recipe_sha256: &'a str,
    source_date_epoch: u64,
    components: BTreeMap<&'a str, &'a str>,
    inputs: Vec<ManifestInput<'a>>,
    boot: BTreeMap<&'static str, String>,
    disk_size: u64,
    disk_guid: String,
    partitions: Vec<ManifestPartition>,
    base_packages: BTreeMap<String, String>,
    /// The build key's ingredients, item by item (see [`key_parts`]).
    build_inputs: BTreeMap<String, String>,
    outputs: Vec<Output>,
}

fn output(dir: &Path, name: &str) -> Result<Output> {
    Hashing::start(dir, name).finish(dir, name)
}

/// A file's SHA-256 computed on a thread of its own, started as soon as the file is complete, so
/// the big ones (the raw disk: gigabytes, mostly holes that still have to be hashed as zeros; the
/// qcow2) are hashed while the next stages run instead of one after another at the end.
struct Hashing(std::thread::JoinHandle<std::io::Result<String>>);

impl Hashing {
    fn start(dir: &Path, name: &str) -> Hashing {
        let p = dir.join(name);
        Hashing(std::thread::spawn(move || crate::checksum::sha256_file(&p)))
    }

    fn finish(self, dir: &Path, name: &str) -> Result<Output> {
        let p = dir.join(name);
        let sha256 = self
            .0
            .join()
            .map_err(|_| anyhow::anyhow!("the thread hashing {} panicked", p.display()))?
            .with_context(|| format!("hashing {}", p.display()))?;
        Ok(Output {
            file: name.to_string(),
            size: fs::metadata(&p)
                .with_context(|| format!("stat {}", p.display()))?
                .len(),
            sha256,
        })
    }
}

/// Swap `staging` into place as `dest` atomically; the previous `dest` is removed afterwards.
fn publish(staging: &Path, dest: &Path) -> Result<()> {
    for e in fs::read_dir(staging)? {
        File::open(e?.path())?.sync_all()?;
    }
    File::open(staging)?.sync_all()?;
    if dest.exists() {
        let (a, b) = (
            std::ffi::CString::new(staging.as_os_str().as_encoded_bytes())?,
            std::ffi::CString::new(dest.as_os_str().as_encoded_bytes())?,
        );
        let r = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                a.as_ptr(),
                libc::AT_FDCWD,
                b.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if r != 0 {
            bail!(
                "swapping {} into {}: {}",
                staging.display(),
                dest.display(),
                std::io::Error::last_os_error()
            );
        }
        // `staging` now holds the previous images.
        fs::remove_dir_all(staging)
            .with_context(|| format!("removing the previous images at {}", staging.display()))?;
    } else {
        fs::rename(staging, dest)
            .with_context(|| format!("renaming {} to {}", staging.display(), dest.display()))?;
    }
    if let Some(parent) = dest.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// The key of a node's images: imgbuild's version, the node's plan (without the recipe's path and
/// hash, so an edit elsewhere in the recipe does not touch this node), the content of every
/// input, the epoch and the overlays' files. Equal keys give identical images.
pub fn build_key(plan: &Plan, fetched: &[Fetched], epoch: u64) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(concat!("imgbuild ", env!("CARGO_PKG_VERSION"), "\0"));
    h.update(format!("outputs {OUTPUTS}\0"));
    h.update(serde_json::to_vec(&keyed_plan(plan))?);
    for f in fetched {
        h.update(format!("{}\0{}\0", f.name, f.record.sha256));
    }
    h.update(epoch.to_le_bytes());
    for (path, mode, payload) in overlay_entries(plan)? {
        h.update(format!("{path}\0{mode:o}\0"));
        if let Some(p) = payload {
            h.update(p);
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// The version of what `images/<node>/` holds: raised when a build writes other files (2: the
/// SBOM and the provenance), so images from before are rebuilt, not taken as up to date.
const OUTPUTS: u32 = 2;

/// The plan as the build key sees it: without the recipe's path and hash.
fn keyed_plan(plan: &Plan) -> Plan {
    let mut p = plan.clone();
    p.recipe = String::new();
    p.recipe_sha256 = String::new();
    p
}

/// One entry of an overlay: path, mode, and the content (a file's bytes, a symlink's target;
/// None for a directory).
type OverlayEntry = (String, u32, Option<Vec<u8>>);

/// Every entry of the node's overlays, in a fixed order.
fn overlay_entries(plan: &Plan) -> Result<Vec<OverlayEntry>> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for dir in &plan.overlays {
        let mut stack = vec![dir.clone()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = fs::read_dir(&d) else { continue };
            let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
            entries.sort();
            for e in entries {
                let m = fs::symlink_metadata(&e)?;
                let payload = if m.is_dir() {
                    stack.push(e.clone());
                    None
                } else if m.file_type().is_symlink() {
                    Some(fs::read_link(&e)?.as_os_str().as_encoded_bytes().to_vec())
                } else {
                    Some(fs::read(&e).with_context(|| format!("reading {}", e.display()))?)
                };
                out.push((e.display().to_string(), m.mode(), payload));
            }
        }
    }
    Ok(out)
}

/// What the build key is made of, item by item (recorded in the manifest as `build_inputs`), so
/// a rebuild can say which part changed: `imgbuild`, `epoch`, `plan.<field path>` (the value's
/// JSON), `input.<name>` (its SHA-256), `overlay:<path>` (SHA-256 of mode and content).
pub fn key_parts(plan: &Plan, fetched: &[Fetched], epoch: u64) -> Result<BTreeMap<String, String>> {
    use sha2::{Digest, Sha256};
    fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    flatten(&format!("{prefix}.{k}"), x, out);
                }
            }
            serde_json::Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    flatten(&format!("{prefix}[{i}]"), x, out);
                }
            }
            leaf => {
                out.insert(prefix.to_string(), leaf.to_string());
            }
        }
    }
    let mut out = BTreeMap::from([
        (
            "imgbuild".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
        ("epoch".to_string(), epoch.to_string()),
    ]);
    flatten("plan", &serde_json::to_value(keyed_plan(plan))?, &mut out);
    for f in fetched {
        out.insert(format!("input.{}", f.name), f.record.sha256.clone());
    }
    for (path, mode, payload) in overlay_entries(plan)? {
        let mut h = Sha256::new();
        h.update(format!("{mode:o}\0"));
        if let Some(p) = payload {
            h.update(p);
        }
        out.insert(format!("overlay:{path}"), hex::encode(h.finalize()));
    }
    Ok(out)
}

/// Why `images/<node>/` does not match `parts`: the items that changed since its build, or why
/// there is nothing to compare with.
pub fn why_rebuild(images: &Path, node: &str, parts: &BTreeMap<String, String>) -> String {
    let dir = images.join(node);
    let Some(m) = fs::read(dir.join("manifest.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    else {
        return format!("no images in {} yet", dir.display());
    };
    let Some(old) = m["build_inputs"].as_object() else {
        return "the previous images record no build inputs (built by an older imgbuild)".into();
    };
    let short = |v: &str| {
        if v.chars().count() > 40 {
            format!("{}…", v.chars().take(40).collect::<String>())
        } else {
            v.to_string()
        }
    };
    let mut changes = Vec::new();
    for (k, new) in parts {
        match old.get(k).and_then(|v| v.as_str()) {
            Some(o) if o == new => {}
            Some(o) if k.starts_with("input.") || k.starts_with("overlay:") => {
                changes.push(format!(
                    "{k} changed (sha256 {} -> {})",
                    &o[..12.min(o.len())],
                    &new[..12.min(new.len())]
                ))
            }
            Some(o) => changes.push(format!("{k}: {} -> {}", short(o), short(new))),
            None => changes.push(format!("{k} added ({})", short(new))),
        }
    }
    for k in old.keys().filter(|k| !parts.contains_key(*k)) {
        changes.push(format!("{k} removed"));
    }
    if changes.is_empty() {
        return "its inputs are unchanged but the previous images are incomplete".into();
    }
    let n = changes.len();
    if n > 5 {
        changes.truncate(5);
        changes.push(format!("and {} more", n - 5));
    }
    changes.join("; ")
}

/// The outputs of `images/<node>/` when it was built with `key` and is still complete.
pub fn up_to_date(images: &Path, node: &str, key: &str) -> Option<Vec<Output>> {
    let dir = images.join(node);
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("manifest.json")).ok()?).ok()?;
    if m["build_key"] != key || !dir.join("SHA256SUMS").is_file() {
        return None;
    }
    let outputs: Vec<Output> = serde_json::from_value(m["outputs"].clone()).ok()?;
    outputs
        .iter()
        .all(|o| fs::metadata(dir.join(&o.file)).is_ok_and(|md| md.len() == o.size))
        .then_some(outputs)
}

/// Everything after the node's tree: emit `images/<node>/` for `plan`.
#[allow(clippy::too_many_arguments)]
pub fn build(
    plan: &Plan,
    tree: &Path,
    fetched: &[Fetched],
    images: &Path,
    build_dir: &Path,
    epoch: u64,
    key: &str,
    stages: &mut Stages,
    common: Option<&Path>,
) -> Result<Built> {
    let node = plan.node.name.as_str();
    let formats = &plan.disk.formats;
    let want = |f: &str| formats.iter().any(|x| x == f);
    fs::create_dir_all(images).with_context(|| format!("creating {}", images.display()))?;
    crate::rootfs::remove_stale(images, &format!(".{node}.tmp-"))?;
    let dest = images.join(node);
    let staging = images.join(format!(".{node}.tmp-{}", std::process::id()));
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    fs::create_dir(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let result = emit(
        plan, tree, fetched, &staging, build_dir, epoch, key, stages, &want, common,
    );
    let outputs = match result {
        Ok(o) => o,
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            return Err(e.context(format!(
                "building images for {node}; {} is unchanged",
                dest.display()
            )));
        }
    };
    stages.run("publish", || {
        crate::failpoint::hit("publish");
        publish(&staging, &dest)?;
        Ok(((), format!("{} ({} files)", dest.display(), outputs.len())))
    })?;
    Ok(Built {
        node: node.to_string(),
        dir: dest,
        outputs,
        stages: stages.times.clone(),
    })
}

#[allow(clippy::too_many_arguments)]
fn emit(
    plan: &Plan,
    tree: &Path,
    fetched: &[Fetched],
    out: &Path,
    build_dir: &Path,
    epoch: u64,
    key: &str,
    stages: &mut Stages,
    want: &dyn Fn(&str) -> bool,
    common: Option<&Path>,
) -> Result<Vec<Output>> {
    let node = plan.node.name.as_str();
    let ids = DiskIds::for_node(plan);
    let scratch = build_dir.join("nodes").join(format!("{node}.disk"));
    fs::create_dir_all(&scratch)?;
    let root = Root::open(tree)?;
    let root_uuid = ids.root_fs.0.to_ascii_lowercase();

    let (esp, layout) = stages.run("esp", || {
        let esp = boot::esp(&root, &root_uuid)
            .with_context(|| format!("the boot chain of base {}", plan.base_description()))?;
        write_tree(&scratch.join("esp"), &esp.files, epoch)?;
        crate::failpoint::hit("esp");
        let (bytes, inodes) = tree_usage(tree)?;
        let layout = layout(plan.disk.size_bytes, esp.bytes(), bytes, inodes)?;
        let note = format!(
            "{} kernel {}, {} on the ESP; root tree {}",
            esp.loader,
            esp.kernel_version,
            human(esp.bytes()),
            human(bytes)
        );
        Ok(((esp, layout), note))
    })?;

    let raw = out.join(raw_name(node));
    stages.run("raw", || {
        let how = write_raw(
            &raw,
            &layout,
            &ids,
            tree,
            common,
            &scratch.join("esp"),
            epoch,
        )?;
        Ok((
            (),
            format!(
                "{} GPT: ESP {} + root ext4 {} (UUID {root_uuid}; {how})",
                human(layout.size),
                human(layout.esp.1),
                human(layout.root.1)
            ),
        ))
    })?;

    // Every output file's digest, hashed in the background from the moment the file is complete.
    let mut hashing: Vec<(String, Hashing)> =
        vec![(raw_name(node), Hashing::start(out, &raw_name(node)))];
    let mut names = vec![];
    stages.run("bmap", || {
        let xml = crate::bmap::create(&raw)?;
        crate::failpoint::hit("bmap");
        let name = bmap_name(node);
        fs::write(out.join(&name), &xml)?;
        let mapped = crate::bmap::mapped_ranges(&File::open(&raw)?)?
            .iter()
            .map(|(a, b)| (b - a + 1) * 4096)
            .sum::<u64>();
        names.push(name);
        Ok((
            (),
            format!("{} of {} mapped", human(mapped), human(layout.size)),
        ))
    })?;

    if want("qcow2") {
        stages.run("qcow2", || {
            let name = format!("{node}.qcow2");
            Cmd::new("qemu-img")
                .args([
                    "convert",
                    "-q",
                    "-f",
                    "raw",
                    "-O",
                    "qcow2",
                    "-o",
                    "compat=1.1",
                ])
                .arg(&raw)
                .arg(out.join(&name))
                .run()
                .context("converting to qcow2")?;
            crate::failpoint::hit("qcow2");
            let size = fs::metadata(out.join(&name))?.len();
            hashing.push((name.clone(), Hashing::start(out, &name)));
            Ok(((), format!("{name} {}", human(size))))
        })?;
    }

    if want("seed-iso") || want("seed-fat") {
        stages.run("seed", || {
            let files: Vec<(PathBuf, Vec<u8>)> = crate::render::seed(plan)
                .into_iter()
                .map(|(n, c)| (PathBuf::from(n), c.into_bytes()))
                .collect();
            let dir = scratch.join("seed");
            write_tree(&dir, &files, epoch)?;
            let mut made = vec![];
            if want("seed-iso") {
                let name = format!("{node}-seed.iso");
                Cmd::new("xorriso")
                    .args(["-as", "mkisofs", "-quiet", "-V", "cidata", "-J", "-R", "-o"])
                    .arg(out.join(&name))
                    .arg(&dir)
                    .env("SOURCE_DATE_EPOCH", epoch.to_string())
                    .run()
                    .context("writing the ISO seed")?;
                made.push(name);
            }
            crate::failpoint::hit("seed");
            if want("seed-fat") {
                let name = format!("{node}-seed.img");
                let p = out.join(&name);
                File::create(&p)?.set_len(4 * MIB)?;
                fat::make(
                    &p,
                    0,
                    4 * MIB,
                    &dir,
                    &fat::Volume {
                        label: "CIDATA",
                        serial: ids.seed_serial,
                        epoch,
                        bits: 16,
                    },
                )?;
                made.push(name);
            }
            let note = format!("cidata: {}", made.join(", "));
            names.extend(made);
            Ok(((), note))
        })?;
    }

    if want("rootfs-tar") {
        stages.run("tar", || {
            let n = crate::rootfs::write_tar(tree, &out.join("rootfs.tar"), epoch)?;
            names.push("rootfs.tar".into());
            Ok(((), format!("rootfs.tar: {n} entries")))
        })?;
    }

    stages.run("manifest", || {
        let mut outputs = names
            .iter()
            .map(|n| output(out, n))
            .collect::<Result<Vec<_>>>()?;
        for (n, h) in hashing {
            outputs.push(h.finish(out, &n)?);
        }
        // The SBOM: the base's dpkg packages and every downloaded input.
        // The base's installed packages (none without a dpkg database), for the SBOM and the
        // manifest's base_packages.
        let status = root
            .read_file(Path::new("var/lib/dpkg/status"))?
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let debs = crate::sbom::dpkg_packages(&status);
        let inputs: Vec<crate::sbom::Input> = fetched
            .iter()
            .map(|f| crate::sbom::Input {
                name: f.name.clone(),
                version: f.version.clone(),
                url: f.record.url.clone(),
                sha256: f.record.sha256.clone(),
                sha512: f.record.sha512.clone(),
                signed_by: f.record.fingerprint.clone(),
            })
            .collect();
        let distro = crate::boot::vendor(&root)?;
        let lock = crate::lock::path_for(Path::new(&plan.recipe));
        let recipe_name = Path::new(&plan.recipe)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let img = crate::sbom::Image {
            node,
            build_key: key,
            epoch,
            distro: &distro,
            recipe: &recipe_name,
            recipe_sha256: &plan.recipe_sha256,
            lock_sha256: lock
                .is_file()
                .then(|| crate::checksum::sha256_file(&lock))
                .transpose()?,
        };
        let sbom_name = crate::sbom::sbom_name(node);
        let sbom = crate::sbom::spdx(&img, &debs, &inputs);
        fs::write(
            out.join(&sbom_name),
            serde_json::to_string_pretty(&sbom)? + "\n",
        )?;
        outputs.push(output(out, &sbom_name)?);
        outputs.sort_by(|a, b| a.file.cmp(&b.file));
        let m = Manifest {
            manifest_version: 1,
            imgbuild: env!("CARGO_PKG_VERSION"),
            build_key: key,
            node,
            hostname: &plan.node.hostname,
            ip: plan.node.ip.to_string(),
            recipe_sha256: &plan.recipe_sha256,
            source_date_epoch: epoch,
            components: plan
                .artifacts
                .iter()
                .map(|a| (a.name.as_str(), a.version.as_str()))
                .collect(),
            inputs: fetched
                .iter()
                .map(|f| ManifestInput {
                    name: &f.name,
                    version: &f.version,
                    url: &f.record.url,
                    size: f.record.size,
                    sha256: &f.record.sha256,
                    sha512: &f.record.sha512,
                    signed_by: f.record.fingerprint.as_deref(),
                })
                .collect(),
            boot: BTreeMap::from([
                ("loader", esp.loader.to_string()),
                ("kernel", esp.kernel_version.clone()),
                ("cmdline", esp.cmdline.clone()),
            ]),
            disk_size: layout.size,
            disk_guid: ids.disk.0.clone(),
            partitions: vec![
                ManifestPartition {
                    name: "ESP",
                    type_guid: gpt::ESP,
                    partition_guid: ids.esp_partition.0.clone(),
                    filesystem: "vfat",
                    filesystem_id: fat::serial_text(ids.esp_serial),
                    first_lba: layout.esp.0 / SECTOR,
                    last_lba: (layout.esp.0 + layout.esp.1) / SECTOR - 1,
                },
                ManifestPartition {
                    name: "root",
                    type_guid: gpt::LINUX_ROOT_X86_64,
                    partition_guid: ids.root_partition.0.clone(),
                    filesystem: "ext4",
                    filesystem_id: root_uuid.clone(),
                    first_lba: layout.root.0 / SECTOR,
                    last_lba: (layout.root.0 + layout.root.1) / SECTOR - 1,
                },
            ],
            base_packages: debs
                .iter()
                .map(|d| (d.name.clone(), d.version.clone()))
                .collect(),
            build_inputs: key_parts(plan, fetched, epoch)?,
            outputs: outputs.clone(),
        };
        let mut json = serde_json::to_vec_pretty(&m)?;
        json.push(b'\n');
        fs::write(out.join("manifest.json"), json)?;
        crate::failpoint::hit("manifest");
        outputs.push(output(out, "manifest.json")?);
        // The provenance: every output so far is a subject.
        let subjects: Vec<(String, String)> = outputs
            .iter()
            .map(|o| (o.file.clone(), o.sha256.clone()))
            .collect();
        let prov_name = crate::sbom::provenance_name(node);
        let prov = crate::sbom::provenance(&img, &inputs, &subjects);
        fs::write(
            out.join(&prov_name),
            serde_json::to_string_pretty(&prov)? + "\n",
        )?;
        outputs.push(output(out, &prov_name)?);
        outputs.sort_by(|a, b| a.file.cmp(&b.file));
        let sums: String = outputs
            .iter()
            .map(|o| format!("{}  {}\n", o.sha256, o.file))
            .collect();
        fs::write(out.join("SHA256SUMS"), sums)?;
        let note = format!("manifest.json, SHA256SUMS ({} files)", outputs.len());
        Ok((outputs, note))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rebuild_names_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let parts = |heap: &str| {
            BTreeMap::from([
                ("imgbuild".to_string(), "0.1.0".to_string()),
                ("plan.kafka.heap_mb".to_string(), heap.to_string()),
                ("input.kafka".to_string(), "ab".repeat(32)),
            ])
        };
        assert!(why_rebuild(dir.path(), "node2", &parts("1024")).starts_with("no images in"));
        std::fs::create_dir(dir.path().join("node2")).unwrap();
        let m = serde_json::json!({"build_inputs": parts("1024")});
        std::fs::write(dir.path().join("node2/manifest.json"), m.to_string()).unwrap();
        assert_eq!(
            why_rebuild(dir.path(), "node2", &parts("1536")),
            "plan.kafka.heap_mb: 1024 -> 1536"
        );
        let mut p = parts("1024");
        p.insert("input.kafka".into(), "cd".repeat(32));
        p.insert("overlay:overlays/node2/etc/motd".into(), "ef".repeat(32));
        assert_eq!(
            why_rebuild(dir.path(), "node2", &p),
            "input.kafka changed (sha256 abababababab -> cdcdcdcdcdcd); overlay:overlays/node2/etc/motd added (efefefefefefefefefefefefefefefefefefefef…)"
        );
        assert!(why_rebuild(dir.path(), "node2", &parts("1024")).contains("incomplete"));
    }

    #[test]
    fn layout_fills_the_disk_on_mib_boundaries() {
        let l = layout(Some(4 << 30), 30 * MIB, 400 * MIB, 15_000).unwrap();
        assert_eq!(l.esp, (MIB, 256 * MIB));
        assert_eq!(l.root.0, 257 * MIB);
        // The root ends on a MiB boundary before the 33-sector backup GPT.
        assert_eq!(l.root.0 + l.root.1, (4 << 30) - MIB);
        assert!(l.root.1.is_multiple_of(MIB));
    }

    #[test]
    fn too_small_a_disk_names_the_minimum() {
        let e = layout(Some(1 << 30), 30 * MIB, 900 * MIB, 15_000)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("disk.size 1.0 GiB is too small") && e.contains("needs at least"),
            "{e}"
        );
    }

    #[test]
    fn an_automatic_size_is_the_content_plus_headroom() {
        let tree = 1500 * MIB;
        let l = layout(None, 60 * MIB, tree, 40_000).unwrap();
        assert!(l.size.is_multiple_of(AUTO_ROUND), "{}", l.size);
        // The root holds the tree with room to spare, and the disk is no bigger than that needs:
        // taking away the headroom and one rounding step leaves too small a disk.
        assert!(l.root.1 >= tree + tree / 4 + AUTO_HEADROOM, "{l:?}");
        assert!(l.size < tree * 2 + AUTO_HEADROOM + 2 * AUTO_ROUND, "{l:?}");
        assert!(
            layout(
                Some(l.size - AUTO_HEADROOM - AUTO_ROUND),
                60 * MIB,
                tree,
                40_000
            )
            .is_err()
        );
    }
}
