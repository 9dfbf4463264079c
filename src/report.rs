//! The JSON documents `build`, `verify` and `up` print with `--json` (docs/output-json.md).
//! Each carries `schema` (an integer, bumped on any rename, removal or change of meaning) and
//! `command`; fields are only added within a version, optional ones present as `null`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::image::Output;

/// `imgbuild build --json` (and `imgbuild NODE... --json`).
#[derive(Debug, Serialize)]
pub struct Build {
    pub schema: u32,
    pub command: &'static str,
    pub recipe: String,
    /// `--dry-run`: nothing was built; `rebuild` says what would be.
    pub dry_run: bool,
    pub nodes: Vec<BuildNode>,
    pub seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct BuildNode {
    pub node: String,
    pub dir: String,
    /// Rebuilt (or, with --dry-run, would be); false: its images already matched its inputs.
    pub rebuild: bool,
    /// What changed since its images were built (null when up to date).
    pub why: Option<String>,
    /// The files in `dir` with their sizes and digests (empty with --dry-run).
    pub outputs: Vec<Output>,
    /// Stage timings in build order: `[name, seconds]`.
    pub stages: Vec<(String, f64)>,
}

/// `imgbuild verify --json`.
#[derive(Debug, Serialize)]
pub struct Verify {
    pub schema: u32,
    pub command: &'static str,
    pub ok: bool,
    pub nodes: Vec<VerifyNode>,
}

#[derive(Debug, Serialize)]
pub struct VerifyNode {
    pub node: String,
    pub dir: String,
    pub ok: bool,
    /// What was checked (when ok) or every problem found, one per line (when not).
    pub detail: String,
}

/// `imgbuild up --json`.
#[derive(Debug, Serialize)]
pub struct Up {
    pub schema: u32,
    pub command: &'static str,
    /// qemu, container, or mixed (`--vm NODE`: those nodes in QEMU among containers).
    pub runtime: String,
    /// The nodes booted from their images in QEMU in the mixed runtime.
    pub vms: Vec<String>,
    /// `--check` was given: the cluster was judged.
    pub check: bool,
    /// Judged and nothing failed (false when not judged).
    pub ok: bool,
    /// Seconds from the first start until every node was healthy (null if never).
    pub healthy_after: Option<f64>,
    pub ignored: Vec<String>,
    pub nodes: Vec<UpNode>,
    /// The data-path and node-loss phases (container runtime with --check), in order.
    pub phases: Vec<crate::vm::checks::Phase>,
    /// Every problem the judgement found, one line each.
    pub failures: Vec<String>,
}

impl Up {
    /// The report of an `up` run: its options, each node's last health report, the phases.
    pub fn of(
        plans: &[&crate::plan::Plan],
        o: &crate::vm::cluster::UpOptions,
        r: &crate::vm::cluster::UpResult,
    ) -> Up {
        Up {
            schema: 1,
            command: "up",
            runtime: if o.vms.is_empty() {
                format!("{:?}", o.runtime).to_lowercase()
            } else {
                "mixed".into()
            },
            vms: o.vms.clone(),
            check: o.check,
            ok: o.check && r.failures.is_empty(),
            healthy_after: r.healthy_after,
            ignored: o.ignore.clone(),
            nodes: plans
                .iter()
                .map(|p| {
                    let st = r.states.get(&p.node.name);
                    UpNode {
                        node: p.node.name.clone(),
                        ip: p.node.ip.to_string(),
                        summary: st.and_then(|s| s.summary.clone()),
                        checks: st.map(|s| s.checks.clone()).unwrap_or_default(),
                    }
                })
                .collect(),
            phases: r.phases.clone(),
            failures: r.failures.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct UpNode {
    pub node: String,
    pub ip: String,
    /// The health unit's last summary (`healthy`, `unhealthy`, `exited(…)`), null if none yet.
    pub summary: Option<String>,
    /// Each check's last report: `ok` and the reporter's key=value fields.
    pub checks: BTreeMap<String, crate::vm::cluster::Check>,
}

/// Print a document on stdout, pretty, with a final newline.
pub fn print<T: Serialize>(doc: &T) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, doc)?;
    writeln!(out)?;
    Ok(())
}
