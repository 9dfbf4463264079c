//! `imgbuild boot`'s parts that are about the VM: a bigger throwaway disk, running QEMU in the
//! foreground until stopped, and judging a boot from what its console showed.

use std::path::Path;

use anyhow::{Context, Result};

use crate::plan::Plan;

/// `boot --check`'s verdict from what the console showed: Secure Boot when asked, the disk
/// size when asked, the root grown to the disk, the node's hostname and address.
pub fn judge_boot(
    plan: &Plan,
    seen: &crate::vm::qemu::Seen,
    secure_boot: bool,
    disk_size: Option<u64>,
    secs: f64,
) -> Result<()> {
    let node = plan.node.name.as_str();
    let ip = plan.node.ip.to_string();
    let d = seen.disk.unwrap_or_default();
    println!(
        "{node}: cloud-init finished after {:.0}s; console shows hostname {} and addresses {}; Secure Boot {}; disk {} MiB: root slot {} MiB, other slot {} MiB, data partition {} MiB",
        secs,
        seen.login_hostname.as_deref().unwrap_or("-"),
        seen.addresses.join(", "),
        match seen.secure_boot {
            Some(true) => "enabled",
            Some(false) => "disabled",
            None => "not reported",
        },
        d.disk,
        d.root,
        d.slot_b,
        d.data
    );
    let mut failures = Vec::new();
    if secure_boot && seen.secure_boot != Some(true) {
        failures.push("secure boot: the kernel did not report \"Secure boot enabled\"".to_string());
    }
    if let Some(size) = disk_size
        && d.disk != size >> 20
    {
        failures.push(format!(
            "disk: the guest sees {} MiB, expected {} MiB",
            d.disk,
            size >> 20
        ));
    }
    // Made at first boot by systemd-repart: slot B as big as the running slot, the data
    // partition on the rest of the disk.
    if d.root == 0 || d.slot_b < d.root || d.data == 0 {
        failures.push(format!(
            "disk layout: root slot {} MiB, other slot {} MiB, data partition {} MiB on a {} MiB disk (did systemd-repart run? journalctl -b -u systemd-repart)",
            d.root, d.slot_b, d.data, d.disk
        ));
    }
    match &seen.data {
        Some((true, _)) => {}
        Some((false, line)) => failures.push(format!("data partition: {line}")),
        None => failures.push("data partition: no data line from imgbuild-health".to_string()),
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

/// The disk a VM of `image` gets when none is asked for: room for the image (ESP and root slot
/// A), a second slot of the same size and 2 GiB for the data partition, as systemd-repart lays
/// them out at first boot. Never smaller than [`min_disk`].
pub fn default_disk(image: &Path) -> u64 {
    min_disk(image) + GIB
}

/// The smallest disk a node's image can live on: the image, slot B (at most the image's size)
/// and the data partition's 1 GiB minimum (usr/lib/repart.d/40-data.conf in the image).
pub fn min_disk(image: &Path) -> u64 {
    let raw = std::fs::metadata(image.with_extension("raw"))
        .or_else(|_| std::fs::metadata(image))
        .map(|m| m.len())
        .unwrap_or(0);
    (2 * raw + GIB).div_ceil(MIB) * MIB
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

/// Run `cmd` to its end; on SIGINT/SIGTERM (see `catch_signals`) ask it to quit and wait.
pub fn run_until_stopped(cmd: crate::util::run::Cmd) -> Result<std::process::ExitStatus> {
    use std::process::Stdio;
    let mut child = cmd
        .spawn(Stdio::inherit(), Stdio::inherit(), Stdio::inherit())
        .context("starting qemu-system-x86_64")?;
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
