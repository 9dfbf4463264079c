//! `imgbuild boot`'s parts that are about the VM: running QEMU in the foreground until
//! stopped, and judging a boot from what its console showed (its disk: `vm::disk`).

use anyhow::{Context, Result};

use crate::plan::Plan;

/// `boot --check`'s verdict from what the console showed: Secure Boot when asked, the disk
/// size when asked, the disk's layout (slot B, the data partition) and the data partition with
/// this node's identity, the node's hostname and address.
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
