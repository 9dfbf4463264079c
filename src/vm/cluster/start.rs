//! Starting `up`'s nodes: a container from its tree, a VM from its image (alone on the
//! multicast segment, or the mixed runtime's VM on the containers' bridge with a disk overlay).

use super::*;

/// Start `p`'s node: a VM from its image, or a container from its tree.
pub(super) fn start_node(
    p: &Plan,
    images: &Path,
    build_dir: &Path,
    nwork: &Path,
    o: &UpOptions,
    vm: Option<(&qemu::Firmware, bool)>,
    members: &mut Vec<Member>,
) -> Result<Running> {
    let name = &p.node.name;
    let log = nwork.join("serial.log");
    let _ = std::fs::remove_file(&log);
    let image = crate::image::bootable(images, name)?;
    let handle = match vm.filter(|_| o.in_vm(p)) {
        Some((fw, kvm)) if o.bridged() => {
            members.push(Member::Vm(start_bridged_vm(
                p, &image, build_dir, nwork, o, fw, kvm, &log,
            )?));
            Handle::Member(members.len() - 1)
        }
        Some((fw, kvm)) => {
            let net = qemu::Net::Mcast {
                group: GROUP.into(),
            };
            let vars = nwork.join("OVMF_VARS.fd");
            std::fs::copy(&fw.vars, &vars)?;
            // A real disk's room for slot B and the data partition (made at first boot).
            let disk = nwork.join("disk.qcow2");
            crate::vm::disk::disk_overlay(&image, None, &disk)
                .with_context(|| format!("{name}: creating the disk of this run"))?;
            let cmd = vm_command(p, &disk, &vars, o, (fw, kvm), net, &log, false)?;
            let child = cmd
                .spawn(
                    std::process::Stdio::null(),
                    std::process::Stdio::null(),
                    std::fs::File::create(nwork.join("qemu.err"))?.into(),
                )
                .with_context(|| format!("starting QEMU for {name}"))?;
            std::fs::write(nwork.join("qemu.pid"), child.id().to_string())?;
            eprintln!(
                "started {name} ({}), serial log {}",
                image.display(),
                log.display()
            );
            Handle::Vm(child)
        }
        None => {
            members.push(Member::Container(start_container(
                p, build_dir, nwork, &log,
            )?));
            Handle::Member(members.len() - 1)
        }
    };
    Ok(Running {
        name: name.clone(),
        handle,
        log,
        offset: 0,
        partial: String::new(),
    })
}

/// QEMU's command line for `p` from `image` on `net`, its serial console in `log`.
#[allow(clippy::too_many_arguments)]
fn vm_command(
    p: &Plan,
    image: &Path,
    vars: &Path,
    o: &UpOptions,
    (fw, kvm): (&qemu::Firmware, bool),
    net: qemu::Net,
    log: &Path,
    writable: bool,
) -> Result<crate::util::run::Cmd> {
    let name = &p.node.name;
    let vm = qemu::Vm {
        name,
        image,
        firmware: fw,
        vars,
        kvm,
        memory_mb: p.guest_memory(o.memory)?,
        cpus: o.cpus,
        mac: p
            .node
            .mac
            .clone()
            .unwrap_or_else(|| qemu::default_mac(name)),
        nic: "virtio-net-pci",
        net,
        serial_log: log,
        console: false,
        cdrom: None,
        writable,
        // The mixed runtime's VM (its disk kept across power-offs) restarts like a machine when
        // its guest restarts: `imgbuild update` and `roll` restart it into a new root slot.
        reboot: writable,
    };
    Ok(vm.command())
}

/// The mixed runtime's VM: `p`'s image behind a qcow2 overlay of this run (so a power-off keeps
/// the node's disk, as the containers' overlays do), its NIC a tap on the containers' bridge.
#[allow(clippy::too_many_arguments)]
fn start_bridged_vm(
    p: &Plan,
    image: &Path,
    build_dir: &Path,
    nwork: &Path,
    o: &UpOptions,
    fw: &qemu::Firmware,
    kvm: bool,
    log: &Path,
) -> Result<VmMember> {
    let name = &p.node.name;
    let overlay = nwork.join("disk.qcow2");
    crate::vm::disk::disk_overlay(image, None, &overlay)
        .with_context(|| format!("{name}: creating the disk overlay of this run"))?;
    let tap = vm_tap(p);
    for args in [
        &["tuntap", "add", "dev", &tap, "mode", "tap"][..],
        &[
            "link",
            "set",
            &tap,
            "master",
            crate::vm::container::BRIDGE,
            "up",
        ][..],
    ] {
        crate::util::run::Cmd::new("ip")
            .args(args)
            .run()
            .with_context(|| format!("{name}: the VM's NIC on the nodes' bridge"))?;
    }
    let vars = nwork.join("OVMF_VARS.fd");
    std::fs::copy(&fw.vars, &vars)?;
    let net = qemu::Net::Tap {
        ifname: tap.clone(),
    };
    let cmd = vm_command(p, &overlay, &vars, o, (fw, kvm), net, log, true)?;
    let login = crate::vm::member::login(p, build_dir);
    if login.is_none() {
        eprintln!(
            "note: {name}: no user with sudo and an SSH key in the recipe: the data-path checks cannot log into the VM"
        );
    }
    let vm = VmMember::start(
        name,
        p.node.ip,
        &cmd,
        log,
        &nwork.join("qemu.err"),
        login,
        &vm_tap(p),
    )?;
    std::fs::write(nwork.join("qemu.pid"), vm.child.id().to_string())?;
    eprintln!(
        "started {name} (VM of {}{}, among containers), serial log {}",
        image.display(),
        if fw.secure { ", Secure Boot" } else { "" },
        log.display()
    );
    Ok(vm)
}

/// The tap of `p`'s VM on the bridge (an interface name: at most 15 bytes).
fn vm_tap(p: &Plan) -> String {
    let mut n = format!("vm-{}", p.node.name);
    n.truncate(15);
    n
}

/// A container of the tree `p`'s image was made from (kept by the build beside the images), from
/// a snapshot of it (`swap`: a later build may replace the tree while the cluster runs).
fn start_container(p: &Plan, build_dir: &Path, nwork: &Path, log: &Path) -> Result<Container> {
    let name = &p.node.name;
    // A fresh first boot every time `up` starts; state (the overlay, the data directory) lives
    // only within one run.
    for d in [nwork.join("upper"), nwork.join("data")] {
        if d.exists() {
            std::fs::remove_dir_all(&d).with_context(|| format!("removing {}", d.display()))?;
        }
    }
    for f in ["swap.request", "swap.done"] {
        let _ = std::fs::remove_file(nwork.join(f));
    }
    let tree = super::swap::snapshot(p, build_dir, nwork)?;
    let c = Container::start(p, &tree, nwork, log)?;
    eprintln!(
        "started {name} (container of {}), console log {}",
        build_dir.join("nodes").join(name).join("rootfs").display(),
        log.display()
    );
    Ok(c)
}
