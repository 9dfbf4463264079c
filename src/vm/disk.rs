//! The virtual disk a VM boots from: a qcow2 overlay over the node's image with a real disk's
//! room for root slot B and the data partition, which the node makes at first boot. A leaf of
//! `vm/`: `boot` and `up` (cluster) both use it.

use std::path::Path;

use anyhow::{Context, Result};

/// The disk a VM of `image` gets when none is asked for: room for the image (ESP and root slot
/// A), a second slot of the same size and 2 GiB for the data partition, as systemd-repart lays
/// them out at first boot. Never smaller than [`min_disk`].
pub fn default_disk(image: &Path) -> u64 {
    min_disk(image) + GIB
}

/// The smallest disk a node's image can live on: the image, slot B (at most the image's size)
/// and the data partition's minimum.
pub fn min_disk(image: &Path) -> u64 {
    let raw = std::fs::metadata(image.with_extension("raw"))
        .or_else(|_| std::fs::metadata(image))
        .map(|m| m.len())
        .unwrap_or(0);
    (2 * raw + crate::layout::DATA_MIN_BYTES).div_ceil(MIB) * MIB
}

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A qcow2 overlay at `overlay` over `image` of `size` bytes (the image's [`default_disk`] when
/// None): the guest sees a real disk's room, the image is untouched. Refused when smaller than
/// [`min_disk`].
pub fn disk_overlay(image: &Path, size: Option<u64>, overlay: &Path) -> Result<u64> {
    let min = min_disk(image);
    let size = size.unwrap_or_else(|| default_disk(image));
    anyhow::ensure!(
        size >= min,
        "a disk of {} is too small for {}: it needs at least {} (the image, a second root slot as big as the first, and 1 GiB for the data partition)",
        crate::util::fmt::human(size),
        image.display(),
        crate::util::fmt::human(min)
    );
    let _ = std::fs::remove_file(overlay);
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
        .arg(overlay)
        .arg(size.to_string())
        .run()
        .with_context(|| format!("making the virtual disk {}", overlay.display()))?;
    Ok(size)
}
