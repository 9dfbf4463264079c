//! The build key: what a node's images are a function of, whether they are up to date, and
//! what changed when they are not.

use super::*;

/// The key of a node's images: imgbuild's version, the node's plan (without the recipe's path and
/// hash, so an edit elsewhere in the recipe does not touch this node), the content of every
/// input, the epoch, the overlays' files and the files imgbuild renders. Equal keys give
/// identical images.
pub fn build_key(plan: &Plan, fetched: &[Fetched], epoch: u64) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(concat!("imgbuild ", env!("CARGO_PKG_VERSION"), "\0"));
    h.update(format!("outputs {OUTPUTS}\0"));
    h.update(serde_json::to_vec(&keyed_plan(plan))?);
    for f in fetched {
        h.update(format!("{}\0{}\0", f.name, f.record.sha256));
    }
    h.update(epoch.to_le_bytes());
    for (what, digest) in crate::pki::key_entries(plan) {
        h.update(format!("{what}\0{digest}\0"));
    }
    for (path, mode, payload) in overlay_entries(plan)? {
        h.update(format!("{path}\0{mode:o}\0"));
        if let Some(p) = payload {
            h.update(p);
        }
    }
    for (what, digest) in rendered_entries(plan) {
        h.update(format!("{what}\0{digest}\0"));
    }
    Ok(hex::encode(h.finalize()))
}

/// The files imgbuild writes into a node's trees from its plan (the shared tree's units,
/// sysusers.d and tmpfiles.d; the node's configuration, its cloud-init seed and its unit
/// links), each `rendered:<path>` with the SHA-256 of its mode and content. They are a function
/// of the plan and of imgbuild's code: two builds of one version that render differently (a
/// build from source between releases) then have different keys, not images taken as up to
/// date. The secrets' files are the PKI's entries; rendered from the keyed plan (no topics).
pub(super) fn rendered_entries(plan: &Plan) -> Vec<(String, String)> {
    use crate::rootfs::render;
    let digest = |mode: u32, content: &[u8]| mode_digest(mode, Some(content));
    let p = keyed_plan(plan);
    let mode = p
        .kafka
        .as_ref()
        .map(|k| k.mode)
        .unwrap_or(crate::recipe::KafkaMode::Kraft);
    let mut out: Vec<(String, String)> = render::units(mode)
        .into_iter()
        .chain(render::sysusers_and_tmpfiles())
        .chain(render::node_files(&p))
        .map(|f| {
            (
                format!("rendered:{}", f.path.display()),
                digest(f.mode, &f.content),
            )
        })
        .collect();
    for (name, content) in render::seed(&p) {
        out.push((
            format!("rendered:seed/{name}"),
            digest(0o644, content.as_bytes()),
        ));
    }
    for (link, target) in render::enablement(&p) {
        out.push((
            format!("rendered:{}", link.display()),
            digest(0o777, target.as_os_str().as_encoded_bytes()),
        ));
    }
    out
}

/// SHA-256 of a file's mode (octal) and content (none for a directory): an overlay entry's or a
/// rendered file's item in the build inputs.
fn mode_digest(mode: u32, content: Option<&[u8]>) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(format!("{mode:o}\0"));
    if let Some(c) = content {
        h.update(c);
    }
    hex::encode(h.finalize())
}

/// The version of what `images/<node>/` holds: raised when a build writes other files (2: the
/// SBOM and the provenance), so images from before are rebuilt, not taken as up to date.
pub(super) const OUTPUTS: u32 = 2;

/// The plan as the build key sees it: without the recipe's path and hash, and without the
/// topics (the running cluster's content, which `imgbuild apply` keeps: no image holds them).
pub(super) fn keyed_plan(plan: &Plan) -> Plan {
    let mut p = plan.clone();
    p.recipe = String::new();
    p.recipe_sha256 = String::new();
    if let Some(k) = p.kafka.as_mut() {
        k.topics.clear();
    }
    p
}

/// One entry of an overlay: path, mode, and the content (a file's bytes, a symlink's target;
/// None for a directory).
type OverlayEntry = (String, u32, Option<Vec<u8>>);

/// Every entry of the node's overlays, in a fixed order.
pub(super) fn overlay_entries(plan: &Plan) -> Result<Vec<OverlayEntry>> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for dir in plan.overlays.iter().filter(|d| d.is_dir()) {
        crate::util::fs::walk(dir, |rel, m| {
            if rel.as_os_str().is_empty() {
                return Ok(true);
            }
            let e = dir.join(rel);
            let payload = if m.is_dir() {
                None
            } else if m.file_type().is_symlink() {
                Some(fs::read_link(&e)?.as_os_str().as_encoded_bytes().to_vec())
            } else {
                Some(fs::read(&e).with_context(|| format!("reading {}", e.display()))?)
            };
            out.push((e.display().to_string(), m.mode(), payload));
            Ok(true)
        })?;
    }
    Ok(out)
}

/// What the build key is made of, item by item (recorded in the manifest as `build_inputs`), so
/// a rebuild can say which part changed: `imgbuild`, `epoch`, `plan.<field path>` (the value's
/// JSON), `input.<name>` (its SHA-256), `overlay:<path>` and `rendered:<path>` (SHA-256 of mode
/// and content).
pub fn key_parts(plan: &Plan, fetched: &[Fetched], epoch: u64) -> Result<BTreeMap<String, String>> {
    fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    flatten(&format!("{prefix}.{k}"), x, out);
                }
            }
            serde_json::Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    flatten(&format!("{prefix}[{i}]"), x, out);
                }
            }
            leaf => {
                out.insert(prefix.to_string(), leaf.to_string());
            }
        }
    }
    let mut out = BTreeMap::from([
        (
            "imgbuild".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
        ("epoch".to_string(), epoch.to_string()),
    ]);
    flatten("plan", &serde_json::to_value(keyed_plan(plan))?, &mut out);
    for f in fetched {
        out.insert(format!("input.{}", f.name), f.record.sha256.clone());
    }
    out.extend(crate::pki::key_entries(plan));
    for (path, mode, payload) in overlay_entries(plan)? {
        out.insert(
            format!("overlay:{path}"),
            mode_digest(mode, payload.as_deref()),
        );
    }
    out.extend(rendered_entries(plan));
    Ok(out)
}

/// Why `images/<node>/` does not match `parts`: the items that changed since its build, or why
/// there is nothing to compare with.
pub fn why_rebuild(images: &Path, node: &str, parts: &BTreeMap<String, String>) -> String {
    let dir = images.join(node);
    let Ok(m) = ManifestRecord::read(&dir) else {
        return format!("no images in {} yet", dir.display());
    };
    let Some(old) = m.build_inputs else {
        return "the previous images record no build inputs (built by an older imgbuild)".into();
    };
    let mut changes = changes(&old, parts);
    if changes.is_empty() {
        return "its inputs are unchanged but the previous images are incomplete".into();
    }
    let n = changes.len();
    if n > 5 {
        changes.truncate(5);
        changes.push(format!("and {} more", n - 5));
    }
    changes.join("; ")
}

/// The items of `new` that differ from `old` (build inputs: plan fields, input digests, overlay
/// files), one line each.
pub fn changes(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> Vec<String> {
    let short = |v: &str| {
        if v.chars().count() > 40 {
            format!("{}…", v.chars().take(40).collect::<String>())
        } else {
            v.to_string()
        }
    };
    let mut changes = Vec::new();
    for (k, new_v) in new {
        match old.get(k).map(String::as_str) {
            Some(o) if o == new_v => {}
            Some(o)
                if k.starts_with("input.")
                    || k.starts_with("overlay:")
                    || k.starts_with("rendered:") =>
            {
                changes.push(format!(
                    "{k} changed (sha256 {} -> {})",
                    &o[..12.min(o.len())],
                    &new_v[..12.min(new_v.len())]
                ))
            }
            Some(o) => changes.push(format!("{k}: {} -> {}", short(o), short(new_v))),
            None => changes.push(format!("{k} added ({})", short(new_v))),
        }
    }
    for k in old.keys().filter(|k| !new.contains_key(*k)) {
        changes.push(format!("{k} removed"));
    }
    changes
}

/// The outputs of `images/<node>/` when it was built with `key` and is still complete.
pub fn up_to_date(images: &Path, node: &str, key: &str) -> Option<Vec<Output>> {
    let dir = images.join(node);
    let m = ManifestRecord::read(&dir).ok()?;
    if m.build_key != key || !dir.join("SHA256SUMS").is_file() {
        return None;
    }
    let outputs = m.outputs;
    outputs
        .iter()
        .all(|o| fs::metadata(dir.join(&o.file)).is_ok_and(|md| md.len() == o.size))
        .then_some(outputs)
}

/// The source date epoch of a node's build: the recipe's, else SOURCE_DATE_EPOCH, else 0.
pub fn epoch_of(plan: &Plan) -> u64 {
    plan.source_date_epoch
        .or_else(|| std::env::var("SOURCE_DATE_EPOCH").ok()?.parse().ok())
        .unwrap_or(0)
}

/// One node's standing before the build: its build key, its outputs when its images already
/// match that key (nothing to do), else why it is rebuilt.
#[derive(Clone)]
pub struct NodeState {
    pub key: String,
    pub fresh: Option<Vec<Output>>,
    pub why: Option<String>,
}

/// Each node's standing (`imgbuild build`: which to build, and why).
pub fn assess(
    images: &std::path::Path,
    plans: &[&Plan],
    fetched: &[Fetched],
    force: bool,
) -> Result<Vec<NodeState>> {
    plans
        .iter()
        .map(|p| {
            let key = build_key(p, fetched, epoch_of(p))?;
            let fresh = (!force)
                .then(|| up_to_date(images, &p.node.name, &key))
                .flatten();
            // Why it is rebuilt: what changed since its images were built.
            let why = if fresh.is_some() {
                None
            } else if force {
                Some("--force".to_string())
            } else {
                let parts = key_parts(p, fetched, epoch_of(p))?;
                Some(why_rebuild(images, &p.node.name, &parts))
            };
            Ok(NodeState { key, fresh, why })
        })
        .collect()
}
