//! Disk-image building blocks checked with the real tools: the GPT with `sfdisk`.

use std::fs::OpenOptions;
use std::path::Path;
use std::process::Command;

use imgbuild::image::gpt::{self, Gpt, Guid, Partition};
use serde_json::Value;

mod common;

const MIB: u64 = 1 << 20;

/// A new sparse image file of `size` bytes, open for reading and writing.
fn new_image(path: &Path, size: u64) -> std::fs::File {
    let f = OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.set_len(size).unwrap();
    f
}

fn sfdisk(args: &[&str], image: &Path) -> (bool, String) {
    let o = Command::new(common::tool("sfdisk"))
        .args(args)
        .arg(image)
        .output()
        .unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

fn two_partitions(sectors: u64) -> Gpt {
    let (_, last) = gpt::usable(sectors);
    Gpt {
        disk_guid: Guid::derived("test disk"),
        partitions: vec![
            Partition {
                type_guid: Guid::parse(gpt::ESP).unwrap(),
                guid: Guid::derived("esp"),
                first_lba: 2048,
                last_lba: 2048 + 16 * 2048 - 1,
                name: "esp".into(),
            },
            Partition {
                type_guid: Guid::parse(gpt::LINUX_ROOT_X86_64).unwrap(),
                guid: Guid::derived("root"),
                first_lba: 2048 + 16 * 2048,
                last_lba: last,
                name: "root".into(),
            },
        ],
    }
}

#[test]
fn gpt_passes_sfdisk_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.raw");
    let f = new_image(&image, 64 * MIB);
    let g = two_partitions(64 * MIB / 512);
    g.write(&f, 64 * MIB).unwrap();
    let (ok, out) = sfdisk(&["--verify"], &image);
    assert!(ok && out.contains("No errors detected"), "{out}");
    let (ok, json) = sfdisk(&["--json"], &image);
    assert!(ok, "{json}");
    let pt: Value = serde_json::from_str(&json).unwrap();
    let t = &pt["partitiontable"];
    assert_eq!(t["label"], "gpt");
    assert_eq!(t["id"], g.disk_guid.0.as_str());
    assert_eq!(t["lastlba"], 64 * MIB / 512 - 34);
    let parts = t["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0]["type"], gpt::ESP);
    assert_eq!(parts[0]["uuid"], g.partitions[0].guid.0.as_str());
    assert_eq!(parts[0]["name"], "esp");
    assert_eq!(parts[0]["start"], 2048);
    assert_eq!(parts[1]["type"], gpt::LINUX_ROOT_X86_64);
    assert_eq!(Gpt::read(&f).unwrap(), g);
}

#[test]
fn backup_header_moves_to_the_end_of_a_bigger_disk() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.raw");
    let f = new_image(&image, 64 * MIB);
    two_partitions(64 * MIB / 512).write(&f, 64 * MIB).unwrap();
    f.set_len(256 * MIB).unwrap(); // the image on a bigger disk
    let (_, before) = sfdisk(&["--verify"], &image);
    assert!(
        !before.contains("No errors detected"),
        "a moved disk must first look wrong:\n{before}"
    );
    gpt::relocate_backup(&f, 256 * MIB).unwrap();
    let (ok, out) = sfdisk(&["--verify"], &image);
    assert!(ok && out.contains("No errors detected"), "{out}");
    let (_, json) = sfdisk(&["--json"], &image);
    let pt: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(pt["partitiontable"]["lastlba"], 256 * MIB / 512 - 34);
    let mut sig = [0u8; 8];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut sig, 256 * MIB - 512).unwrap();
    assert_eq!(&sig, b"EFI PART", "backup header in the last sector");
}

#[test]
fn identifiers_are_derived_and_validated() {
    assert_eq!(Guid::derived("a"), Guid::derived("a"));
    assert_ne!(Guid::derived("a"), Guid::derived("b"));
    assert_eq!(&Guid::derived("a").0[14..15], "4", "version 4 layout");
    assert!(Guid::parse("not-a-guid").is_err());
    let f = tempfile::tempfile().unwrap();
    f.set_len(MIB).unwrap();
    let mut g = two_partitions(2048);
    g.partitions[1].first_lba = 100; // overlaps the ESP and starts in the entry array
    assert!(g.write(&f, MIB).is_err());
}

/// A sparse image with data at the start, in the middle and in a partial last block.
fn sparse_image(path: &Path) -> u64 {
    use std::os::unix::fs::FileExt;
    let size = 32 * MIB + 1000; // ends mid-block
    let f = new_image(path, size);
    f.write_all_at(&vec![0xAB; 10_000], 0).unwrap();
    f.write_all_at(&vec![0xCD; 3 * 4096], 8 * MIB).unwrap();
    f.write_all_at(b"tail", size - 4).unwrap();
    size
}

#[test]
fn bmap_reproduces_the_image_with_bmaptool() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.raw");
    sparse_image(&image);
    let xml = imgbuild::image::bmap::create(&image).unwrap();
    std::fs::write(dir.path().join("disk.bmap"), &xml).unwrap();
    assert!(
        xml.contains("<MappedBlocksCount> 7 </MappedBlocksCount>"),
        "3 + 3 + 1 blocks:\n{xml}"
    );
    let dest = dir.path().join("copy.raw");
    let o = Command::new("bmaptool")
        .args(["copy", "--bmap"])
        .arg(dir.path().join("disk.bmap"))
        .arg(&image)
        .arg(&dest)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "bmaptool copy:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        std::fs::read(&image).unwrap(),
        std::fs::read(&dest).unwrap(),
        "bmaptool reproduced the image"
    );
}

#[test]
fn bmaptool_rejects_a_tampered_bmap() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.raw");
    sparse_image(&image);
    let xml = imgbuild::image::bmap::create(&image).unwrap();
    // Change one range checksum: bmaptool must notice (file checksum, then range checksum).
    let i = xml.find("chksum=\"").unwrap() + 8;
    let mut bad = xml.clone();
    bad.replace_range(i..i + 1, if &xml[i..i + 1] == "0" { "1" } else { "0" });
    std::fs::write(dir.path().join("bad.bmap"), bad).unwrap();
    let o = Command::new("bmaptool")
        .args(["copy", "--bmap"])
        .arg(dir.path().join("bad.bmap"))
        .arg(&image)
        .arg(dir.path().join("copy.raw"))
        .output()
        .unwrap();
    assert!(!o.status.success(), "bmaptool accepted a tampered bmap");
}

/// A small tree with what a root filesystem must keep: owners, modes, setuid, symlinks, hard links.
fn small_tree(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir.join("usr/bin")).unwrap();
    std::fs::create_dir_all(dir.join("var/lib/zookeeper")).unwrap();
    std::fs::write(dir.join("usr/bin/su"), b"su").unwrap();
    std::fs::set_permissions(
        dir.join("usr/bin/su"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    std::fs::write(dir.join("var/lib/zookeeper/myid"), b"2\n").unwrap();
    std::os::unix::fs::chown(dir.join("var/lib/zookeeper/myid"), Some(999), Some(999)).unwrap();
    std::os::unix::fs::symlink("usr/bin", dir.join("bin")).unwrap();
    std::fs::hard_link(dir.join("usr/bin/su"), dir.join("usr/bin/su2")).unwrap();
    // Fixed mtimes: the tree's own times go into the filesystem as they are.
    for p in [
        "usr/bin/su",
        "var/lib/zookeeper/myid",
        "usr/bin",
        "usr",
        "var/lib/zookeeper",
        "var/lib",
        "var",
        "",
    ] {
        let t = std::ffi::CString::new(dir.join(p).to_str().unwrap()).unwrap();
        let times = [libc::timespec {
            tv_sec: 1_767_225_600,
            tv_nsec: 0,
        }; 2];
        unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                t.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
    }
}

fn disk_with_root(dir: &Path, tree: &Path) -> (std::path::PathBuf, u64) {
    let image = dir.join("disk.raw");
    let f = new_image(&image, 64 * MIB);
    let g = two_partitions(64 * MIB / 512);
    g.write(&f, 64 * MIB).unwrap();
    let root = &g.partitions[1];
    let offset = root.first_lba * 512;
    let size = (root.last_lba + 1 - root.first_lba) * 512 / 4096 * 4096;
    let id = imgbuild::image::disk::FsIdentity {
        label: "root",
        uuid: &Guid::derived("fs"),
        hash_seed: &Guid::derived("seed"),
        epoch: 1_767_225_600,
    };
    imgbuild::image::disk::mkfs_ext4(&image, offset, size, tree, &id).unwrap();
    (image, offset)
}

#[test]
fn root_ext4_in_place_is_clean_keeps_metadata_and_is_reproducible() {
    if !common::as_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    small_tree(&tree);
    let (image, offset) = disk_with_root(dir.path(), &tree);
    let spec = format!("{}?offset={offset}", image.display());
    let o = Command::new("e2fsck")
        .args(["-fn", &spec])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "e2fsck:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let (ok, out) = sfdisk(&["--verify"], &image);
    assert!(
        ok && out.contains("No errors detected"),
        "mkfs stayed inside its partition:\n{out}"
    );
    let stat = |p: &str| {
        let o = Command::new("debugfs")
            .args(["-R", &format!("stat {p}"), &spec])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert!(
        stat("/usr/bin/su").contains("Mode:  04755"),
        "{}",
        stat("/usr/bin/su")
    );
    assert!(stat("/usr/bin/su").contains("Links: 2"), "hard link kept");
    assert!(
        stat("/var/lib/zookeeper/myid").contains("User:   999   Group:   999"),
        "{}",
        stat("/var/lib/zookeeper/myid")
    );
    // Regression: the first mkfs read the files (moving their atimes) and e2fsprogs 1.47.0 copies
    // ctimes, which differ between any two trees; the second build must still be identical.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::set_permissions(
        tree.join("var/lib/zookeeper/myid"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let first = imgbuild::fetch::checksum::hash_file(&image).unwrap().sha256;
    let again = tempfile::tempdir().unwrap();
    let (image2, _) = disk_with_root(again.path(), &tree);
    let second = imgbuild::fetch::checksum::hash_file(&image2)
        .unwrap()
        .sha256;
    assert_eq!(first, second, "same inputs, same bytes");
    let o = Command::new("e2fsck")
        .args(["-fn", &format!("{}?offset={offset}", image2.display())])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "e2fsck after the ctime pass:\n{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

/// debugfs `rdump` of the root filesystem at `offset` of `image` into `out`, listed as sorted
/// lines: path, type, mode, owner, mtime, size (symlinks: path and target), then file digests.
fn dumped(image: &Path, offset: u64, out: &Path) -> Vec<String> {
    std::fs::create_dir_all(out).unwrap();
    let spec = format!("{}?offset={offset}", image.display());
    let o = Command::new("debugfs")
        .args(["-R", &format!("rdump / {}", out.display()), &spec])
        .output()
        .unwrap();
    assert!(o.status.success());
    let script = format!(
        "cd '{}' && find . ! -type l -printf '%P %y %m %U %G %T@ %s\\n' | sort && \
         find . -type l -printf '%P -> %l\\n' | sort && \
         find . -type f -print0 | sort -z | xargs -0 sha256sum",
        out.display()
    );
    let o = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert!(o.status.success());
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_node_delta_on_the_shared_filesystem_equals_mkfs_of_the_node_tree() {
    if !common::as_root() {
        return;
    }
    use imgbuild::image::disk;
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (common, node) = (dir.path().join("common"), dir.path().join("node"));
    small_tree(&common);
    std::fs::create_dir_all(common.join("etc/systemd/system")).unwrap();
    std::fs::write(common.join("etc/hostname"), b"localhost\n").unwrap();
    std::fs::write(common.join("etc/gone"), b"removed by the node\n").unwrap();
    std::fs::write(
        common.join("etc/systemd/system/system-systemd\\x2dcryptsetup.slice"),
        b"[Slice]\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("hostname", common.join("etc/link")).unwrap();
    // The node's tree as rootfs::node_tree makes it: a hard-link copy, files replaced, not edited.
    assert!(
        Command::new("cp")
            .args(["-a", "-l"])
            .arg(&common)
            .arg(&node)
            .status()
            .unwrap()
            .success()
    );
    std::fs::remove_file(node.join("etc/hostname")).unwrap();
    std::fs::write(node.join("etc/hostname"), b"node2\n").unwrap();
    std::fs::set_permissions(
        node.join("etc/hostname"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::os::unix::fs::chown(node.join("etc/hostname"), Some(123), Some(456)).unwrap();
    std::fs::remove_file(node.join("etc/gone")).unwrap();
    std::fs::remove_file(node.join("etc/link")).unwrap();
    std::os::unix::fs::symlink("gone/elsewhere", node.join("etc/link")).unwrap();
    std::fs::create_dir_all(node.join("etc/new/deeper")).unwrap();
    std::fs::write(node.join("etc/new/deeper/file"), b"new\n").unwrap();
    std::os::unix::fs::symlink(
        "/usr/lib/x",
        node.join("etc/systemd/system/multi\\x2duser.target"),
    )
    .unwrap();

    let epoch = 1_767_225_600;
    let size = 48 * MIB;
    let (uuid, seed) = (Guid::derived("node fs"), Guid::derived("node seed"));
    let id = disk::FsIdentity {
        label: "root",
        uuid: &uuid,
        hash_seed: &seed,
        epoch,
    };
    // A: mkfs of the node's whole tree.
    let a = dir.path().join("a.raw");
    new_image(&a, size + MIB);
    disk::mkfs_ext4(&a, MIB, size, &node, &id).unwrap();
    // B: the shared tree's filesystem, copied in, given the node's identity and changes.
    let script = disk::delta_script(&common, &node, epoch)
        .unwrap()
        .expect("these changes are scriptable");
    for want in [
        "rm \"/etc/gone\"",
        "mkdir \"/etc/new\"",
        "write ",
        "symlink \"/etc/link\"",
    ] {
        assert!(script.contains(want), "{want} in\n{script}");
    }
    assert!(
        !script.contains("/usr/bin/su"),
        "unchanged files are left alone:\n{script}"
    );
    let template = dir.path().join("template.ext4");
    let (tu, ts) = (Guid::derived("template fs"), Guid::derived("template seed"));
    let tid = disk::FsIdentity {
        label: "root",
        uuid: &tu,
        hash_seed: &ts,
        epoch,
    };
    disk::template(&template, size, &common, &tid).unwrap();
    let b = dir.path().join("b.raw");
    new_image(&b, size + MIB);
    disk::copy_sparse(&template, &b, MIB).unwrap();
    disk::personalise(&b, MIB, &id, &script).unwrap();

    let (la, lb) = (
        dumped(&a, MIB, &dir.path().join("da")),
        dumped(&b, MIB, &dir.path().join("db")),
    );
    assert!(
        la.iter()
            .any(|l| l.starts_with("etc/hostname f 600 123 456")),
        "{la:#?}"
    );
    assert_eq!(la, lb, "mkfs of the node tree vs shared filesystem + delta");
    let spec = format!("{}?offset={MIB}", b.display());
    let head = Command::new("dumpe2fs")
        .args(["-h", &spec])
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&head.stdout);
    assert!(head.contains(&format!(
        "Filesystem UUID:          {}",
        uuid.0.to_lowercase()
    )));
    assert!(head.contains(&format!(
        "Directory Hash Seed:      {}",
        seed.0.to_lowercase()
    )));

    // What a script cannot do sends the node to mkfs of its whole tree, with the reason.
    std::fs::hard_link(node.join("etc/new/deeper/file"), node.join("etc/new/link2")).unwrap();
    let why = disk::delta_script(&common, &node, epoch)
        .unwrap()
        .unwrap_err();
    assert!(why.contains("hard link"), "{why}");
    std::fs::remove_file(node.join("etc/new/link2")).unwrap();
    std::fs::remove_dir_all(node.join("var/lib/zookeeper")).unwrap();
    let why = disk::delta_script(&common, &node, epoch)
        .unwrap()
        .unwrap_err();
    assert!(
        why.contains("directory /var/lib/zookeeper removed"),
        "{why}"
    );
}

/// An unwritten extent (what mke2fs's and e2fsck's zeroing leave in an image file) is mapped, and
/// copied, whether or not the page cache holds its pages: SEEK_DATA said data right after it was
/// read and a hole otherwise, so node3's block map differed between two builds in `make e2e`.
/// Here the same file is mapped before and after its pages are read and dropped.
#[test]
fn an_unwritten_extent_is_mapped_whatever_the_page_cache_holds() {
    use imgbuild::image::{bmap, disk};
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("zeroed.img");
    let f = new_image(&path, 8 * MIB);
    // Data in the first MiB, an unwritten extent (allocated, reads as zeros) in the fourth.
    std::os::unix::fs::FileExt::write_all_at(&f, &[7u8; 4096], 0).unwrap();
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 3 * MIB as i64, MIB as i64) };
    assert_eq!(rc, 0, "fallocate: {}", std::io::Error::last_os_error());
    f.sync_all().unwrap();
    let want = vec![(0, 0), (3 * MIB / bmap::BLOCK, 4 * MIB / bmap::BLOCK - 1)];
    let drop_cache = || {
        let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0);
    };
    drop_cache();
    assert_eq!(bmap::mapped_ranges(&f).unwrap(), want, "pages not cached");
    let mut buf = vec![0u8; 8 * MIB as usize];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, 0).unwrap();
    assert_eq!(bmap::mapped_ranges(&f).unwrap(), want, "pages cached");
    drop_cache();
    // Copied: the destination has the same map, the same bytes.
    let copy = dir.path().join("copy.img");
    let g = new_image(&copy, 8 * MIB);
    disk::copy_sparse(&path, &copy, 0).unwrap();
    assert_eq!(bmap::mapped_ranges(&g).unwrap(), want, "the copy's map");
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&path).unwrap());
}

/// imgbuild-data.service's script (src/rootfs/assets/data, as the image carries it) run for real
/// on directories of the test's own, in a private mount namespace (its bind mounts vanish with
/// it): the container runtime's branch, where the data partition is a kept directory. The disk
/// branch (blkid, mkfs, mount by partition label) is proven by tests/image.rs's Secure Boot boot.
#[test]
fn the_data_script_keeps_state_and_refuses_another_nodes_data() {
    if !common::as_root() {
        return;
    }
    const NODE1: &str =
        "cluster=test\nkafka_cluster_id=AAAAAAAAAAAAAAAAAAAAAA\nnode=node1\nnode_id=1\n";
    const NODE2: &str =
        "cluster=test\nkafka_cluster_id=AAAAAAAAAAAAAAAAAAAAAA\nnode=node2\nnode_id=2\n";
    let t = tempfile::tempdir().unwrap();
    let (varlib, mnt) = (t.path().join("varlib"), t.path().join("mnt"));
    for d in ["zookeeper", "kafka/data", "storm"] {
        std::fs::create_dir_all(varlib.join(d)).unwrap();
    }
    std::fs::write(varlib.join("zookeeper/myid"), "1\n").unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/rootfs/assets/data");
    // The script, then (only if it let the services start) a service's write through /var/lib.
    let boot = |mnt: &Path, identity: &str| {
        let want = t.path().join("image-identity");
        std::fs::write(&want, identity).unwrap();
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"sh "$0" && echo written >"$IMGBUILD_VARLIB/kafka/data/by-kafka""#)
            .arg(&script)
            .env("IMGBUILD_DATA_KEPT_DIRECTORY", "1")
            .env("IMGBUILD_DATA_MOUNT", mnt)
            .env("IMGBUILD_IMAGE_IDENTITY", &want)
            .env("IMGBUILD_VARLIB", &varlib)
            .output()
            .unwrap()
    };
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    // First start: the image's state copied in, identity written, /var/lib bound to it.
    let o = boot(&mnt, NODE1);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains(
            "first start: cluster=test kafka_cluster_id=AAAAAAAAAAAAAAAAAAAAAA node=node1 node_id=1"
        ),
        "{}",
        text(&o)
    );
    assert_eq!(
        std::fs::read_to_string(mnt.join("identity")).unwrap(),
        NODE1
    );
    assert_eq!(
        std::fs::read_to_string(mnt.join("zookeeper/myid")).unwrap(),
        "1\n"
    );
    assert!(
        mnt.join("kafka/data/by-kafka").is_file(),
        "the write did not go to the data"
    );
    assert!(
        !varlib.join("kafka/data/by-kafka").exists(),
        "the write went to the root"
    );
    // Every later boot: the same data, nothing copied again.
    std::fs::write(mnt.join("kafka/data/segment"), "kept").unwrap();
    let o = boot(&mnt, NODE1);
    assert!(
        o.status.success() && !text(&o).contains("first start"),
        "{}",
        text(&o)
    );
    assert_eq!(
        std::fs::read_to_string(mnt.join("kafka/data/segment")).unwrap(),
        "kept"
    );
    // node2's image on node1's data: refused in one line naming both, nothing changed, no
    // service write.
    std::fs::remove_file(mnt.join("kafka/data/by-kafka")).unwrap();
    let o = boot(&mnt, NODE2);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("the data partition belongs to cluster=test kafka_cluster_id=AAAAAAAAAAAAAAAAAAAAAA node=node1 node_id=1, this image is cluster=test kafka_cluster_id=AAAAAAAAAAAAAAAAAAAAAA node=node2 node_id=2: services not started"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(mnt.join("identity")).unwrap(),
        NODE1
    );
    assert!(!mnt.join("kafka/data/by-kafka").exists());
    // Files without an identity record: not ours, not touched.
    let foreign = t.path().join("foreign");
    std::fs::create_dir_all(foreign.join("kafka")).unwrap();
    std::fs::write(foreign.join("kafka/x"), "someone's").unwrap();
    let o = boot(&foreign, NODE1);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("holds files but no identity record"),
        "{}",
        text(&o)
    );
    assert_eq!(
        std::fs::read_to_string(foreign.join("kafka/x")).unwrap(),
        "someone's"
    );
    // A first start cut short (its marker, half a copy, no identity): done again.
    let cut = t.path().join("cut");
    std::fs::create_dir_all(cut.join("zookeeper")).unwrap();
    std::fs::write(cut.join(".imgbuild-init"), "").unwrap();
    let o = boot(&cut, NODE1);
    assert!(
        o.status.success() && text(&o).contains("first start"),
        "{}",
        text(&o)
    );
    assert_eq!(
        std::fs::read_to_string(cut.join("zookeeper/myid")).unwrap(),
        "1\n"
    );
    assert!(!cut.join(".imgbuild-init").exists());
}
