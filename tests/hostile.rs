//! Hostile component archives, crafted byte by byte: each must be rejected or neutralised, and a
//! canary directory beside the rootfs must stay untouched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use imgbuild::rootfs::confined::Root;
use imgbuild::rootfs::extract::{self, Limits, Policy, Report};
use tar::EntryType;

mod common;

/// One raw ustar entry; names and link targets are written as raw bytes, bypassing every check
/// a well-behaved tar writer would make.
fn entry(
    name: &str,
    kind: EntryType,
    data: &[u8],
    link: &str,
    mode: u32,
    declared: Option<u64>,
) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    {
        let u = h.as_ustar_mut().unwrap();
        u.name[..name.len()].copy_from_slice(name.as_bytes());
        u.linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(declared.unwrap_or(data.len() as u64));
    h.set_mtime(1_767_225_600);
    h.set_uid(0);
    h.set_gid(0);
    if matches!(kind, EntryType::Char | EntryType::Block) {
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
    }
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn file(name: &str, data: &[u8]) -> Vec<u8> {
    entry(name, EntryType::Regular, data, "", 0o644, None)
}
fn dir(name: &str) -> Vec<u8> {
    entry(name, EntryType::Directory, b"", "", 0o755, None)
}
fn symlink(name: &str, target: &str) -> Vec<u8> {
    entry(name, EntryType::Symlink, b"", target, 0o777, None)
}
fn hardlink(name: &str, target: &str) -> Vec<u8> {
    entry(name, EntryType::Link, b"", target, 0o644, None)
}
fn archive(entries: Vec<Vec<u8>>) -> Vec<u8> {
    let mut out: Vec<u8> = entries.concat();
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// Everything under `dir`: path → contents (or `<dir>`/`-> target`).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let v = if m.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&p).unwrap().display()).into_bytes()
            } else if m.is_dir() {
                stack.push(p.clone());
                b"<dir>".to_vec()
            } else {
                std::fs::read(&p).unwrap()
            };
            out.insert(p.strip_prefix(dir).unwrap().to_path_buf(), v);
        }
    }
    out
}

/// Extract `bytes` as a component into a fresh rootfs beside a canary; check the canary and the
/// surroundings, and return the result with the rootfs path.
fn run(bytes: Vec<u8>) -> (Result<Report, String>, tempfile::TempDir) {
    let top = tempfile::tempdir().unwrap();
    let canary = top.path().join("canary");
    std::fs::create_dir(&canary).unwrap();
    std::fs::write(canary.join("secret"), b"do not touch").unwrap();
    let before = snapshot(top.path());
    let root = Root::open(&top.path().join("rootfs")).unwrap();
    let policy = Policy::Component {
        into: PathBuf::from("opt/pkg-1"),
    };
    let result = extract::extract(&bytes[..], &root, &policy, Limits::COMPONENT)
        .map_err(|e| format!("{e:#}"));
    let after = snapshot(top.path());
    let outside = |m: &BTreeMap<PathBuf, Vec<u8>>| -> BTreeMap<PathBuf, Vec<u8>> {
        m.iter()
            .filter(|(p, _)| !p.starts_with("rootfs"))
            .map(|(p, v)| (p.clone(), v.clone()))
            .collect()
    };
    assert_eq!(
        outside(&before),
        outside(&after),
        "something outside the rootfs changed"
    );
    (result, top)
}

fn rejected(bytes: Vec<u8>, why: &str) {
    let (r, _top) = run(bytes);
    let err = r.expect_err("hostile archive accepted");
    assert!(err.contains(why), "expected `{why}` in: {err}");
}

#[test]
fn a_normal_archive_extracts() {
    if !common::as_root() {
        return;
    }
    let (r, top) = run(archive(vec![
        dir("pkg/"),
        dir("pkg/bin/"),
        entry(
            "pkg/bin/run",
            EntryType::Regular,
            b"#!/bin/sh\n",
            "",
            0o755,
            None,
        ),
        symlink("pkg/bin/run2", "run"),
        symlink("pkg/lib", "bin"),
        hardlink("pkg/bin/run3", "pkg/bin/run"),
    ]));
    r.unwrap();
    let root = top.path().join("rootfs/opt/pkg-1");
    assert_eq!(
        std::fs::read(root.join("bin/run3")).unwrap(),
        b"#!/bin/sh\n"
    );
    assert_eq!(
        std::fs::read_link(root.join("bin/run2")).unwrap(),
        Path::new("run")
    );
}

#[test]
fn traversal() {
    rejected(
        archive(vec![dir("pkg/"), file("pkg/../../canary/secret", b"pwned")]),
        "contains `..`",
    );
}

#[test]
fn absolute_path() {
    rejected(
        archive(vec![file("/tmp/imgbuild-hostile-absolute", b"pwned")]),
        "is absolute",
    );
    assert!(!Path::new("/tmp/imgbuild-hostile-absolute").exists());
}

#[test]
fn symlink_then_write_through_it() {
    // The link itself points inside the archive; writing through it is still refused.
    rejected(
        archive(vec![
            dir("pkg/"),
            dir("pkg/sub/"),
            symlink("pkg/l", "sub"),
            file("pkg/l/x", b"through"),
        ]),
        "opt/pkg-1/l is a symlink, and writes never go through symlinks here",
    );
}

#[test]
fn symlink_chain_out() {
    rejected(
        archive(vec![
            dir("pkg/"),
            symlink("pkg/a", "b"),
            symlink("pkg/b", "../../../canary"),
        ]),
        "points outside the archive",
    );
}

#[test]
fn absolute_symlink() {
    rejected(
        archive(vec![dir("pkg/"), symlink("pkg/etc", "/etc")]),
        "symlink to `/etc` points outside the archive",
    );
}

#[test]
fn hardlink_out() {
    rejected(
        archive(vec![dir("pkg/"), hardlink("pkg/passwd", "etc/passwd")]),
        "hard link to `etc/passwd` points outside the archive",
    );
    rejected(
        archive(vec![
            dir("pkg/"),
            hardlink("pkg/s", "pkg/../../canary/secret"),
        ]),
        "contains `..`",
    );
}

#[test]
fn char_device() {
    rejected(
        archive(vec![
            dir("pkg/"),
            entry("pkg/mem", EntryType::Char, b"", "", 0o666, None),
        ]),
        "device nodes and fifos are not allowed",
    );
}

#[test]
fn block_device() {
    rejected(
        archive(vec![
            dir("pkg/"),
            entry("pkg/sda", EntryType::Block, b"", "", 0o660, None),
        ]),
        "device nodes and fifos are not allowed",
    );
}

#[test]
fn fifo() {
    rejected(
        archive(vec![
            dir("pkg/"),
            entry("pkg/pipe", EntryType::Fifo, b"", "", 0o644, None),
        ]),
        "device nodes and fifos are not allowed",
    );
}

#[test]
fn setuid_and_setgid_are_stripped() {
    if !common::as_root() {
        return;
    }
    let (r, top) = run(archive(vec![
        dir("pkg/"),
        entry("pkg/su", EntryType::Regular, b"x", "", 0o4755, None),
        entry("pkg/sg", EntryType::Regular, b"x", "", 0o2755, None),
    ]));
    let report = r.unwrap();
    assert_eq!(report.stripped.len(), 2);
    use std::os::unix::fs::PermissionsExt;
    for f in ["su", "sg"] {
        let mode = std::fs::metadata(top.path().join("rootfs/opt/pkg-1").join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755, "{f}");
    }
}

#[test]
fn file_then_directory_with_the_same_name() {
    if !common::as_root() {
        return;
    }
    rejected(
        archive(vec![
            dir("pkg/"),
            file("pkg/x", b"file"),
            dir("pkg/x/"),
            file("pkg/x/y", b"in dir"),
        ]),
        "exists and is not a directory",
    );
}

#[test]
fn duplicate_file() {
    if !common::as_root() {
        return;
    }
    rejected(
        archive(vec![
            dir("pkg/"),
            file("pkg/x", b"one"),
            file("pkg/x", b"two"),
        ]),
        "does it repeat an earlier entry?",
    );
}

#[test]
fn huge_declared_size() {
    rejected(
        archive(vec![
            dir("pkg/"),
            entry("pkg/big", EntryType::Regular, b"", "", 0o644, Some(1 << 40)),
        ]),
        "declares more than",
    );
}

#[test]
fn very_many_entries() {
    if !common::as_root() {
        return;
    }
    let mut entries = vec![dir("pkg/")];
    for i in 0..Limits::COMPONENT.max_entries {
        entries.push(file(&format!("pkg/f{i}"), b""));
    }
    rejected(archive(entries), "more than 50000 entries");
}

#[test]
fn entries_outside_the_top_directory() {
    if !common::as_root() {
        return;
    }
    rejected(
        archive(vec![
            dir("pkg/"),
            file("pkg/a", b"1"),
            file("other/b", b"2"),
        ]),
        "outside the archive's top-level directory",
    );
}

#[test]
fn garbage_is_an_error() {
    let (r, _t) = run(vec![0x55; 4096]);
    assert!(r.is_err());
}

/// Base OS archives are an operating system: owners, setuid bits, device nodes and file
/// capabilities (security.capability xattr in a PAX header) are kept, and symlinks resolve inside
/// the root, never onto the host.
#[test]
fn base_archives_keep_owners_modes_devices_and_capabilities() {
    if !common::as_root() {
        return;
    }
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let top = tempfile::tempdir().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let add = |b: &mut tar::Builder<Vec<u8>>,
               name: &str,
               kind: EntryType,
               mode: u32,
               uid: u64,
               data: &[u8],
               link: Option<&str>| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_size(data.len() as u64);
        h.set_mtime(1_767_225_600);
        if kind == EntryType::Char {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        match link {
            Some(l) => b.append_link(&mut h, name, l).unwrap(),
            None => b.append_data(&mut h, name, data).unwrap(),
        }
    };
    add(&mut b, "./usr/", EntryType::Directory, 0o755, 0, b"", None);
    add(
        &mut b,
        "./usr/bin/",
        EntryType::Directory,
        0o755,
        0,
        b"",
        None,
    );
    add(
        &mut b,
        "./bin",
        EntryType::Symlink,
        0o777,
        0,
        b"",
        Some("usr/bin"),
    );
    add(
        &mut b,
        "./usr/bin/su",
        EntryType::Regular,
        0o4755,
        0,
        b"su",
        None,
    );
    add(&mut b, "./dev/", EntryType::Directory, 0o755, 0, b"", None);
    add(&mut b, "./dev/null", EntryType::Char, 0o666, 0, b"", None);
    add(&mut b, "./etc/", EntryType::Directory, 0o755, 0, b"", None);
    add(
        &mut b,
        "./etc/shadow",
        EntryType::Regular,
        0o640,
        42,
        b"root:*:::::::\n",
        None,
    );
    add(
        &mut b,
        "./etc/host",
        EntryType::Symlink,
        0o777,
        0,
        b"",
        Some("/"),
    );
    // File capability cap_net_raw+ep on ping, as Debian ships it.
    let cap = [
        0x01u8, 0, 0, 0x02, 0x00, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    b.append_pax_extensions([("SCHILY.xattr.security.capability", &cap[..])])
        .unwrap();
    add(
        &mut b,
        "./usr/bin/ping",
        EntryType::Regular,
        0o755,
        0,
        b"ping",
        None,
    );
    // Written through the in-tree absolute symlink: must land inside the root.
    add(
        &mut b,
        "./etc/host/etc-written-through-link",
        EntryType::Regular,
        0o644,
        0,
        b"x",
        None,
    );
    let bytes = b.into_inner().unwrap();
    let rootdir = top.path().join("rootfs");
    let root = Root::open(&rootdir).unwrap();
    extract::extract(&bytes[..], &root, &Policy::Base, Limits::BASE).unwrap();
    let meta = |p: &str| std::fs::symlink_metadata(rootdir.join(p)).unwrap();
    assert_eq!(meta("usr/bin/su").mode() & 0o7777, 0o4755, "setuid kept");
    assert!(meta("dev/null").file_type().is_char_device());
    assert_eq!(meta("dev/null").rdev(), libc::makedev(1, 3));
    assert_eq!(
        (meta("etc/shadow").uid(), meta("etc/shadow").gid()),
        (42, 42),
        "owners kept"
    );
    assert_eq!(
        std::fs::read_link(rootdir.join("bin")).unwrap(),
        Path::new("usr/bin")
    );
    assert!(
        rootdir.join("etc-written-through-link").is_file(),
        "the absolute link resolved inside the root"
    );
    assert!(!Path::new("/etc-written-through-link").exists());
    let c = std::ffi::CString::new(rootdir.join("usr/bin/ping").to_str().unwrap()).unwrap();
    let name = std::ffi::CString::new("security.capability").unwrap();
    let mut val = [0u8; 64];
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            name.as_ptr(),
            val.as_mut_ptr().cast(),
            val.len(),
        )
    };
    assert_eq!(&val[..n.max(0) as usize], &cap[..], "file capability kept");
}
