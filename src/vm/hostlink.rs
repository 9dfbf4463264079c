//! The way in from the host: an address for `imgbuild` itself on the nodes' private network,
//! inside the network namespace of `imgbuild up` (or `imgbuild boot`), and the record
//! (`BUILD_DIR/up/up.pid`) that lets `imgbuild ssh` enter that namespace.
//!
//! QEMU's NICs are datagrams on a multicast group, which no host interface is part of: a tap
//! device (`ib-host`) gets the address and two threads copy frames between it and the group
//! (frames the tap sent come back on the group's loop and are dropped by their source MAC).
//! Containers share a bridge, which simply gets the address. Nothing here exists outside the
//! namespace, which dies with `up`.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::plan::Plan;
use crate::util::run::Cmd;

const TAP: &str = "ib-host";
/// The tap's MAC: set, not read back (this namespace's interfaces are not in the host's /sys),
/// locally administered and outside QEMU's 52:54:00 range the nodes' MACs come from.
const TAP_MAC: [u8; 6] = [0x02, 0x69, 0x62, 0x00, 0x00, 0x01];

/// The host's address on the nodes' network: the highest one of the recipe's subnet that no
/// node, gateway or DNS server has.
pub fn host_address(plans: &[&Plan]) -> Result<(Ipv4Addr, u8)> {
    let p = plans.first().context("no nodes")?;
    let net = &p.network;
    let (base, _) = net
        .cidr
        .split_once('/')
        .with_context(|| format!("network {} is not a CIDR", net.cidr))?;
    let base: Ipv4Addr = base.parse().context("network address")?;
    let size = 1u64 << (32 - u32::from(net.prefix_len));
    let first = u64::from(u32::from(base));
    let taken = |ip: Ipv4Addr| {
        plans.iter().any(|p| p.node.ip == ip) || ip == net.gateway || net.dns.contains(&ip)
    };
    (first + 1..first + size - 1)
        .rev()
        .map(|a| Ipv4Addr::from(a as u32))
        .find(|ip| !taken(*ip))
        .map(|ip| (ip, net.prefix_len))
        .with_context(|| format!("no free address in {} for the host", net.cidr))
}

/// ssh's options for a node whose host key imgbuild did not make (an image older than
/// `pki::ssh`): its host key is not checked. Every other login pins it (`pki::ssh::pin_options`).
pub const SSH_OPTIONS: [&str; 6] = [
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
];

/// Where `up` records its pid, for `imgbuild ssh`.
pub fn pid_file(build_dir: &Path) -> PathBuf {
    build_dir.join("up").join("up.pid")
}

/// Remove the pid file when it records this process (a later `up` or `boot` may have taken it).
pub fn forget(build_dir: &Path) {
    let pf = pid_file(build_dir);
    if std::fs::read_to_string(&pf).is_ok_and(|s| s.trim() == std::process::id().to_string()) {
        let _ = std::fs::remove_file(&pf);
    }
}

/// In `up`'s namespace, for QEMU nodes on the multicast `group` (`ADDR:PORT`): the tap, its
/// address and the copying threads (they end with the process).
pub fn attach_qemu(group: &str, addr: (Ipv4Addr, u8)) -> Result<()> {
    let group: SocketAddrV4 = group.parse().context("the multicast group")?;
    let tap = open_tap(TAP)?;
    configure(TAP, addr)?;
    let mac = TAP_MAC;
    let sock = mcast_socket(group)?;
    let (tap_in, sock_out) = (tap.try_clone()?, sock.try_clone()?);
    std::thread::spawn(move || tap_to_group(tap_in, sock_out, group));
    std::thread::spawn(move || group_to_tap(sock, tap, mac));
    Ok(())
}

/// In `up`'s namespace, for containers on `bridge`: the address on the bridge.
pub fn attach_bridge(bridge: &str, addr: (Ipv4Addr, u8)) -> Result<()> {
    Cmd::new("ip")
        .args([
            "addr",
            "add",
            &format!("{}/{}", addr.0, addr.1),
            "dev",
            bridge,
        ])
        .run()
        .context("giving the host an address on the nodes' bridge")?;
    Ok(())
}

fn configure(dev: &str, addr: (Ipv4Addr, u8)) -> Result<()> {
    let mac = TAP_MAC
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    for args in [
        vec!["link", "set", dev, "address", &mac],
        vec!["addr", "add", &format!("{}/{}", addr.0, addr.1), "dev", dev],
        vec!["link", "set", dev, "up"],
    ] {
        Cmd::new("ip")
            .args(&args)
            .run()
            .with_context(|| format!("setting up {dev}"))?;
    }
    Ok(())
}

fn open_tap(name: &str) -> Result<File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("opening /dev/net/tun (the host's way into the nodes' network)")?;
    // struct ifreq: the name, then the flags (IFF_TAP | IFF_NO_PI: bare Ethernet frames).
    let mut ifr = [0u8; 40];
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    let flags: libc::c_short = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    if unsafe { libc::ioctl(f.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()) } != 0 {
        bail!(
            "creating the tap {name}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(f)
}

/// A UDP socket on the group as QEMU's `-netdev socket,mcast=` makes one: bound to the group's
/// address and port with SO_REUSEADDR, a member on 127.0.0.1, loop on.
fn mcast_socket(group: SocketAddrV4) -> Result<UdpSocket> {
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        let sock = UdpSocket::from_raw_fd(fd);
        let one: libc::c_int = 1;
        let set = |level, name, v: *const libc::c_void, len| {
            if libc::setsockopt(fd, level, name, v, len) != 0 {
                bail!("setsockopt: {}", std::io::Error::last_os_error());
            }
            Ok(())
        };
        set(
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one as *const _ as *const libc::c_void,
            4,
        )?;
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: group.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*group.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        if libc::bind(
            fd,
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        ) != 0
        {
            bail!(
                "binding to the nodes' group {group}: {}",
                std::io::Error::last_os_error()
            );
        }
        sock.join_multicast_v4(group.ip(), &Ipv4Addr::LOCALHOST)
            .context("joining the nodes' multicast group")?;
        sock.set_multicast_loop_v4(true)?;
        let lo = libc::in_addr {
            s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
        };
        set(
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_IF,
            &lo as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::in_addr>() as u32,
        )?;
        Ok(sock)
    }
}

fn tap_to_group(mut tap: File, sock: UdpSocket, group: SocketAddrV4) {
    let mut buf = vec![0u8; 65536];
    while let Ok(n) = tap.read(&mut buf) {
        let _ = sock.send_to(&buf[..n], group);
    }
}

fn group_to_tap(sock: UdpSocket, mut tap: File, own: [u8; 6]) {
    let mut buf = vec![0u8; 65536];
    while let Ok(n) = sock.recv(&mut buf) {
        if n >= 14 && buf[6..12] != own {
            let _ = tap.write(&buf[..n]);
        }
    }
}

/// Enter the network namespace of the `imgbuild up` recorded in `build_dir` (this process only:
/// what it runs next, e.g. ssh, talks to the nodes).
pub fn enter(build_dir: &Path) -> Result<()> {
    let pf = pid_file(build_dir);
    let pid: i32 = std::fs::read_to_string(&pf)
        .with_context(|| {
            format!(
                "no running `imgbuild up` recorded in {} (start the cluster with `imgbuild up` first)",
                pf.display()
            )
        })?
        .trim()
        .parse()
        .with_context(|| format!("{} holds no pid", pf.display()))?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "imgbuild" {
        bail!(
            "the `imgbuild up` recorded in {} (pid {pid}) is not running any more",
            pf.display()
        );
    }
    let ns = File::open(format!("/proc/{pid}/ns/net"))
        .with_context(|| format!("opening the network namespace of pid {pid} (needs root)"))?;
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!(
            "entering the network namespace of `imgbuild up` (pid {pid}): {} (needs root)",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// `imgbuild ssh`: enter the running `up`'s network namespace (`enter`) and exec ssh to `p` as
/// `user` (with `key` if given), running `command` if any. The node's host key is pinned: the
/// one imgbuild made for its image (`pki::ssh`). Returns only on failure.
pub fn ssh(
    build_dir: &Path,
    p: &Plan,
    user: &str,
    key: Option<&Path>,
    command: &[String],
) -> anyhow::Error {
    if let Err(e) = enter_for_ssh(build_dir) {
        return e;
    }
    let c = Cmd::new("ssh");
    let mut c = match crate::pki::ssh::pin_options(p) {
        Some(pin) => c.args(pin),
        None => {
            eprintln!(
                "note: {}: no host key of it in {} (an image older than pinned host keys): its host key is not checked",
                p.node.name,
                crate::pki::ssh::known_hosts(p).display()
            );
            c.args(SSH_OPTIONS)
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
    c.exec()
}

fn enter_for_ssh(build_dir: &Path) -> Result<()> {
    crate::util::tools::require(&[crate::util::tools::SSH])?;
    enter(build_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_takes_the_highest_free_address() {
        let path =
            std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/recipes/cluster.yaml"));
        let c = crate::plan::resolve(&crate::recipe::load(path).unwrap()).unwrap();
        let nodes: Vec<&Plan> = c.nodes.iter().collect();
        assert_eq!(
            host_address(&nodes).unwrap(),
            (Ipv4Addr::new(192, 168, 200, 254), 24)
        );
    }
}
