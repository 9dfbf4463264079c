//! A running cluster member as `up --check` reaches it: a container (its namespaces entered with
//! nsenter) or, in the mixed runtime (`up --vm NODE`), a QEMU VM booted from the node's image and
//! reached over the nodes' network by SSH as the recipe's sudo user, the way an operator would.
//!
//! Why a VM is reached by SSH and not by a back door: what is proven is the image as flashed (its
//! sshd, its users, its sudo rule), and nothing but the network crosses into a VM.

use std::ffi::OsString;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::util::run::Cmd;
use crate::vm::container::Container;

/// How the check logs into a VM: the recipe's first sudo user with an SSH key, and the key.
#[derive(Debug, Clone)]
pub struct Login {
    pub user: String,
    pub key: Option<PathBuf>,
    /// ssh's options that pin the node's host key (`pki::ssh::pin_options`); None when the
    /// recipe's secrets hold none for it (the host key is then not checked).
    pub pin: Option<Vec<String>>,
}

/// A node booted from its image in QEMU, its disk a copy-on-write overlay kept across a power-off.
pub struct VmMember {
    pub name: String,
    pub ip: Ipv4Addr,
    pub log: PathBuf,
    /// QEMU's command line, to boot the same VM (same disk overlay, same firmware variables) again.
    argv: Vec<OsString>,
    stderr: PathBuf,
    login: Option<Login>,
    /// Its tap on the nodes' bridge.
    pub port: String,
    pub child: Child,
}

impl VmMember {
    /// Start QEMU from `cmd` (the VM's whole command line).
    pub fn start(
        name: &str,
        ip: Ipv4Addr,
        cmd: &Cmd,
        log: &Path,
        stderr: &Path,
        login: Option<Login>,
        port: &str,
    ) -> Result<VmMember> {
        let argv = cmd.argv();
        let mut vm = VmMember {
            name: name.to_string(),
            ip,
            log: log.to_path_buf(),
            argv,
            stderr: stderr.to_path_buf(),
            login,
            port: port.to_string(),
            child: Cmd::new("true").spawn(Stdio::null(), Stdio::null(), Stdio::null())?,
        };
        let _ = vm.child.wait();
        vm.boot()?;
        Ok(vm)
    }

    /// Power on: QEMU from the saved command line; the serial console appends to the log.
    pub fn boot(&mut self) -> Result<()> {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr)
            .with_context(|| format!("opening {}", self.stderr.display()))?;
        self.child = Cmd::new(&self.argv[0])
            .args(&self.argv[1..])
            .spawn(Stdio::null(), Stdio::null(), err.into())
            .with_context(|| format!("starting QEMU for {}", self.name))?;
        Ok(())
    }

    /// Pull the plug: QEMU killed at once, no shutdown in the guest.
    pub fn power_off(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The ssh command line to the VM, ending with `--`.
    fn ssh(&self, timeout: Duration) -> Result<Cmd> {
        let login = self.login.as_ref().with_context(|| {
            format!(
                "{}: no user with an SSH key and sudo in the recipe, so the check cannot log into the VM\n\nhint: add a user with `sudo: true` and `ssh_authorized_keys`",
                self.name
            )
        })?;
        Ok(ssh_command(login, &self.ip.to_string(), timeout))
    }

    /// Run `cmd` in the VM as root (sudo), with the image's Java, like `Container::exec`.
    pub fn exec(&self, cmd: &[&str], timeout: Duration) -> Result<Output> {
        self.ssh(timeout)?
            .arg(sudo_tool_line(cmd))
            .output()
            .with_context(|| format!("{}: running {} over ssh", self.name, cmd.join(" ")))
    }

    /// Write a file into the VM (as root, renamed into place once whole).
    pub fn write(&self, path: &str, bytes: &[u8], mode: u32) -> Result<()> {
        let login = self.login.as_ref().with_context(|| {
            format!(
                "{}: no user with an SSH key and sudo in the recipe",
                self.name
            )
        })?;
        ssh_write(login, &self.ip.to_string(), &self.name, path, bytes, mode)
    }

    /// Until `deadline`: wait for sshd to let the check in (a VM's health can be reported on the
    /// console before cloud-init has written the user's key).
    pub fn await_login(&self, deadline: Duration) -> Result<f64> {
        let t = Instant::now();
        loop {
            match self.exec(&["true"], Duration::from_secs(60)) {
                Ok(o) if o.status.success() => return Ok(t.elapsed().as_secs_f64()),
                Ok(o) if t.elapsed() > deadline => bail!(
                    "{}: no login over ssh after {}s: {}",
                    self.name,
                    deadline.as_secs(),
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(e) if t.elapsed() > deadline => return Err(e),
                _ => std::thread::sleep(Duration::from_secs(5)),
            }
        }
    }
}

/// A member of `up`'s cluster: a container or a VM.
pub enum Member {
    Container(Container),
    Vm(VmMember),
}

impl Member {
    pub fn name(&self) -> &str {
        match self {
            Member::Container(c) => &c.name,
            Member::Vm(v) => &v.name,
        }
    }

    pub fn is_vm(&self) -> bool {
        matches!(self, Member::Vm(_))
    }

    pub fn log(&self) -> &Path {
        match self {
            Member::Container(c) => &c.log,
            Member::Vm(v) => &v.log,
        }
    }

    /// Run `cmd` on the member as root, with the image's Java; what it did.
    pub fn exec(&self, cmd: &[&str], timeout: Duration) -> Result<Output> {
        match self {
            Member::Container(c) => c.exec(cmd, timeout),
            Member::Vm(v) => v.exec(cmd, timeout),
        }
    }

    /// Run a tool on the node (`timeout` seconds) and require that it succeed: its stdout, or
    /// an error naming the node, the command, its exit status and the tail of its stderr. The
    /// one way the cluster checks run a tool on a node (`attempt` when failing is the point).
    pub fn tool<S: AsRef<str>>(&self, cmd: &[S], timeout: u64) -> Result<String> {
        let cmd: Vec<&str> = cmd.iter().map(AsRef::as_ref).collect();
        let o = self.exec(&cmd, Duration::from_secs(timeout))?;
        if !o.status.success() {
            bail!(
                "{}: `{}` failed ({}): {}",
                self.name(),
                cmd.join(" "),
                o.status,
                crate::util::run::stderr_tail(&String::from_utf8_lossy(&o.stderr), 8)
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Run a tool on the node whatever comes of it (a refusal is what the check wants):
    /// whether it succeeded, and its stdout and stderr together.
    pub fn attempt(&self, cmd: &[&str], timeout: u64) -> Result<(bool, String)> {
        let o = self.exec(cmd, Duration::from_secs(timeout))?;
        Ok((
            o.status.success(),
            format!(
                "{}\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ))
    }

    pub fn write(&self, path: &str, bytes: &[u8], mode: u32) -> Result<()> {
        match self {
            Member::Container(c) => c.write(path, bytes, mode),
            Member::Vm(v) => v.write(path, bytes, mode),
        }
    }

    pub fn power_off(&mut self) {
        match self {
            Member::Container(c) => c.power_off(),
            Member::Vm(v) => v.power_off(),
        }
    }

    pub fn boot(&mut self) -> Result<()> {
        match self {
            Member::Container(c) => c.boot(),
            Member::Vm(v) => v.boot(),
        }
    }

    /// Cut the member off the nodes' network, both directions (its port leaves the bridge), or
    /// put it back: a network partition, with the node itself running on.
    pub fn cut_off(&self, cut: bool) -> Result<()> {
        let port = match self {
            Member::Container(c) => c.bridge_port(),
            Member::Vm(v) => &v.port,
        };
        let args: &[&str] = if cut {
            &["link", "set", port, "nomaster"]
        } else {
            &["link", "set", port, "master", crate::vm::container::BRIDGE]
        };
        crate::util::run::Cmd::new("ip")
            .args(args)
            .run()
            .with_context(|| {
                format!(
                    "{}: {} the nodes' bridge",
                    self.name(),
                    if cut {
                        "cutting it off"
                    } else {
                        "putting it back on"
                    }
                )
            })?;
        Ok(())
    }

    /// Whether it has stopped (a container's veth is put on the bridge first, once it exists).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        match self {
            Member::Container(c) => {
                c.attach();
                c.child.try_wait().ok().flatten()
            }
            Member::Vm(v) => v.child.try_wait().ok().flatten(),
        }
    }

    /// Stop: a container halts cleanly; a VM is stopped (its disk overlay is thrown away).
    pub fn stop(&mut self) {
        self.halt();
        self.finish();
    }

    /// Ask to stop without waiting: so that a cluster's members shut down at once, not in turn.
    pub fn halt(&mut self) {
        match self {
            Member::Container(c) => c.halt(),
            Member::Vm(v) => unsafe {
                libc::kill(v.child.id() as i32, libc::SIGTERM);
            },
        }
    }

    /// Wait for a stop asked by `halt` (a container up to 30 s, a VM 10 s), then power off.
    pub fn finish(&mut self) {
        match self {
            Member::Container(c) => {
                c.finish();
                c.unmount();
            }
            Member::Vm(v) => {
                let t = Instant::now();
                while t.elapsed() < Duration::from_secs(10)
                    && matches!(v.child.try_wait(), Ok(None))
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                v.power_off();
            }
        }
    }
}

/// The remote command line that runs `cmd` as root (sudo, no password) in a clean environment
/// with the image's Java (`TOOL_ENV`), as `Container::exec` runs it: every word shell-quoted.
pub fn sudo_tool_line(cmd: &[&str]) -> String {
    ["sudo", "-n", "/usr/bin/env", "-i"]
        .into_iter()
        .chain(crate::vm::container::TOOL_ENV)
        .chain(cmd.iter().copied())
        .map(|w| crate::util::run::shell_quote(w.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `ssh` to `host` as `login`, in batch mode, given up after `timeout`; ends with `--` (the remote
/// command follows). The checks' logins into the mixed runtime's VM and `imgbuild update`.
pub fn ssh_command(login: &Login, host: &str, timeout: Duration) -> Cmd {
    let c = Cmd::new("timeout")
        .arg(timeout.as_secs().to_string())
        .arg("ssh");
    let mut c = match &login.pin {
        Some(pin) => c.args(pin),
        None => c.args(crate::vm::hostlink::SSH_OPTIONS),
    }
    .args([
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=20",
        "-o",
        "ServerAliveInterval=15",
        "-o",
        "ServerAliveCountMax=4",
    ]);
    if let Some(k) = &login.key {
        c = c.arg("-i").arg(k).args(["-o", "IdentitiesOnly=yes"]);
    }
    c.arg(format!("{}@{host}", login.user)).arg("--")
}

/// Write a file on `host` over SSH as root (sudo), under a temporary name renamed into place once
/// whole: a VM member's files, `submit`'s topology. `name` is the node's, for errors.
pub fn ssh_write(
    login: &Login,
    host: &str,
    name: &str,
    path: &str,
    bytes: &[u8],
    mode: u32,
) -> Result<()> {
    let q = |s: &str| crate::util::run::shell_quote(s.as_ref());
    let dir = Path::new(path)
        .parent()
        .map_or("/".into(), |d| d.display().to_string());
    let script = format!(
        "umask 077 && mkdir -p {d} && cat > {t} && chmod {mode:o} {t} && mv {t} {p}",
        d = q(&dir),
        t = q(&format!("{path}.imgbuild-tmp")),
        p = q(path),
    );
    let mut child = ssh_command(login, host, Duration::from_secs(120))
        .arg(format!("sudo -n sh -c {}", q(&script)))
        .spawn(Stdio::piped(), Stdio::null(), Stdio::piped())
        .with_context(|| format!("{name}: ssh to write {path}"))?;
    child
        .stdin
        .take()
        .context("ssh's stdin")?
        .write_all(bytes)
        .with_context(|| format!("{name}: writing {path} over ssh"))?;
    let o = child.wait_with_output()?;
    if !o.status.success() {
        bail!(
            "{name}: writing {path} over ssh failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(())
}

/// The recipe's first user with an SSH key and sudo, the key `make demo` made
/// (BUILD_DIR/ssh/id_ed25519) when it exists, and the node's pinned host key.
pub fn login(p: &crate::plan::Plan, build_dir: &Path) -> Option<Login> {
    let u = p
        .users
        .iter()
        .find(|u| u.sudo && !u.ssh_authorized_keys.is_empty())?;
    let key = build_dir.join("ssh").join("id_ed25519");
    Some(Login {
        user: u.name.clone(),
        key: key.is_file().then_some(key),
        pin: crate::pki::ssh::pin_options(p),
    })
}
