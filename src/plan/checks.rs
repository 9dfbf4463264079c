//! Cluster-wide semantic checks: ids, KRaft controllers, ensembles, port clashes, the Kafka
//! version against its mode, and the KRaft cluster id.

use super::*;

pub(super) fn check_ids(cx: &mut Ctx, nodes: &[NodeDraft]) {
    let mut seen: HashMap<u32, &str> = HashMap::new();
    for n in nodes {
        let path = join(&join("nodes", &n.name), "id");
        let pos = if cx.loaded.map.has(&path) {
            cx.at(&path)
        } else {
            cx.key_at(&join("nodes", &n.name))
        };
        if let Some(other) = seen.insert(n.id, &n.name) {
            let d = cx.error(
                pos,
                format!(
                    "duplicate id {}: node `{}` and node `{other}`",
                    n.id, n.name
                ),
            );
            Ctx::hint(
                d,
                "ids default to the node's position in `nodes`; give each node a distinct `id`",
            );
        }
        if n.roles.contains(&Role::Zookeeper) && !(1..=255).contains(&n.id) {
            cx.error(
                pos,
                format!(
                    "id {} of node `{}` cannot be a ZooKeeper myid, which must be 1 to 255",
                    n.id, n.name
                ),
            );
        }
    }
}

pub(super) fn resolve_controllers<'a>(
    cx: &mut Ctx,
    nodes: &'a [NodeDraft],
    mode: KafkaMode,
) -> Vec<&'a NodeDraft> {
    let kafka_nodes: Vec<&NodeDraft> = nodes
        .iter()
        .filter(|n| n.roles.contains(&Role::Kafka))
        .collect();
    let Some(names) = &cx.loaded.recipe.services.kafka.controllers else {
        return if mode == KafkaMode::Kraft {
            kafka_nodes
        } else {
            Vec::new()
        };
    };
    if mode == KafkaMode::Zookeeper {
        cx.error(
            cx.key_at("services.kafka.controllers"),
            "`controllers` only applies to `mode: kraft`; in ZooKeeper mode the brokers elect a controller themselves",
        );
        return Vec::new();
    }
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let p = index("services.kafka.controllers", i);
        match kafka_nodes.iter().find(|n| &n.name == name) {
            Some(n) if out.iter().any(|o: &&NodeDraft| o.name == n.name) => {
                cx.error(cx.at(&p), format!("controller `{name}` is listed twice"));
            }
            Some(n) => out.push(*n),
            None if nodes.iter().any(|n| &n.name == name) => {
                cx.error(
                    cx.at(&p),
                    format!("controller `{name}` does not have the `kafka` role"),
                );
            }
            None => {
                let mut msg = format!("controller `{name}` is not a node of this recipe");
                if let Some(m) = did_you_mean(name, nodes.iter().map(|n| n.name.as_str())) {
                    msg.push_str(&format!(" (did you mean `{m}`?)"));
                }
                cx.error(cx.at(&p), msg);
            }
        }
    }
    out
}

pub(super) fn check_ensembles(
    cx: &mut Ctx,
    nodes: &[NodeDraft],
    ensemble: &[&NodeDraft],
    mode: KafkaMode,
) {
    let any = |pred: &dyn Fn(Role) -> bool| nodes.iter().any(|n| n.roles.iter().any(|r| pred(*r)));
    let needs_zk =
        any(&|r| r.is_storm()) || (mode == KafkaMode::Zookeeper && any(&|r| r == Role::Kafka));
    if ensemble.is_empty() && needs_zk {
        let d = cx.error(
            cx.key_at("nodes"),
            "the ZooKeeper ensemble is empty: no node has the `zookeeper` role",
        );
        Ctx::hint(
            d,
            "Storm (and Kafka in ZooKeeper mode) needs ZooKeeper: give 3 nodes the `zookeeper` role",
        );
    } else if !ensemble.is_empty() && ensemble.len().is_multiple_of(2) {
        let d = cx.warn(
            cx.key_at("nodes"),
            format!(
                "the ZooKeeper ensemble has {} members: an even ensemble tolerates no more failures than {}",
                ensemble.len(),
                ensemble.len() - 1
            ),
        );
        Ctx::hint(d, "use an odd number of `zookeeper` nodes (3 or 5)");
    }
    if mode != KafkaMode::Kraft || !any(&|r| r == Role::Kafka) {
        return;
    }
    let voters = match &cx.loaded.recipe.services.kafka.controllers {
        Some(list) => list.len(),
        None => nodes
            .iter()
            .filter(|n| n.roles.contains(&Role::Kafka))
            .count(),
    };
    let at = if cx.loaded.map.has("services.kafka.controllers") {
        cx.at("services.kafka.controllers")
    } else {
        cx.key_at("nodes")
    };
    if voters == 0 {
        cx.error(
            at,
            "the KRaft voter set is empty: Kafka in KRaft mode needs at least one controller",
        );
    } else if voters % 2 == 0 {
        let d = cx.warn(
            at,
            format!("the KRaft voter set has {voters} members: an even quorum tolerates no more failures than {}", voters - 1),
        );
        Ctx::hint(
            d,
            "use an odd number of controllers (services.kafka.controllers)",
        );
    }
}

/// The recipe path that set a service field for a node, if any (for pointing at a clash).
pub(super) fn service_path(cx: &Ctx, node: &str, service: &str, field: &str) -> Option<String> {
    let node_p = join(
        &join(&join(&join("nodes", node), "services"), service),
        field,
    );
    let cluster_p = join(&join("services", service), field);
    [node_p, cluster_p]
        .into_iter()
        .find(|p| cx.loaded.map.has(p))
}

pub(super) fn check_ports(cx: &mut Ctx, nodes: &[NodeDraft], mode: KafkaMode, metrics: bool) {
    // One clash set in the recipe usually hits every node alike: report each once, naming the nodes.
    let mut clashes: BTreeMap<(Pos, String, String), Vec<&str>> = BTreeMap::new();
    for n in nodes {
        let bound = n.ports.bound(&n.roles, mode, metrics);
        let node_pos = cx.key_at(&join("nodes", &n.name));
        let mut first: BTreeMap<u16, usize> = BTreeMap::new();
        for (i, b) in bound.iter().enumerate() {
            let (port, what) = (&b.port, b.label());
            let (service, field) = (b.spec().service, b.spec().field);
            let set_at = service_path(cx, &n.name, service, field);
            if *port == 0 {
                let pos = set_at.as_deref().map_or(node_pos, |p| cx.at(p));
                let msg = if b.key == PortKey::StormWorkerMetrics {
                    "with metrics on, every Storm worker slot must be a port from 1000 to 9999: \
                     its worker's metrics port is the slot's port with a 1 in front (Storm gives \
                     worker.childopts the slot's port, %ID%, and nothing computed from it)"
                        .to_string()
                } else {
                    format!("{what} is 0, which is not a usable port")
                };
                clashes
                    .entry((pos, msg, String::new()))
                    .or_default()
                    .push(&n.name);
                continue;
            }
            let Some(&j) = first.get(port) else {
                first.insert(*port, i);
                continue;
            };
            let other = bound[j].label();
            let (oservice, ofield) = (bound[j].spec().service, bound[j].spec().field);
            // Point at whichever of the two the recipe spelled out (the later one if both).
            let pos = set_at
                .or_else(|| service_path(cx, &n.name, oservice, ofield))
                .map_or(node_pos, |p| cx.at(&p));
            let msg = format!("port {port} is bound twice: {other} and {what}");
            let hint = format!("move one of them, e.g. services.{service}.{field}");
            clashes.entry((pos, msg, hint)).or_default().push(&n.name);
        }
    }
    for ((pos, msg, hint), names) in clashes {
        let on = if names.len() == 1 { "node" } else { "nodes" };
        let list: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
        let d = cx.error(pos, format!("{msg} (on {on} {})", list.join(", ")));
        if !hint.is_empty() {
            Ctx::hint(d, hint);
        }
    }
}

pub(super) fn check_kafka_version(
    cx: &mut Ctx,
    mode: KafkaMode,
    version: &str,
    nodes: &[NodeDraft],
) {
    if version.is_empty() || !nodes.iter().any(|n| n.roles.contains(&Role::Kafka)) {
        return;
    }
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    let (Some(Some(major)), Some(Some(minor))) = (parts.next(), parts.next()) else {
        cx.error(
            cx.at("components.kafka.version"),
            format!("`{version}` is not a Kafka version like 4.1.1"),
        );
        return;
    };
    let mode_at = if cx.loaded.map.has("services.kafka.mode") {
        cx.at("services.kafka.mode")
    } else {
        cx.at("components.kafka.version")
    };
    if mode == KafkaMode::Zookeeper && major >= 4 {
        let d = cx.error(
            mode_at,
            format!("Kafka {version} has no ZooKeeper mode (removed in 4.0)"),
        );
        Ctx::hint(d, "use `mode: kraft`, or Kafka 3.9.x for ZooKeeper mode");
    }
    if mode == KafkaMode::Kraft && (major, minor) < (3, 3) {
        let d = cx.error(
            mode_at,
            format!("Kafka {version} predates production KRaft (3.3)"),
        );
        Ctx::hint(d, "use Kafka 3.3 or later, or `mode: zookeeper`");
    }
}

/// The KRaft cluster id: the recipe's, validated, or one derived from the cluster name so that
/// every rebuild of the same cluster gets the same id.
pub(super) fn resolve_cluster_id(cx: &mut Ctx, mode: KafkaMode) -> Option<String> {
    if mode != KafkaMode::Kraft {
        return None;
    }
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    if let Some(id) = &cx.loaded.recipe.services.kafka.cluster_id {
        let ok = b64
            .decode(id)
            .ok()
            .filter(|b| b.len() == 16 && id.len() == 22);
        match ok {
            None => {
                let d = cx.error(
                    cx.at("services.kafka.cluster_id"),
                    format!("`{id}` is not a Kafka cluster id (22 characters of base64url encoding 16 bytes)"),
                );
                Ctx::hint(
                    d,
                    "remove it to let imgbuild derive one, or use the output of `kafka-storage.sh random-uuid`",
                );
            }
            Some(bytes)
                if id.starts_with('-')
                    || bytes.iter().take(15).all(|b| *b == 0) && bytes[15] <= 1 =>
            {
                cx.error(
                    cx.at("services.kafka.cluster_id"),
                    format!("`{id}` is a cluster id Kafka reserves or rejects (zero/one UUID, or leading `-`)"),
                );
            }
            Some(_) => {}
        }
        return Some(id.clone());
    }
    // Kafka's generator: a random v4 UUID, base64url without padding, never starting with `-`.
    // Here the randomness is a hash of the cluster name, so the id is stable across rebuilds.
    let mut seed = format!(
        "imgbuild kafka cluster id\0{}",
        cx.loaded.recipe.cluster.name
    );
    loop {
        let b = crate::util::ids::uuid_v4(seed.as_bytes());
        let id = b64.encode(b);
        if !id.starts_with('-') {
            return Some(id);
        }
        seed.push('\0');
    }
}
