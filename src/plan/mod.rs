//! Resolve a parsed recipe into per-node plans: identity, ids, wiring, units and artifacts.
//!
//! This is the only module that reads the raw recipe; everything after it works from [`Plan`].
//! Pure: no I/O beyond what `recipe::load` already did. Every semantic check lives here and
//! points at the place in the recipe that caused it.
//!
//! Here: [`resolve`] and the diagnostics context. The rest, in the order resolution runs:
//! `network` (CIDR, addresses, host names), `nodes` (names, IPs, MACs, roles, per-node services,
//! memory), `checks` (ids, controllers, ensembles, ports, Kafka version, cluster id), `system`
//! (base, users, disk, PKI, signer, overlays), `artifacts` (downloads), `security`, `tuning`,
//! `firewall`, `services` (the port table), `wiring` (listeners, voters, servers), then
//! `assemble` (each node's plan); `model` holds the resulting types.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::recipe::diag::{Diagnostic, Pos, RecipeError, Severity, did_you_mean};
use crate::recipe::srcmap::{index, join};
use crate::recipe::{self, BaseKind, KafkaMode, Loaded, Signs};

mod artifacts;
pub mod firewall;
pub mod ids;
pub mod mirror;
pub mod security;
pub mod services;
pub mod topics;
pub mod tuning;
pub mod wiring;
use artifacts::{default_release, resolve_artifacts};
use services::{BoundPort, Component, PortKey, Ports, Unit};

mod assemble;
mod checks;
pub mod model;
mod network;
mod nodes;
mod system;
pub mod text;

use assemble::*;
use checks::*;
pub use model::*;
use network::*;
use nodes::*;
use system::*;
pub use system::{parse_size, secrets_dir};

/// Collects diagnostics with positions from the recipe's source map.
struct Ctx<'a> {
    loaded: &'a Loaded,
    diags: Vec<Diagnostic>,
}

impl Ctx<'_> {
    fn at(&self, path: &str) -> Pos {
        self.loaded.map.value(path)
    }
    fn key_at(&self, path: &str) -> Pos {
        self.loaded.map.key(path)
    }
    fn error(&mut self, pos: Pos, msg: impl Into<String>) -> &mut Diagnostic {
        self.diags.push(Diagnostic::error(pos, msg));
        self.diags.last_mut().expect("just pushed")
    }
    fn warn(&mut self, pos: Pos, msg: impl Into<String>) -> &mut Diagnostic {
        self.diags.push(Diagnostic::warning(pos, msg));
        self.diags.last_mut().expect("just pushed")
    }
    fn hint(d: &mut Diagnostic, hint: impl Into<String>) {
        d.hint = Some(hint.into());
    }
}

/// Resolve every node of a loaded recipe. Errors carry every problem found, each with its position.
pub fn resolve(loaded: &Loaded) -> Result<ClusterPlan, RecipeError> {
    let mut cx = Ctx {
        loaded,
        diags: Vec::new(),
    };
    let nodes = resolve_all(&mut cx);
    let mirrors = resolve_mirrors(&mut cx);
    let (errors, warnings): (Vec<_>, Vec<_>) = cx
        .diags
        .into_iter()
        .partition(|d| d.severity == Severity::Error);
    if !errors.is_empty() || nodes.is_none() {
        return Err(loaded.error(errors));
    }
    let warnings = warnings
        .iter()
        .map(|d| d.render(&loaded.path, &loaded.text))
        .collect();
    let nodes = nodes.unwrap_or_default();
    Ok(ClusterPlan {
        artifacts: nodes
            .first()
            .map(|n| n.artifacts.clone())
            .unwrap_or_default(),
        nodes,
        warnings,
        mirrors,
    })
}

fn resolve_mirrors(cx: &mut Ctx) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (from, to) in &cx.loaded.recipe.mirrors {
        match crate::plan::mirror::parse_rule(&format!("{from}={to}")) {
            Ok(rule) => out.push(rule),
            Err(e) => {
                cx.error(cx.key_at(&join("mirrors", from)), e.to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("8GiB"), Some(8 << 30));
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("8 GB"), None);
        assert_eq!(parse_size("99999999999999999999T"), None);
    }

    #[test]
    fn hostnames() {
        assert!(hostname_problem("node1").is_none());
        assert!(hostname_problem("Node1").is_some());
        assert!(hostname_problem("-a").is_some());
        assert!(hostname_problem("123").is_some());
        assert!(hostname_problem(&"a".repeat(64)).is_some());
    }

    #[test]
    fn cidr() {
        assert_eq!(
            parse_cidr("10.0.0.0/8"),
            Some((Ipv4Addr::new(10, 0, 0, 0), 8))
        );
        assert_eq!(parse_cidr("10.0.0.0/33"), None);
        assert!(in_network(
            Ipv4Addr::new(192, 168, 200, 151),
            Ipv4Addr::new(192, 168, 200, 0),
            24
        ));
        assert!(!in_network(
            Ipv4Addr::new(192, 168, 201, 1),
            Ipv4Addr::new(192, 168, 200, 0),
            24
        ));
    }
}
