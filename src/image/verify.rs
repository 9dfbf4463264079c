//! A node's published outputs checked as `imgbuild verify` and a rebuild's no-op check read them:
//! SHA256SUMS, the manifest, the bmap and the provenance.

use anyhow::{Context, Result};

use crate::fetch::checksum;
use crate::plan::Plan;

/// Every check of `dir` (a node's images/<node>/): a one-line summary, or every problem found.
pub fn verify_dir(dir: &std::path::Path, plan: &Plan) -> Result<String> {
    let node = plan.node.name.as_str();
    let mut problems = Vec::new();
    let (listed, actual) = verify_sums(dir, &mut problems)?;
    verify_manifest(dir, node, &listed, &mut problems)?;
    let bmap_note = verify_bmap(dir, node, &mut problems);
    let prov_note = verify_provenance(dir, plan, &actual, &mut problems);
    anyhow::ensure!(problems.is_empty(), "{}", problems.join("\n  "));
    Ok(format!(
        "{} files match SHA256SUMS, manifest agrees, {bmap_note}, {prov_note}",
        listed.len()
    ))
}

type Digests = std::collections::BTreeMap<String, String>;

/// SHA256SUMS: every line well-formed and matching its file, every file listed. Returns what
/// it lists and what each listed file hashes to now (the provenance is checked against these).
fn verify_sums(dir: &std::path::Path, problems: &mut Vec<String>) -> Result<(Digests, Digests)> {
    let sums_path = dir.join("SHA256SUMS");
    let sums = std::fs::read_to_string(&sums_path)
        .with_context(|| format!("reading {}", sums_path.display()))?;
    let mut listed = Digests::new();
    let mut actual = Digests::new();
    for (i, line) in sums.lines().enumerate() {
        let Some((sha, file)) = line.split_once("  ") else {
            problems.push(format!(
                "{}:{}: not `SHA256  FILE`",
                sums_path.display(),
                i + 1
            ));
            continue;
        };
        if file.contains('/') || file.starts_with('.') {
            problems.push(format!(
                "{}:{}: {file:?} is not a file of this directory",
                sums_path.display(),
                i + 1
            ));
            continue;
        }
        match checksum::sha256_file(&dir.join(file)) {
            Ok(got) => {
                if got != sha {
                    problems.push(format!("{file}: sha256 {got}, SHA256SUMS says {sha}"));
                }
                actual.insert(file.to_string(), got);
            }
            Err(e) => problems.push(format!("{file}: {e}")),
        }
        listed.insert(file.to_string(), sha.to_string());
    }
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if name != "SHA256SUMS" && !listed.contains_key(&name) {
            problems.push(format!("{name}: not listed in SHA256SUMS"));
        }
    }
    Ok((listed, actual))
}

/// The manifest: this node's, and its outputs agree with SHA256SUMS.
fn verify_manifest(
    dir: &std::path::Path,
    node: &str,
    listed: &Digests,
    problems: &mut Vec<String>,
) -> Result<()> {
    let manifest = crate::image::ManifestRecord::read(dir)?;
    if manifest.node != node {
        problems.push(format!(
            "manifest.json is for node {:?}, not {node}",
            manifest.node
        ));
    }
    if manifest.outputs.is_empty() {
        problems.push("manifest.json lists no outputs".into());
    }
    for o in &manifest.outputs {
        if listed.get(&o.file) != Some(&o.sha256) {
            problems.push(format!(
                "manifest.json: {} sha256 {} differs from SHA256SUMS",
                o.file, o.sha256
            ));
        }
    }
    Ok(())
}

/// The bmap: its own checksum and every range against the raw image.
fn verify_bmap(dir: &std::path::Path, node: &str, problems: &mut Vec<String>) -> String {
    let bmap_path = dir.join(crate::image::bmap_name(node));
    if !bmap_path.exists() {
        return "no bmap".into();
    }
    let r = std::fs::read_to_string(&bmap_path)
        .map_err(anyhow::Error::from)
        .and_then(|x| crate::image::bmap::parse(&x))
        .and_then(|m| {
            let bytes = crate::image::bmap::verify(&m, &dir.join(crate::image::raw_name(node)))?;
            Ok((m.ranges.len(), bytes))
        });
    match r {
        Ok((n, bytes)) => format!(
            "bmap: {n} ranges, {} checked",
            crate::util::fmt::human(bytes)
        ),
        Err(e) => {
            problems.push(format!("{}: {e:#}", bmap_path.display()));
            "no bmap".into()
        }
    }
}

/// The provenance: its subjects are the files as they are now; its signature checks against
/// the recipe's key (the one in the signature itself proves nothing).
fn verify_provenance(
    dir: &std::path::Path,
    plan: &Plan,
    actual: &Digests,
    problems: &mut Vec<String>,
) -> String {
    let node = plan.node.name.as_str();
    let prov = crate::image::sbom::provenance_name(node);
    let mut prov_note = String::from("no provenance");
    if dir.join(&prov).exists() {
        let sha = |p: &std::path::Path| -> Result<String> {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            match actual.get(name) {
                Some(s) => Ok(s.clone()),
                None => Ok(checksum::sha256_file(p)?),
            }
        };
        match crate::image::sbom::verify_provenance(dir, node, &sha) {
            Ok(n) => prov_note = format!("provenance: {n} subjects match"),
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    match crate::image::sbom::verify_signature(dir, node, plan.provenance_signer.as_ref()) {
        Ok(Some(note)) => prov_note = format!("{prov_note}, {note}"),
        Ok(None) => {}
        Err(e) => problems.push(format!("{e:#}")),
    }
    prov_note
}
