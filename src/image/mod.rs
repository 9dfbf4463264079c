//! Emitting a node's images from its tree: the GPT/UEFI raw disk (ESP + root ext4 written in
//! place), qcow2, NoCloud seed volumes, the rootfs tarball, a bmap, manifest.json and SHA256SUMS.
//!
//! Everything is written into `images/.<node>.tmp-<pid>/` and swapped with `images/<node>/` in
//! one `renameat2(RENAME_EXCHANGE)` once complete and synced: a failed or killed build leaves
//! the previous images as they were (a later build removes the stale temporary directory).

pub mod bmap;
pub mod boot;
pub mod dep5;
pub mod disk;
pub mod fat;
pub mod gpt;
pub mod key;
pub mod manifest;
pub mod sbom;
pub mod verify;

pub use crate::util::tools::{DEBUGFS, QEMU_IMG, XORRISO};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;

use crate::fetch::Fetched;
use crate::image::disk::FsIdentity;
use crate::image::gpt::{Gpt, Partition};
use crate::plan::ids::DiskIds;
use crate::plan::{DiskFormat, Plan};
use crate::rootfs::confined::Root;
use crate::util::fmt::human;
use crate::util::run::Cmd;
use crate::util::tools::Tool;

pub use key::{build_key, key_parts, up_to_date, why_rebuild};
pub use manifest::ManifestRecord;
use manifest::{Manifest, ManifestInput, ManifestPartition};

const MIB: u64 = 1 << 20;
const SECTOR: u64 = 512;

/// Every host tool building these formats needs (checked before any work starts).
pub fn tools(formats: &[DiskFormat]) -> Vec<Tool> {
    let mut t = vec![
        crate::util::tools::CP,
        disk::MKFS_EXT4,
        DEBUGFS,
        disk::TUNE2FS,
        disk::E2FSCK,
        fat::MKFS_FAT,
        fat::MCOPY,
    ];
    if formats.contains(&DiskFormat::Qcow2) {
        t.push(QEMU_IMG);
    }
    if formats.contains(&DiskFormat::SeedIso) {
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

pub use crate::util::stage::Stages;

/// Bytes a tree needs in ext4 (4 KiB blocks, hard links once) and its inode count.
fn tree_usage(tree: &Path) -> Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let (mut bytes, mut inodes) = (0u64, 0u64);
    crate::util::fs::walk(tree, |_, m| {
        if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
            return Ok(false);
        }
        inodes += 1;
        if m.is_dir() {
            bytes += 4096;
        } else if m.is_file() {
            bytes += m.len().div_ceil(4096) * 4096;
        } else if m.file_type().is_symlink() && m.len() >= 60 {
            bytes += 4096;
        }
        Ok(true)
    })?;
    Ok((bytes, inodes))
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
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
// Long on purpose: the raw disk in order (sized file, root filesystem, ESP, GPT) over one open
// file and one layout; each step is a call or two.
#[allow(clippy::too_many_arguments)]
fn write_raw(
    raw: &Path,
    l: &Layout,
    ids: &DiskIds,
    root_uuid: &crate::image::gpt::Guid,
    tree: &Path,
    common: Option<&Path>,
    esp: &Path,
    epoch: u64,
) -> Result<String> {
    let f = File::create(raw).with_context(|| format!("creating {}", raw.display()))?;
    f.set_len(l.size)?;
    let id = FsIdentity {
        label: "root",
        uuid: root_uuid,
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
            let name = format!("root-v2-{}-{epoch}.ext4", l.root.1);
            let derive = |what: &str| {
                crate::image::gpt::Guid::derived(&format!(
                    "imgbuild shared root\0{key}\0{name}\0{what}"
                ))
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
    crate::util::failpoint::hit("raw");
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
    let part =
        |name: &str, type_guid: &str, guid: &crate::image::gpt::Guid, (start, len): (u64, u64)| {
            Partition {
                type_guid: crate::image::gpt::Guid(type_guid.to_string()),
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
            part(
                crate::layout::ROOT_A_LABEL,
                gpt::LINUX_ROOT_X86_64,
                &ids.root_partition,
                l.root,
            ),
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
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch);
    crate::util::fs::walk(dir, |rel, _| {
        File::open(dir.join(rel))?
            .set_times(fs::FileTimes::new().set_accessed(t).set_modified(t))?;
        Ok(true)
    })
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
        Hashing(std::thread::spawn(move || {
            crate::fetch::checksum::sha256_file(&p)
        }))
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

/// What a node's image stages read: the node, its tree and inputs, and where to work.
pub struct BuildContext<'a> {
    pub plan: &'a Plan,
    /// The node's tree (`nodes/<node>/rootfs`).
    pub tree: &'a Path,
    /// The shared tree the node's was hard-linked from: its filesystem is made once and the
    /// node's differences applied to a copy (see `disk::delta_script`).
    pub common: Option<&'a Path>,
    pub fetched: &'a [Fetched],
    pub build_dir: &'a Path,
    /// SOURCE_DATE_EPOCH: every timestamp in every output.
    pub epoch: u64,
    /// The build key (see [`key_parts`]).
    pub key: &'a str,
}

/// Everything after the node's tree: emit `images/<node>/` in a staging directory, stage by
/// stage, and swap it into place when complete; on any failure the previous images stay.
pub fn build(cx: &BuildContext, images: &Path, stages: &mut Stages) -> Result<Built> {
    let node = cx.plan.node.name.as_str();
    fs::create_dir_all(images).with_context(|| format!("creating {}", images.display()))?;
    let dest = images.join(node);
    let staging = crate::util::fs::Staging::dir(images, &format!(".{node}.tmp-"))?;
    let outputs = emit(cx, staging.path(), stages).with_context(|| {
        format!(
            "building images for {node}; {} is unchanged",
            dest.display()
        )
    })?;
    stages.run("publish", || {
        crate::util::failpoint::hit("publish");
        publish(staging.path(), &dest)?;
        Ok(((), format!("{} ({} files)", dest.display(), outputs.len())))
    })?;
    Ok(Built {
        node: node.to_string(),
        dir: dest,
        outputs,
        stages: stages.times.clone(),
    })
}

/// The image stages, in order. Each returns its result and a note for its progress line.
fn emit(cx: &BuildContext, out: &Path, stages: &mut Stages) -> Result<Vec<Output>> {
    let want = |f| cx.plan.disk.wants(f);
    let mut w = Emit::new(cx, out)?;
    let (esp, layout) = stages.run("esp", || w.esp())?;
    stages.run("raw", || w.raw(&layout))?;
    stages.run("bmap", || w.bmap(&layout))?;
    if want(DiskFormat::Qcow2) {
        stages.run("qcow2", || w.qcow2())?;
    }
    if want(DiskFormat::SeedIso) || want(DiskFormat::SeedFat) {
        stages.run("seed", || {
            w.seed(want(DiskFormat::SeedIso), want(DiskFormat::SeedFat))
        })?;
    }
    if want(DiskFormat::RootfsTar) {
        stages.run("tar", || w.tar())?;
    }
    stages.run("manifest", || w.manifest(&esp, &layout))
}

/// What a root slot holds (`EFI/imgbuild/slot-X.json` on the ESP): the image's build key and
/// inputs (what `imgbuild update` compares with the image it brings) and its root filesystem.
#[derive(Serialize, serde::Deserialize, Debug, Clone)]
pub struct SlotRecord {
    pub node: String,
    pub build_key: String,
    pub root_uuid: String,
    pub kernel: String,
    pub build_inputs: BTreeMap<String, String>,
}

/// The state the stages share: where outputs go and the ones made so far.
struct Emit<'a> {
    cx: &'a BuildContext<'a>,
    out: &'a Path,
    /// `nodes/<node>.disk`: the ESP and seed trees before they become volumes.
    scratch: PathBuf,
    root: Root,
    root_uuid: String,
    /// Outputs hashed when the manifest is written.
    names: Vec<String>,
    /// Outputs being hashed in the background from the moment each was complete.
    hashing: Vec<(String, Hashing)>,
}

impl<'a> Emit<'a> {
    fn new(cx: &'a BuildContext<'a>, out: &'a Path) -> Result<Emit<'a>> {
        let scratch = cx
            .build_dir
            .join("nodes")
            .join(format!("{}.disk", cx.plan.node.name));
        fs::create_dir_all(&scratch)?;
        Ok(Emit {
            cx,
            out,
            scratch,
            root: Root::open(cx.tree)?,
            root_uuid: cx.plan.disk_ids.root_fs_of(cx.key).0.to_ascii_lowercase(),
            names: vec![],
            hashing: vec![],
        })
    }

    fn node(&self) -> &'a str {
        &self.cx.plan.node.name
    }

    /// The boot chain onto the ESP tree, and the partition layout that fits it and the root.
    fn esp(&mut self) -> Result<((boot::Esp, Layout), String)> {
        let (plan, epoch) = (self.cx.plan, self.cx.epoch);
        let mut esp = boot::esp(&self.root, &self.root_uuid)
            .with_context(|| format!("the boot chain of base {}", plan.base_description()))?;
        if esp.loader == "shim+grub" {
            // What root slot A holds, for `imgbuild update` to compare with.
            let record = SlotRecord {
                node: plan.node.name.clone(),
                build_key: self.cx.key.to_string(),
                root_uuid: self.root_uuid.clone(),
                kernel: esp.kernel_version.clone(),
                build_inputs: key_parts(plan, self.cx.fetched, epoch)?,
            };
            let mut json = serde_json::to_vec_pretty(&record)?;
            json.push(b'\n');
            esp.files.push((boot::slot_record_path('a').into(), json));
        }
        write_tree(&self.scratch.join("esp"), &esp.files, epoch)?;
        crate::util::failpoint::hit("esp");
        let (bytes, inodes) = tree_usage(self.cx.tree)?;
        let layout = layout(plan.disk.size_bytes, esp.bytes(), bytes, inodes)?;
        let note = format!(
            "{} kernel {}, {} on the ESP; root tree {}",
            esp.loader,
            esp.kernel_version,
            human(esp.bytes()),
            human(bytes)
        );
        Ok(((esp, layout), note))
    }

    fn raw(&mut self, layout: &Layout) -> Result<((), String)> {
        let raw = self.out.join(raw_name(self.node()));
        let how = write_raw(
            &raw,
            layout,
            &self.cx.plan.disk_ids,
            &self.cx.plan.disk_ids.root_fs_of(self.cx.key),
            self.cx.tree,
            self.cx.common,
            &self.scratch.join("esp"),
            self.cx.epoch,
        )?;
        let name = raw_name(self.node());
        self.hashing
            .push((name.clone(), Hashing::start(self.out, &name)));
        Ok((
            (),
            format!(
                "{} GPT: ESP {} + root ext4 {} (UUID {}; {how})",
                human(layout.size),
                human(layout.esp.1),
                human(layout.root.1),
                self.root_uuid
            ),
        ))
    }

    fn bmap(&mut self, layout: &Layout) -> Result<((), String)> {
        let raw = self.out.join(raw_name(self.node()));
        let xml = crate::image::bmap::create(&raw)?;
        crate::util::failpoint::hit("bmap");
        let name = bmap_name(self.node());
        fs::write(self.out.join(&name), &xml)?;
        let mapped = crate::image::bmap::mapped_ranges(&File::open(&raw)?)?
            .iter()
            .map(|(a, b)| (b - a + 1) * 4096)
            .sum::<u64>();
        self.names.push(name);
        Ok((
            (),
            format!("{} of {} mapped", human(mapped), human(layout.size)),
        ))
    }

    fn qcow2(&mut self) -> Result<((), String)> {
        let name = format!("{}.qcow2", self.node());
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
            .arg(self.out.join(raw_name(self.node())))
            .arg(self.out.join(&name))
            .run()
            .context("converting to qcow2")?;
        crate::util::failpoint::hit("qcow2");
        let size = fs::metadata(self.out.join(&name))?.len();
        self.hashing
            .push((name.clone(), Hashing::start(self.out, &name)));
        Ok(((), format!("{name} {}", human(size))))
    }

    /// The NoCloud seed as an ISO 9660 and/or a FAT volume labelled cidata.
    fn seed(&mut self, iso: bool, fat_volume: bool) -> Result<((), String)> {
        let (node, epoch) = (self.node(), self.cx.epoch);
        let files: Vec<(PathBuf, Vec<u8>)> = crate::rootfs::render::seed(self.cx.plan)
            .into_iter()
            .map(|(n, c)| (PathBuf::from(n), c.into_bytes()))
            .collect();
        let dir = self.scratch.join("seed");
        write_tree(&dir, &files, epoch)?;
        let mut made = vec![];
        if iso {
            let name = format!("{node}-seed.iso");
            Cmd::new("xorriso")
                .args(["-as", "mkisofs", "-quiet", "-V", "cidata", "-J", "-R", "-o"])
                .arg(self.out.join(&name))
                .arg(&dir)
                .env("SOURCE_DATE_EPOCH", epoch.to_string())
                .run()
                .context("writing the ISO seed")?;
            made.push(name);
        }
        crate::util::failpoint::hit("seed");
        if fat_volume {
            let name = format!("{node}-seed.img");
            let p = self.out.join(&name);
            File::create(&p)?.set_len(4 * MIB)?;
            fat::make(
                &p,
                0,
                4 * MIB,
                &dir,
                &fat::Volume {
                    label: "CIDATA",
                    serial: self.cx.plan.disk_ids.seed_serial,
                    epoch,
                    bits: 16,
                },
            )?;
            made.push(name);
        }
        let note = format!("cidata: {}", made.join(", "));
        self.names.extend(made);
        Ok(((), note))
    }

    fn tar(&mut self) -> Result<((), String)> {
        let n =
            crate::rootfs::write_tar(self.cx.tree, &self.out.join("rootfs.tar"), self.cx.epoch)?;
        self.names.push("rootfs.tar".into());
        Ok(((), format!("rootfs.tar: {n} entries")))
    }

    /// Every output's digest, then the SBOM, manifest.json, the provenance (whose subjects are
    /// all of those) and SHA256SUMS, in that order.
    fn manifest(&mut self, esp: &boot::Esp, layout: &Layout) -> Result<(Vec<Output>, String)> {
        let (cx, out, node) = (self.cx, self.out, self.node());
        let mut outputs = self
            .names
            .iter()
            .map(|n| output(out, n))
            .collect::<Result<Vec<_>>>()?;
        for (n, h) in std::mem::take(&mut self.hashing) {
            outputs.push(h.finish(out, &n)?);
        }
        // The base's installed packages (none without a dpkg database), for the SBOM and the
        // manifest's base_packages.
        let status = self
            .root
            .read_file(Path::new("var/lib/dpkg/status"))?
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let debs = crate::image::sbom::dpkg_packages(&status);
        // Each package's licenses as its DEP-5 copyright file declares them (none when free text).
        let mut licenses = BTreeMap::new();
        for d in &debs {
            let f = Path::new("usr/share/doc").join(&d.name).join("copyright");
            if let Some(text) = self.root.read_file(&f)?
                && let Some(l) = crate::image::dep5::declared(&String::from_utf8_lossy(&text))
            {
                licenses.insert(d.name.clone(), l);
            }
        }
        let inputs = sbom_inputs(cx.fetched, cx.plan);
        let distro = crate::image::boot::vendor(&self.root)?;
        let recipe_name = Path::new(&cx.plan.recipe)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let lock = crate::fetch::lock::path_for(Path::new(&cx.plan.recipe));
        let img = crate::image::sbom::Image {
            node,
            build_key: cx.key,
            epoch: cx.epoch,
            distro: &distro,
            recipe: &recipe_name,
            recipe_sha256: &cx.plan.recipe_sha256,
            cluster: &cx.plan.cluster,
            lock_sha256: lock
                .is_file()
                .then(|| crate::fetch::checksum::sha256_file(&lock))
                .transpose()?,
        };
        let sbom_name = crate::image::sbom::sbom_name(node);
        let sbom = crate::image::sbom::spdx(&img, &debs, &licenses, &inputs);
        fs::write(
            out.join(&sbom_name),
            serde_json::to_string_pretty(&sbom)? + "\n",
        )?;
        outputs.push(output(out, &sbom_name)?);
        outputs.sort_by(|a, b| a.file.cmp(&b.file));
        let base_packages = debs
            .iter()
            .map(|d| (d.name.clone(), d.version.clone()))
            .collect();
        let m = self.manifest_doc(esp, layout, base_packages, outputs.clone())?;
        let mut json = serde_json::to_vec_pretty(&m)?;
        json.push(b'\n');
        fs::write(out.join("manifest.json"), json)?;
        crate::util::failpoint::hit("manifest");
        outputs.push(output(out, "manifest.json")?);
        // The provenance: every output so far is a subject.
        let subjects: Vec<(String, String)> = outputs
            .iter()
            .map(|o| (o.file.clone(), o.sha256.clone()))
            .collect();
        let prov_name = crate::image::sbom::provenance_name(node);
        let prov = crate::image::sbom::provenance(&img, &inputs, &subjects);
        fs::write(
            out.join(&prov_name),
            serde_json::to_string_pretty(&prov)? + "\n",
        )?;
        outputs.push(output(out, &prov_name)?);
        if let Some(signer) = &cx.plan.provenance_signer {
            let sig = crate::image::sbom::sign_provenance(out, node, signer)?;
            outputs.push(output(out, &sig)?);
        }
        outputs.sort_by(|a, b| a.file.cmp(&b.file));
        let sums: String = outputs
            .iter()
            .map(|o| format!("{}  {}\n", o.sha256, o.file))
            .collect();
        fs::write(out.join("SHA256SUMS"), sums)?;
        let note = format!("manifest.json, SHA256SUMS ({} files)", outputs.len());
        Ok((outputs, note))
    }

    fn manifest_doc(
        &self,
        esp: &boot::Esp,
        layout: &Layout,
        base_packages: BTreeMap<String, String>,
        outputs: Vec<Output>,
    ) -> Result<Manifest<'a>> {
        let (cx, plan) = (self.cx, self.cx.plan);
        let ids = &plan.disk_ids;
        Ok(Manifest {
            manifest_version: 1,
            imgbuild: env!("CARGO_PKG_VERSION"),
            build_key: cx.key,
            node: &plan.node.name,
            hostname: &plan.node.hostname,
            ip: plan.node.ip.to_string(),
            recipe_sha256: &plan.recipe_sha256,
            source_date_epoch: cx.epoch,
            components: plan
                .artifacts
                .iter()
                .map(|a| (a.name.name(), a.version.as_str()))
                .collect(),
            inputs: cx
                .fetched
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
                    filesystem_id: crate::util::fmt::serial_text(ids.esp_serial),
                    first_lba: layout.esp.0 / SECTOR,
                    last_lba: (layout.esp.0 + layout.esp.1) / SECTOR - 1,
                },
                ManifestPartition {
                    name: "root",
                    type_guid: gpt::LINUX_ROOT_X86_64,
                    partition_guid: ids.root_partition.0.clone(),
                    filesystem: "ext4",
                    filesystem_id: self.root_uuid.clone(),
                    first_lba: layout.root.0 / SECTOR,
                    last_lba: (layout.root.0 + layout.root.1) / SECTOR - 1,
                },
            ],
            base_packages,
            build_inputs: key_parts(plan, cx.fetched, cx.epoch)?,
            outputs,
        })
    }
}

fn sbom_inputs(fetched: &[Fetched], plan: &Plan) -> Vec<crate::image::sbom::Input> {
    fetched
        .iter()
        .map(|f| {
            let a = plan.artifacts.iter().find(|a| a.name.name() == f.name);
            crate::image::sbom::Input {
                name: f.name.clone(),
                version: f.version.clone(),
                url: f.record.url.clone(),
                sha256: f.record.sha256.clone(),
                sha512: f.record.sha512.clone(),
                signed_by: f.record.fingerprint.clone(),
                supplier: a.and_then(|a| a.supplier.clone()),
                license: a.and_then(|a| a.license.clone()),
            }
        })
        .collect()
}

/// Every tool the build of `plans` will run, checked before any work starts.
pub fn build_tools(plans: &[&Plan]) -> Vec<crate::util::tools::Tool> {
    let mut formats: Vec<crate::plan::DiskFormat> =
        plans.iter().flat_map(|p| p.disk.formats.clone()).collect();
    formats.dedup();
    let mut tools = tools(&formats);
    if plans
        .iter()
        .any(|p| p.base.kind == crate::recipe::BaseKind::Mmdebstrap)
    {
        tools.push(crate::util::tools::MMDEBSTRAP);
    }
    if plans.iter().any(|p| p.provenance_signer.is_some()) {
        tools.push(sbom::SSH_KEYGEN);
    }
    tools.push(crate::util::tools::OPENSSL);
    tools
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

    /// Topics are the running cluster's content (`imgbuild apply`): a recipe that adds one keys
    /// every node's images as before; the broker heap does not.
    #[test]
    fn topics_are_not_in_the_build_key() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/cluster.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let key = |text: String| {
            let loaded = crate::recipe::parse(&path, text).unwrap();
            let c = crate::plan::resolve(&loaded).unwrap();
            key::build_key(&c.nodes[0], &[], 0).unwrap()
        };
        let topic = "    topics:\n";
        assert!(text.contains(topic));
        let more = text.replacen(
            topic,
            &format!("{topic}      - {{name: events, partitions: 6}}\n"),
            1,
        );
        assert_eq!(key(text.clone()), key(more));
        assert_ne!(
            key(text.clone()),
            key(text.replacen("    heap_mb: 1024\n", "    heap_mb: 1536\n", 1))
        );
    }

    /// The files imgbuild renders are in the key, each by its path: a build from source whose
    /// renderer writes another file for the same plan is not taken as up to date, and the
    /// rebuild names the file.
    #[test]
    fn rendered_files_are_in_the_build_key_by_path() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/cluster.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let loaded = crate::recipe::parse(&path, text).unwrap();
        let c = crate::plan::resolve(&loaded).unwrap();
        let parts = key::key_parts(&c.nodes[1], &[], 0).unwrap();
        let files = crate::rootfs::render::node_files(&c.nodes[1]);
        for f in &files {
            let k = format!("rendered:{}", f.path.display());
            assert!(parts.contains_key(&k), "{k}");
        }
        assert!(parts.contains_key("rendered:etc/storm/worker-metrics.yaml"));
        assert!(parts.contains_key("rendered:usr/lib/sysusers.d/imgbuild.conf"));
        // As a renderer change would: one file's digest differs from the last build's.
        let mut old = parts.clone();
        old.insert(
            "rendered:etc/storm/storm.yaml".into(),
            "00000000000000000000".into(),
        );
        let changed = key::changes(&old, &parts);
        assert_eq!(changed.len(), 1, "{changed:?}");
        assert!(
            changed[0]
                .starts_with("rendered:etc/storm/storm.yaml changed (sha256 000000000000 -> "),
            "{changed:?}"
        );
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
