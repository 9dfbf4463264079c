//! `imgbuild boot`'s parts that are about the VM: a bigger throwaway disk, running QEMU in the
//! foreground until stopped, and judging a boot from what its console showed.

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
pub fn bigger_disk(
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
