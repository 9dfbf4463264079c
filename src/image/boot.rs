//! The UEFI boot chain, taken from the node's own tree: systemd-boot with a loader entry (kernel
//! and initrd on the ESP), or shim + signed GRUB with a grub.cfg that finds the root filesystem by
//! UUID. Files are read through the confined root, so a base whose /boot links point outside its
//! tree cannot pull host files into the image.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::rootfs::confined::Root;

/// What the ESP will hold: (path inside the ESP, content).
pub struct Esp {
    pub files: Vec<(PathBuf, Vec<u8>)>,
    /// "systemd-boot" or "shim+grub".
    pub loader: &'static str,
    pub kernel_version: String,
    pub cmdline: String,
}

impl Esp {
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|(_, c)| c.len() as u64).sum()
    }
}

const SYSTEMD_BOOT: &str = "usr/lib/systemd/boot/efi/systemd-bootx64.efi";
const SHIMS: &[&str] = &[
    "usr/lib/shim/shimx64.efi.signed.latest",
    "usr/lib/shim/shimx64.efi.signed",
];
const MOKMANAGERS: &[&str] = &[
    "usr/lib/shim/mmx64.efi.signed.latest",
    "usr/lib/shim/mmx64.efi.signed",
    "usr/lib/shim/mmx64.efi",
];
const GRUB_SIGNED: &str = "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed";

/// Compare kernel versions like `6.1.0-50-cloud-amd64` by their numeric fields.
fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap_or(0))
        .collect()
}

/// The newest kernel in /boot that has an initrd: its version.
fn kernel(root: &Root) -> Result<String> {
    let names = root.list_dir(Path::new("boot"))?;
    let mut versions: Vec<String> = names
        .iter()
        .filter_map(|n| n.to_str()?.strip_prefix("vmlinuz-").map(str::to_string))
        .filter(|v| {
            names
                .iter()
                .any(|n| n.to_str() == Some(&format!("initrd.img-{v}")))
        })
        .collect();
    versions.sort_by_key(|v| version_key(v));
    versions.pop().with_context(|| {
        format!(
            "{}: the base has no kernel with an initrd in /boot (vmlinuz-VERSION and initrd.img-VERSION)\n\nhint: the base must include a kernel and initramfs-tools (for mmdebstrap: add linux-generic on Ubuntu or linux-image-amd64 on Debian, and initramfs-tools, to base.packages; a tarball base must be built with them). Canonical's cloud root tarball has none: its build purges linux-* and grub-*",
            root.path().display()
        )
    })
}

fn read(root: &Root, rel: &str) -> Result<Option<Vec<u8>>> {
    root.read_file(Path::new(rel))
        .with_context(|| format!("reading /{rel} from {}", root.path().display()))
}

/// The distribution's EFI vendor directory: `ID` of the tree's os-release (`ubuntu`, `debian`),
/// which is where its signed GRUB looks for grub.cfg.
pub fn vendor(root: &Root) -> Result<String> {
    for rel in ["etc/os-release", "usr/lib/os-release"] {
        if let Some(text) = read(root, rel)? {
            let text = String::from_utf8_lossy(&text);
            if let Some(id) = text.lines().find_map(|l| l.strip_prefix("ID=")) {
                let id = id.trim().trim_matches('"');
                if !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                    return Ok(id.to_string());
                }
            }
        }
    }
    bail!(
        "{}: the base has no os-release with an ID (needed to name the EFI vendor directory)",
        root.path().display()
    )
}

/// The ESP for the tree at `root`, booting the root filesystem `root_uuid`.
pub fn esp(root: &Root, root_uuid: &str) -> Result<Esp> {
    let kver = kernel(root)?;
    // Serial and VGA consoles: QEMU's -serial and a bare-metal screen both show the boot; the
    // last console is /dev/console (systemd's messages, the login prompt).
    // panic=10: a kernel that cannot mount its root (a slot being tried) restarts the machine,
    // and the boot counter falls back to the other slot.
    let cmdline = format!("root=UUID={root_uuid} rw console=tty0 console=ttyS0,115200n8 panic=10");
    if let Some(sdboot) = read(root, SYSTEMD_BOOT)? {
        // Only systemd-boot takes the kernel and initrd onto the ESP (GRUB reads them from the
        // root filesystem): read here, not before, or a shim+GRUB build holds some 40 MiB it
        // never writes (the peak memory of a build).
        let linux = read(root, &format!("boot/vmlinuz-{kver}"))?.context("kernel vanished")?;
        let initrd = read(root, &format!("boot/initrd.img-{kver}"))?.context("initrd vanished")?;
        let dir = format!("imgbuild/{kver}");
        let entry = format!(
            "title   {kver} (imgbuild)\nversion {kver}\nlinux   /{dir}/linux\ninitrd  /{dir}/initrd\noptions {cmdline}\n"
        );
        return Ok(Esp {
            files: vec![
                ("EFI/BOOT/BOOTX64.EFI".into(), sdboot.clone()),
                ("EFI/systemd/systemd-bootx64.efi".into(), sdboot),
                (
                    "loader/loader.conf".into(),
                    // No menu, and no editing the kernel command line at the console.
                    b"default imgbuild.conf\ntimeout 0\neditor no\n".to_vec(),
                ),
                ("loader/entries/imgbuild.conf".into(), entry.into_bytes()),
                (format!("{dir}/linux").into(), linux),
                (format!("{dir}/initrd").into(), initrd),
            ],
            loader: "systemd-boot",
            kernel_version: kver,
            cmdline,
        });
    }
    let mut shim = None;
    for s in SHIMS {
        if let Some(b) = read(root, s)? {
            shim = Some(b);
            break;
        }
    }
    let grub = read(root, GRUB_SIGNED)?;
    let (Some(shim), Some(grub)) = (shim, grub) else {
        bail!(
            "{}: the base has no UEFI boot loader: neither /{SYSTEMD_BOOT} (systemd-boot-efi) nor /usr/lib/shim/shimx64.efi.signed with /{GRUB_SIGNED} (shim-signed, grub-efi-amd64-signed)",
            root.path().display()
        );
    };
    // Laid out as `grub-install --uefi-secure-boot --removable` plus the vendor directory
    // (Debian/Ubuntu install-signed.patch): shim as the removable-media loader EFI/BOOT/BOOTX64.EFI
    // with GRUB beside it (shim loads grubx64.efi from its own directory), and the same chain in
    // EFI/<vendor>/ for firmware boot entries. The signed GRUB has its prefix baked in as
    // /EFI/<vendor> (debian, ubuntu) and reads grub.cfg there, else from the directory it was
    // started from; the menu loads the kernel from the root filesystem, found by UUID. No
    // fbx64.efi next to BOOTX64.EFI: shim would run the fallback instead of GRUB.
    let vendor = vendor(root)?;
    let cfg = grub_cfg(&vendor);
    let mut files = vec![
        (PathBuf::from("EFI/BOOT/BOOTX64.EFI"), shim.clone()),
        ("EFI/BOOT/grubx64.efi".into(), grub.clone()),
        ("EFI/BOOT/grub.cfg".into(), cfg.clone().into_bytes()),
        (format!("EFI/{vendor}/shimx64.efi").into(), shim),
        (format!("EFI/{vendor}/grubx64.efi").into(), grub),
        (format!("EFI/{vendor}/grub.cfg").into(), cfg.into_bytes()),
        (
            format!("EFI/{vendor}/grubenv").into(),
            grubenv(&[("imgbuild_default", "a")])?,
        ),
        (
            slot_entry_path('a').into(),
            slot_entry('a', &kver, root_uuid, &cmdline).into_bytes(),
        ),
    ];
    for m in MOKMANAGERS {
        if let Some(b) = read(root, m)? {
            files.push(("EFI/BOOT/mmx64.efi".into(), b.clone()));
            files.push((format!("EFI/{vendor}/mmx64.efi").into(), b));
            break;
        }
    }
    Ok(Esp {
        files,
        loader: "shim+grub",
        kernel_version: kver,
        cmdline,
    })
}

/// Where on the ESP the boot entry of root slot `slot` is: the kernel and initrd of the image in
/// that slot, its root filesystem found by its UUID.
pub fn slot_entry_path(slot: char) -> String {
    format!("EFI/imgbuild/slot-{slot}.cfg")
}

/// Where on the ESP the record of the image in root slot `slot` is (its build key and inputs,
/// what `imgbuild update` compares with).
pub fn slot_record_path(slot: char) -> String {
    format!("EFI/imgbuild/slot-{slot}.json")
}

/// The GRUB entry of the image in root slot `slot`.
pub fn slot_entry(slot: char, kver: &str, root_uuid: &str, cmdline: &str) -> String {
    format!(
        "# imgbuild: root slot {slot}\nsearch --no-floppy --fs-uuid --set=root {root_uuid}\nmenuentry '{kver} (imgbuild, slot {slot})' {{\n  linux /boot/vmlinuz-{kver} {cmdline}\n  initrd /boot/initrd.img-{kver}\n}}\n"
    )
}

/// grub.cfg: which root slot to boot, from GRUB's environment block beside it (as Fedora's and
/// greenboot's boot counting keep it). `imgbuild_default` is the slot that last proved healthy;
/// `imgbuild_try` a slot to try once: GRUB spends the one try (`imgbuild_tries` 1 -> 0, written
/// before the kernel starts) and boots it; the next boot goes back to the default unless the
/// tried system, once healthy, made itself the default (`/usr/lib/imgbuild/slot`). A panic or a
/// hang that ends in a reset therefore falls back by itself.
pub fn grub_cfg(vendor: &str) -> String {
    let env = format!("/EFI/{vendor}/grubenv");
    format!(
        "# imgbuild: A/B root slots with boot counting (see /usr/lib/imgbuild/slot).\n\
         set timeout=0\n\
         set imgbuild_default=a\n\
         set imgbuild_try=\n\
         set imgbuild_tries=0\n\
         load_env --file {env} imgbuild_default imgbuild_try imgbuild_tries\n\
         set slot=$imgbuild_default\n\
         if [ -n \"$imgbuild_try\" ]; then\n\
         \x20 if [ \"$imgbuild_tries\" = 1 ]; then\n\
         \x20   set imgbuild_tries=0\n\
         \x20   save_env --file {env} imgbuild_tries\n\
         \x20   set slot=$imgbuild_try\n\
         \x20 fi\n\
         fi\n\
         if [ ! -f /EFI/imgbuild/slot-$slot.cfg ]; then set slot=a; fi\n\
         source /EFI/imgbuild/slot-$slot.cfg\n"
    )
}

/// A GRUB environment block (grub-editenv's format: 1024 bytes, `name=value` lines, padded
/// with `#`).
pub fn grubenv(vars: &[(&str, &str)]) -> Result<Vec<u8>> {
    let mut s = String::from("# GRUB Environment Block\n");
    for (k, v) in vars {
        s.push_str(&format!("{k}={v}\n"));
    }
    anyhow::ensure!(s.len() <= 1024, "GRUB environment block over 1024 bytes");
    let mut b = s.into_bytes();
    b.resize(1024, b'#');
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grubenv_is_one_block_as_grub_editenv_writes_it() {
        let env = grubenv(&[("imgbuild_default", "a")]).unwrap();
        assert_eq!(env.len(), 1024);
        let text = String::from_utf8(env).unwrap();
        assert!(text.starts_with("# GRUB Environment Block\nimgbuild_default=a\n#"));
        assert!(text.trim_end_matches('#').ends_with("=a\n"));
        let big = "x".repeat(1100);
        assert!(grubenv(&[("k", big.as_str())]).is_err());
    }

    #[test]
    fn grub_cfg_spends_the_try_before_booting_the_tried_slot() {
        let cfg = grub_cfg("debian");
        let at = |s: &str| cfg.find(s).unwrap_or_else(|| panic!("{s:?} not in\n{cfg}"));
        // The environment is read from the vendor directory, the try spent (written) before the
        // tried slot is chosen, and the chosen slot's entry sourced last.
        assert!(
            at("load_env --file /EFI/debian/grubenv") < at("set imgbuild_tries=0\n    save_env")
        );
        assert!(
            at("save_env --file /EFI/debian/grubenv imgbuild_tries") < at("set slot=$imgbuild_try")
        );
        assert!(at("set slot=$imgbuild_try") < at("source /EFI/imgbuild/slot-$slot.cfg"));
        // A missing entry falls back to slot A's, which every image has.
        assert!(cfg.contains("if [ ! -f /EFI/imgbuild/slot-$slot.cfg ]; then set slot=a; fi"));
        let entry = slot_entry('b', "6.1.0-1-amd64", "u-u-i-d", "root=UUID=u-u-i-d rw");
        assert!(entry.contains("search --no-floppy --fs-uuid --set=root u-u-i-d\n"));
        assert!(entry.contains("linux /boot/vmlinuz-6.1.0-1-amd64 root=UUID=u-u-i-d rw\n"));
        assert!(entry.contains("initrd /boot/initrd.img-6.1.0-1-amd64\n"));
        assert_eq!(slot_entry_path('b'), "EFI/imgbuild/slot-b.cfg");
    }

    #[test]
    fn newest_kernel_wins_numerically() {
        let mut v = ["6.10.0-1-amd64", "6.9.0-3-amd64", "6.10.0-12-amd64"];
        v.sort_by_key(|v| version_key(v));
        assert_eq!(v.last(), Some(&"6.10.0-12-amd64"));
    }
}
