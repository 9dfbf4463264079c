//! The container runtime's root slots: what `imgbuild roll` does to a container node where it
//! would `imgbuild update` a machine. A container boots a snapshot of its node's tree (a
//! hard-link copy of `BUILD_DIR/nodes/NODE/rootfs` taken when it starts, so a later build can
//! replace the tree under a running cluster); a swap stops the container cleanly, takes a new
//! snapshot, drops what the old root wrote (the overlay's upper layer) and boots the new tree
//! with the same data directory: the node's state kept, as an update keeps the data partition.
//!
//! `roll` and `up` are two processes: roll asks with `UP/NODE/swap.request` and `up` (which owns
//! the containers) answers with `UP/NODE/swap.done`, both written whole (temporary name, then
//! renamed). What a container runs is `UP/NODE/running.json`: the slot record the build wrote
//! for the tree (build key and inputs), which roll compares with the tree built since.

use super::*;

/// The snapshot a container boots, in its work directory.
const TREE: &str = "tree";

/// What the container runs (the slot record of its snapshot).
pub fn running_path(build_dir: &Path, node: &str) -> PathBuf {
    build_dir.join("up").join(node).join("running.json")
}

fn request_path(build_dir: &Path, node: &str) -> PathBuf {
    build_dir.join("up").join(node).join("swap.request")
}

fn done_path(build_dir: &Path, node: &str) -> PathBuf {
    build_dir.join("up").join(node).join("swap.done")
}

/// The slot record `build` wrote beside the node's tree (its build key and inputs).
pub fn built_path(build_dir: &Path, node: &str) -> PathBuf {
    build_dir
        .join("nodes")
        .join(format!("{node}.disk"))
        .join("esp")
        .join(crate::image::boot::slot_record_path('a'))
}

/// Snapshot `BUILD_DIR/nodes/NODE/rootfs` (and its record) as the tree `nwork`'s container
/// boots next: made beside the current one, then put in its place (the current one must not be
/// mounted any more). Returns the tree.
pub fn snapshot(p: &Plan, build_dir: &Path, nwork: &Path) -> Result<PathBuf> {
    let name = &p.node.name;
    let tree = build_dir.join("nodes").join(name).join("rootfs");
    if !tree.join("etc/imgbuild/health.json").is_file() {
        bail!(
            "{}: no node tree for {name} (the container runtime boots the tree the image was built from)\n\nhint: build it with `imgbuild {name}` and the same --build-dir",
            tree.display()
        );
    }
    let next = nwork.join(format!("{TREE}.next"));
    remove(&next)?;
    crate::util::run::Cmd::new("cp")
        .args(["-a", "-l", "--"])
        .arg(&tree)
        .arg(&next)
        .run()
        .with_context(|| format!("{name}: snapshotting {}", tree.display()))?;
    let record = std::fs::read(built_path(build_dir, name)).unwrap_or_default();
    let cur = nwork.join(TREE);
    remove(&cur)?;
    std::fs::rename(&next, &cur)?;
    crate::fetch::cache::write_atomic(&nwork.join("running.json"), &record)?;
    Ok(cur)
}

fn remove(d: &Path) -> Result<()> {
    if d.exists() {
        std::fs::remove_dir_all(d).with_context(|| format!("removing {}", d.display()))?;
    }
    Ok(())
}

/// What `up` answers.
#[derive(serde::Serialize, serde::Deserialize)]
struct Done {
    /// The build key the container runs now.
    build_key: String,
    seconds: f64,
    error: Option<String>,
}

fn build_key(bytes: &[u8]) -> Option<String> {
    serde_json::from_slice::<crate::image::SlotRecord>(bytes)
        .ok()
        .map(|r| r.build_key)
}

/// `up`'s side: answer every container's pending request (stop, snapshot, swap, boot). Called
/// from `up`'s loops; a swapped node's reports start again from nothing.
pub(super) fn serve(
    nodes: &[&Plan],
    build_dir: &Path,
    members: &mut [Member],
    mut restarted: impl FnMut(&str),
) {
    for m in members.iter_mut() {
        let Member::Container(c) = m else { continue };
        let name = c.name.clone();
        let req = request_path(build_dir, &name);
        if !req.exists() {
            continue;
        }
        let _ = std::fs::remove_file(&req);
        let Some(p) = nodes.iter().find(|p| p.node.name == name) else {
            continue;
        };
        let t = Instant::now();
        eprintln!("{name}: swapping its tree for the one built since (asked by roll)");
        let nwork = build_dir.join("up").join(&name);
        let r = (|| -> Result<String> {
            c.stop();
            let tree = snapshot(p, build_dir, &nwork)?;
            c.swap(&tree)?;
            Ok(
                build_key(&std::fs::read(nwork.join("running.json")).unwrap_or_default())
                    .unwrap_or_default(),
            )
        })();
        restarted(&name);
        let done = match r {
            Ok(k) => Done {
                build_key: k,
                seconds: t.elapsed().as_secs_f64(),
                error: None,
            },
            Err(e) => Done {
                build_key: String::new(),
                seconds: t.elapsed().as_secs_f64(),
                error: Some(format!("{e:#}")),
            },
        };
        eprintln!(
            "{name}: {} in {:.0}s",
            done.error
                .as_deref()
                .map_or("booted on its new tree".to_string(), |e| format!(
                    "swap failed: {e}"
                )),
            done.seconds
        );
        let _ = serde_json::to_vec(&done)
            .map_err(anyhow::Error::from)
            .and_then(|b| crate::fetch::cache::write_atomic(&done_path(build_dir, &name), &b));
    }
}

/// Roll's side: whether `node` runs as a container of a running `up` on `build_dir`.
pub fn is_container(build_dir: &Path, node: &str) -> bool {
    let up_alive = std::fs::read_to_string(crate::vm::hostlink::pid_file(build_dir))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
    up_alive && running_path(build_dir, node).is_file()
}

/// Roll's side: the container's build key and the one built since, with the inputs that differ
/// (empty when it runs what was built).
pub fn differs(build_dir: &Path, node: &str) -> Result<Option<(String, Vec<String>)>> {
    let read = |p: PathBuf| -> Result<crate::image::SlotRecord> {
        let b = std::fs::read(&p).with_context(|| format!("{node}: reading {}", p.display()))?;
        serde_json::from_slice(&b)
            .with_context(|| format!("{node}: {} is not a slot record", p.display()))
    };
    let built = read(built_path(build_dir, node))?;
    let running = read(running_path(build_dir, node))?;
    if built.build_key == running.build_key {
        return Ok(None);
    }
    Ok(Some((
        built.build_key.clone(),
        crate::image::key::changes(&running.build_inputs, &built.build_inputs),
    )))
}

/// Roll's side: ask `up` to swap `node`'s tree and wait (up to `timeout`) for its answer.
pub fn request(build_dir: &Path, node: &str, timeout: Duration) -> Result<f64> {
    let done = done_path(build_dir, node);
    let _ = std::fs::remove_file(&done);
    crate::fetch::cache::write_atomic(&request_path(build_dir, node), b"swap\n")?;
    let t = Instant::now();
    while t.elapsed() < timeout {
        if let Ok(b) = std::fs::read(&done) {
            let d: Done = serde_json::from_slice(&b)
                .with_context(|| format!("{node}: {} is not an answer", done.display()))?;
            let _ = std::fs::remove_file(&done);
            if let Some(e) = d.error {
                bail!("{node}: up could not swap its tree: {e}");
            }
            return Ok(d.seconds);
        }
        if !is_container(build_dir, node) {
            bail!("{node}: `imgbuild up` stopped before it swapped the node's tree");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = std::fs::remove_file(request_path(build_dir, node));
    bail!(
        "{node}: `imgbuild up` did not swap the node's tree within {}s",
        timeout.as_secs()
    )
}
