//! `imgbuild node1` end to end from the fixture mirror with a bootable Debian base: the images
//! pass the standard tools' checks, two builds are bit-identical, a build killed in any stage
//! leaves the previous images untouched, and a systemd-boot base boots under OVMF to node1's
//! identity, reached by `imgbuild ssh` (the shim + GRUB chain under Secure Boot boots in `make
//! e2e`'s update phase). Needs root (the base keeps its owners) and QEMU/OVMF.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use common::server::Server;
use common::{ok, sh, sha256};

struct Env {
    server: Server,
    dir: tempfile::TempDir,
    /// The first build's stderr (for built(): what the shared build said).
    log: OnceLock<String>,
}

impl Env {
    /// A fresh directory with the fixture recipe and its formats (raw, qcow2, seed-iso).
    fn new() -> Env {
        Env::with_mirror(common::mirror_with_bootable_base())
    }

    /// A fresh directory with the fixture recipe and every format asked for (the two extra ones,
    /// seed-fat and rootfs-tar, only where they are checked: a node's tar is its whole tree again,
    /// hundreds of MiB per build, and CI's disk is not unlimited).
    fn every_format() -> Env {
        let env = Env::new();
        let text = std::fs::read_to_string(env.path("recipe.yaml"))
            .unwrap()
            .replace(
                "  formats: [raw, qcow2, seed-iso]",
                "  formats: [raw, qcow2, seed-iso, seed-fat, rootfs-tar]",
            );
        assert!(
            text.contains("seed-fat, rootfs-tar]"),
            "recipe edit applied"
        );
        std::fs::write(env.path("recipe.yaml"), text).unwrap();
        env
    }

    fn with_mirror(mirror: &'static Path) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(mirror.join("recipe.yaml")).unwrap();
        assert!(
            text.contains("\n  formats: [raw, qcow2, seed-iso] "),
            "the fixture recipe's formats line"
        );
        // Every image's provenance signed, with one key for the whole test run (copied into
        // each directory: the same key gives the same plan, so two builds can be compared).
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        for f in ["provenance", "provenance.pub"] {
            std::fs::copy(signing_key().join(f), dir.path().join("keys").join(f)).unwrap();
        }
        let text = format!("{text}\nprovenance:\n  signing_key: keys/provenance\n");
        std::fs::write(dir.path().join("recipe.yaml"), text).unwrap();
        Env {
            server: Server::start(mirror),
            dir,
            log: OnceLock::new(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn command(&self, build_dir: &str, args: &[&str]) -> Command {
        let mut c = Command::new(assert_cmd::cargo::cargo_bin("imgbuild"));
        c.current_dir(self.dir.path())
            .args(["-r", "recipe.yaml", "--cache-dir", "cache", "--build-dir"])
            .arg(build_dir)
            .arg("--mirror")
            .arg(format!("https://={}", self.server.url()))
            .args(args)
            .env("NO_PROXY", "*")
            .env_remove("HTTPS_PROXY")
            .env_remove("HTTP_PROXY")
            .env_remove("IMGBUILD_FAILPOINT");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        let o = self.command("build", args).output().unwrap();
        assert!(
            o.status.success(),
            "imgbuild {args:?} failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        o
    }
}

/// The tests of this file one at a time. Each holds gigabytes (a shared tree, a node's raw and
/// qcow2 images, a second build to compare with): two at once, beside the shared node1 build,
/// took 19 GB at the peak and ran a CI machine out of disk, while one at a time takes about as
/// long (a build already keeps both cores busy; measured 2026-12-05). A failed test does not
/// stop the others (the poisoned lock is taken over).
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The provenance signing key of this test run (made once, under cargo's temporary directory).
fn signing_key() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("provenance-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        ok(
            &sh(
                "ssh-keygen",
                &[
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-f",
                    dir.join("provenance").to_str().unwrap(),
                ],
            ),
            "ssh-keygen",
        );
        dir
    })
}

/// One environment with node1 built, shared by the read-only tests.
fn built() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    // A static is never dropped, so its temporary directory (gigabytes of images) would outlive
    // the test process: remove it at exit instead.
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    extern "C" fn remove_shared_dir() {
        if let Some(d) = DIR.get() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
    ENV.get_or_init(|| {
        let env = Env::every_format();
        if DIR.set(env.dir.path().to_path_buf()).is_ok() {
            unsafe { libc::atexit(remove_shared_dir) };
        }
        let o = env.run(&["node1"]);
        let _ = env.log.set(String::from_utf8_lossy(&o.stderr).into_owned());
        env
    })
}

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

/// Copy `len` bytes at `offset` of `image` into a new file (to check one partition alone).
fn extract(image: &Path, offset: u64, len: u64, out: &Path) {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(image).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut o = std::fs::File::create(out).unwrap();
    std::io::copy(&mut f.take(len), &mut o).unwrap();
}

#[test]
fn node1_images_pass_the_standard_tools() {
    if !common::as_root() {
        return;
    }
    let _one = one_at_a_time();
    let env = built();
    let dir = env.path("images/node1");
    let raw = dir.join("node1.raw");
    let m = manifest(&dir);

    // GPT with an ESP and a Linux root, as sfdisk reads it.
    let dump = ok(&sh("sfdisk", &["-d", raw.to_str().unwrap()]), "sfdisk -d");
    assert!(dump.contains("label: gpt"), "{dump}");
    assert!(
        dump.contains("type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B") && dump.contains("name=\"ESP\""),
        "{dump}"
    );
    assert!(
        dump.contains("type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709")
            && dump.contains("name=\"imgbuild-root-a\""),
        "{dump}"
    );
    ok(
        &sh("sfdisk", &["--verify", raw.to_str().unwrap()]),
        "sfdisk --verify",
    );
    let parts = m["partitions"].as_array().unwrap();
    let lba = |i: usize, k: &str| parts[i][k].as_u64().unwrap();

    // The root ext4: e2fsck clean, labelled, with the UUID the manifest and the loader name.
    let root_at = lba(1, "first_lba") * 512;
    let fsck = sh(
        "e2fsck",
        &["-fn", &format!("{}?offset={root_at}", raw.display())],
    );
    ok(&fsck, "e2fsck -fn on the root partition");
    let root_uuid = parts[1]["filesystem_id"].as_str().unwrap();
    let sb = ok(
        &sh(
            "dumpe2fs",
            &["-h", &format!("{}?offset={root_at}", raw.display())],
        ),
        "dumpe2fs",
    );
    assert!(
        sb.contains(&format!("Filesystem UUID:          {root_uuid}")),
        "{sb}"
    );

    // The ESP: fsck.fat clean, laid out as grub-install --uefi-secure-boot lays it out: shim as
    // the removable-media loader with the signed GRUB beside it, the same chain in the vendor
    // directory (debian: where Debian's signed GRUB looks), a grub.cfg booting that UUID.
    let esp = env.path("esp.img");
    let esp_len = (lba(0, "last_lba") + 1 - lba(0, "first_lba")) * 512;
    extract(&raw, lba(0, "first_lba") * 512, esp_len, &esp);
    ok(
        &sh("fsck.fat", &["-n", esp.to_str().unwrap()]),
        "fsck.fat -n on the ESP",
    );
    let listing = esp_listing(&esp);
    for f in [
        "::/EFI/BOOT/BOOTX64.EFI",
        "::/EFI/BOOT/grubx64.efi",
        "::/EFI/BOOT/mmx64.efi",
        "::/EFI/debian/shimx64.efi",
        "::/EFI/debian/grubx64.efi",
        "::/EFI/debian/mmx64.efi",
        "::/EFI/debian/grub.cfg",
    ] {
        assert!(listing.contains(f), "{f} missing from the ESP:\n{listing}");
    }
    // No fallback next to shim (it would run instead of GRUB), no systemd-boot, no other vendor.
    for f in ["fbx64.efi", "loader/", "systemd", "EFI/ubuntu"] {
        assert!(!listing.contains(f), "{f} on the ESP:\n{listing}");
    }
    let shim = std::fs::read(env.path("build/nodes/node1/rootfs/usr/lib/shim/shimx64.efi.signed"))
        .unwrap_or_default();
    assert!(shim.len() > 100_000, "the base's signed shim");
    assert_eq!(esp_file(&esp, "::/EFI/BOOT/BOOTX64.EFI", env), shim);
    assert_eq!(esp_file(&esp, "::/EFI/debian/shimx64.efi", env), shim);
    let grub = std::fs::read(
        env.path("build/nodes/node1/rootfs/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed"),
    )
    .unwrap();
    assert_eq!(esp_file(&esp, "::/EFI/BOOT/grubx64.efi", env), grub);
    // grub.cfg picks the root slot from the environment block beside it (slot A by default);
    // slot A's entry boots this image's root filesystem by its UUID.
    let cfg = String::from_utf8(esp_file(&esp, "::/EFI/debian/grub.cfg", env)).unwrap();
    assert!(
        cfg.contains("load_env --file /EFI/debian/grubenv")
            && cfg.contains("source /EFI/imgbuild/slot-$slot.cfg"),
        "{cfg}"
    );
    assert_eq!(
        esp_file(&esp, "::/EFI/BOOT/grub.cfg", env),
        cfg.as_bytes(),
        "the removable path's grub.cfg"
    );
    let grubenv = esp_file(&esp, "::/EFI/debian/grubenv", env);
    assert_eq!(
        grubenv.len(),
        1024,
        "GRUB's environment block is 1024 bytes"
    );
    assert!(grubenv.starts_with(b"# GRUB Environment Block\nimgbuild_default=a\n#"));
    let entry = String::from_utf8(esp_file(&esp, "::/EFI/imgbuild/slot-a.cfg", env)).unwrap();
    assert!(
        entry.contains(&format!(
            "search --no-floppy --fs-uuid --set=root {root_uuid}"
        )) && entry.contains(&format!("root=UUID={root_uuid}"))
            && entry.contains("console=ttyS0")
            && entry.contains("panic=10")
            && entry.contains("linux /boot/vmlinuz-"),
        "{entry}"
    );
    // What slot A holds, for `imgbuild update`: this build's key.
    let record: serde_json::Value =
        serde_json::from_slice(&esp_file(&esp, "::/EFI/imgbuild/slot-a.json", env)).unwrap();
    assert_eq!(record["build_key"], m["build_key"], "{record}");
    assert_eq!(record["root_uuid"].as_str(), Some(root_uuid), "{record}");
    // The root is not in fstab: it is the slot the boot loader chose.
    let fstab = std::fs::read_to_string(env.path("build/nodes/node1/rootfs/etc/fstab")).unwrap();
    assert!(
        !fstab
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("/")),
        "{fstab}"
    );

    // qcow2: qemu-img check clean and the same disk as the raw image.
    let qcow2 = dir.join("node1.qcow2");
    ok(
        &sh("qemu-img", &["check", qcow2.to_str().unwrap()]),
        "qemu-img check",
    );
    ok(
        &sh(
            "qemu-img",
            &[
                "compare",
                "-f",
                "raw",
                "-F",
                "qcow2",
                raw.to_str().unwrap(),
                qcow2.to_str().unwrap(),
            ],
        ),
        "qemu-img compare",
    );

    // Seeds: the FAT one checks clean and holds node1's user-data; the ISO is labelled cidata.
    let fat = dir.join("node1-seed.img");
    ok(
        &sh("fsck.fat", &["-n", fat.to_str().unwrap()]),
        "fsck.fat -n on the seed",
    );
    let text = |f: &str| String::from_utf8(esp_file(&fat, f, env)).unwrap();
    assert!(text("::/user-data").contains("hostname: \"node1\""));
    assert!(text("::/network-config").contains("192.168.200.151/24"));
    let iso = std::fs::read(dir.join("node1-seed.iso")).unwrap();
    assert_eq!(&iso[32808..32814], b"cidata", "ISO volume id");

    // SHA256SUMS as sha256sum -c reads it; manifest and `imgbuild verify` agree.
    let c = Command::new("sha256sum")
        .arg("-c")
        .arg("SHA256SUMS")
        .current_dir(&dir)
        .output()
        .unwrap();
    let out = ok(&c, "sha256sum -c SHA256SUMS");
    for f in [
        "node1.raw",
        "node1.qcow2",
        "node1.bmap",
        "node1-seed.iso",
        "node1-seed.img",
        "rootfs.tar",
        "manifest.json",
        "node1.spdx.json",
        "node1.provenance.json",
        "node1.provenance.json.sig",
    ] {
        assert!(out.contains(&format!("{f}: OK")), "{f} missing:\n{out}");
    }
    let verify = env.run(&["verify", "node1"]);
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(
        said.contains("ok (") && said.contains("provenance: ") && said.contains("signature good"),
        "{said}"
    );
    // The signature is ssh-keygen's own, checked by ssh-keygen itself with the recipe's key.
    let allowed = env.path("allowed_signers");
    let public = std::fs::read_to_string(env.path("keys/provenance.pub")).unwrap();
    std::fs::write(&allowed, format!("ops {public}")).unwrap();
    let check = Command::new("ssh-keygen")
        .args([
            "-Y",
            "verify",
            "-n",
            "imgbuild-provenance",
            "-I",
            "ops",
            "-f",
        ])
        .arg(&allowed)
        .arg("-s")
        .arg(dir.join("node1.provenance.json.sig"))
        .stdin(std::fs::File::open(dir.join("node1.provenance.json")).unwrap())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // The private key is in no output (its second line holds key material; grep reads the raw
    // image's file system blocks too).
    let secret = std::fs::read_to_string(env.path("keys/provenance")).unwrap();
    let line = secret.lines().nth(2).unwrap();
    let g = Command::new("grep")
        .args(["-rlF", line])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(
        g.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&g.stdout)
    );

    // The SBOM passes an independent SPDX validator and lists the kernel package and the Kafka
    // tarball with its SHA-512 (as the manifest has it).
    let sbom_path = dir.join("node1.spdx.json");
    ok(
        &sh(
            spdx_validator().to_str().unwrap(),
            &["-i", sbom_path.to_str().unwrap()],
        ),
        "pyspdxtools validating node1.spdx.json",
    );
    // The 2021 NTIA minimum elements, checked by an independent tool (ntia-conformance-checker
    // from PyPI): every component's supplier among them.
    let ntia = sh(
        spdx_validator()
            .with_file_name("sbomcheck")
            .to_str()
            .unwrap(),
        &["-c", "ntia", sbom_path.to_str().unwrap()],
    );
    ok(&ntia, "sbomcheck -c ntia node1.spdx.json");
    let report = String::from_utf8_lossy(&ntia.stdout);
    assert!(report.contains("Conformant: True"), "{report}");
    let sbom: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&sbom_path).unwrap()).unwrap();
    let pkgs = sbom["packages"].as_array().unwrap();
    let kernel = pkgs
        .iter()
        .find(|p| p["name"].as_str().unwrap().starts_with("linux-image-"))
        .expect("a kernel package in the SBOM");
    assert!(
        kernel["externalRefs"][0]["referenceLocator"]
            .as_str()
            .unwrap()
            .starts_with("pkg:deb/debian/linux-image-"),
        "{kernel}"
    );
    let kafka_in = m["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "kafka")
        .unwrap();
    let kafka = pkgs
        .iter()
        .find(|p| p["name"] == "kafka")
        .expect("kafka in the SBOM");
    assert!(
        kafka["checksums"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["algorithm"] == "SHA512" && c["checksumValue"] == kafka_in["sha512"]),
        "{kafka}"
    );
    assert_eq!(
        kafka["supplier"], "Organization: The Apache Software Foundation",
        "{kafka}"
    );
    assert_eq!(kafka["licenseDeclared"], "Apache-2.0", "{kafka}");
    // The JMX exporter's agent (metrics on by default): an input like the others, in the SBOM
    // with the digest it was verified by.
    let jmx_in = m["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "jmx_exporter")
        .expect("the JMX exporter's agent among the manifest's inputs");
    let jmx = pkgs
        .iter()
        .find(|p| p["name"] == "jmx_exporter")
        .expect("jmx_exporter in the SBOM");
    assert!(
        jmx["checksums"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["algorithm"] == "SHA256" && c["checksumValue"] == jmx_in["sha256"]),
        "{jmx}"
    );
    assert_eq!(jmx["supplier"], "Organization: The Prometheus Authors");
    // A Debian package's license as its DEP-5 copyright file in the image declares it (bash's
    // is GPL-3+ with a few other files' licenses beside).
    let bash = pkgs.iter().find(|p| p["name"] == "bash").expect("bash");
    assert_eq!(bash["supplier"], "Organization: Debian", "{bash}");
    assert!(
        bash["licenseDeclared"]
            .as_str()
            .unwrap()
            .starts_with("GPL-3.0-or-later"),
        "{bash}"
    );
    assert!(
        bash["copyrightText"]
            .as_str()
            .unwrap()
            .contains("Free Software Foundation"),
        "{bash}"
    );

    // bmaptool copy with our bmap onto a file reproduces the raw image.
    let copy = env.path("bmap-copy.raw");
    ok(
        &sh(
            "bmaptool",
            &[
                "copy",
                "--bmap",
                dir.join("node1.bmap").to_str().unwrap(),
                raw.to_str().unwrap(),
                copy.to_str().unwrap(),
            ],
        ),
        "bmaptool copy",
    );
    assert_eq!(sha256(&copy), sha256(&raw));
    let _ = std::fs::remove_file(&copy);

    // The manifest: recipe hash, inputs with URL/digest/signer, versions, packages, outputs.
    assert_eq!(m["node"], "node1");
    assert_eq!(m["recipe_sha256"].as_str().unwrap().len(), 64);
    let inputs = m["inputs"].as_array().unwrap();
    let zk = inputs.iter().find(|i| i["name"] == "zookeeper").unwrap();
    assert!(zk["url"].as_str().unwrap().starts_with("https://"), "{zk}");
    assert_eq!(zk["sha512"].as_str().unwrap().len(), 128);
    let release = std::fs::read_to_string(common::mirror_with_bootable_base().join("fingerprints"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("release=").map(str::to_string))
        .unwrap();
    assert_eq!(zk["signed_by"].as_str().unwrap(), release);
    assert_eq!(m["components"]["zookeeper"], "3.9.5");
    assert!(m["base_packages"]["systemd"].is_string(), "dpkg list");
    for p in ["linux-image-amd64", "shim-signed", "grub-efi-amd64-signed"] {
        assert!(m["base_packages"][p].is_string(), "{p} in the base");
    }
    assert!(
        m["base_packages"]["systemd-boot"].is_null(),
        "no systemd-boot in the base"
    );
    assert_eq!(m["boot"]["loader"], "shim+grub");
    let outputs = m["outputs"].as_array().unwrap();
    let raw_out = outputs.iter().find(|o| o["file"] == "node1.raw").unwrap();
    assert_eq!(raw_out["sha256"].as_str().unwrap(), sha256(&raw));
}

/// `mdir -/ -b` of a FAT image: every path, one per line.
fn esp_listing(img: &Path) -> String {
    ok(
        &Command::new("mdir")
            .args(["-i", img.to_str().unwrap(), "-/", "-b", "::/"])
            .env("MTOOLS_SKIP_CHECK", "1")
            .output()
            .unwrap(),
        "mdir",
    )
}

/// The bytes of `file` in a FAT image.
fn esp_file(img: &Path, file: &str, env: &Env) -> Vec<u8> {
    let out = env.path(&format!(
        "mcopy-{}",
        sha256_str(&format!("{}{file}", img.display()))
    ));
    ok(
        &Command::new("mcopy")
            .args(["-n", "-i", img.to_str().unwrap(), file])
            .arg(&out)
            .env("MTOOLS_SKIP_CHECK", "1")
            .output()
            .unwrap(),
        "mcopy",
    );
    let b = std::fs::read(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    b
}

/// pyspdxtools (spdx-tools from PyPI) in a virtualenv of its own under target/, made once, with
/// sbomcheck (ntia-conformance-checker from PyPI) beside it.
fn spdx_validator() -> &'static Path {
    static TOOL: OnceLock<PathBuf> = OnceLock::new();
    TOOL.get_or_init(|| {
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-tools/spdx");
        let tool = venv.join("bin/pyspdxtools");
        if !tool.exists() || !venv.join("bin/sbomcheck").exists() {
            ok(
                &sh("python3", &["-m", "venv", venv.to_str().unwrap()]),
                "python3 -m venv",
            );
            ok(
                &sh(
                    venv.join("bin/pip").to_str().unwrap(),
                    &[
                        "install",
                        "--quiet",
                        "spdx-tools",
                        "ntia-conformance-checker",
                    ],
                ),
                "pip install spdx-tools ntia-conformance-checker",
            );
        }
        tool
    })
}

fn sha256_str(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

#[test]
fn verify_names_a_changed_file() {
    if !common::as_root() {
        return;
    }
    let _one = one_at_a_time();
    let env = built();
    // A copy of the images, so the shared ones stay intact for the other tests.
    let other = env.path("tampered");
    std::fs::create_dir_all(&other).unwrap();
    ok(
        &sh(
            "cp",
            &[
                "-a",
                "--sparse=always",
                env.path("images/node1").to_str().unwrap(),
                other.to_str().unwrap(),
            ],
        ),
        "cp",
    );
    let raw = other.join("node1/node1.raw");
    let f = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
    // One byte inside the root filesystem's first mapped blocks.
    let m = manifest(&other.join("node1"));
    let at = m["partitions"][1]["first_lba"].as_u64().unwrap() * 512 + 1024 + 100;
    std::os::unix::fs::FileExt::write_all_at(&f, b"X", at).unwrap();
    drop(f);
    let o = env
        .command("build", &["--images", "tampered", "verify", "node1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("node1.raw: sha256") && err.contains("do not match the bmap"),
        "{err}"
    );
    // The provenance's subject no longer matches either.
    assert!(
        err.contains("node1.provenance.json") && err.contains("the provenance says"),
        "{err}"
    );
    // --json: the same verdict, same exit status, the problem in the node's detail.
    let o = env
        .command(
            "build",
            &["--images", "tampered", "verify", "--json", "node1"],
        )
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["ok"], false, "{doc}");
    assert_eq!(doc["nodes"][0]["ok"], false, "{doc}");
    assert!(
        doc["nodes"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("node1.raw: sha256"),
        "{doc}"
    );
}

/// Give `to` the cluster PKI `from` made (the secrets directory beside its recipe): builds are
/// bit-identical with the same secrets, and a new directory would make a new CA.
fn same_secrets(from: &Env, to: &Env) {
    let o = Command::new("cp")
        .arg("-a")
        .arg(from.path("recipe.secrets"))
        .arg(to.path("recipe.secrets"))
        .output()
        .unwrap();
    assert!(o.status.success(), "copying the secrets directory");
}

/// Every entry of the root filesystem inside `raw`, dumped by debugfs, as sorted lines of path,
/// type, mode, owner, mtime and size (symlinks: path and target; rdump does not keep their
/// owner or times), plus the SHA-256 of every regular file. Directories carry no size: theirs is
/// the dump directory's on the host, which depends on the order rdump created the entries in.
fn root_listing(raw: &Path, work: &Path) -> Vec<String> {
    let m = manifest(raw.parent().unwrap());
    let lba = m["partitions"][1]["first_lba"].as_u64().unwrap();
    let out = work.join("dump");
    std::fs::create_dir_all(&out).unwrap();
    let spec = format!("{}?offset={}", raw.display(), lba * 512);
    let o = Command::new("debugfs")
        .args(["-R", &format!("rdump / {}", out.display()), &spec])
        .output()
        .unwrap();
    assert!(o.status.success(), "debugfs rdump of {spec}");
    let script = format!(
        "cd '{}' && find . ! -type l ! -type d -printf '%P %y %m %U %G %T@ %s\\n' | sort && \
         find . -type d -printf '%P %y %m %U %G %T@\\n' | sort && \
         find . -type l -printf '%P -> %l\\n' | sort && \
         find . -type f -print0 | sort -z | xargs -0 sha256sum",
        out.display()
    );
    let list = ok(&sh("sh", &["-c", &script]), "listing the dumped tree");
    list.lines().map(str::to_string).collect()
}

#[test]
fn the_shared_root_filesystem_plus_node_changes_equals_mkfs_of_the_node_tree() {
    if !common::as_root() {
        return;
    }
    let _one = one_at_a_time();
    // The shared build (the template path, the default) against a build without the template.
    let a = built();
    let b = Env::new();
    same_secrets(a, &b);
    let ob = b
        .command("build", &["node1"])
        .env("IMGBUILD_NO_TEMPLATE", "1")
        .output()
        .unwrap();
    assert!(
        ob.status.success(),
        "{}",
        String::from_utf8_lossy(&ob.stderr)
    );
    let (ea, eb) = (
        a.log.get().unwrap().as_str(),
        String::from_utf8_lossy(&ob.stderr),
    );
    assert!(ea.contains("shared root filesystem + "), "{ea}");
    assert!(eb.contains("mkfs of the node's whole tree"), "{eb}");
    let la = root_listing(&a.path("images/node1/node1.raw"), &a.path("la"));
    let lb = root_listing(&b.path("images/node1/node1.raw"), &b.path("lb"));
    let _ = std::fs::remove_dir_all(a.path("la"));
    let _ = std::fs::remove_dir_all(b.path("lb"));
    assert!(la.len() > 10_000, "{} entries", la.len());
    let only_a: Vec<_> = la.iter().filter(|l| !lb.contains(l)).take(20).collect();
    let only_b: Vec<_> = lb.iter().filter(|l| !la.contains(l)).take(20).collect();
    assert!(
        only_a.is_empty() && only_b.is_empty(),
        "shared+changes has {only_a:#?}\nmkfs has {only_b:#?}"
    );
    // Both are clean filesystems, the node's own identity and hostname included.
    for raw in [
        a.path("images/node1/node1.raw"),
        b.path("images/node1/node1.raw"),
    ] {
        let m = manifest(raw.parent().unwrap());
        let lba = m["partitions"][1]["first_lba"].as_u64().unwrap();
        let spec = format!("{}?offset={}", raw.display(), lba * 512);
        ok(&sh("e2fsck", &["-fn", &spec]), "e2fsck -fn");
        let head = ok(&sh("dumpe2fs", &["-h", &spec]), "dumpe2fs -h");
        let want = format!(
            "Filesystem UUID:          {}",
            m["partitions"][1]["filesystem_id"].as_str().unwrap()
        );
        assert!(head.lines().any(|l| l == want), "{want} in\n{head}");
    }
}

/// Name → (inode, size, mtime ns) of every file in `dir` (a rewrite changes at least one).
fn listing(dir: &Path) -> BTreeMap<String, (u64, u64, i64)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                (m.ino(), m.len(), m.mtime() * 1_000_000_000 + m.mtime_nsec()),
            )
        })
        .collect()
}

#[test]
fn a_build_killed_in_any_stage_leaves_the_previous_images() {
    if !common::as_root() {
        return;
    }
    let _one = one_at_a_time();
    let env = Env::new();
    env.run(&["node1"]);
    let images = env.path("images");
    let before = listing(&images.join("node1"));
    let sums = std::fs::read(images.join("node1/SHA256SUMS")).unwrap();
    let stages = [
        "fetch", "common", "node", "esp", "raw", "bmap", "qcow2", "seed", "manifest", "publish",
    ];
    for stage in stages {
        // The shared tree is cached after the first build: kill its stage in a fresh build dir.
        let build_dir = if stage == "common" {
            "build-kill"
        } else {
            "build"
        };
        let mut child = env
            .command(build_dir, &["node1", "--force"])
            .env("IMGBUILD_FAILPOINT", stage)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut reached = false;
        let mut log = String::new();
        for line in BufReader::new(child.stderr.take().unwrap()).lines() {
            let line = line.unwrap();
            log.push_str(&line);
            log.push('\n');
            if line.starts_with(&format!("failpoint {stage}:")) {
                reached = true;
                break;
            }
        }
        assert!(reached, "the build never reached stage {stage}:\n{log}");
        child.kill().unwrap();
        child.wait().unwrap();
        // The half-made shared tree is not looked at again: its disk is given back at once.
        let _ = std::fs::remove_dir_all(env.path("build-kill"));
        assert_eq!(
            listing(&images.join("node1")),
            before,
            "images/node1 changed after a kill in stage {stage}"
        );
        assert_eq!(
            std::fs::read(images.join("node1/SHA256SUMS")).unwrap(),
            sums
        );
    }
    // The previous images still verify, and the next build succeeds and cleans up.
    env.run(&["verify", "node1"]);
    env.run(&["node1", "--force"]);
    let leftovers: Vec<String> = std::fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "stale temporary dirs: {leftovers:?}");
    env.run(&["verify", "node1"]);
}

/// Two builds in two directories (another cache and server) with the same secrets are
/// bit-identical; then, in the second, an unchanged node is not rebuilt and one line of the recipe
/// rebuilds only its node. One test: the second build serves both (a node's build is a minute).
#[test]
fn a_second_build_is_bit_identical_and_rebuilds_only_the_changed_node() {
    if !common::as_root() {
        return;
    }
    let _one = one_at_a_time();
    // The shared build and one more in another directory, cache and server, with the same secrets.
    let a = built();
    let env = Env::every_format();
    same_secrets(a, &env);
    env.run(&["node1", "node2"]);
    for f in [
        "node1.raw",
        "node1.qcow2",
        "node1-seed.iso",
        "node1-seed.img",
        "rootfs.tar",
        "manifest.json",
        "node1.spdx.json",
        "node1.provenance.json",
        "SHA256SUMS",
    ] {
        let (x, y) = (
            sha256(&a.path("images/node1").join(f)),
            sha256(&env.path("images/node1").join(f)),
        );
        assert_eq!(x, y, "{f} differs between two builds");
    }
    let (d1, d2) = (env.path("images/node1"), env.path("images/node2"));
    let (l1, l2) = (listing(&d1), listing(&d2));
    // Nothing changed: both up to date, not a file rewritten.
    let o = env.run(&["node1", "node2"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("[node1] up to date") && err.contains("[node2] up to date"),
        "{err}"
    );
    assert_eq!((listing(&d1), listing(&d2)), (l1.clone(), l2.clone()));
    // One line for node2 only: node2 is rebuilt, node1 left alone.
    let text = std::fs::read_to_string(env.path("recipe.yaml"))
        .unwrap()
        .replace(
            "  node2:\n    ip: 192.168.200.152\n",
            "  node2:\n    ip: 192.168.200.152\n    services: {kafka: {heap_mb: 2048}}\n",
        );
    assert!(text.contains("heap_mb: 2048}}"), "recipe edit applied");
    std::fs::write(env.path("recipe.yaml"), text).unwrap();
    // --dry-run --json: the same judgement as a document, nothing built.
    let o = env.run(&["build", "--dry-run", "--json", "node1", "node2"]);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["schema"], 1, "{doc}");
    assert_eq!(doc["dry_run"], true, "{doc}");
    assert_eq!(doc["nodes"][0]["node"], "node1", "{doc}");
    assert_eq!(doc["nodes"][0]["rebuild"], false, "{doc}");
    assert_eq!(doc["nodes"][1]["rebuild"], true, "{doc}");
    assert!(
        doc["nodes"][1]["why"].as_str().unwrap().contains("heap"),
        "{doc}"
    );
    assert_eq!(listing(&d2), l2, "--dry-run wrote node2");
    let o = env.run(&["node1", "node2", "--json"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("[node1] up to date") && !err.contains("[node2] up to date"),
        "{err}"
    );
    assert_eq!(listing(&d1), l1, "node1 was rewritten");
    assert_ne!(listing(&d2), l2, "node2 was not rebuilt");
    // The build's JSON lists node2's new files with the digests now on disk.
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let raw = doc["nodes"][1]["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["file"] == "node2.raw")
        .unwrap_or_else(|| panic!("{doc}"));
    assert_eq!(raw["sha256"], sha256(&d2.join("node2.raw")).as_str());
    let o = env.run(&["verify", "--json", "node1", "node2"]);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["ok"], true, "{doc}");
    assert_eq!(doc["nodes"].as_array().unwrap().len(), 2, "{doc}");
}

/// What QEMU's serial log says, for a failure message.
fn log_tail(log: &str) -> String {
    // The data partition's unit says on the console why it refused; then the last lines.
    let data: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("imgbuild-data") || l.contains("repart"))
        .collect();
    format!(
        "{}\n...\n{}",
        data.join("\n"),
        log.lines().rev().take(40).collect::<Vec<_>>().join("\n")
    )
}

// node1's image booted under Secure Boot (shim verifies GRUB, GRUB the kernel), on a bigger disk
// where systemd-repart makes root slot B and the data partition and imgbuild-data formats it with
// node1's identity, with an e1000e NIC named as on real hardware: `make e2e`'s update phase
// (scripts/e2e-update.sh) checks all of it on the boot it updates from, with the real services
// (one boot under TCG costs minutes; it used to be a test of its own here).

/// The second boot chain: a base with systemd-boot instead of shim + GRUB gets a loader entry
/// with the kernel and initrd on the ESP, and boots with node1's identity; `imgbuild boot`, run as an
/// operator runs it, can be reached with `imgbuild ssh` as the recipe's user.
#[test]
fn a_systemd_boot_base_boots_through_systemd_boot_and_imgbuild_ssh_reaches_it() {
    if !common::as_root() {
        return;
    }
    let _one = one_at_a_time();
    let env = Env::with_mirror(common::mirror_with_sdboot_base());
    let key = env.path("id_ed25519");
    ok(
        &sh(
            "ssh-keygen",
            &["-q", "-t", "ed25519", "-N", "", "-f", key.to_str().unwrap()],
        ),
        "ssh-keygen",
    );
    let pubkey = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let recipe = std::fs::read_to_string(env.path("recipe.yaml")).unwrap();
    assert!(
        recipe.contains("\nusers: []\n"),
        "the fixture recipe has no users: line"
    );
    let recipe = recipe.replace(
        "\nusers: []\n",
        &format!(
            "\nusers:\n  - name: ops\n    ssh_authorized_keys:\n      - \"{}\"\n",
            pubkey.trim()
        ),
    );
    std::fs::write(env.path("recipe.yaml"), recipe).unwrap();
    env.run(&["node1"]);
    let dir = env.path("images/node1");
    let m = manifest(&dir);
    assert_eq!(m["boot"]["loader"], "systemd-boot");
    let raw = dir.join("node1.raw");
    let parts = m["partitions"].as_array().unwrap();
    let lba = |i: usize, k: &str| parts[i][k].as_u64().unwrap();
    let esp = env.path("esp.img");
    extract(
        &raw,
        lba(0, "first_lba") * 512,
        (lba(0, "last_lba") + 1 - lba(0, "first_lba")) * 512,
        &esp,
    );
    let listing = esp_listing(&esp);
    assert!(listing.contains("::/EFI/BOOT/BOOTX64.EFI"), "{listing}");
    assert!(!listing.contains("grubx64.efi"), "{listing}");
    let entry = String::from_utf8(esp_file(&esp, "::/loader/entries/imgbuild.conf", &env)).unwrap();
    let root_uuid = parts[1]["filesystem_id"].as_str().unwrap();
    assert!(
        entry.contains(&format!("root=UUID={root_uuid}")) && entry.contains("console=ttyS0"),
        "{entry}"
    );
    // `imgbuild boot` as an operator runs it (no --check, until stopped), and `imgbuild ssh`
    // from the host into it, as the recipe's user with its key.
    let mut boot = env
        .command("build", &["boot", "node1"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(env.path("boot.err")).unwrap())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    let mut answer = String::new();
    while t.elapsed() < std::time::Duration::from_secs(900) && boot.try_wait().unwrap().is_none() {
        let o = env
            .command(
                "build",
                &[
                    "ssh",
                    "node1",
                    "-i",
                    key.to_str().unwrap(),
                    "--",
                    "cat",
                    "/etc/hostname",
                ],
            )
            .output()
            .unwrap();
        answer = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        if o.status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_secs(5));
    }
    // sshd answers before the serial getty's prompt is on the console: wait for the prompt.
    let serial = env.path("build/boot/node1/serial.log");
    while t.elapsed() < std::time::Duration::from_secs(900)
        && !std::fs::read_to_string(&serial).is_ok_and(|l| l.contains("node1 login:"))
    {
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
    unsafe { libc::kill(boot.id() as i32, libc::SIGTERM) };
    let status = boot.wait().unwrap();
    let log = std::fs::read_to_string(&serial).unwrap_or_default();
    let err = std::fs::read_to_string(env.path("boot.err")).unwrap();
    assert_eq!(
        answer.trim(),
        "node1",
        "imgbuild ssh into the booted node:\n{err}\nserial log tail:\n{}",
        log_tail(&log)
    );
    assert!(status.success(), "boot ended with {status}: {err}");
    assert!(log.contains("node1 login:"), "{}", log_tail(&log));
    assert!(
        !env.path("build/up/up.pid").exists(),
        "boot left its pid file for imgbuild ssh behind"
    );
    let _ = std::fs::remove_dir_all(env.dir.path());
}

/// Canonical's cloud root tarball has no kernel and no GRUB: a disk image from it is refused
/// before anything is downloaded, naming the base and what to use instead.
#[test]
fn a_cloud_root_tarball_base_is_refused_for_disk_images() {
    if !common::as_root() {
        return;
    }
    let _one = one_at_a_time();
    let mirror = common::mirror_with_bootable_base();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        mirror.join("recipe-cloud.yaml"),
        dir.path().join("recipe.yaml"),
    )
    .unwrap();
    let o = Command::new(assert_cmd::cargo::cargo_bin("imgbuild"))
        .current_dir(dir.path())
        .args([
            "-r",
            "recipe.yaml",
            "--cache-dir",
            "cache",
            "--offline",
            "node1",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("recipe.yaml: base (ubuntu-cloud https://cloud-images.ubuntu.com/releases/24.04/release/ubuntu-24.04-server-cloudimg-amd64-root.tar.xz) cannot boot")
            && err.contains("no kernel")
            && err.contains("hint: use `kind: mmdebstrap`")
            && err.contains("linux-generic"),
        "{err}"
    );
    assert!(!dir.path().join("images").exists(), "nothing built");
}

/// A tarball base without a kernel (the shape of Canonical's root tarball, a real Debian tree
/// here) gets as far as the boot chain and stops there, naming the base and what to add.
#[test]
fn a_tarball_base_without_a_kernel_names_what_to_add() {
    if !common::as_root() {
        return;
    }
    let _one = one_at_a_time();
    let env = Env::with_mirror(common::mirror_with_debian_base());
    let o = env.command("build", &["node1"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "the boot chain of base tarball https://imgbuild-fixtures.invalid/debian/debian-base-"
        ) && err.contains("the base has no kernel with an initrd in /boot")
            && err.contains("linux-image-amd64")
            && err.contains("initramfs-tools"),
        "{err}"
    );
    assert!(!env.path("images/node1").exists(), "no images left behind");
    let _ = std::fs::remove_dir_all(env.dir.path());
}
