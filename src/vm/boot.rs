//! `imgbuild boot`: a node's image in QEMU (firmware, disk overlay, network), run in the
//! foreground until stopped or judged from what its console showed (its disk: `vm::disk`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::plan::Plan;

/// `imgbuild boot`'s choices (its command line, the disk size parsed).
pub struct Options {
    pub memory: Option<u32>,
    pub cpus: u32,
    /// Judge the boot from the console and stop, rather than run until stopped.
    pub check: bool,
    pub timeout: u64,
    pub serial_log: Option<PathBuf>,
    pub secure_boot: bool,
    pub disk_size: Option<u64>,
    pub nic: String,
}

/// `imgbuild boot NODE`: the node's qcow2 (or raw) in QEMU with UEFI firmware.
// Long on purpose: firmware, disk overlay, network, the Vm description and the run-or-check are the
// command's steps in order, each a few lines.
pub fn boot(plan: &Plan, images: &Path, build_dir: &Path, o: &Options) -> Result<()> {
    let node = plan.node.name.as_str();
    use crate::vm::qemu;
    let mut image = crate::image::bootable(images, node)?;
    crate::util::tools::require(&[qemu::QEMU])?;
    let fw = qemu::firmware(o.secure_boot)?;
    let work = build_dir.join("boot").join(node);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    // Always an overlay with a real disk's room: slot B and the data partition are made on it at
    // first boot.
    let overlay = work.join("disk.qcow2");
    let size = crate::vm::disk::disk_overlay(&image, o.disk_size, &overlay)?;
    image = overlay;
    let disk_size = Some(size);
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
    let net = match crate::vm::cluster::boot_network(plan, build_dir) {
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
        writable: false,
        reboot: !o.check,
    };
    eprintln!(
        "booting {} ({}{}, {}, snapshot mode); serial log {}",
        image.display(),
        fw.code.display(),
        if fw.secure { ", Secure Boot" } else { "" },
        if kvm { "KVM" } else { "TCG" },
        log.display()
    );
    let cmd = vm.command();
    if !o.check {
        // Ctrl-C reaches QEMU (its console is this terminal); SIGTERM to imgbuild is passed on.
        // Either way imgbuild outlives QEMU and removes the record `imgbuild ssh` enters by.
        crate::vm::cluster::catch_signals();
        let status = run_until_stopped(cmd);
        crate::vm::hostlink::forget(build_dir);
        let status = status?;
        anyhow::ensure!(
            status.success() || crate::vm::cluster::stopping(),
            "QEMU exited with {status}"
        );
        return Ok(());
    }
    let t = std::time::Instant::now();
    let mut child = cmd
        .spawn(
            std::process::Stdio::null(),
            std::process::Stdio::null(),
            std::process::Stdio::inherit(),
        )
        .context("starting qemu-system-x86_64")?;
    let seen = qemu::watch(
        &mut child,
        &log,
        std::time::Duration::from_secs(o.timeout),
        None,
        |s| {
            s.cloud_init_finished
                && s.login_hostname.is_some()
                && s.disk.is_some()
                && s.data.is_some()
        },
    );
    let _ = child.kill();
    let _ = child.wait();
    crate::vm::hostlink::forget(build_dir);
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
