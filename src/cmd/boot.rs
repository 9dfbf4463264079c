//! `imgbuild boot`, `up`, `down` and `ssh`: running the images.

use super::*;

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
        writable: false,
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
pub(super) fn judge_boot(
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
pub(super) fn bigger_disk(
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
pub(super) fn run_until_stopped(cmd: crate::util::run::Cmd) -> Result<std::process::ExitStatus> {
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
    let mut c = crate::util::run::Cmd::new("ssh")
        .args(crate::vm::hostlink::SSH_OPTIONS)
        .args(["-o", "ConnectTimeout=10"]);
    if let Some(k) = &key {
        c = c.arg("-i").arg(k).args(["-o", "IdentitiesOnly=yes"]);
    }
    c = c.arg(format!("{user}@{}", p.node.ip));
    if !command.is_empty() {
        c = c.arg("--").args(command);
    }
    Err(c.exec())
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
    if !o.vms.is_empty() {
        for v in &o.vms {
            anyhow::ensure!(
                plans.iter().any(|p| &p.node.name == v),
                "--vm {v}: no such node among those `up` boots ({})",
                plans
                    .iter()
                    .map(|p| p.node.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        crate::util::tools::require(&[
            crate::vm::qemu::QEMU,
            crate::util::tools::Tool {
                command: "qemu-img",
                why: "makes the mixed runtime's VM a disk overlay of its own (up --vm)",
                package: "qemu-utils",
            },
            crate::util::tools::Tool {
                command: "ssh",
                why: "logs into the mixed runtime's VM for the checks (up --vm)",
                package: "openssh-client",
            },
        ])?;
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
            runtime: if o.vms.is_empty() {
                format!("{:?}", o.runtime).to_lowercase()
            } else {
                "mixed".into()
            },
            vms: o.vms.clone(),
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
        // Never `ok` over a check that was not judged: say which were left out.
        let unjudged = crate::vm::cluster::not_judged(&r.states, &o.ignore);
        let msg = if unjudged.is_empty() {
            format!("cluster ok: {} nodes healthy", plans.len())
        } else {
            format!(
                "cluster judged on the other checks only, {} nodes; not judged: {}",
                plans.len(),
                unjudged.join("; ")
            )
        };
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
