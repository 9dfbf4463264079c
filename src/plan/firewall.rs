//! The firewall of every node, from the port table: which sources may reach which ports.

use std::net::Ipv4Addr;

use serde::Serialize;

use super::services::Reach;
use super::{Ctx, NetworkPlan, parse_cidr};
use crate::recipe::srcmap::index;

/// SSH, which no port table row lists (it is the OS's): a client port.
pub const SSH_PORT: u16 = 22;

#[derive(Debug, Clone, Serialize)]
pub struct FirewallPlan {
    pub enabled: bool,
    /// Where clients may come from (CIDRs): Kafka's client listener, Storm UI, SSH.
    pub clients: Vec<String>,
    /// The cluster's nodes: the only sources of cluster-internal traffic.
    pub nodes: Vec<Ipv4Addr>,
    /// Where a Prometheus may scrape the metrics ports from (CIDRs); None: `metrics` off, no
    /// exporter runs and no metrics port is bound.
    pub metrics: Option<Vec<String>>,
}

impl FirewallPlan {
    /// Who may reach a port of this reach.
    pub fn sources(&self, reach: Reach) -> Vec<String> {
        match reach {
            Reach::Cluster => self.nodes.iter().map(|ip| ip.to_string()).collect(),
            Reach::Clients => self.clients.clone(),
            Reach::Metrics => self.metrics.clone().unwrap_or_default(),
        }
    }

    /// Whether `ip` is one of the sources a port of this reach lets through.
    pub fn admits(&self, reach: Reach, ip: Ipv4Addr) -> bool {
        self.sources(reach)
            .iter()
            .any(|s| match super::parse_cidr(s) {
                Some((net, len)) => {
                    let mask = super::network::prefix_mask(len);
                    u32::from(ip) & mask == u32::from(net) & mask
                }
                None => s.parse::<Ipv4Addr>() == Ok(ip),
            })
    }
}

/// Every port the firewall opens on a node: SSH, then the port table's, as (port, label, reach).
pub fn open_ports(p: &super::Plan) -> Vec<(u16, String, Reach)> {
    std::iter::once((SSH_PORT, "SSH".to_string(), Reach::Clients))
        .chain(p.ports.iter().map(|b| (b.port, b.label(), b.reach)))
        .collect()
}

pub(super) fn resolve_firewall(
    cx: &mut Ctx,
    network: &NetworkPlan,
    nodes: Vec<Ipv4Addr>,
    metrics: bool,
) -> FirewallPlan {
    let f = &cx.loaded.recipe.firewall;
    let enabled = f.enabled.unwrap_or(true);
    if !enabled {
        cx.warn(
            cx.at("firewall.enabled"),
            "firewall disabled: every port of every node is open to any host that reaches the network",
        );
    }
    let clients = f
        .clients
        .clone()
        .unwrap_or_else(|| vec![network.cidr.clone()]);
    check_cidrs(cx, "firewall.clients", &clients);
    let metrics = metrics.then(|| {
        let m = cx
            .loaded
            .recipe
            .metrics
            .clients
            .clone()
            .unwrap_or_else(|| vec![network.cidr.clone()]);
        check_cidrs(cx, "metrics.clients", &m);
        m
    });
    FirewallPlan {
        enabled,
        clients,
        nodes,
        metrics,
    }
}

/// Each of `cidrs` (the recipe's list at `path`) must be an IPv4 network or address.
fn check_cidrs(cx: &mut Ctx, path: &str, cidrs: &[String]) {
    for (i, c) in cidrs.iter().enumerate() {
        let ok = match parse_cidr(c) {
            // The address must be the network's (no host bits), as nft requires of a prefix.
            Some((ip, len)) => len == 0 || u32::from(ip) & !super::network::prefix_mask(len) == 0,
            None => c.parse::<Ipv4Addr>().is_ok(),
        };
        if !ok {
            cx.error(
                cx.at(&index(path, i)),
                format!("`{c}` is not an IPv4 network (like 192.168.200.0/24) or address"),
            );
        }
    }
}
