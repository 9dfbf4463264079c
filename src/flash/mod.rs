//! Writing an image onto a disk: prove the target first (a whole, unused, big-enough block
//! device that is not the running system's), write only the bmap's mapped ranges and read each
//! back, and write the partition table last, so a disk interrupted anywhere has no valid table and
//! cannot boot half-written.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use sha2::{Digest, Sha256};

use crate::image::bmap::Bmap;
use crate::image::gpt::Gpt;

pub mod keep;

const MIB: u64 = 1 << 20;
/// Written last: the protective MBR and primary GPT live here.
const HEAD: u64 = MIB;

/// What the target is, as found before writing.
#[derive(Debug)]
pub struct Target {
    pub path: PathBuf,
    pub size: u64,
    pub block_device: bool,
    /// Kernel name (`sdb`, `loop3`) of a block device.
    pub name: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub partitions: Vec<String>,
    pub logical_sector: u64,
}

fn sysfs(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// `major:minor` of every mounted filesystem's source, and swap devices, from /proc.
fn in_use_devices() -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") {
        for l in mi.lines() {
            let f: Vec<&str> = l.split(' ').collect();
            if let Some(devno) = f.get(2) {
                out.push((devno.to_string(), f.get(4).unwrap_or(&"?").to_string()));
            }
        }
    }
    if let Ok(sw) = std::fs::read_to_string("/proc/swaps") {
        for l in sw.lines().skip(1) {
            if let Some(dev) = l.split_whitespace().next()
                && let Ok(m) = std::fs::metadata(dev)
                && m.file_type().is_block_device()
            {
                let r = m.rdev();
                out.push((
                    format!("{}:{}", libc::major(r), libc::minor(r)),
                    "swap".to_string(),
                ));
            }
        }
    }
    out
}

/// The whole-disk sysfs directory of the device holding `path`'s filesystem (if any).
fn disk_of_dev(dev: u64) -> Option<PathBuf> {
    let p = std::fs::canonicalize(format!(
        "/sys/dev/block/{}:{}",
        libc::major(dev),
        libc::minor(dev)
    ))
    .ok()?;
    Some(if p.join("partition").exists() {
        p.parent()?.to_path_buf()
    } else {
        p
    })
}

/// Every check that can be made without writing. `allow_file` permits a regular file target.
pub fn inspect(path: &Path, image_size: u64, allow_file: bool) -> Result<Target> {
    let meta = std::fs::metadata(path);
    if let Ok(m) = &meta
        && m.file_type().is_block_device()
    {
        return inspect_block(path, m, image_size);
    }
    match meta {
        Ok(m) if m.is_file() && allow_file => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && allow_file => {}
        Ok(m) if m.is_file() => bail!(
            "{} is a regular file, not a block device\n\nhint: to write an image into a file, pass --to-file",
            path.display()
        ),
        Ok(_) => bail!("{} is not a block device", path.display()),
        Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
    }
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    Ok(Target {
        path: path.to_path_buf(),
        size: size.max(image_size),
        block_device: false,
        name: None,
        model: None,
        serial: None,
        partitions: Vec::new(),
        logical_sector: 512,
    })
}

// Long on purpose: the safety checks before writing a disk, in the order the user reads them (whole
// disk, partitions in use, the running system's disk, size, identity); each is short and they share
// the sysfs path.
fn inspect_block(path: &Path, m: &std::fs::Metadata, image_size: u64) -> Result<Target> {
    let dev = m.rdev();
    let devno = format!("{}:{}", libc::major(dev), libc::minor(dev));
    let sys = std::fs::canonicalize(format!("/sys/dev/block/{devno}")).with_context(|| {
        format!(
            "{}: no sysfs entry for block device {devno}",
            path.display()
        )
    })?;
    let name = sys
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let shown = path.display();
    if sys.join("partition").exists() {
        let disk = sys
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        bail!("{shown} is a partition ({name}) — give the whole disk, /dev/{disk}");
    }
    // Partitions of this disk, and everything that could be using it or them.
    let mut parts: Vec<(String, PathBuf)> = std::fs::read_dir(&sys)?
        .flatten()
        .filter(|e| e.path().join("partition").exists())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    parts.sort();
    let mut problems = Vec::new();
    let used = in_use_devices();
    let mut check = |label: &str, dir: &Path| {
        let dn = sysfs(&dir.join("dev")).unwrap_or_default();
        for (d, what) in &used {
            if *d == dn {
                problems.push(if what == "swap" {
                    format!("{label} is in use as swap")
                } else {
                    format!("{label} is mounted (at {what})")
                });
            }
        }
        if let Ok(h) = std::fs::read_dir(dir.join("holders")) {
            let holders: Vec<String> = h
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            if !holders.is_empty() {
                problems.push(format!(
                    "{label} is held by {} (device mapper, md or LVM)",
                    holders.join(", ")
                ));
            }
        }
    };
    check(&name, &sys);
    for (p, dir) in &parts {
        check(p, dir);
    }
    // The disk under / (and /boot, /boot/efi, /usr when separate).
    for mp in ["/", "/boot", "/boot/efi", "/usr", "/var"] {
        if let Ok(md) = std::fs::metadata(mp)
            && disk_of_dev(md.dev()).as_deref() == Some(sys.as_path())
        {
            problems.push(format!("{name} holds the running system ({mp})"));
        }
    }
    problems.dedup();
    if !problems.is_empty() {
        bail!("refusing to write to {shown}: {}", problems.join("; "));
    }
    let size = sysfs(&sys.join("size"))
        .and_then(|s| s.parse::<u64>().ok())
        .map(|s| s * 512)
        .context("reading the disk size from sysfs")?;
    let logical_sector = sysfs(&sys.join("queue/logical_block_size"))
        .and_then(|s| s.parse().ok())
        .unwrap_or(512);
    ensure!(
        logical_sector == 512,
        "{shown} has {logical_sector}-byte logical sectors; the image's GPT is laid out for 512-byte sectors"
    );
    ensure!(
        size >= image_size,
        "{shown} is too small: {} ({size} bytes), the image needs {} ({image_size} bytes)",
        crate::util::fmt::human(size),
        crate::util::fmt::human(image_size)
    );
    let serial = sysfs(&sys.join("device/serial"))
        .or_else(|| sysfs(&sys.join("device/wwid")))
        .or_else(|| sysfs(&sys.join("loop/backing_file")).map(|f| format!("loop on {f}")));
    Ok(Target {
        path: path.to_path_buf(),
        size,
        block_device: true,
        model: sysfs(&sys.join("device/model"))
            .or_else(|| sysfs(&sys.join("device/vendor")))
            .or_else(|| (name.starts_with("loop")).then(|| "loop device".to_string())),
        serial,
        partitions: parts.into_iter().map(|(p, _)| p).collect(),
        name: Some(name),
        logical_sector,
    })
}

impl Target {
    pub fn describe(&self) -> String {
        let kind = if self.block_device {
            "block device"
        } else {
            "file"
        };
        format!(
            "{} ({kind}{}): model {}, serial {}, {} ({} bytes), partitions: {}",
            self.path.display(),
            self.name
                .as_deref()
                .map(|n| format!(" {n}"))
                .unwrap_or_default(),
            self.model.as_deref().unwrap_or("-"),
            self.serial.as_deref().unwrap_or("-"),
            crate::util::fmt::human(self.size),
            self.size,
            if self.partitions.is_empty() {
                "none".to_string()
            } else {
                self.partitions.join(" ")
            }
        )
    }
}

/// Open the target for writing: exclusively for a block device (the kernel refuses O_EXCL while
/// anything holds it), created when a file target does not exist yet.
pub fn open(t: &Target) -> Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if t.block_device {
        o.custom_flags(libc::O_EXCL);
    } else {
        o.create(true);
    }
    o.open(&t.path)
        .with_context(|| format!("opening {} exclusively (is it in use?)", t.path.display()))
}

/// What to write: the bmap's ranges in bytes, split around the head region.
#[derive(Debug, Clone)]
pub struct WritePlan {
    pub image_size: u64,
    /// (start, end exclusive, sha256 of the whole bmap range or None without a bmap)
    pub ranges: Vec<(u64, u64, Option<String>)>,
}

impl WritePlan {
    pub fn from_bmap(b: &Bmap) -> WritePlan {
        WritePlan {
            image_size: b.image_size,
            ranges: b
                .ranges
                .iter()
                .map(|(f, l, s)| {
                    (
                        f * b.block_size,
                        ((l + 1) * b.block_size).min(b.image_size),
                        Some(s.clone()),
                    )
                })
                .collect(),
        }
    }

    /// No bmap: everything, in 64 MiB pieces, checked against the image itself.
    pub fn whole(image_size: u64) -> WritePlan {
        let step = 64 * MIB;
        WritePlan {
            image_size,
            ranges: (0..image_size.div_ceil(step))
                .map(|i| (i * step, ((i + 1) * step).min(image_size), None))
                .collect(),
        }
    }

    pub fn bytes(&self) -> u64 {
        self.ranges.iter().map(|(a, b, _)| b - a).sum()
    }
}

/// Options of one flash.
pub struct Options<'a> {
    pub image: &'a Path,
    pub plan: WritePlan,
    pub progress: bool,
    /// The data partition kept, and slot B and a data partition added (see [`keep`]).
    pub data: keep::DataPlan,
}

/// What the flash did.
pub struct Report {
    pub written: u64,
    pub seconds: f64,
    pub relocated: bool,
}

/// Zero `len` bytes at `at` (nothing to do, and nothing written, when they are zero already).
fn wipe(f: &File, at: u64, len: u64) -> std::io::Result<()> {
    let mut cur = vec![0u8; len as usize];
    let n = f.read_at(&mut cur, at)?;
    if cur[..n].iter().all(|b| *b == 0) {
        return Ok(());
    }
    f.write_all_at(&vec![0u8; len as usize], at)?;
    f.sync_data()
}

/// Drop the target's cached pages so a read-back comes from the device, not from memory.
fn drop_cache(f: &File, at: u64, len: u64) {
    use std::os::fd::AsRawFd;
    unsafe {
        libc::posix_fadvise(
            f.as_raw_fd(),
            at as i64,
            len as i64,
            libc::POSIX_FADV_DONTNEED,
        );
    }
}

/// Copy `[a, b)` of the image to the target, writing only the bytes inside `window`; returns
/// the SHA-256 of the image bytes of the whole range when `hash`.
fn copy_range(
    img: &File,
    dst: &File,
    (a, b): (u64, u64),
    window: (u64, u64),
    hash: bool,
    buf: &mut [u8],
) -> Result<Option<Vec<u8>>> {
    let mut h = hash.then(Sha256::new);
    let mut pos = a;
    while pos < b {
        let n = (b - pos).min(buf.len() as u64) as usize;
        img.read_exact_at(&mut buf[..n], pos)
            .with_context(|| format!("reading the image at byte {pos}"))?;
        if let Some(h) = h.as_mut() {
            h.update(&buf[..n]);
        }
        let (lo, hi) = (pos.max(window.0), (pos + n as u64).min(window.1));
        if lo < hi {
            let from = (lo - pos) as usize;
            let to = (hi - pos) as usize;
            dst.write_all_at(&buf[from..to], lo)
                .with_context(|| format!("writing at byte {lo}"))?;
        }
        pos += n as u64;
    }
    Ok(h.map(|h| h.finalize().to_vec()))
}

/// Bytes of `[a, b)` inside `[lo, hi)`.
fn overlap((a, b): (u64, u64), (lo, hi): (u64, u64)) -> u64 {
    b.min(hi).saturating_sub(a.max(lo))
}

/// Write `[a, b)` out to the device and wait for it (not the device's own cache: the sync at the
/// end flushes that), so that a read-back of it comes from the device.
fn flush_range(f: &File, a: u64, b: u64) -> Result<()> {
    use std::os::fd::AsRawFd;
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: a plain syscall on an open descriptor; no memory is passed.
    let r = unsafe { libc::sync_file_range(f.as_raw_fd(), a as i64, (b - a) as i64, flags) };
    if r != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("flushing bytes {a}..{b} to the device"));
    }
    Ok(())
}

fn read_back(dst: &File, a: u64, b: u64, buf: &mut [u8]) -> Result<Vec<u8>> {
    drop_cache(dst, a, b - a);
    let mut h = Sha256::new();
    let mut pos = a;
    while pos < b {
        let n = (b - pos).min(buf.len() as u64) as usize;
        dst.read_exact_at(&mut buf[..n], pos)
            .with_context(|| format!("reading back at byte {pos}"))?;
        h.update(&buf[..n]);
        pos += n as u64;
    }
    Ok(h.finalize().to_vec())
}

/// Write the image onto the opened target. The head (first MiB: MBR + primary GPT) is wiped
/// first and written last; on any error it is wiped again and the error says so.
pub fn write(t: &Target, dst: &File, o: &Options) -> Result<Report> {
    let img = File::open(o.image).with_context(|| format!("opening {}", o.image.display()))?;
    let image_size = img.metadata()?.len();
    ensure!(
        image_size == o.plan.image_size,
        "{} is {image_size} bytes, its bmap describes {} bytes",
        o.image.display(),
        o.plan.image_size
    );
    if !t.block_device {
        // A file target: at least the image's size (sparse where nothing is written).
        if dst.metadata()?.len() < image_size {
            dst.set_len(image_size)?;
        }
    }
    let target_size = if t.block_device {
        t.size
    } else {
        dst.metadata()?.len()
    };
    // Any old partition table goes first: the old primary and the old backup at the disk's end;
    // a kept data partition is left in a table of its own, so even a flash cut short here shows
    // it to the next one.
    let clear_tables = |also_image_end: bool| -> Result<()> {
        if also_image_end {
            let size = o.plan.image_size;
            wipe(dst, size.saturating_sub(HEAD), HEAD.min(size))?;
        }
        match &o.data.kept_only {
            Some(g) => {
                g.write(dst, target_size)?;
                dst.sync_all()?;
            }
            None => {
                wipe(dst, 0, HEAD)?;
                if target_size >= 2 * HEAD {
                    wipe(dst, target_size - HEAD, HEAD)?;
                }
            }
        }
        Ok(())
    };
    clear_tables(false).context("wiping the old partition table")?;
    let r = write_body(dst, &img, o, target_size);
    match r {
        Ok(rep) => Ok(rep),
        Err(e) => {
            // Both tables: the primary, and the backup wherever it may already be.
            let wiped = clear_tables(true).is_ok();
            Err(e.context(if wiped {
                format!(
                    "flashing {} failed; its partition table regions were wiped, so the disk will not boot half-written",
                    t.path.display()
                )
            } else {
                format!(
                    "flashing {} failed, and wiping its partition table also failed: do not boot from it",
                    t.path.display()
                )
            }))
        }
    }
}

// Long on purpose: the write in its order (body ranges, one sync, read-back, partition tables last,
// the backup GPT moved on a bigger disk); the buffer, progress bar and device handle are shared by
// every step.
fn write_body(dst: &File, img: &File, o: &Options, target_size: u64) -> Result<Report> {
    let start = Instant::now();
    let total = o.plan.bytes();
    let bar = if o.progress {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "flash {bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut buf = vec![0u8; 4 * MIB as usize];
    let mut written = 0u64;
    // The partition tables — primary in the first MiB, backup in the image's last MiB — are
    // written after everything else.
    let size = o.plan.image_size;
    let body = (
        HEAD.min(size),
        size.saturating_sub(HEAD).max(HEAD.min(size)),
    );
    let halfway = total / 2;
    // A range's read-back, against what it must be: the bmap's SHA-256, or (without a bmap) the
    // image's, taken while it was written.
    let check = |i: usize, want: &[u8], buf: &mut [u8]| -> Result<()> {
        let (a, b, _) = &o.plan.ranges[i];
        if read_back(dst, *a, *b, buf)? == want {
            return Ok(());
        }
        // Tell a changed image from a bad write.
        if let Some(Some(h)) = copy_range(img, dst, (*a, *b), (0, 0), true, buf).ok()
            && h != want
        {
            bail!(
                "{}: bytes {a}..{b} do not match the bmap (the image changed since it was built?)",
                o.image.display()
            );
        }
        bail!("read-back of bytes {a}..{b} does not match what was written")
    };
    // Each range is read back from the device while the next ones are written: once written it
    // is flushed to the device (sync_file_range) and handed to a thread that drops its cached
    // pages and reads it back (measured: the read-back after the whole write made a flash 1.48×
    // bmaptool's time). The ranges holding the partition tables wait until the end.
    let mut deferred: Vec<(usize, Vec<u8>)> = Vec::new();
    std::thread::scope(|s| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, Vec<u8>)>(4);
        let checker = s.spawn(move || -> Result<()> {
            let mut buf = vec![0u8; 4 * MIB as usize];
            for (i, want) in rx {
                check(i, &want, &mut buf)?;
            }
            Ok(())
        });
        for (i, (a, b, sum)) in o.plan.ranges.iter().enumerate() {
            let image_sum = copy_range(img, dst, (*a, *b), body, sum.is_none(), &mut buf)?;
            let want = match (sum, image_sum) {
                (Some(s), _) => hex::decode(s).context("a bmap checksum is not hex")?,
                (None, Some(h)) => h,
                (None, None) => unreachable!("hashed when there is no bmap checksum"),
            };
            written += overlap((*a, *b), body);
            bar.inc(b - a);
            if overlap((*a, *b), body) < b - a {
                deferred.push((i, want));
            } else {
                flush_range(dst, *a, *b)?;
                if tx.send((i, want)).is_err() {
                    break; // the read-back failed: its error is the checker's
                }
            }
            if written >= halfway {
                crate::util::failpoint::hit("flash");
            }
        }
        drop(tx);
        checker
            .join()
            .map_err(|_| anyhow::anyhow!("the read-back thread panicked"))?
    })?;
    dst.sync_data()?;
    // Last: the backup table, then the primary; then the ranges holding them are read back.
    for window in [(body.1, size), (0, body.0)] {
        for (i, _) in &deferred {
            let (a, b, _) = &o.plan.ranges[*i];
            copy_range(img, dst, (*a, *b), window, false, &mut buf)?;
            written += overlap((*a, *b), window);
        }
        dst.sync_all()?;
    }
    for (i, want) in &deferred {
        check(*i, want, &mut buf)?;
    }
    bar.finish_and_clear();
    // On a bigger disk, the backup GPT moves to its end, and the table gets what the flash keeps
    // and adds (the data partition, slot B), in one write of both tables.
    let relocated = target_size > o.plan.image_size;
    if relocated || o.data.touches_table() {
        for (at, len) in &o.data.blank {
            wipe(dst, *at, *len).context("blanking the new data partition")?;
        }
        let table = o
            .data
            .table(&Gpt::read(dst).context("reading the written GPT")?);
        table
            .write(dst, target_size)
            .context("writing the partition table for the whole disk")?;
        if relocated {
            // The image's own backup GPT (now stale, inside free space) is cleared.
            let old = o.plan.image_size - 33 * 512;
            dst.write_all_at(&[0u8; 33 * 512], old)?;
        }
        dst.sync_all()?;
    }
    Ok(Report {
        written,
        seconds: start.elapsed().as_secs_f64(),
        relocated,
    })
}

/// Ask for the device name on the terminal; anything else aborts.
pub fn confirm(t: &Target) -> Result<()> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        bail!(
            "not confirmed: pass --yes, or run on a terminal and type the device name when asked"
        );
    }
    let expect = t.path.display().to_string();
    eprint!("This erases everything on {expect}. Type its name ({expect}) to continue: ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    ensure!(
        answer.trim() == expect || Some(answer.trim()) == t.name.as_deref(),
        "not confirmed (got {:?}); nothing was written",
        answer.trim()
    );
    Ok(())
}
