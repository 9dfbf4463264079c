//! Booting images in QEMU: UEFI firmware found through QEMU's firmware descriptors, KVM when it
//! really works (a short probe boot) and software emulation otherwise, the image in snapshot mode
//! so it never changes, the serial console in a log file.

pub use crate::util::tools::QEMU;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::util::run::Cmd;

/// UEFI firmware: the code image and the template of its variable store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firmware {
    pub code: PathBuf,
    pub vars: PathBuf,
    pub description: String,
    /// Secure Boot enforced, Microsoft's keys enrolled (needs SMM on q35).
    pub secure: bool,
}

impl Firmware {
    /// The machine type and flash options this firmware needs.
    pub fn machine_args(&self) -> Vec<String> {
        if self.secure {
            // SMM keeps the variable store (and so the Secure Boot keys) out of the guest's reach.
            vec![
                "-machine".into(),
                "q35,smm=on".into(),
                "-global".into(),
                "driver=cfi.pflash01,property=secure,value=on".into(),
            ]
        } else {
            vec!["-machine".into(), "q35".into()]
        }
    }
}

const DESCRIPTOR_DIRS: &[&str] = &[
    "/etc/qemu/firmware",
    "/usr/share/qemu/firmware",
    "/usr/local/share/qemu/firmware",
];

/// Known locations of Secure Boot firmware with Microsoft's keys enrolled (Debian's ovmf).
const FALLBACK_SECURE: &[(&str, &str)] = &[(
    "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd",
    "/usr/share/OVMF/OVMF_VARS_4M.ms.fd",
)];

/// Known locations, used only when no descriptor matches.
const FALLBACK: &[(&str, &str)] = &[
    (
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        "/usr/share/OVMF/OVMF_VARS_4M.fd",
    ),
    (
        "/usr/share/OVMF/OVMF_CODE.fd",
        "/usr/share/OVMF/OVMF_VARS.fd",
    ),
    (
        "/usr/share/edk2/ovmf/OVMF_CODE.fd",
        "/usr/share/edk2/ovmf/OVMF_VARS.fd",
    ),
];

/// Does this descriptor offer UEFI for x86_64 q35 as flash: plain (no Secure Boot
/// enforcement) when `secure` is false, else Secure Boot with enrolled keys?
fn suitable(d: &serde_json::Value, secure: bool) -> Option<Firmware> {
    let types = d["interface-types"].as_array()?;
    if !types.iter().any(|t| t == "uefi") {
        return None;
    }
    let features = d["features"].as_array().cloned().unwrap_or_default();
    let has = |name: &str| features.iter().any(|f| f == name);
    if secure {
        if !(has("secure-boot") && has("enrolled-keys") && has("requires-smm")) {
            return None;
        }
    } else if has("secure-boot") || has("enrolled-keys") || has("requires-smm") {
        return None;
    }
    let targets = d["targets"].as_array()?;
    let q35 = targets.iter().any(|t| {
        t["architecture"] == "x86_64"
            && t["machines"].as_array().is_some_and(|m| {
                m.iter()
                    .any(|m| m.as_str().is_some_and(|m| m.contains("q35")))
            })
    });
    let map = &d["mapping"];
    if !q35 || map["device"] != "flash" {
        return None;
    }
    let code = PathBuf::from(map["executable"]["filename"].as_str()?);
    let vars = PathBuf::from(map["nvram-template"]["filename"].as_str()?);
    (code.is_file() && vars.is_file()).then(|| Firmware {
        code,
        vars,
        description: d["description"].as_str().unwrap_or("").to_string(),
        secure,
    })
}

/// The UEFI firmware to boot with (`secure`: Secure Boot enforced with Microsoft's keys
/// enrolled): the first suitable descriptor by file name (QEMU's own priority order), else a
/// known path.
pub fn firmware(secure: bool) -> Result<Firmware> {
    let mut files: Vec<PathBuf> = DESCRIPTOR_DIRS
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|rd| rd.flatten().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort_by_key(|p| p.file_name().map(|n| n.to_os_string()));
    for f in &files {
        let Ok(text) = std::fs::read(f) else { continue };
        let Ok(d) = serde_json::from_slice::<serde_json::Value>(&text) else {
            continue;
        };
        if let Some(fw) = suitable(&d, secure) {
            return Ok(fw);
        }
    }
    let known = if secure { FALLBACK_SECURE } else { FALLBACK };
    for (code, vars) in known {
        if Path::new(code).is_file() && Path::new(vars).is_file() {
            return Ok(Firmware {
                code: code.into(),
                vars: vars.into(),
                description: "known path (no firmware descriptor matched)".into(),
                secure,
            });
        }
    }
    bail!(
        "no {}UEFI firmware for x86_64: looked for descriptors in {} and at {}\n\nhint: apt-get install ovmf",
        if secure {
            "Secure Boot (enrolled keys, SMM) "
        } else {
            ""
        },
        DESCRIPTOR_DIRS.join(", "),
        known[0].0
    )
}

/// Can this machine run OVMF under KVM? /dev/kvm existing is not enough (some paravirtual
/// variants fail with "KVM internal error" once the firmware runs), so boot the firmware for a
/// few seconds with no disk and see whether it survives.
pub fn kvm_works(fw: &Firmware, work: &Path) -> bool {
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    else {
        return false;
    };
    drop(f);
    let vars = work.join("kvm-probe-vars.fd");
    if std::fs::copy(&fw.vars, &vars).is_err() {
        return false;
    }
    let child = Cmd::new(QEMU.command)
        .args(fw.machine_args())
        .args(["-accel", "kvm", "-m", "256", "-nodefaults"])
        .args([
            "-display", "none", "-serial", "none", "-monitor", "none", "-net", "none",
        ])
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,readonly=on,file={}",
            fw.code.display()
        ))
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,file={}", vars.display()))
        .spawn(Stdio::null(), Stdio::null(), Stdio::piped());
    let Ok(mut child) = child else { return false };
    let start = Instant::now();
    let ok = loop {
        match child.try_wait() {
            Ok(Some(_)) => break false, // died: KVM refused or failed
            Ok(None) if start.elapsed() > Duration::from_secs(4) => break true,
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let _ = std::fs::remove_file(&vars);
    ok && !err.contains("KVM internal error")
}

/// The network a VM is attached to.
pub enum Net {
    /// A NIC whose frames go to a UDP port on 127.0.0.1 that nobody reads: the guest configures
    /// its interface, and nothing leaves the host.
    Isolated { local: u16, peer: u16 },
    /// A shared L2 segment (QEMU socket netdev, multicast on 127.0.0.1).
    Mcast { group: String },
    /// A tap device made beforehand (on the containers' bridge: the mixed runtime).
    Tap { ifname: String },
}

/// One VM to start.
pub struct Vm<'a> {
    pub name: &'a str,
    pub image: &'a Path,
    pub firmware: &'a Firmware,
    pub vars: &'a Path,
    pub kvm: bool,
    pub memory_mb: u32,
    pub cpus: u32,
    pub mac: String,
    /// The NIC's QEMU device model (virtio-net-pci; e1000e for what bare metal names enpXsY).
    pub nic: &'a str,
    pub net: Net,
    pub serial_log: &'a Path,
    /// Also show the serial console on this terminal (stdio).
    pub console: bool,
    /// Extra block devices attached read-only (e.g. a seed ISO on virtio-scsi).
    pub cdrom: Option<&'a Path>,
    /// Writes go to `image` itself (a per-run qcow2 overlay, kept across a power-off) instead of
    /// a temporary snapshot.
    pub writable: bool,
    /// A restart of the guest restarts the machine (`imgbuild boot`, where `update` restarts a
    /// node into its other root slot); otherwise QEMU exits (a check's boot that ends in a panic
    /// or reset ends the run).
    pub reboot: bool,
}

impl Vm<'_> {
    pub fn command(&self) -> Cmd {
        let mut c = Cmd::new(QEMU.command)
            .args(["-name", self.name])
            .args(self.firmware.machine_args())
            .args(["-accel", if self.kvm { "kvm" } else { "tcg" }])
            .arg("-m")
            .arg(self.memory_mb.to_string())
            .arg("-smp")
            .arg(self.cpus.to_string())
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .args(["-monitor", "none"])
            .args(if self.reboot {
                None
            } else {
                Some("-no-reboot")
            })
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,readonly=on,file={}",
                self.firmware.code.display()
            ))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", self.vars.display()))
            // snapshot=on: writes go to a temporary overlay, the image never changes.
            .arg("-drive")
            .arg(format!(
                "file={},format={},if=virtio,snapshot={}",
                self.image.display(),
                if self.image.extension().is_some_and(|e| e == "qcow2") {
                    "qcow2"
                } else {
                    "raw"
                },
                if self.writable { "off" } else { "on" }
            ))
            .arg("-chardev")
            .arg(if self.console {
                format!(
                    "stdio,id=s0,signal=on,logfile={}",
                    self.serial_log.display()
                )
            } else {
                // append: a VM booted again (the mixed runtime's node loss) adds to its console log.
                format!("file,id=s0,path={},append=on", self.serial_log.display())
            })
            .args(["-serial", "chardev:s0"])
            .args(["-device", "virtio-rng-pci"]);
        if let Some(iso) = self.cdrom {
            c = c
                .args(["-device", "virtio-scsi-pci,id=scsi0"])
                .arg("-drive")
                .arg(format!(
                    "file={},format=raw,if=none,id=seed,readonly=on,media=cdrom",
                    iso.display()
                ))
                .args(["-device", "scsi-cd,bus=scsi0.0,drive=seed"]);
        }
        let netdev = match &self.net {
            Net::Isolated { local, peer } => {
                format!("socket,id=n0,udp=127.0.0.1:{peer},localaddr=127.0.0.1:{local}")
            }
            Net::Mcast { group } => format!("socket,id=n0,mcast={group},localaddr=127.0.0.1"),
            Net::Tap { ifname } => format!("tap,id=n0,ifname={ifname},script=no,downscript=no"),
        };
        c.arg("-netdev")
            .arg(netdev)
            .arg("-device")
            .arg(format!("{},netdev=n0,mac={}", self.nic, self.mac))
    }
}

/// Two free UDP ports on 127.0.0.1 (for an isolated NIC: bind one, send to the other).
pub fn free_udp_ports() -> Result<(u16, u16)> {
    let a = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let b = std::net::UdpSocket::bind("127.0.0.1:0")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

/// A stable locally administered MAC for a node without one in the recipe (52:54:00 is QEMU's).
pub fn default_mac(node: &str) -> String {
    let b = crate::util::ids::uuid_v4(format!("imgbuild mac\0{node}").as_bytes());
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

/// What the serial console showed.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub login_hostname: Option<String>,
    pub addresses: Vec<String>,
    pub cloud_init_finished: bool,
    /// The kernel's `secureboot:` line: enabled or not.
    pub secure_boot: Option<bool>,
    /// imgbuild-health's disk line, in MiB.
    pub disk: Option<DiskSeen>,
    /// imgbuild-health's latest data line: the data partition mounted with this node's identity
    /// (the line itself, for the verdict).
    pub data: Option<(bool, String)>,
    pub lines: usize,
}

impl Seen {
    /// Update from one line of the serial console.
    pub fn line(&mut self, line: &str) {
        self.lines += 1;
        // Remove ANSI colour codes systemd uses on the console.
        let mut clean = String::with_capacity(line.len());
        let mut esc = false;
        for c in line.chars() {
            match (esc, c) {
                (false, '\x1b') => esc = true,
                (true, c) if c.is_ascii_alphabetic() => esc = false,
                (true, _) => {}
                (false, c) => clean.push(c),
            }
        }
        if let Some(i) = clean.find(" login:") {
            let host = clean[..i].split_whitespace().last().unwrap_or("");
            if !host.is_empty() {
                self.login_hostname = Some(host.to_string());
            }
        }
        // cloud-init's interface table: | dev | up | address | mask | scope | hw |
        if clean.contains("ci-info:") && clean.contains("| True |") {
            let cols: Vec<&str> = clean.split('|').map(str::trim).collect();
            if let Some(addr) = cols.get(3)
                && addr.parse::<std::net::Ipv4Addr>().is_ok()
                && !addr.starts_with("127.")
                && !self.addresses.iter().any(|a| a == addr)
            {
                self.addresses.push(addr.to_string());
            }
        }
        // Printed by the kernel's EFI setup (arch/x86/kernel/setup.c), from the firmware's state.
        if clean.contains("secureboot: Secure boot enabled") {
            self.secure_boot = Some(true);
        } else if clean.contains("secureboot: Secure boot disabled") {
            self.secure_boot = Some(false);
        }
        if let Some(i) = clean.find("imgbuild-health ")
            && clean.contains(" check=disk ")
        {
            let field = |k: &str| {
                clean[i..]
                    .split_whitespace()
                    .find_map(|kv| kv.strip_prefix(k)?.parse::<u64>().ok())
            };
            if let (Some(root), Some(slot_b), Some(data), Some(disk)) = (
                field("root_mb="),
                field("slot_b_mb="),
                field("data_mb="),
                field("disk_mb="),
            ) {
                self.disk = Some(DiskSeen {
                    root,
                    slot_b,
                    data,
                    disk,
                });
            }
        }
        if let Some(i) = clean.find("imgbuild-health ")
            && clean.contains(" check=data ")
        {
            self.data = Some((
                clean.contains(" ok=yes "),
                clean[i..].trim_end().to_string(),
            ));
        }
        if clean.contains("Cloud-init v.") && clean.contains(" finished at ") {
            self.cloud_init_finished = true;
        }
    }
}

/// The partitions of a booted node's disk as its health unit measured them, in MiB (0: absent).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DiskSeen {
    /// The root slot it booted from.
    pub root: u64,
    /// The other root slot.
    pub slot_b: u64,
    /// The data partition.
    pub data: u64,
    /// The whole disk.
    pub disk: u64,
}

/// Follow `log` (written by a running VM) until `done(seen)` or the deadline or the VM's exit,
/// echoing lines to `echo` when given.
pub fn watch(
    child: &mut Child,
    log: &Path,
    deadline: Duration,
    mut echo: Option<&mut dyn std::io::Write>,
    done: impl Fn(&Seen) -> bool,
) -> Result<Seen> {
    let start = Instant::now();
    let mut seen = Seen::default();
    while !log.exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let f = std::fs::File::open(log).with_context(|| format!("opening {}", log.display()))?;
    let mut r = BufReader::new(f);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = r.read_until(b'\n', &mut buf)?;
        if n > 0 && buf.ends_with(b"\n") {
            let line = String::from_utf8_lossy(&buf);
            if let Some(w) = echo.as_mut() {
                let _ = w.write_all(line.as_bytes());
            }
            seen.line(line.trim_end());
            if done(&seen) {
                return Ok(seen);
            }
            continue;
        }
        if n > 0 {
            // A partial line: step back and wait for the rest.
            r.seek_relative(-(n as i64))?;
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "QEMU exited ({status}) before the guest was ready; serial log: {}",
                log.display()
            );
        }
        if start.elapsed() > deadline {
            bail!(
                "the guest was not ready after {}s; serial log: {}",
                deadline.as_secs(),
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_console_lines() {
        let mut s = Seen::default();
        s.line("[   40.17] cloud-init[265]: ci-info: | enp0s2 | True |      192.168.200.151       | 255.255.255.0 | global | 52:54:00:12:34:51 |");
        s.line("[   40.17] cloud-init[265]: ci-info: |   lo   | True |         127.0.0.1          |   255.0.0.0   |  host  |         .         |");
        s.line("\x1b[0;32m  OK  \x1b[0m] Reached target");
        s.line("[    0.000000] secureboot: Secure boot enabled");
        assert_eq!(s.secure_boot, Some(true));
        s.line("[   61.2] python3[512]: imgbuild-health node=node1 check=disk ok=yes round=1 root_mb=2048 slot_b_mb=2048 data_mb=4094 disk_mb=8192");
        assert_eq!(
            s.disk,
            Some(DiskSeen {
                root: 2048,
                slot_b: 2048,
                data: 4094,
                disk: 8192
            })
        );
        s.line("node1 login: [   55.18] cloud-init[387]: Cloud-init v. 22.4.2 finished at Wed, 25 Nov 2026 09:36:32 +0000. Datasource DataSourceNoCloud");
        assert_eq!(s.login_hostname.as_deref(), Some("node1"));
        assert_eq!(s.addresses, ["192.168.200.151"]);
        assert!(s.cloud_init_finished);
        assert_eq!(default_mac("node1"), default_mac("node1"));
        assert_ne!(default_mac("node1"), default_mac("node2"));
    }

    #[test]
    fn descriptor_selection() {
        let d: serde_json::Value = serde_json::from_str(
            r#"{"interface-types":["uefi"],"mapping":{"device":"flash","executable":{"filename":"/nonexistent/CODE.fd"},"nvram-template":{"filename":"/nonexistent/VARS.fd"}},"targets":[{"architecture":"x86_64","machines":["pc-q35-*"]}],"features":["secure-boot"]}"#,
        )
        .unwrap();
        assert!(
            suitable(&d, false).is_none(),
            "secure boot firmware is skipped"
        );
        assert!(
            suitable(&d, true).is_none(),
            "secure boot without enrolled keys and SMM is not what --secure-boot means"
        );
    }
}
