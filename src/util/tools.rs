//! External tools imgbuild needs: checked before work starts, each with why and which package.

use anyhow::{Result, bail};

pub struct Tool {
    pub command: &'static str,
    pub why: &'static str,
    pub package: &'static str,
}

// Every external tool imgbuild runs, declared once: what it is for and which Debian/Ubuntu
// package has it. A command checks the ones it needs before it starts (`require`); `ALL` is the
// table a test holds every tool the source runs by name to.

macro_rules! tools {
    ($($name:ident: $command:literal, $package:literal, $why:literal;)*) => {
        $(pub const $name: Tool = Tool { command: $command, why: $why, package: $package };)*
        /// Every tool above.
        pub const ALL: &[Tool] = &[$($name),*];
    };
}

tools! {
    MMDEBSTRAP: "mmdebstrap", "mmdebstrap", "builds an apt-based base OS (base kind mmdebstrap)";
    OPENSSL: "openssl", "openssl", "makes the cluster's CA and node certificates (once, in the recipe's secrets directory)";
    CP: "cp", "coreutils", "hard-link copies of the shared tree for each node";
    MOUNT: "mount", "mount", "mounts a container's overlay over its node tree (imgbuild up --runtime container)";
    UMOUNT: "umount", "mount", "unmounts a container's overlay when it stops";
    TIMEOUT: "timeout", "coreutils", "bounds each tool the cluster checks run in a node";
    NSENTER: "nsenter", "util-linux", "runs the cluster checks' tools inside a container's namespaces";
    MKFS_EXT4: "mkfs.ext4", "e2fsprogs", "writes the root filesystem into the disk image";
    TUNE2FS: "tune2fs", "e2fsprogs", "gives each node's copy of the shared root filesystem its own UUID";
    E2FSCK: "e2fsck", "e2fsprogs", "re-indexes and checks each node's root filesystem";
    DEBUGFS: "debugfs", "e2fsprogs", "fixes inode times so the root filesystem is bit-identical across builds";
    QEMU_IMG: "qemu-img", "qemu-utils", "converts the raw disk to qcow2, and makes the throwaway disk overlays VMs boot from";
    XORRISO: "xorriso", "xorriso", "writes the ISO9660 NoCloud seed (cidata)";
    MKFS_FAT: "mkfs.fat", "dosfstools", "formats the EFI system partition and the FAT seed volume";
    MCOPY: "mcopy", "mtools", "copies the boot chain and the seed into FAT volumes without mounting them";
    SSH_KEYGEN: "ssh-keygen", "openssh-client", "signs and verifies the provenance (the recipe's provenance.signing_key)";
    SSH: "ssh", "openssh-client", "logs into the nodes (imgbuild ssh; the mixed runtime's VM for the checks)";
    QEMU: "qemu-system-x86_64", "qemu-system-x86", "boots images";
    NSPAWN: "systemd-nspawn", "systemd-container", "boots node trees as containers (imgbuild up --runtime container)";
    SCRIPT: "script", "bsdutils", "gives each container's console a terminal (systemd-nspawn needs one)";
    IP: "ip", "iproute2", "sets up the private network namespace the nodes share, its bridge and taps";
}

fn on_path(cmd: &str) -> bool {
    locate(cmd).is_some()
}

/// Where the executable `cmd` is: on PATH, else in /usr/sbin or /sbin, where Debian and Ubuntu
/// keep mkfs.ext4, debugfs, sfdisk and the like, off an ordinary user's PATH.
pub fn locate(cmd: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(cmd))
        .find(|f| {
            std::fs::metadata(f).is_ok_and(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
        })
}

/// Fail naming every missing tool, what it is for and the Debian/Ubuntu package providing it.
pub fn require(tools: &[Tool]) -> Result<()> {
    let missing: Vec<String> = tools
        .iter()
        .filter(|t| !on_path(t.command))
        .map(|t| format!("  {:<12} {} (package: {})", t.command, t.why, t.package))
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing tools:\n{}\n\nhint: apt-get install {}",
            missing.join("\n"),
            tools
                .iter()
                .filter(|t| !on_path(t.command))
                .map(|t| t.package)
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every tool the source runs by name is in the table (shells and `true` aside, and what
    /// only tests run).
    #[test]
    fn every_tool_the_source_runs_is_declared() {
        let mut undeclared = Vec::new();
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut dirs = vec![src];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                    continue;
                }
                if p.extension().is_none_or(|x| x != "rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&p).unwrap();
                // What comes before the file's tests.
                let code = text.split("#[cfg(test)]").next().unwrap();
                for piece in code.split("Cmd::new(\"").skip(1) {
                    let name = piece.split('"').next().unwrap();
                    if !["sh", "true"].contains(&name) && !ALL.iter().any(|t| t.command == name) {
                        undeclared.push(format!("{}: {name}", p.display()));
                    }
                }
            }
        }
        assert!(undeclared.is_empty(), "not in util::tools: {undeclared:?}");
    }

    #[test]
    fn missing_tool_is_named_with_its_package() {
        let t = Tool {
            command: "imgbuild-no-such-tool",
            why: "testing",
            package: "nothing",
        };
        let e = require(&[t, CP]).unwrap_err().to_string();
        assert!(
            e.contains("imgbuild-no-such-tool")
                && e.contains("package: nothing")
                && !e.contains("coreutils"),
            "{e}"
        );
    }
}
