//! Assembling the per-node plans: resolution's table of contents (`resolve_all`), what every
//! node shares (`Shared`), and each node's plan with its ZooKeeper and Kafka parts.

use super::*;

// Long on purpose: resolution's table of contents: each line resolves or checks one part of the
// recipe, then the shared values are assembled once for node_plan.
pub(super) fn resolve_all(cx: &mut Ctx) -> Option<Vec<Plan>> {
    let r = &cx.loaded.recipe;
    check_hostname_like(cx, "cluster.name", &r.cluster.name, "cluster name");
    if let Some(domain) = &r.cluster.domain {
        for label in domain.split('.') {
            if hostname_problem(label).is_some() {
                cx.error(
                    cx.at("cluster.domain"),
                    format!("`{domain}` is not a valid DNS domain"),
                );
                break;
            }
        }
    }
    let network = resolve_network(cx)?;
    let nodes = resolve_nodes(cx, &network);
    check_ids(cx, &nodes);
    let kafka_mode = r.services.kafka.mode.unwrap_or(KafkaMode::Kraft);
    let ensemble: Vec<&NodeDraft> = nodes
        .iter()
        .filter(|n| n.roles.contains(&Role::Zookeeper))
        .collect();
    let controllers = resolve_controllers(cx, &nodes, kafka_mode);
    check_ensembles(cx, &nodes, &ensemble, kafka_mode);
    let metrics = r.metrics.enabled.unwrap_or(true);
    check_ports(cx, &nodes, kafka_mode, metrics);
    let artifacts = resolve_artifacts(cx, &nodes, metrics);
    let base = resolve_base(cx);
    let users = resolve_users(cx);
    let signer = resolve_signer(cx);
    let pki = resolve_pki(cx);
    let disk = resolve_disk(cx);
    let os = tuning::resolve_os(cx);
    let firewall =
        firewall::resolve_firewall(cx, &network, nodes.iter().map(|n| n.ip).collect(), metrics);
    let security = security::resolve_security(
        cx,
        nodes
            .iter()
            .filter(|n| n.roles.contains(&Role::Kafka))
            .map(|n| n.name.clone())
            .collect(),
    );
    let brokers = nodes
        .iter()
        .filter(|n| n.roles.contains(&Role::Kafka))
        .count();
    let topics = topics::resolve_topics(cx, brokers);
    let kafka_version = r
        .components
        .kafka
        .as_ref()
        .map(|c| c.version.clone())
        .unwrap_or_default();
    check_kafka_version(cx, kafka_mode, &kafka_version, &nodes);
    let cluster_id = resolve_cluster_id(cx, kafka_mode);
    let overlay_dir = overlay_dir(cx.loaded);

    if cx.diags.iter().any(|d| d.severity == Severity::Error) {
        return None;
    }
    let artifacts = artifacts?;
    let base = base?;
    let w = Shared {
        recipe: cx.loaded.path.display().to_string(),
        recipe_sha256: hex::encode(Sha256::digest(cx.loaded.text.as_bytes())),
        zk_connect: ensemble
            .iter()
            .map(|n| format!("{}:{}", n.ip, n.ports.get(PortKey::ZkClient)))
            .collect::<Vec<_>>()
            .join(","),
        zk_servers: ensemble
            .iter()
            .map(|n| wiring::ZkServer {
                id: n.id,
                ip: n.ip,
                quorum_port: n.ports.get(PortKey::ZkQuorum),
                election_port: n.ports.get(PortKey::ZkElection),
            })
            .collect(),
        zk_ips: ensemble.iter().map(|z| z.ip).collect(),
        zk_port: ensemble
            .first()
            .map_or(2181, |z| z.ports.get(PortKey::ZkClient)),
        controllers: controllers.iter().map(|n| n.name.clone()).collect(),
        voters: controllers
            .iter()
            .map(|n| wiring::Voter {
                id: n.id,
                ip: n.ip,
                port: n.ports.get(PortKey::KafkaController),
            })
            .collect(),
        kafka_mode,
        kafka_version,
        cluster_id,
        brokers,
        topics,
        nimbus_seeds: nodes
            .iter()
            .filter(|n| n.roles.contains(&Role::StormNimbus))
            .map(|n| n.ip)
            .collect(),
        supervisors: nodes
            .iter()
            .filter(|n| n.roles.contains(&Role::StormSupervisor))
            .count(),
        hosts: hosts_entries(&nodes, r.cluster.domain.as_deref()),
        network,
        users,
        base,
        artifacts,
        disk,
        os,
        firewall,
        security,
        pki,
        signer,
        overlay_dir,
    };
    Some(nodes.iter().map(|n| node_plan(r, &w, n)).collect())
}

/// What every node's plan shares, resolved once: the recipe, the ensemble, the controllers,
/// the Kafka mode and version, the Storm seeds, the network, users, base, artifacts and disk.
pub(super) struct Shared {
    pub(super) recipe: String,
    recipe_sha256: String,
    pub(super) zk_connect: String,
    pub(super) zk_servers: Vec<wiring::ZkServer>,
    pub(super) zk_ips: Vec<Ipv4Addr>,
    pub(super) zk_port: u16,
    /// Names of the KRaft controllers.
    pub(super) controllers: Vec<String>,
    pub(super) voters: Vec<wiring::Voter>,
    pub(super) kafka_mode: KafkaMode,
    pub(super) kafka_version: String,
    pub(super) cluster_id: Option<String>,
    pub(super) brokers: usize,
    pub(super) topics: Vec<topics::TopicPlan>,
    pub(super) nimbus_seeds: Vec<Ipv4Addr>,
    pub(super) supervisors: usize,
    pub(super) hosts: Vec<HostEntry>,
    pub(super) network: NetworkPlan,
    pub(super) users: Vec<UserPlan>,
    pub(super) base: BasePlan,
    pub(super) artifacts: Vec<Artifact>,
    pub(super) disk: DiskPlan,
    pub(super) os: tuning::OsPlan,
    pub(super) firewall: firewall::FirewallPlan,
    pub(super) security: security::SecurityPlan,
    pub(super) pki: PkiPlan,
    pub(super) signer: Option<Signer>,
    pub(super) overlay_dir: PathBuf,
}

pub(super) fn node_plan(r: &crate::recipe::Recipe, w: &Shared, n: &NodeDraft) -> Plan {
    Plan {
        schema: SCHEMA_VERSION,
        recipe: w.recipe.clone(),
        recipe_sha256: w.recipe_sha256.clone(),
        cluster: r.cluster.name.clone(),
        source_date_epoch: r.cluster.source_date_epoch,
        node: NodeIdentity {
            name: n.name.clone(),
            hostname: n.name.clone(),
            fqdn: r.cluster.domain.as_ref().map(|d| format!("{}.{d}", n.name)),
            id: n.id,
            ip: n.ip,
            mac: n.mac.clone(),
            interface: n.interface.clone(),
        },
        network: w.network.clone(),
        hosts: w.hosts.clone(),
        roles: n.roles.clone(),
        units: Unit::for_roles(&n.roles, w.kafka_mode),
        ports: n
            .ports
            .bound(&n.roles, w.kafka_mode, w.firewall.metrics.is_some()),
        zookeeper: zookeeper_plan(w, n),
        kafka: n.roles.contains(&Role::Kafka).then(|| kafka_plan(w, n)),
        storm: n.roles.iter().any(|r| r.is_storm()).then(|| StormPlan {
            zookeeper_servers: w.zk_ips.clone(),
            zookeeper_port: w.zk_port,
            nimbus_seeds: w.nimbus_seeds.clone(),
            supervisors: w.supervisors,
            local_hostname: n.ip.to_string(),
            nimbus_port: n.ports.get(PortKey::StormNimbus),
            supervisor_port: n.ports.get(PortKey::StormSupervisor),
            ui_port: n.ports.get(PortKey::StormUi),
            logviewer_port: n.ports.get(PortKey::StormLogviewer),
            slots: n.ports.all(PortKey::StormSlots).to_vec(),
            nimbus_metrics_port: metrics_port(w, n, Role::StormNimbus, PortKey::StormNimbusMetrics),
            supervisor_metrics_port: metrics_port(
                w,
                n,
                Role::StormSupervisor,
                PortKey::StormSupervisorMetrics,
            ),
            worker_metrics_ports: if w.firewall.metrics.is_some()
                && n.roles.contains(&Role::StormSupervisor)
            {
                n.ports.all(PortKey::StormWorkerMetrics).to_vec()
            } else {
                Vec::new()
            },
            heap_mb: n.storm.heap_mb,
            worker_heap_mb: n.storm.worker_heap_mb,
        }),
        users: w.users.clone(),
        base: w.base.clone(),
        artifacts: w.artifacts.clone(),
        disk: w.disk.clone(),
        disk_ids: ids::DiskIds::derive(&r.cluster.name, &n.name),
        memory: memory_budget(
            &n.roles,
            n,
            n.ports.all(PortKey::StormSlots),
            w.firewall.metrics.is_some(),
        ),
        os: w.os.clone(),
        firewall: w.firewall.clone(),
        security: w.security.clone(),
        pki: w.pki.clone(),
        overlays: vec![w.overlay_dir.join("common"), w.overlay_dir.join(&n.name)],
        provenance_signer: w.signer.clone(),
    }
}

/// ZooKeeper's side of a node: a member's myid, or a client of the ensemble (None without one).
pub(super) fn zookeeper_plan(w: &Shared, n: &NodeDraft) -> Option<ZookeeperPlan> {
    (!w.zk_servers.is_empty()).then(|| ZookeeperPlan {
        myid: n.roles.contains(&Role::Zookeeper).then_some(n.id),
        client_port: n.ports.get(PortKey::ZkClient),
        quorum_port: n.ports.get(PortKey::ZkQuorum),
        election_port: n.ports.get(PortKey::ZkElection),
        admin_port: n.ports.get(PortKey::ZkAdmin),
        // A member's: a node that only connects to the ensemble runs no ZooKeeper server.
        metrics_port: metrics_port(w, n, Role::Zookeeper, PortKey::ZkMetrics),
        heap_mb: n.zk.heap_mb,
        servers: w.zk_servers.clone(),
        connect: w.zk_connect.clone(),
    })
}

/// A metrics port of the node's process for `role`: with metrics on and the role on the node.
fn metrics_port(w: &Shared, n: &NodeDraft, role: Role, key: PortKey) -> Option<u16> {
    (w.firewall.metrics.is_some() && n.roles.contains(&role)).then(|| n.ports.get(key))
}

/// A Kafka node: in KRaft a broker (and a controller if it is one of the voters), in
/// ZooKeeper mode a broker of the ensemble's /kafka.
pub(super) fn kafka_plan(w: &Shared, n: &NodeDraft) -> KafkaPlan {
    let plain = wiring::Listener {
        name: wiring::ListenerName::Client,
        ip: n.ip,
        port: n.ports.get(PortKey::Kafka),
    };
    let internal = wiring::Listener {
        name: wiring::ListenerName::Internal,
        ip: n.ip,
        port: n.ports.get(PortKey::KafkaInternal),
    };
    match w.kafka_mode {
        KafkaMode::Kraft => {
            let mut listeners = vec![plain, internal];
            let mut roles = vec![wiring::ProcessRole::Broker];
            if w.controllers.contains(&n.name) {
                listeners.push(wiring::Listener {
                    name: wiring::ListenerName::Controller,
                    ip: n.ip,
                    port: n.ports.get(PortKey::KafkaController),
                });
                roles.push(wiring::ProcessRole::Controller);
            }
            KafkaPlan {
                mode: w.kafka_mode,
                version: w.kafka_version.clone(),
                node_id: Some(n.id),
                broker_id: None,
                process_roles: Some(roles),
                cluster_id: w.cluster_id.clone(),
                controller_quorum_voters: Some(w.voters.clone()),
                zookeeper_connect: None,
                // Shown as `listeners` in the plan (see the field).
                advertised_listeners: listeners.clone(),
                listeners,
                port: n.ports.get(PortKey::Kafka),
                internal_port: n.ports.get(PortKey::KafkaInternal),
                controller_port: Some(n.ports.get(PortKey::KafkaController)),
                metrics_port: metrics_port(w, n, Role::Kafka, PortKey::KafkaMetrics),
                heap_mb: n.kafka.heap_mb,
                brokers: w.brokers,
                topics: w.topics.clone(),
            }
        }
        KafkaMode::Zookeeper => KafkaPlan {
            mode: w.kafka_mode,
            version: w.kafka_version.clone(),
            node_id: None,
            broker_id: Some(n.id),
            process_roles: None,
            cluster_id: None,
            controller_quorum_voters: None,
            zookeeper_connect: Some(format!("{}/kafka", w.zk_connect)),
            listeners: vec![plain.clone(), internal.clone()],
            advertised_listeners: vec![plain, internal],
            port: n.ports.get(PortKey::Kafka),
            internal_port: n.ports.get(PortKey::KafkaInternal),
            controller_port: None,
            metrics_port: metrics_port(w, n, Role::Kafka, PortKey::KafkaMetrics),
            heap_mb: n.kafka.heap_mb,
            brokers: w.brokers,
            topics: w.topics.clone(),
        },
    }
}
