//! /etc/imgbuild/health.json: what imgbuild-health checks on a node, and how.

use super::*;

/// /etc/imgbuild/health.json: what imgbuild-health checks on this node.
pub fn health_config(p: &Plan) -> String {
    let mut c = serde_json::json!({
        "node": p.node.name,
        "hostname": p.node.hostname,
        "ip": p.node.ip.to_string(),
        "interval_seconds": 10,
        "timeout_seconds": 1800,
        // imgbuild-slot: how long a root slot being tried has to prove this node healthy (its
        // own checks and units, `health.py --local`), and the units that must run.
        "slot_timeout_seconds": 900,
        "units": std::iter::once("imgbuild-data.service")
            .chain(p.units.iter().map(|u| u.file_name()))
            .collect::<Vec<_>>(),
    });
    if let Some(z) = &p.zookeeper
        && z.myid.is_some()
    {
        c["zookeeper"] = serde_json::json!({"client_port": z.client_port});
    }
    // Every ZooKeeper connection of the check (srvr, and the registrations of Kafka's brokers
    // and Storm's daemons) is TLS with this identity when ZooKeeper's clients must be.
    if let Some(keystore) = zk_client_keystore(p) {
        c["zookeeper_tls"] = serde_json::json!({"ca": CA_CERT, "keystore": keystore});
    }
    if let Some(k) = &p.kafka {
        c["kafka"] = kafka_health(k, p.security.tls());
    }
    if let Some(s) = &p.storm {
        c["storm"] = serde_json::json!({
            "zookeeper": s.zookeeper_servers.iter().map(|ip| format!("{ip}:{}", s.zookeeper_port)).collect::<Vec<_>>(),
            "root": "/storm",
            // Every supervisor of the cluster, as `up` judges it (a node's health unit stops
            // reporting once healthy: counting one would let a late supervisor go unseen).
            "supervisors": s.supervisors,
        });
    }
    if p.artifacts.iter().any(|a| a.name == Component::Python) {
        c["python"] = serde_json::json!("/opt/python/bin/python3");
    }
    let mut text = serde_json::to_string_pretty(&c).unwrap_or_default();
    text.push('\n');
    text
}

/// How imgbuild-health checks Kafka on this node.
///
/// KRaft: DescribeQuorum over the wire (API key 55, v0) to this node's own controller when it is
/// one, else the first voter's: every voter listed, a leader, every voter's log within 1000 of
/// the leader's. The same request for every KRaft release (3.3+), where `kafka-metadata-quorum.sh`
/// takes `--bootstrap-controller` only from 3.7 (KIP-919) — and it needs no JVM, which under
/// software emulation takes minutes for each check.
/// ZooKeeper mode: every broker registered under `<chroot>/brokers/ids` — read over ZooKeeper's
/// protocol, no JVM either.
pub(super) fn kafka_health(k: &KafkaPlan, tls: bool) -> serde_json::Value {
    match k.mode {
        KafkaMode::Kraft => {
            let voters = k.controller_quorum_voters.as_deref().unwrap_or_default();
            // The controllers speak TLS and want a client certificate: the node's own.
            let own = voters
                .iter()
                .find(|v| Some(v.id) == k.node_id && k.controller_port.is_some())
                .or(voters.first())
                .map(|v| v.address())
                .unwrap_or_default();
            // DescribeQuorum is answered by the leader only (others: NOT_LEADER_OR_FOLLOWER):
            // ask this node's controller first, then every other voter.
            let mut controllers = vec![own.clone()];
            controllers.extend(voters.iter().map(|v| v.address()).filter(|a| *a != own));
            serde_json::json!({
                "mode": "kraft",
                "controller": own,
                "controllers": controllers,
                "voters": voters.iter().map(|v| v.id).collect::<Vec<_>>(),
                "tls": tls.then(|| serde_json::json!({"ca": CA_CERT, "keystore": KAFKA_KEYSTORE})),
            })
        }
        KafkaMode::Zookeeper => {
            let connect = k.zookeeper_connect.as_deref().unwrap_or("");
            let (servers, chroot) = connect.split_once('/').unwrap_or((connect, ""));
            serde_json::json!({
                "mode": "zookeeper",
                "zookeeper": servers.split(',').filter(|s| !s.is_empty()).collect::<Vec<_>>(),
                "brokers_path": format!("/{chroot}/brokers/ids").replace("//", "/"),
                "broker_id": k.broker_id,
                "brokers": k.brokers,
            })
        }
    }
}
