//! One function per subcommand: load, resolve, act, print. Here: the recipe's loading, `plan` and
//! `validate` (the plan's text is `plan::text`); `artifacts` (fetch, lock, cache), `build` (build, rootfs),
//! `verify`, `boot` (boot, up, down, ssh), `flash`, `update`, `roll`.

use std::io::Write;

use anyhow::{Context, Result, bail};

use crate::cli::{BootArgs, Cli, FlashArgs};
use crate::fetch::cache::Cache;
use crate::fetch::lock::{self, LockEntry, LockFile};
use crate::fetch::{self, Fetched, Fetcher};
use crate::plan::mirror::{self, Mirrors};
use crate::plan::{self, ClusterPlan, Plan};
use crate::recipe;
use crate::recipe::diag::{UsageError, did_you_mean};

mod artifacts;
mod boot;
mod build;
mod flash;
mod roll;
mod update;
mod verify;

pub use crate::plan::text::render_plan;
pub use artifacts::*;
pub use boot::*;
pub use build::*;
pub use flash::*;
pub use roll::*;
pub use update::*;
pub use verify::*;

/// Load and resolve the recipe, printing its warnings to stderr.
fn resolve(path: &std::path::Path) -> Result<ClusterPlan> {
    let loaded = recipe::load(path)?;
    let cluster = plan::resolve(&loaded)?;
    for w in &cluster.warnings {
        eprint!("{w}");
    }
    Ok(cluster)
}

fn node_plan<'a>(cluster: &'a ClusterPlan, path: &std::path::Path, node: &str) -> Result<&'a Plan> {
    if let Some(p) = cluster.node(node) {
        return Ok(p);
    }
    let names = cluster.names();
    let mut msg = format!("no node named `{node}` in the recipe");
    if let Some(m) = did_you_mean(node, names.iter().copied()) {
        msg.push_str(&format!(" (did you mean `{m}`?)"));
    }
    Err(UsageError {
        message: format!("{}: {msg}", path.display()),
        hint: Some(format!("nodes are: {}", names.join(", "))),
    }
    .into())
}

pub fn plan(recipe: &std::path::Path, node: &str, json: bool) -> Result<()> {
    let cluster = resolve(recipe)?;
    let plan = node_plan(&cluster, recipe, node)?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, plan).context("writing plan JSON")?;
        writeln!(out)?;
    } else {
        out.write_all(render_plan(plan).as_bytes())?;
    }
    Ok(())
}

/// `imgbuild prometheus`: the cluster's scrape configuration and alert rules.
pub fn prometheus(cli: &Cli, output: Option<&std::path::Path>) -> Result<()> {
    let cluster = resolve(&cli.recipe)?;
    let dir = output.map_or_else(|| cli.images.join("prometheus"), Into::into);
    let written = crate::monitor::write(&dir, &cluster)?;
    println!("{}", prometheus_line(&dir, &cluster, &written));
    Ok(())
}

/// What images/prometheus/ holds, in one line, or that metrics are off.
pub(crate) fn prometheus_line(
    dir: &std::path::Path,
    cluster: &ClusterPlan,
    written: &[std::path::PathBuf],
) -> String {
    if written.is_empty() {
        return "prometheus: metrics are off: no scrape configuration".into();
    }
    let targets = crate::monitor::targets(&cluster.nodes);
    let mut jobs: Vec<&str> = Vec::new();
    for t in &targets {
        if !jobs.contains(&t.job) {
            jobs.push(t.job);
        }
    }
    format!(
        "prometheus: {} ({} jobs: {}; {} targets; {} alert rules)",
        dir.display(),
        jobs.len(),
        jobs.join(", "),
        targets.len(),
        crate::monitor::alert_names(cluster).len()
    )
}

pub fn validate(recipe: &std::path::Path) -> Result<()> {
    let cluster = resolve(recipe)?;
    let names = cluster.names();
    eprintln!(
        "{}: ok ({} node{}: {}; {} warning{})",
        recipe.display(),
        names.len(),
        if names.len() == 1 { "" } else { "s" },
        names.join(", "),
        cluster.warnings.len(),
        if cluster.warnings.len() == 1 { "" } else { "s" },
    );
    Ok(())
}
