//! Shared test helpers: the generated fixture mirror and a local HTTP server that can misbehave.
#![allow(dead_code)]

pub mod server;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Run tests/fixtures/make-mirror.sh into `<target tmp>/<prefix>-<test binary>` (regenerated on
/// every run, never left in /tmp), with `base` as the base tarball when given.
fn make_mirror(prefix: &str, base: Option<&Path>) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let name = exe.file_stem().unwrap().to_string_lossy().into_owned();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{prefix}-{name}"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/make-mirror.sh");
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(&script).arg(&dir);
    if let Some(b) = base {
        cmd.env("BASE_TARBALL", b);
    }
    let out = cmd.output().expect("running make-mirror.sh");
    assert!(
        out.status.success(),
        "make-mirror.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// The fixture mirror with the three-entry stand-in base, generated once per test binary.
pub fn mirror() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| make_mirror("mirror", None))
}

/// Fingerprints of the fixture keys by role (release, other, cloud, expired, revoked).
pub fn fingerprints() -> HashMap<String, String> {
    std::fs::read_to_string(mirror().join("fingerprints"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// The Debian base OS tarball (tests/fixtures/make-base.sh, minimal set), built once and cached
/// under target/ keyed by the script's content; a file lock keeps parallel test binaries from
/// building it twice.
pub fn debian_base() -> PathBuf {
    debian_base_set("minimal")
}

/// The bootable Debian base (generic kernel, initramfs, shim + signed GRUB, netplan, growpart).
pub fn debian_base_full() -> PathBuf {
    debian_base_set("full")
}

fn debian_base_set(set: &str) -> PathBuf {
    use sha2::Digest;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/make-base.sh");
    let hash = hex::encode(&sha2::Sha256::digest(std::fs::read(&script).unwrap())[..6]);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let name = match set {
        "minimal" => format!("debian-base-{hash}.tar.xz"),
        _ => format!("debian-base-{set}-{hash}.tar.xz"),
    };
    let out = dir.join(name);
    let lock = std::fs::File::create(dir.join("debian-base.lock")).unwrap();
    lock.lock().unwrap();
    if !out.is_file() {
        let o = std::process::Command::new("bash")
            .arg(&script)
            .arg(&out)
            .arg(set)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "make-base.sh failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    out
}

/// The fixture mirror with the bootable Debian base as recipe.yaml's tarball base.
pub fn mirror_with_bootable_base() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| make_mirror("mirror-bootable", Some(&debian_base_full())))
}

/// The fixture mirror with a bootable Debian base whose boot chain is systemd-boot.
pub fn mirror_with_sdboot_base() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| make_mirror("mirror-sdboot", Some(&debian_base_set("sdboot"))))
}

/// The fixture mirror with the minimal Debian base (no kernel) as recipe.yaml's tarball base.
pub fn mirror_with_debian_base() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| make_mirror("mirror-debian", Some(&debian_base())))
}

/// Where `name` is: on PATH, else in /usr/sbin or /sbin (where Debian keeps sfdisk, mkfs.ext4
/// and the like, off an ordinary user's PATH).
pub fn tool(name: &str) -> PathBuf {
    imgbuild::util::tools::locate(name).unwrap_or_else(|| PathBuf::from(name))
}

/// Run a command, capturing its output.
pub fn sh(cmd: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(tool(cmd))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"))
}

/// Its stdout, after asserting it succeeded (the message shows both streams).
pub fn ok(o: &std::process::Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed ({}):\n{}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// sha256sum of a file (or device).
pub fn sha256(p: &Path) -> String {
    ok(&sh("sha256sum", &[p.to_str().unwrap()]), "sha256sum")[..64].to_string()
}

/// Test tiers: whether this machine gives the running test what it `needs` (e.g. "root").
/// Without it the test is skipped with one line on stderr saying why (written past the test
/// harness's capture, so `cargo test` shows it), unless `IMGBUILD_TEST_ALL` is set — `make test`
/// sets it — where a missing need fails the test instead: a skip is never a pass there.
pub fn runs_here(needs: &str, have: bool) -> bool {
    if have {
        return true;
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string();
    if std::env::var_os("IMGBUILD_TEST_ALL").is_some() {
        panic!(
            "{test} needs {needs}, which this machine lacks (IMGBUILD_TEST_ALL is set: make test runs every test)"
        );
    }
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "skipped: {test}: needs {needs}");
    false
}

/// Root: owners and device nodes in trees, loop devices, mounts, mmdebstrap, namespaces.
pub fn as_root() -> bool {
    runs_here("root", unsafe { libc::geteuid() } == 0)
}
