//! The firewall as a stranger meets it: from `up`'s own address on the nodes' network (inside
//! the cluster network, not a node's), connect to every port of every node. Cluster-internal
//! ports must be filtered (the SYN is dropped: the connection times out); client ports must
//! answer (connected, or refused when nothing listens there yet: the firewall let it through).

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::plan::Plan;
use crate::plan::firewall::open_ports;
use crate::plan::services::Reach;
use crate::vm::checks::Phase;

/// Long enough for a SYN-ACK from a guest under software emulation.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Connected,
    Refused,
    Filtered,
}

fn probe(ip: Ipv4Addr, port: u16) -> Result<Seen, String> {
    match TcpStream::connect_timeout(&SocketAddr::from((ip, port)), PROBE_TIMEOUT) {
        Ok(_) => Ok(Seen::Connected),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(Seen::Refused),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Ok(Seen::Filtered),
        Err(e) => Err(format!("{ip}:{port}: {e}")),
    }
}

/// The firewall check: every node's ports probed from the host's address on the nodes' network.
pub fn run(nodes: &[&Plan]) -> Phase {
    match crate::vm::hostlink::host_address(nodes) {
        Ok((from, _)) => probe_cluster(nodes, from),
        Err(e) => Phase::timed("firewall", |_, _| {
            Err(e.context("no address on the nodes' network to probe from"))
        }),
    }
}

/// Probe every node's ports (SSH and the port table's) in parallel; judge each by its reach.
pub fn probe_cluster(nodes: &[&Plan], from: Ipv4Addr) -> Phase {
    let t = Instant::now();
    let (mut lines, mut failures) = (Vec::new(), Vec::new());
    let enabled: Vec<&&Plan> = nodes.iter().filter(|p| p.firewall.enabled).collect();
    if enabled.is_empty() {
        lines.push("firewall disabled in the recipe: not probed".to_string());
    }
    let mut targets = Vec::new();
    for p in enabled {
        for (port, what, reach) in open_ports(p) {
            targets.push((p, port, what, reach));
        }
    }
    let seen: Vec<Result<Seen, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = targets
            .iter()
            .map(|(p, port, _, _)| {
                let (ip, port) = (p.node.ip, *port);
                s.spawn(move || probe(ip, port))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("probe panicked".into())))
            .collect()
    });
    let mut current = String::new();
    let mut row = Vec::new();
    for ((p, port, what, reach), seen) in targets.iter().zip(seen) {
        if p.node.name != current {
            if !row.is_empty() {
                lines.push(format!("{current}: {}", row.join(", ")));
                row.clear();
            }
            current = p.node.name.clone();
        }
        // A port must answer `from` exactly when its reach's sources hold it: cluster ports
        // (the nodes only) never, client and metrics ports when their CIDRs take it in.
        let sources = p.firewall.sources(*reach).join(" ");
        let whose = match reach {
            Reach::Cluster => "cluster-internal",
            Reach::Clients => "a client port",
            Reach::Metrics => "a metrics port",
        };
        match (p.firewall.admits(*reach, from), seen) {
            (_, Err(e)) => failures.push(format!("firewall: {}: probe failed: {e}", p.node.name)),
            (false, Ok(Seen::Filtered)) => row.push(format!("{port} filtered")),
            (false, Ok(s)) => failures.push(format!(
                "firewall: {}: {what} ({port}) is {whose} (from {sources}) but answered {from} ({s:?})",
                p.node.name
            )),
            (true, Ok(Seen::Filtered)) => failures.push(format!(
                "firewall: {}: {what} ({port}) is {whose} for {sources} but dropped {from}",
                p.node.name
            )),
            (true, Ok(s)) => row.push(format!(
                "{port} open ({})",
                if s == Seen::Connected {
                    "connected"
                } else {
                    "refused: nothing listening"
                }
            )),
        }
    }
    if !row.is_empty() {
        lines.push(format!("{current}: {}", row.join(", ")));
    }
    if !targets.is_empty() {
        lines.insert(
            0,
            format!(
                "from {from} (in the cluster network, not a node): {} ports of {} nodes",
                targets.len(),
                nodes.len()
            ),
        );
    }
    Phase {
        name: "firewall",
        seconds: t.elapsed().as_secs_f64(),
        lines,
        failures,
    }
}
