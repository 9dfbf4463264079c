//! The container runtime of `imgbuild up --runtime container`: each node's own root filesystem
//! booted by systemd-nspawn at native speed, on one bridge inside imgbuild's private network
//! namespace. QEMU stays the judge of booting (firmware, boot chain, kernel); containers run the
//! same tree's systemd, cloud-init, services and health unit, fast enough for the data-path and
//! node-loss checks that real JVMs make far too slow under software emulation.
//!
//! What differs from the VM, and why it cannot hide a bug in what the image does: the kernel is
//! the host's (the image's kernel and boot chain are tested by QEMU boots); the root is the node's
//! tree (the same files the raw image's ext4 is made from, tested entry by entry) under an
//! overlay, so the tree never changes and a node keeps its state across a power-off; the NIC is a
//! veth pair, named so that the seed's own network-config matches it (`e*`, or the recipe's
//! interface name).

pub use crate::util::tools::{NSPAWN, SCRIPT};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::plan::Plan;
use crate::util::run::Cmd;

pub const BRIDGE: &str = "br-imgbuild";

/// The environment a check's tool runs with on a node (after `env -i`): the image's Java first.
pub const TOOL_ENV: [&str; 3] = [
    "JAVA_HOME=/opt/java",
    "PATH=/opt/java/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
];

/// A private mount namespace (our overlays vanish with us) and the bridge the nodes share, in
/// the private network namespace `cluster::private_network` made.
pub fn prepare() -> Result<()> {
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        bail!(
            "creating a private mount namespace: {}",
            std::io::Error::last_os_error()
        );
    }
    Cmd::new("mount")
        .args(["--make-rprivate", "/"])
        .run()
        .context("making the private mount namespace's mounts private")?;
    for args in [
        &["link", "add", BRIDGE, "type", "bridge"][..],
        &["link", "set", BRIDGE, "up"][..],
    ] {
        Cmd::new("ip")
            .args(args)
            .run()
            .context("setting up the nodes' bridge")?;
    }
    Ok(())
}

/// The interface name the node's seed matches: the recipe's, else one starting with `e`.
fn interface(p: &Plan) -> String {
    p.node.interface.clone().unwrap_or_else(|| {
        let mut n = format!("e{}", p.node.name.replace(['.', '_'], "-"));
        n.truncate(15);
        n
    })
}

fn host_side(p: &Plan) -> String {
    let mut n = format!("vb-{}", p.node.name);
    n.truncate(15);
    n
}

/// One node's container: its overlay root and the running systemd-nspawn.
pub struct Container {
    pub name: String,
    /// Where its overlay (upper, ovl-work, root) and data directory live.
    work: PathBuf,
    root: PathBuf,
    pub log: PathBuf,
    host_if: String,
    attached: bool,
    args: Vec<String>,
    pub child: Child,
}

impl Container {
    /// Mount `tree` under an overlay in `work` (kept across restarts) and boot it.
    pub fn start(p: &Plan, tree: &Path, work: &Path, log: &Path) -> Result<Container> {
        if p.node.mac.is_some() && p.node.interface.is_none() {
            bail!(
                "{}: the recipe matches its NIC by MAC, which a container's veth cannot have; use --runtime qemu",
                p.node.name
            );
        }
        let root = work.join("root");
        // The node's data partition: a directory kept across restarts like the overlay.
        let data = work.join("data");
        std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
        mount_overlay(&p.node.name, tree, work)?;
        let host_if = host_side(p);
        let args = vec![
            "systemd-nspawn".to_string(),
            "--quiet".into(),
            "--boot".into(),
            "--register=no".into(),
            "--keep-unit".into(),
            format!("--machine={}", p.node.name),
            format!("--directory={}", root.display()),
            format!("--bind={}:{}", data.display(), crate::layout::DATA_MOUNT),
            format!("--network-veth-extra={host_if}:{}", interface(p)),
            // Reading the kernel's clock status (adjtimex with no modes: the node exporter's
            // timex collector, timedatectl), which nspawn's seccomp filter refuses to a container
            // without CAP_SYS_TIME (measured: EPERM). Setting the clock still needs that
            // capability, which the container does not have.
            "--system-call-filter=adjtimex clock_adjtime".into(),
        ];
        let mut c = Container {
            name: p.node.name.clone(),
            work: work.to_path_buf(),
            root,
            log: log.to_path_buf(),
            host_if,
            attached: false,
            args,
            child: Cmd::new("true").spawn(Stdio::null(), Stdio::null(), Stdio::null())?,
        };
        c.boot()?;
        Ok(c)
    }

    /// Boot (again): systemd-nspawn under `script`, which gives it the terminal it wants for the
    /// console and appends what the console shows to the log.
    pub fn boot(&mut self) -> Result<()> {
        let line = std::iter::once("exec".to_string())
            .chain(
                self.args
                    .iter()
                    .map(|a| format!("'{}'", a.replace('\'', r"'\''"))),
            )
            .collect::<Vec<_>>()
            .join(" ");
        self.child = Cmd::new("script")
            .args(["--quiet", "--flush", "--append", "--command"])
            .arg(&line)
            .arg(&self.log)
            .spawn(Stdio::null(), Stdio::null(), Stdio::null())
            .with_context(|| format!("starting systemd-nspawn for {}", self.name))?;
        self.attached = false;
        Ok(())
    }

    /// Put the host end of the node's veth on the bridge once systemd-nspawn has made it.
    pub fn attach(&mut self) {
        if self.attached {
            return;
        }
        let ok = Cmd::new("ip")
            .args(["link", "set", &self.host_if, "master", BRIDGE, "up"])
            .output()
            .is_ok_and(|o| o.status.success());
        self.attached = ok;
    }

    /// The host end of its veth: its port on the nodes' bridge.
    pub fn bridge_port(&self) -> &str {
        &self.host_if
    }

    /// The container's init (pid 1 inside), for entering its namespaces: the first systemd
    /// below `script` (script -> [shell ->] systemd-nspawn -> systemd).
    pub fn leader(&self) -> Option<i32> {
        descendant(self.child.id() as i32, "systemd")
    }

    /// Run `cmd` inside the container (all its namespaces), as root, with the image's Java.
    pub fn exec(&self, cmd: &[&str], timeout: Duration) -> Result<std::process::Output> {
        let pid = self
            .leader()
            .with_context(|| format!("{}: the container is not running", self.name))?;
        Cmd::new("timeout")
            .arg(timeout.as_secs().to_string())
            .args(["nsenter", "--target", &pid.to_string(), "--all", "--"])
            .args(["/usr/bin/env", "-i"])
            .args(TOOL_ENV)
            .args(cmd)
            .output()
            .with_context(|| format!("{}: running {}", self.name, cmd.join(" ")))
    }

    /// Write a file into the running container's tree (its overlay, seen from the host), at
    /// `path` inside it; parents made as needed.
    pub fn write(&self, path: &str, bytes: &[u8], mode: u32) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let at = self.root.join(path.trim_start_matches('/'));
        if let Some(d) = at.parent() {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        crate::fetch::cache::write_atomic(&at, bytes)?;
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("{}: setting the mode of {}", self.name, at.display()))
    }

    /// Power the node off at once, as pulling its plug would: kill every process in it.
    pub fn power_off(&mut self) {
        if let Some(pid) = self.leader() {
            // Killing the pid namespace's init kills everything in the namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Halt cleanly (SIGTERM to systemd-nspawn: the container's systemd shuts down), then stop.
    pub fn stop(&mut self) {
        self.halt();
        self.finish();
    }

    /// Ask the container to halt (SIGTERM to systemd-nspawn) without waiting for it.
    pub fn halt(&mut self) {
        if let Some(nspawn) = self.nspawn() {
            unsafe { libc::kill(nspawn, libc::SIGTERM) };
        }
    }

    /// Wait up to 30 s for a halt asked for, then power off what is left.
    pub fn finish(&mut self) {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(100));
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            self.power_off();
        }
    }

    /// systemd-nspawn's own pid.
    fn nspawn(&self) -> Option<i32> {
        descendant(self.child.id() as i32, "systemd-nspawn")
    }

    pub fn unmount(&self) {
        let _ = Cmd::new("umount").arg(&self.root).output();
    }

    /// A stopped container onto another tree, as a new root slot would be: the overlay's upper
    /// layer (what the old root had written) is dropped, the data directory kept; then boot.
    pub fn swap(&mut self, tree: &Path) -> Result<()> {
        if matches!(self.child.try_wait(), Ok(None)) {
            bail!(
                "{}: still running: stop it before its tree is swapped",
                self.name
            );
        }
        self.unmount();
        for d in ["upper", "ovl-work"] {
            let d = self.work.join(d);
            if d.exists() {
                std::fs::remove_dir_all(&d).with_context(|| format!("removing {}", d.display()))?;
            }
        }
        mount_overlay(&self.name, tree, &self.work)?;
        self.boot()
    }
}

/// `tree` read-only under an overlay at WORK/root, its writes in WORK/upper.
fn mount_overlay(name: &str, tree: &Path, work: &Path) -> Result<()> {
    let (upper, scratch, root) = (work.join("upper"), work.join("ovl-work"), work.join("root"));
    for d in [&upper, &scratch, &root] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    Cmd::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            tree.display(),
            upper.display(),
            scratch.display()
        ))
        .arg(&root)
        .run()
        .with_context(|| format!("mounting {name}'s tree at {}", root.display()))?;
    Ok(())
}

/// The first process below `pid` (breadth by level, depth-first) whose name is `comm`.
fn descendant(pid: i32, comm: &str) -> Option<i32> {
    let mut queue = vec![pid];
    while let Some(pid) = queue.pop() {
        for c in children(pid) {
            let name = std::fs::read_to_string(format!("/proc/{c}/comm")).unwrap_or_default();
            if name.trim() == comm {
                return Some(c);
            }
            queue.push(c);
        }
    }
    None
}

/// The pids whose parent is `pid`.
fn children(pid: i32) -> Vec<i32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_veth_is_named_for_the_seeds_network_config() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/cluster.yaml");
        let c = crate::plan::resolve(&crate::recipe::load(&path).unwrap()).unwrap();
        let p = &c.nodes[0];
        // The seed matches `e*` when the recipe names no interface.
        assert!(crate::rootfs::render::seed(p)[2].1.contains("name: \"e*\""));
        assert_eq!(interface(p), "enode1");
        assert_eq!(host_side(p), "vb-node1");
        let mut long = p.clone();
        long.node.name = "a-very-long-node-name".into();
        assert!(interface(&long).len() <= 15 && host_side(&long).len() <= 15);
        long.node.interface = Some("ens3".into());
        assert_eq!(interface(&long), "ens3");
    }
}
