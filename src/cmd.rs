//! One function per subcommand: load, resolve, act, print.

use std::io::Write;

use anyhow::{Context, Result};

use crate::diag::{UsageError, did_you_mean};
use crate::plan::{self, ClusterPlan, DigestSource, Plan};
use crate::recipe;

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

/// The readable form of a plan (stdout of `imgbuild plan NODE`).
pub fn render_plan(p: &Plan) -> String {
    let mut s = String::new();
    let mut line = |k: &str, v: String| s.push_str(&format!("  {k:<22} {v}\n"));
    let n = &p.node;
    line(
        "node",
        format!("{} (id {}) of cluster {}", n.name, n.id, p.cluster),
    );
    line(
        "hostname",
        n.fqdn.clone().unwrap_or_else(|| n.hostname.clone()),
    );
    line(
        "address",
        format!(
            "{}/{} via {}, dns {}",
            n.ip,
            p.network.prefix_len,
            p.network.gateway,
            join(&p.network.dns)
        ),
    );
    if let Some(mac) = &n.mac {
        line("mac", mac.clone());
    }
    line(
        "roles",
        p.roles
            .iter()
            .map(|r| r.name())
            .collect::<Vec<_>>()
            .join(" "),
    );
    line("units", p.units.join(" "));
    for h in &p.hosts {
        line("/etc/hosts", format!("{} {}", h.ip, h.names.join(" ")));
    }
    if let Some(z) = &p.zookeeper {
        line(
            "zookeeper myid",
            z.myid.map_or("- (client only)".into(), |m| m.to_string()),
        );
        line("zookeeper connect", z.connect.clone());
        for srv in &z.servers {
            line("zookeeper", srv.clone());
        }
        line("zookeeper admin port", z.admin_port.to_string());
    }
    if let Some(k) = &p.kafka {
        line("kafka mode", format!("{:?}", k.mode).to_lowercase());
        if let Some(id) = k.node_id {
            line("kafka node.id", id.to_string());
        }
        if let Some(id) = k.broker_id {
            line("kafka broker.id", id.to_string());
        }
        if let Some(r) = &k.process_roles {
            line("kafka process.roles", r.clone());
        }
        if let Some(v) = &k.controller_quorum_voters {
            line("kafka voters", v.clone());
        }
        if let Some(c) = &k.zookeeper_connect {
            line("kafka zookeeper", c.clone());
        }
        if let Some(c) = &k.cluster_id {
            line("kafka cluster id", c.clone());
        }
        line("kafka listeners", k.listeners.clone());
    }
    if let Some(st) = &p.storm {
        line("storm zookeeper", join(&st.zookeeper_servers));
        line("storm nimbus seeds", join(&st.nimbus_seeds));
        line("storm local hostname", st.local_hostname.clone());
        line(
            "storm slots",
            st.slots
                .iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    for a in &p.artifacts {
        line("artifact", format!("{} {}", a.name, a.version));
        for u in &a.urls {
            line("  url", u.clone());
        }
        match &a.digest {
            DigestSource::Inline { algorithm, value } => {
                line("  digest", format!("{algorithm:?} {value}").to_lowercase())
            }
            DigestSource::ChecksumFile { algorithm, urls } => line(
                "  digest",
                format!(
                    "{} from {}",
                    format!("{algorithm:?}").to_lowercase(),
                    urls[0]
                ),
            ),
        }
        if let Some(sig) = &a.signature {
            let over = match sig.signs {
                recipe::Signs::Artifact => "the file",
                recipe::Signs::Checksums => "the checksum file",
            };
            line(
                "  signature",
                format!(
                    "{} over {over}, key {}",
                    sig.urls[0],
                    sig.fingerprints.join(" ")
                ),
            );
        }
    }
    s
}

fn join<T: ToString>(v: &[T]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}
