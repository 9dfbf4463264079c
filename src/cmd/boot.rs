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
    // Always an overlay with a real disk's room: slot B and the data partition are made on it at
    // first boot.
    let asked = match &o.disk_size {
        None => None,
        Some(text) => Some(
            crate::plan::parse_size(text)
                .with_context(|| format!("--disk-size {text}: not a size (write it like 16GiB)"))?,
        ),
    };
    let overlay = work.join("disk.qcow2");
    let size = crate::vm::disk::disk_overlay(&image, asked, &overlay)?;
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
        let status = crate::vm::boot::run_until_stopped(cmd);
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
        |s| {
            s.cloud_init_finished
                && s.login_hostname.is_some()
                && s.disk.is_some()
                && s.data.is_some()
        },
    );
    let _ = child.kill();
    let _ = child.wait();
    crate::vm::hostlink::forget(&cli.build_dir);
    let seen = seen?;
    crate::vm::boot::judge_boot(
        plan,
        &seen,
        o.secure_boot,
        disk_size,
        t.elapsed().as_secs_f64(),
    )
    .map_err(|e| anyhow::anyhow!("{e} (serial log {})", log.display()))
}

/// `imgbuild up [NODE...]`
/// `imgbuild ssh NODE [-- CMD...]`: enter the running `up`'s network namespace and exec ssh.
/// The node's host key is pinned: the one imgbuild made for its image (`pki::ssh`).
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
    crate::util::tools::require(&[crate::util::tools::SSH])?;
    crate::vm::hostlink::enter(&cli.build_dir)?;
    let c = crate::util::run::Cmd::new("ssh");
    let mut c = match crate::pki::ssh::pin_options(p) {
        Some(pin) => c.args(pin),
        None => {
            eprintln!(
                "note: {node}: no host key of it in {} (an image older than pinned host keys): its host key is not checked",
                crate::pki::ssh::known_hosts(p).display()
            );
            c.args(crate::vm::hostlink::SSH_OPTIONS)
        }
    }
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
    crate::vm::cluster::preflight(&plans, o)?;
    crate::util::fs::require_root("imgbuild up (a private network namespace)")?;
    let Some(r) = crate::vm::cluster::up(&cluster, &plans, &cli.images, &cli.build_dir, o)? else {
        anyhow::ensure!(!o.check, "interrupted before the cluster could be judged");
        return Ok(());
    };
    if o.json {
        crate::report::print(&crate::report::Up::of(&plans, o, &r))?;
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
        let msg = crate::vm::cluster::verdict(&r.states, &o.ignore, plans.len());
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
