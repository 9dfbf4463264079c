//! What a flash keeps and adds around the image: the node's data partition (`imgbuild-data`,
//! its state apart from the OS) found on the target is kept byte for byte when its identity
//! record is this image's, refused when it is another node's or cluster's (unless
//! `--wipe-data`); on a disk without one, root slot B and a blank data partition are laid out
//! as systemd-repart would at first boot.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};

use crate::image::gpt::{Gpt, Guid, Partition, SECTOR};
use crate::layout::{
    DATA_LABEL, DATA_MIN_BYTES as DATA_MIN, IMAGE_IDENTITY, ROOT_A_LABEL, ROOT_B_LABEL,
};
use crate::util::fmt::human;
use crate::util::run::Cmd;

const MIB: u64 = 1 << 20;
/// The Linux filesystem data partition type (systemd-repart's `linux-generic`).
const LINUX_GENERIC: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// What the target's data partition holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Nothing: made but never booted (the first boot formats it).
    Blank,
    /// An ext4 filesystem with this identity record (one line per field).
    Identity(String),
    /// Something else (another filesystem, ext4 without an identity record): not ours to judge.
    Unknown(String),
}

/// The partitions a flash keeps and adds, and what to tell the user.
#[derive(Debug, Default)]
pub struct DataPlan {
    /// The data partition found on the target, kept as it is (bytes and table entry).
    pub kept: Option<Partition>,
    /// The table written first when a data partition is kept (it alone, under the image's disk
    /// GUID), so an interrupted flash still shows it to the next one.
    pub kept_only: Option<Gpt>,
    /// Partitions added to the image's table: slot B, and the data partition on a fresh disk.
    pub added: Vec<Partition>,
    /// Byte ranges zeroed so a fresh data partition is blank (its first and last MiB).
    pub blank: Vec<(u64, u64)>,
    pub lines: Vec<String>,
}

impl DataPlan {
    /// The final table: the image's partitions, then what the flash keeps and adds.
    pub fn table(&self, image: &Gpt) -> Gpt {
        let mut g = image.clone();
        g.partitions.extend(self.added.iter().cloned());
        g.partitions.extend(self.kept.iter().cloned());
        g
    }

    pub fn touches_table(&self) -> bool {
        self.kept.is_some() || !self.added.is_empty()
    }
}

/// The data partition in the target's partition table: the primary GPT, else the backup at the
/// disk's end (an interrupted flash leaves one of them).
pub fn find(f: &File, size: u64) -> Option<Partition> {
    let tables = [Gpt::read(f).ok(), Gpt::read_at(f, size / SECTOR - 1).ok()];
    tables
        .into_iter()
        .flatten()
        .find_map(|g| g.partitions.into_iter().find(|p| p.name == DATA_LABEL))
}

/// `cat FILE` from the ext4 filesystem at byte `offset` of `dev`, None when it has no such file.
fn ext4_file(dev: &Path, offset: u64, file: &str) -> Result<Option<String>> {
    let out = Cmd::new("debugfs")
        .arg("-R")
        .arg(format!("cat {file}"))
        .arg(format!("{}?offset={offset}", dev.display()))
        .output()
        .with_context(|| format!("reading {file} in {} at byte {offset}", dev.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok((!text.trim().is_empty()).then_some(text))
}

/// What the partition `p` of `dev` holds.
pub fn state(f: &File, dev: &Path, p: &Partition) -> Result<State> {
    let at = p.first_lba * SECTOR;
    let mut head = vec![0u8; MIB as usize];
    let n = f.read_at(&mut head, at)?;
    if head[..n].iter().all(|b| *b == 0) {
        return Ok(State::Blank);
    }
    // ext4's superblock: magic 0xEF53 at byte 56 of the block at 1024.
    if n >= 1024 + 58 && head[1024 + 56..1024 + 58] == [0x53, 0xEF] {
        return Ok(match ext4_file(dev, at, "/identity")? {
            Some(id) => State::Identity(id),
            None => State::Unknown("an ext4 filesystem without an identity record".into()),
        });
    }
    Ok(State::Unknown("data that is not an ext4 filesystem".into()))
}

/// The identity record this image expects on its data partition, read from its root slot.
pub fn image_identity(image: &Path) -> Result<(Gpt, String)> {
    let f = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let g = Gpt::read(&f).with_context(|| format!("{}: reading its GPT", image.display()))?;
    let root = g
        .partitions
        .iter()
        .find(|p| p.name == ROOT_A_LABEL)
        .with_context(|| {
            format!(
                "{}: no partition `{ROOT_A_LABEL}`: an image of the old layout (one root filling the disk, no data partition); rebuild it with this imgbuild",
                image.display()
            )
        })?;
    let id = ext4_file(image, root.first_lba * SECTOR, IMAGE_IDENTITY)?.with_context(|| {
        format!(
            "{}: no {IMAGE_IDENTITY} in its root: built before nodes kept their state on a data partition; rebuild it",
            image.display()
        )
    })?;
    Ok((g, id))
}

fn one_line(id: &str) -> String {
    id.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What the flash keeps and adds around the image on `target`: the target's data partition,
/// read before anything is written, against the image's own identity record.
pub fn for_target(
    target: &super::Target,
    image: &Path,
    image_size: u64,
    wipe_data: bool,
) -> Result<DataPlan> {
    let (gpt, want) = image_identity(image)?;
    let found = match File::open(&target.path) {
        Ok(f) if target.size >= 2 * (1 << 20) => match find(&f, target.size) {
            Some(p) => {
                let state = state(&f, &target.path, &p)?;
                Some((p, state))
            }
            None => None,
        },
        _ => None,
    };
    plan(
        &gpt,
        image_size,
        &want,
        target.size,
        found,
        wipe_data,
        &target.path,
    )
}

/// Decide what the flash keeps and adds on a target of `target_size` bytes that holds `found`.
pub fn plan(
    image: &Gpt,
    image_size: u64,
    want: &str,
    target_size: u64,
    found: Option<(Partition, State)>,
    wipe_data: bool,
    target: &Path,
) -> Result<DataPlan> {
    let mut out = DataPlan::default();
    let shown = target.display();
    let root = image
        .partitions
        .iter()
        .find(|p| p.name == ROOT_A_LABEL)
        .context("the image has no root slot A")?;
    let slot_len = (root.last_lba + 1 - root.first_lba) * SECTOR;
    let mut free_end = target_size.saturating_sub(MIB) / MIB * MIB;
    match found {
        Some((p, state)) if !wipe_data => {
            let (start, len) = (
                p.first_lba * SECTOR,
                (p.last_lba + 1 - p.first_lba) * SECTOR,
            );
            match &state {
                State::Identity(id) if id == want => {}
                State::Identity(id) => bail!(
                    "refusing to flash {shown}: its data partition belongs to {}, this image is {} (pass --wipe-data to erase it)",
                    one_line(id),
                    one_line(want)
                ),
                State::Blank => {}
                State::Unknown(what) => bail!(
                    "refusing to flash {shown}: its partition `{DATA_LABEL}` holds {what}, not this node's data (pass --wipe-data to erase it)"
                ),
            }
            ensure!(
                image_size <= start,
                "refusing to flash {shown}: the image ({}) would overwrite the data partition kept at byte {start} (pass --wipe-data to start this node afresh)",
                human(image_size)
            );
            out.lines.push(format!(
                "keeping the data partition `{DATA_LABEL}` ({}, bytes {start}..{}{}): not written",
                human(len),
                start + len,
                match &state {
                    State::Identity(id) => format!(", {}", one_line(id)),
                    _ => ", blank".to_string(),
                }
            ));
            free_end = start;
            out.kept_only = Some(Gpt {
                disk_guid: image.disk_guid.clone(),
                partitions: vec![p.clone()],
            });
            out.kept = Some(p);
        }
        Some((_, state)) => out.lines.push(format!(
            "--wipe-data: the data partition on {shown} ({}) is replaced by a blank one",
            match state {
                State::Identity(id) => one_line(&id),
                State::Blank => "blank".into(),
                State::Unknown(what) => what,
            }
        )),
        None => {}
    }
    // Slot B right after the image, as big as slot A, when it fits before what follows.
    let b_start = image_size.div_ceil(MIB) * MIB;
    if b_start + slot_len <= free_end {
        out.added.push(part(
            ROOT_B_LABEL,
            crate::image::gpt::LINUX_ROOT_X86_64,
            image,
            b_start,
            slot_len,
        ));
    } else {
        out.lines.push(format!(
            "no room for root slot B ({}) before byte {free_end}: systemd-repart tries again at boot",
            human(slot_len)
        ));
    }
    if out.kept.is_none() {
        let d_start = b_start + slot_len;
        if d_start + DATA_MIN <= free_end {
            let len = free_end - d_start;
            out.added
                .push(part(DATA_LABEL, LINUX_GENERIC, image, d_start, len));
            out.blank = vec![(d_start, MIB), (d_start + len - MIB, MIB)];
            out.lines.push(format!(
                "a blank data partition `{DATA_LABEL}` ({}): the first boot formats it",
                human(len)
            ));
        } else {
            out.added.clear();
            out.lines.push(format!(
                "the target has no room for slot B and a {} data partition: the first boot makes them on a bigger disk",
                human(DATA_MIN)
            ));
        }
    }
    Ok(out)
}

fn part(name: &str, type_guid: &str, image: &Gpt, start: u64, len: u64) -> Partition {
    Partition {
        type_guid: Guid(type_guid.to_string()),
        guid: Guid::derived(&format!("imgbuild flash\0{}\0{name}", image.disk_guid.0)),
        first_lba: start / SECTOR,
        last_lba: (start + len) / SECTOR - 1,
        name: name.to_string(),
    }
}
