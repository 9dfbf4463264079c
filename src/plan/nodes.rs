//! The nodes as the recipe lists them: names, addresses, MACs, roles, each node's effective
//! services after its overrides, its memory budget and the cluster's /etc/hosts entries.

use super::*;

/// A node as seen during resolution, before the per-node plan is assembled.
pub(super) struct NodeDraft {
    pub(super) name: String,
    pub(super) id: u32,
    pub(super) ip: Ipv4Addr,
    pub(super) mac: Option<String>,
    pub(super) interface: Option<String>,
    pub(super) roles: Vec<Role>,
    pub(super) ports: Ports,
    pub(super) zk: Zk,
    pub(super) kafka: Kafka,
    pub(super) storm: Storm,
}

/// Effective heaps after defaults and per-node overrides (ports are in [`Ports`]).
#[derive(Clone, Default)]
pub(super) struct Zk {
    pub(super) heap_mb: u32,
}
#[derive(Clone, Default)]
pub(super) struct Kafka {
    pub(super) heap_mb: u32,
}
#[derive(Clone, Default)]
pub(super) struct Storm {
    pub(super) heap_mb: u32,
    pub(super) worker_heap_mb: u32,
}

/// What a Prometheus exporter adds: inside a JVM beyond its heap (the JMX exporter's agent or
/// ZooKeeper's metrics provider: their classes, HTTP server threads and buffers), or as the
/// node exporter's own process (about 20 MiB resident, measured in the e2e cluster).
pub(super) const EXPORTER_MB: u32 = 32;

/// The daemons that carry a Prometheus exporter with metrics on (and each Storm worker, one
/// per slot: counted with the slots).
fn exports(role: Role) -> bool {
    matches!(
        role,
        Role::Zookeeper | Role::Kafka | Role::StormNimbus | Role::StormSupervisor
    )
}

pub(super) fn memory_budget(
    roles: &[Role],
    n: &NodeDraft,
    slots: &[u16],
    metrics: bool,
) -> MemoryPlan {
    let (zk, kafka, storm) = (&n.zk, &n.kafka, &n.storm);
    let mut jvms = Vec::new();
    for r in roles {
        match r {
            Role::Zookeeper => jvms.push(("zookeeper".to_string(), zk.heap_mb)),
            Role::Kafka => jvms.push(("kafka".to_string(), kafka.heap_mb)),
            Role::StormSupervisor => {
                jvms.push(("storm-supervisor".to_string(), storm.heap_mb));
                for s in slots {
                    jvms.push((format!("storm-worker-{s}"), storm.worker_heap_mb));
                }
            }
            r => jvms.push((r.name().to_string(), storm.heap_mb)),
        }
    }
    jvms.push(("tool (health check)".to_string(), TOOL_HEAP_MB));
    let heap_mb = jvms.iter().map(|(_, h)| h).sum();
    // The JVMs' exporters, and the node exporter (a process of its own) on every node.
    let exporters = if metrics {
        let workers = if roles.contains(&Role::StormSupervisor) {
            slots.len() as u32
        } else {
            0
        };
        roles.iter().filter(|r| exports(**r)).count() as u32 + workers + 1
    } else {
        0
    };
    let total: u32 = jvms
        .iter()
        .map(|(_, h)| h + jvm_overhead_mb(*h))
        .sum::<u32>()
        + exporters * EXPORTER_MB
        + OS_MB;
    MemoryPlan {
        jvms,
        heap_mb,
        exporters,
        total_mb: total.div_ceil(256) * 256,
    }
}

/// `/etc/hosts` lines for every node: the node names map to their real IPs (never 127.0.1.1).
pub(super) fn hosts_entries(nodes: &[NodeDraft], domain: Option<&str>) -> Vec<HostEntry> {
    nodes
        .iter()
        .map(|n| {
            let mut names = Vec::new();
            if let Some(d) = domain {
                names.push(format!("{}.{d}", n.name));
            }
            names.push(n.name.clone());
            HostEntry { ip: n.ip, names }
        })
        .collect()
}

pub(super) fn resolve_nodes(cx: &mut Ctx, network: &NetworkPlan) -> Vec<NodeDraft> {
    let r = &cx.loaded.recipe;
    if r.nodes.is_empty() {
        cx.error(cx.at("nodes"), "the recipe has no nodes");
    }
    let mut seen = Seen::default();
    let mut drafts = Vec::new();
    for (i, (name, node)) in r.nodes.iter().enumerate() {
        let path = join("nodes", name);
        check_node_name(cx, &path, name);
        let ip = resolve_node_ip(cx, network, &mut seen, &path, name, &node.ip);
        let mac = node.mac.as_ref().map(|m| m.to_ascii_lowercase());
        if let Some(m) = &mac {
            check_mac(cx, &mut seen, &path, name, m);
        }
        if let Some(ifname) = &node.interface
            && (ifname.is_empty() || ifname.len() > 15 || ifname.contains(['/', ' ', ':']))
        {
            cx.error(
                cx.at(&join(&path, "interface")),
                format!("`{ifname}` is not a valid interface name"),
            );
        }
        let roles = resolve_roles(cx, &path, node.roles.as_deref());
        let overrides = node.services.as_ref();
        if let Some(o) = overrides {
            check_cluster_wide(cx, &path, &o.kafka);
        }
        let (zk, kafka, storm) = effective_services(&r.services, overrides);
        drafts.push(NodeDraft {
            ports: Ports::resolve(&r.services, overrides),
            name: name.clone(),
            id: node.id.unwrap_or(i as u32 + 1),
            ip,
            mac,
            interface: node.interface.clone(),
            roles,
            zk,
            kafka,
            storm,
        });
    }
    drafts
}

/// Addresses already taken by an earlier node: (ip or mac, node name).
#[derive(Default)]
pub(super) struct Seen {
    ip: HashMap<Ipv4Addr, String>,
    mac: HashMap<String, String>,
}

/// Node names become hostnames, and must not shadow a subcommand (`imgbuild NODE`).
pub(super) fn check_node_name(cx: &mut Ctx, path: &str, name: &str) {
    if let Some(why) = hostname_problem(name) {
        let d = cx.error(
            cx.key_at(path),
            format!("node name `{name}` is not a valid hostname: {why}"),
        );
        Ctx::hint(
            d,
            "node names become hostnames: use lower-case letters, digits and `-`, like node1",
        );
    } else if RESERVED_NAMES.contains(&name) {
        let d = cx.error(
            cx.key_at(path),
            format!("node name `{name}` clashes with the subcommand `imgbuild {name}`"),
        );
        Ctx::hint(d, "pick another name, such as node1");
    }
}

/// A node's IPv4 address: inside the network, not its network, broadcast or gateway address,
/// not another node's.
pub(super) fn resolve_node_ip(
    cx: &mut Ctx,
    network: &NetworkPlan,
    seen: &mut Seen,
    path: &str,
    name: &str,
    text: &str,
) -> Ipv4Addr {
    let ip_path = join(path, "ip");
    let Ok(ip) = text.parse::<Ipv4Addr>() else {
        cx.error(cx.at(&ip_path), format!("`{text}` is not an IPv4 address"));
        return Ipv4Addr::UNSPECIFIED;
    };
    let (net_addr, _) = parse_cidr(&network.cidr).unwrap_or((Ipv4Addr::UNSPECIFIED, 0));
    let prefix = network.prefix_len;
    let broadcast = Ipv4Addr::from(u32::from(net_addr) | !prefix_mask(prefix));
    let problem = if prefix > 0 && !in_network(ip, net_addr, prefix) {
        Some(format!(
            "ip {ip} of node `{name}` is outside the network {}",
            network.cidr
        ))
    } else if prefix < 31 && (ip == net_addr || ip == broadcast) {
        Some(format!(
            "ip {ip} of node `{name}` is the network or broadcast address of {}",
            network.cidr
        ))
    } else if ip == network.gateway {
        Some(format!("ip {ip} of node `{name}` is the gateway's address"))
    } else {
        None
    };
    if let Some(msg) = problem {
        cx.error(cx.at(&ip_path), msg);
    }
    if let Some(other) = seen.ip.insert(ip, name.to_string()) {
        cx.error(
            cx.at(&ip_path),
            format!("duplicate ip {ip}: node `{name}` and node `{other}`"),
        );
    }
    ip
}

/// A unicast MAC address, like 52:54:00:c8:00:97, not another node's.
pub(super) fn check_mac(cx: &mut Ctx, seen: &mut Seen, path: &str, name: &str, m: &str) {
    let mac_path = join(path, "mac");
    let octets: Vec<Option<u8>> = m
        .split(':')
        .map(|o| {
            (o.len() == 2)
                .then(|| u8::from_str_radix(o, 16).ok())
                .flatten()
        })
        .collect();
    if octets.len() != 6 || octets.iter().any(Option::is_none) {
        cx.error(
            cx.at(&mac_path),
            format!("`{m}` is not a MAC address (like 52:54:00:c8:00:97)"),
        );
    } else if octets[0].is_some_and(|o| o & 1 == 1) {
        cx.error(
            cx.at(&mac_path),
            format!("`{m}` is a multicast MAC address; a NIC needs a unicast one"),
        );
    } else if let Some(other) = seen.mac.insert(m.to_string(), name.to_string()) {
        cx.error(
            cx.at(&mac_path),
            format!("duplicate mac {m}: node `{name}` and node `{other}`"),
        );
    }
}

/// Kafka settings only the cluster can have: a per-node value is an error at its key.
pub(super) fn check_cluster_wide(cx: &mut Ctx, path: &str, kafka: &recipe::KafkaService) {
    for (field, set) in [
        ("mode", kafka.mode.is_some()),
        ("cluster_id", kafka.cluster_id.is_some()),
        ("controllers", kafka.controllers.is_some()),
    ] {
        if set {
            let p = join(&join(&join(path, "services"), "kafka"), field);
            cx.error(
                cx.key_at(&p),
                format!("`{field}` is cluster-wide: set it in services.kafka, not per node"),
            );
        }
    }
}

pub(super) fn resolve_roles(cx: &mut Ctx, node_path: &str, roles: Option<&[String]>) -> Vec<Role> {
    let Some(roles) = roles else {
        return Role::ALL.to_vec();
    };
    let path = join(node_path, "roles");
    let mut out = Vec::new();
    for (i, s) in roles.iter().enumerate() {
        match Role::parse(s) {
            Some(r) if out.contains(&r) => {
                cx.error(
                    cx.at(&index(&path, i)),
                    format!("role `{s}` is listed twice"),
                );
            }
            Some(r) => out.push(r),
            None => {
                let mut msg = format!("unknown role `{s}`");
                if let Some(m) = did_you_mean(s, Role::ALL.iter().map(|r| r.name())) {
                    msg.push_str(&format!(" (did you mean `{m}`?)"));
                }
                let d = cx.error(cx.at(&index(&path, i)), msg);
                Ctx::hint(
                    d,
                    format!("roles are: {}", Role::ALL.map(|r| r.name()).join(", ")),
                );
            }
        }
    }
    if roles.is_empty() {
        cx.warn(
            cx.at(&path),
            format!(
                "node `{}` has no roles: it will run no service",
                node_path.trim_start_matches("nodes.")
            ),
        );
    }
    out.sort();
    out
}

pub(super) fn effective_services(
    cluster: &recipe::Services,
    node: Option<&recipe::Services>,
) -> (Zk, Kafka, Storm) {
    let (cz, ck, cs) = (&cluster.zookeeper, &cluster.kafka, &cluster.storm);
    let d = recipe::Services::default();
    let n = node.unwrap_or(&d);
    let (nz, nk, ns) = (&n.zookeeper, &n.kafka, &n.storm);
    let zk = Zk {
        heap_mb: nz
            .heap_mb
            .or(cz.heap_mb)
            .unwrap_or(DEFAULT_HEAP_MB.zookeeper),
    };
    let kafka = Kafka {
        heap_mb: nk.heap_mb.or(ck.heap_mb).unwrap_or(DEFAULT_HEAP_MB.kafka),
    };
    let storm = Storm {
        heap_mb: ns.heap_mb.or(cs.heap_mb).unwrap_or(DEFAULT_HEAP_MB.storm),
        worker_heap_mb: ns
            .worker_heap_mb
            .or(cs.worker_heap_mb)
            .unwrap_or(DEFAULT_HEAP_MB.storm_worker),
    };
    (zk, kafka, storm)
}
