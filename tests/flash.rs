//! `imgbuild flash` against loop devices and files the tests create (never a real disk):
//! refusals write nothing, a flash onto a bigger device verifies with the backup GPT at its end,
//! and a flash killed mid-write or failing verification leaves no valid partition table.
//! Needs root (loop devices, mounts).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod common;

use common::{ok, sh, sha256};
use imgbuild::image::gpt::{Gpt, Guid, Partition};

const MIB: u64 = 1 << 20;

/// A loop device over a file; detached on drop.
struct Loop {
    dev: String,
}

impl Loop {
    fn new(file: &Path, partitions: bool) -> Loop {
        let mut args = vec!["-f", "--show"];
        if partitions {
            args.push("-P");
        }
        args.push(file.to_str().unwrap());
        let dev = ok(&sh("losetup", &args), "losetup").trim().to_string();
        let l = Loop { dev };
        if partitions {
            // Without udev the partition nodes may not appear by themselves.
            let _ = sh("partx", &["-a", &l.dev]);
            let name = l.dev.trim_start_matches("/dev/").to_string();
            for n in 1..=2 {
                let p = format!("{}p{n}", l.dev);
                let sys = format!("/sys/block/{name}/{name}p{n}/dev");
                if !Path::new(&p).exists()
                    && let Ok(mm) = std::fs::read_to_string(&sys)
                {
                    let (ma, mi) = mm.trim().split_once(':').unwrap();
                    ok(&sh("mknod", &[&p, "b", ma, mi]), "mknod");
                }
            }
        }
        l
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = sh("losetup", &["-d", &self.dev]);
    }
}

/// A read-only mount; unmounted on drop.
struct Mount {
    dir: tempfile::TempDir,
}

impl Mount {
    fn new(dev: &str) -> Mount {
        let dir = tempfile::tempdir().unwrap();
        ok(
            &sh(
                "mount",
                &["-o", "ro,noload", dev, dir.path().to_str().unwrap()],
            ),
            "mount",
        );
        Mount { dir }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = sh("umount", &[self.dir.path().to_str().unwrap()]);
    }
}

/// A small GPT disk image with an ext4 root slot A and scattered data, plus its bmap.
struct Image {
    dir: tempfile::TempDir,
    raw: PathBuf,
    size: u64,
}

fn image(size: u64) -> Image {
    image_of(size, NODE1, b"v1")
}

/// The identity records of images of two nodes (what /usr/lib/imgbuild/identity holds).
const NODE1: &str =
    "cluster=test\nkafka_cluster_id=AAAAAAAAAAAAAAAAAAAAAA\nnode=node1\nnode_id=1\n";
const NODE2: &str =
    "cluster=test\nkafka_cluster_id=AAAAAAAAAAAAAAAAAAAAAA\nnode=node2\nnode_id=2\n";

/// An image laid out as imgbuild's: ESP, root slot A `imgbuild-root-a` holding the node's
/// identity record and `version` (so a reflash shows which root is on the disk).
fn image_of(size: u64, identity: &str, version: &[u8]) -> Image {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(size).unwrap();
    drop(f);
    // A real filesystem in partition 2 holding a file of noise (a quarter of the disk), so
    // mounts and fsck have something to read and the bmap has real data ranges.
    let content = dir.path().join("content");
    std::fs::create_dir(&content).unwrap();
    let mut x = 0x1234_5678u32;
    let noise: Vec<u8> = (0..size / 4)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    std::fs::write(content.join("noise"), noise).unwrap();
    std::fs::create_dir_all(content.join("usr/lib/imgbuild")).unwrap();
    std::fs::write(content.join("usr/lib/imgbuild/identity"), identity).unwrap();
    std::fs::write(content.join("version"), version).unwrap();
    let root = (2 * MIB, size - 4 * MIB);
    mkfs_ext4(raw.to_str().unwrap(), root, "root", &content);
    let f = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
    let part = |n: &str, t: &str, (a, l): (u64, u64)| Partition {
        type_guid: Guid(t.into()),
        guid: Guid::derived(n),
        first_lba: a / 512,
        last_lba: (a + l) / 512 - 1,
        name: n.into(),
    };
    Gpt {
        disk_guid: Guid::derived("test disk"),
        partitions: vec![
            part("ESP", imgbuild::image::gpt::ESP, (MIB, MIB)),
            part(
                imgbuild::layout::ROOT_A_LABEL,
                imgbuild::image::gpt::LINUX_ROOT_X86_64,
                root,
            ),
        ],
    }
    .write(&f, size)
    .unwrap();
    f.sync_all().unwrap();
    drop(f);
    std::fs::write(
        raw.with_extension("bmap"),
        imgbuild::image::bmap::create(&raw).unwrap(),
    )
    .unwrap();
    Image { dir, raw, size }
}

/// An ext4 filesystem labelled `label` of `tree` at `(offset, len)` of `dev` (a file or device).
fn mkfs_ext4(dev: &str, (offset, len): (u64, u64), label: &str, tree: &Path) {
    ok(
        &sh(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-L",
                label,
                "-d",
                tree.to_str().unwrap(),
                "-E",
                &format!("offset={offset}"),
                dev,
                &format!("{}k", len / 1024),
            ],
        ),
        "mkfs.ext4",
    );
}

fn flash(img: &Image, target: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("imgbuild"));
    c.args([
        "flash",
        "node1",
        target,
        "--image",
        img.raw.to_str().unwrap(),
    ])
    .args(extra)
    .env_remove("IMGBUILD_FAILPOINT")
    .stdin(Stdio::null());
    c
}

fn refused(img: &Image, target: &str, backing: &Path, extra: &[&str], expect: &str) {
    let before = sha256(backing);
    let o = flash(img, target, extra).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "not refused:\n{err}");
    assert!(err.contains(expect), "expected {expect:?} in:\n{err}");
    assert_eq!(sha256(backing), before, "{target} was written to");
}

fn backing(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(size).unwrap();
    // Something recognisable, so "unchanged" means something.
    f.write_all_at(b"previous contents", 0).unwrap();
    f.write_all_at(b"previous contents", size / 2).unwrap();
    p
}

#[test]
fn unsafe_targets_are_refused_with_nothing_written() {
    if !common::as_root() {
        return;
    }
    let img = image(64 * MIB);
    let dir = img.dir.path();

    // A mounted loop device.
    let fs_file = backing(dir, "mounted.img", 96 * MIB);
    ok(
        &sh("mkfs.ext4", &["-q", "-F", fs_file.to_str().unwrap()]),
        "mkfs",
    );
    let l = Loop::new(&fs_file, false);
    {
        let _m = Mount::new(&l.dev);
        refused(&img, &l.dev, &fs_file, &["--yes"], "is mounted");
    }

    // A loop device one of whose partitions is mounted (the image itself, partitioned).
    let disk = dir.join("partitioned.img");
    std::fs::copy(&img.raw, &disk).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .unwrap()
        .set_len(96 * MIB)
        .unwrap();
    let lp = Loop::new(&disk, true);
    {
        let _m = Mount::new(&format!("{}p2", lp.dev));
        refused(&img, &lp.dev, &disk, &["--yes"], "p2 is mounted");
        // And the partition itself is not a disk.
        refused(
            &img,
            &format!("{}p2", lp.dev),
            &disk,
            &["--yes"],
            "is a partition",
        );
    }

    // Too small a device.
    let small = backing(dir, "small.img", 32 * MIB);
    let ls = Loop::new(&small, false);
    refused(&img, &ls.dev, &small, &["--yes"], "is too small");

    // A regular file without --to-file.
    let file = backing(dir, "plain.img", 96 * MIB);
    refused(
        &img,
        file.to_str().unwrap(),
        &file,
        &["--yes"],
        "pass --to-file",
    );

    // No --yes and no terminal: nothing happens.
    let free = backing(dir, "free.img", 96 * MIB);
    let lf = Loop::new(&free, false);
    refused(&img, &lf.dev, &free, &[], "not confirmed");

    // --dry-run shows the plan and writes nothing.
    let before = sha256(&free);
    let o = flash(&img, &lf.dev, &["--dry-run"]).output().unwrap();
    let out = ok(&o, "flash --dry-run");
    assert!(
        out.contains("would write bytes 0..") && out.contains("dry run: nothing written"),
        "{out}"
    );
    assert_eq!(sha256(&free), before);
}

#[test]
fn flash_onto_a_bigger_device_verifies_and_moves_the_backup_gpt() {
    if !common::as_root() {
        return;
    }
    let img = image(64 * MIB);
    let target = backing(img.dir.path(), "big.img", 100 * MIB);
    let l = Loop::new(&target, false);
    let o = flash(&img, &l.dev, &["--yes"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("read back and verified") && err.contains("backup GPT moved"),
        "{err}"
    );
    let v = ok(&sh("sfdisk", &["--verify", &l.dev]), "sfdisk --verify");
    assert!(v.contains("No errors detected"), "{v}");
    // The backup header in the device's last sector, named by the primary.
    let f = std::fs::File::open(&l.dev).unwrap();
    let mut h = [0u8; 512];
    f.read_exact_at(&mut h, 100 * MIB - 512).unwrap();
    assert_eq!(&h[..8], b"EFI PART", "backup header at the end");
    f.read_exact_at(&mut h, 512).unwrap();
    assert_eq!(
        u64::from_le_bytes(h[32..40].try_into().unwrap()),
        100 * MIB / 512 - 1,
        "primary names the last LBA as its backup"
    );
    // Every mapped range of the image is on the device (but the GPT headers, rewritten).
    let g = Gpt::read(&f).unwrap();
    assert_eq!(g.partitions.len(), 2);
    let map = imgbuild::image::bmap::parse(
        &std::fs::read_to_string(img.raw.with_extension("bmap")).unwrap(),
    )
    .unwrap();
    let src = std::fs::File::open(&img.raw).unwrap();
    for (first, last, _) in &map.ranges {
        // The primary header (LBA 1) was rewritten to name the new backup location.
        let (a, b) = (
            (first * 4096).max(1024),
            ((last + 1) * 4096).min(img.size - 33 * 512),
        );
        if a >= b {
            continue;
        }
        let (mut x, mut y) = (vec![0u8; (b - a) as usize], vec![0u8; (b - a) as usize]);
        src.read_exact_at(&mut x, a).unwrap();
        f.read_exact_at(&mut y, a).unwrap();
        assert!(x == y, "bytes {a}..{b} differ from the image");
    }
    let root = &g.partitions[1];
    let a = root.first_lba * 512;
    let fsck = sh("e2fsck", &["-fn", &format!("{}?offset={a}", l.dev)]);
    ok(&fsck, "e2fsck on the flashed root");
    drop(f);
    // Holes are skipped, not zeroed: the old contents in an unmapped block are still there.
    let mut old = [0u8; 17];
    std::fs::File::open(&target)
        .unwrap()
        .read_exact_at(&mut old, 100 * MIB / 2)
        .unwrap();
    let hole = imgbuild::image::bmap::parse(
        &std::fs::read_to_string(img.raw.with_extension("bmap")).unwrap(),
    )
    .unwrap()
    .ranges
    .iter()
    .all(|(a, b, _)| !(a * 4096..=b * 4096 + 4095).contains(&(100 * MIB / 2)));
    if hole {
        assert_eq!(&old, b"previous contents", "a hole was written");
    }
}

#[test]
fn a_file_target_and_an_image_without_bmap_work_too() {
    let img = image(64 * MIB);
    std::fs::remove_file(img.raw.with_extension("bmap")).unwrap();
    let target = img.dir.path().join("out.raw");
    let o = flash(&img, target.to_str().unwrap(), &["--yes", "--to-file"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("no bmap") && err.contains("verified"), "{err}");
    assert_eq!(sha256(&target), sha256(&img.raw));
}

/// Flash `img` onto `dev` and kill it once it is halfway (the `flash` failpoint).
fn kill_halfway(img: &Image, dev: &str) {
    let mut child = flash(img, dev, &["--yes"])
        .env("IMGBUILD_FAILPOINT", "flash")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reached = false;
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        if line.unwrap().starts_with("failpoint flash:") {
            reached = true;
            break;
        }
    }
    assert!(reached, "the flash never got halfway");
    child.kill().unwrap();
    child.wait().unwrap();
}

fn has_valid_gpt(dev: &str) -> bool {
    let o = sh("sfdisk", &["-d", dev]);
    o.status.success() && String::from_utf8_lossy(&o.stdout).contains("label: gpt")
}

#[test]
fn a_flash_killed_mid_write_leaves_no_partition_table() {
    if !common::as_root() {
        return;
    }
    let img = image(96 * MIB);
    let target = backing(img.dir.path(), "victim.img", 96 * MIB);
    let l = Loop::new(&target, false);
    // First a good flash: the device has a valid table to lose.
    ok(&flash(&img, &l.dev, &["--yes"]).output().unwrap(), "flash");
    assert!(has_valid_gpt(&l.dev));
    kill_halfway(&img, &l.dev);
    assert!(
        !has_valid_gpt(&l.dev),
        "a half-written disk still has a partition table"
    );
    let f = std::fs::File::open(&l.dev).unwrap();
    let mut h = [0u8; 512];
    for at in [512, 96 * MIB - 512] {
        f.read_exact_at(&mut h, at).unwrap();
        assert_ne!(&h[..8], b"EFI PART", "a GPT header survives at byte {at}");
    }
}

#[test]
fn a_range_failing_verification_wipes_the_table_and_says_so() {
    if !common::as_root() {
        return;
    }
    let img = image(64 * MIB);
    let target = backing(img.dir.path(), "t.img", 64 * MIB);
    let l = Loop::new(&target, false);
    ok(&flash(&img, &l.dev, &["--yes"]).output().unwrap(), "flash");
    // The image changes after its bmap was made: a late range no longer matches.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&img.raw)
        .unwrap();
    let map = imgbuild::image::bmap::parse(
        &std::fs::read_to_string(img.raw.with_extension("bmap")).unwrap(),
    )
    .unwrap();
    let (a, b, _) = map.ranges.iter().max_by_key(|(a, b, _)| b - a).unwrap();
    f.write_all_at(b"changed", (a + b) / 2 * 4096).unwrap();
    drop(f);
    let o = flash(&img, &l.dev, &["--yes"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("do not match the bmap") && err.contains("partition table regions were wiped"),
        "{err}"
    );
    assert!(!has_valid_gpt(&l.dev));
}

/// `cat FILE` in the ext4 filesystem at byte `offset` of `dev`.
fn ext4_cat(dev: &str, offset: u64, file: &str) -> String {
    ok(
        &sh(
            "debugfs",
            &[
                "-R",
                &format!("cat {file}"),
                &format!("{dev}?offset={offset}"),
            ],
        ),
        "debugfs cat",
    )
}

fn sha256_of_range(dev: &str, (a, len): (u64, u64)) -> String {
    use sha2::Digest;
    let f = std::fs::File::open(dev).unwrap();
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, a).unwrap();
    hex::encode(sha2::Sha256::digest(&buf))
}

/// Acceptance of "flash keeps the data": a fresh disk gets slot B and a blank data partition;
/// after a first boot (here: the data filesystem made as imgbuild-data.service makes it, with
/// node1's identity and a marker) a reflash with a new root keeps the data partition's bytes;
/// node2's image is refused naming both identities, with nothing written; a flash cut short
/// leaves the data partition findable and the next flash keeps it; `--wipe-data` starts afresh.
#[test]
fn a_reflash_keeps_this_nodes_data_partition_and_refuses_another_nodes() {
    if !common::as_root() {
        return;
    }
    let v1 = image_of(64 * MIB, NODE1, b"v1");
    let target = backing(v1.dir.path(), "disk.img", 1300 * MIB);
    let l = Loop::new(&target, false);
    let o = flash(&v1, &l.dev, &["--yes"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("a blank data partition `imgbuild-data`"),
        "{err}"
    );
    let f = std::fs::File::open(&l.dev).unwrap();
    let g = Gpt::read(&f).unwrap();
    let names: Vec<&str> = g.partitions.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["ESP", "imgbuild-root-a", "imgbuild-root-b", "imgbuild-data"],
        "{g:?}"
    );
    let (a, b) = (&g.partitions[1], &g.partitions[2]);
    assert_eq!(
        a.last_lba - a.first_lba,
        b.last_lba - b.first_lba,
        "slot B is as big as A"
    );
    let data = g.partitions[3].clone();
    let range = (
        data.first_lba * 512,
        (data.last_lba + 1 - data.first_lba) * 512,
    );
    assert!(range.1 >= 1 << 30, "{range:?}");
    let v = ok(&sh("sfdisk", &["--verify", &l.dev]), "sfdisk --verify");
    assert!(v.contains("No errors detected"), "{v}");
    drop(f);

    // The first boot: the data filesystem with node1's identity and the node's state.
    let state = v1.dir.path().join("state");
    std::fs::create_dir_all(state.join("kafka/data")).unwrap();
    std::fs::write(state.join("identity"), NODE1).unwrap();
    std::fs::write(state.join("kafka/data/marker"), b"kept across images\n").unwrap();
    mkfs_ext4(&l.dev, range, "imgbuild-data", &state);
    let before = sha256_of_range(&l.dev, range);

    // A new root for node1: written, the data partition kept byte for byte.
    let v2 = image_of(64 * MIB, NODE1, b"v2");
    let o = flash(&v2, &l.dev, &["--yes"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("keeping the data partition `imgbuild-data`") && err.contains("node=node1"),
        "{err}"
    );
    assert_eq!(
        sha256_of_range(&l.dev, range),
        before,
        "the data partition changed"
    );
    assert_eq!(
        ext4_cat(&l.dev, range.0, "/kafka/data/marker"),
        "kept across images\n"
    );
    assert_eq!(ext4_cat(&l.dev, a.first_lba * 512, "/version"), "v2");
    let f = std::fs::File::open(&l.dev).unwrap();
    assert_eq!(
        Gpt::read(&f).unwrap().partitions[3],
        data,
        "the table entry changed"
    );
    drop(f);

    // node2's image: refused, both identities named, nothing written.
    let other = image_of(64 * MIB, NODE2, b"v1");
    refused(
        &other,
        &l.dev,
        &target,
        &["--yes"],
        "its data partition belongs to cluster=test kafka_cluster_id=AAAAAAAAAAAAAAAAAAAAAA node=node1 node_id=1, this image is cluster=test kafka_cluster_id=AAAAAAAAAAAAAAAAAAAAAA node=node2 node_id=2",
    );

    // A flash cut short: the data partition is still in a table, and the next flash keeps it.
    kill_halfway(&v1, &l.dev);
    assert_eq!(
        sha256_of_range(&l.dev, range),
        before,
        "a cut flash changed the data"
    );
    let o = flash(&v1, &l.dev, &["--yes"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        o.status.success() && err.contains("keeping the data partition"),
        "{err}"
    );
    assert_eq!(sha256_of_range(&l.dev, range), before);
    assert_eq!(ext4_cat(&l.dev, a.first_lba * 512, "/version"), "v1");

    // --wipe-data: node2's image written, its data partition blank for its first boot.
    let o = flash(&other, &l.dev, &["--yes", "--wipe-data"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    assert!(err.contains("--wipe-data: the data partition"), "{err}");
    let f = std::fs::File::open(&l.dev).unwrap();
    let g = Gpt::read(&f).unwrap();
    let d = g
        .partitions
        .iter()
        .find(|p| p.name == "imgbuild-data")
        .unwrap();
    let mut head = vec![0u8; MIB as usize];
    f.read_exact_at(&mut head, d.first_lba * 512).unwrap();
    assert!(
        head.iter().all(|b| *b == 0),
        "the data partition is not blank"
    );
}
