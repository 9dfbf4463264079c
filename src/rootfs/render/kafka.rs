//! Kafka's files: server.properties (listeners, TLS, authorizer), a node's own client settings and
//! the ACL script of kafka-acls.service.

use super::*;
use crate::plan::security::SCRAM_MECHANISM;

/// User storm's Kafka client settings: its certificate (mTLS), its SCRAM password (`password`,
/// None when the recipe declares no user storm: then it has none), or plaintext.
pub fn storm_kafka_client(sec: &SecurityPlan, password: Option<&str>) -> String {
    let mut p = Properties::new(
        "Written by imgbuild: Kafka client settings of User:storm (this node's Storm topologies).",
    );
    if sec.scram() {
        p.set("security.protocol", "SASL_SSL")
            .set("sasl.mechanism", SCRAM_MECHANISM);
        if let Some(pw) = password {
            p.set(
                "sasl.jaas.config",
                format!(
                    "org.apache.kafka.common.security.scram.ScramLoginModule required username=\"{}\" password=\"{pw}\";",
                    crate::plan::security::STORM_USER
                ),
            );
        }
        p.set("ssl.truststore.type", "PEM")
            .set("ssl.truststore.location", CA_CERT);
    } else if sec.tls() {
        p.set("security.protocol", "SSL")
            .set("ssl.keystore.type", "PEM")
            .set("ssl.keystore.location", STORM_KEYSTORE)
            .set("ssl.truststore.type", "PEM")
            .set("ssl.truststore.location", CA_CERT);
    } else {
        p.set("security.protocol", "PLAINTEXT");
    }
    p.render()
}

/// The client settings of a Kafka tool run as the node (paths only, no secret): TLS with the
/// node's certificate, or plaintext.
pub fn kafka_tls_client(tls: bool) -> String {
    let mut p = Properties::new(if tls {
        "Written by imgbuild: a Kafka tool on this node, as this node, over TLS."
    } else {
        "Written by imgbuild: a Kafka tool on this node (security: plaintext)."
    });
    if tls {
        p.set("security.protocol", "SSL");
        kafka_tls(&mut p);
    } else {
        p.set("security.protocol", "PLAINTEXT");
    }
    p.render()
}

/// Whether the node runs kafka-acls.service: a broker, with TLS (the authorizer) and an ACL.
pub fn acl_unit(p: &Plan) -> bool {
    let broker = p.kafka.as_ref().is_some_and(|k| {
        k.process_roles
            .as_ref()
            .is_none_or(|r| r.contains(&ProcessRole::Broker))
    });
    broker && p.security.tls() && p.security.users.iter().any(|u| !u.allow.is_empty())
}

/// The script kafka-acls.service runs on a broker: every ACL of the recipe's users, added as
/// the node (a super user) through its own client listener (the inter-broker one when clients
/// use SCRAM: the node shows its certificate). None without TLS (no authorizer),
/// on a controller-only node, or when no user has an ACL.
pub fn kafka_acls(p: &Plan) -> Option<String> {
    if !acl_unit(p) {
        return None;
    }
    let (k, sec) = (p.kafka.as_ref()?, &p.security);
    let mut s = format!(
        "#!/bin/sh\n\
         # Written by imgbuild from the recipe (services.kafka.users): each user's ACLs, added as\n\
         # this node (a super user) through its own broker. Adding an ACL that exists changes nothing.\n\
         set -eu\n\
         # No JVM before the broker listens: under software emulation each start takes minutes.\n\
         until /usr/bin/python3 -c 'import socket; socket.create_connection((\"{ip}\", {port}), 5)' 2>/dev/null; do\n\
         \x20 sleep 10\n\
         done\n\
         acl() {{\n\
         \x20 /opt/kafka/bin/kafka-acls.sh --bootstrap-server {ip}:{port} --command-config {KAFKA_TLS_CLIENT} --add \"$@\"\n\
         }}\n",
        ip = p.node.ip,
        port = k.own_port(sec)
    );
    // The names are plain (the plan checked them); `*` alone or at the end is quoted.
    let quote = |x: &str| {
        if x.contains('*') {
            format!("'{x}'")
        } else {
            x.to_string()
        }
    };
    for u in &sec.users {
        for a in &u.allow {
            let args: Vec<String> = a.args().iter().map(|x| quote(x)).collect();
            let _ = writeln!(
                s,
                "acl --allow-principal User:{} {}",
                u.name,
                args.join(" ")
            );
        }
    }
    Some(s)
}

/// The node's keystore and the cluster CA as Kafka's PEM stores.
pub(super) fn kafka_tls(p: &mut Properties) {
    p.set("ssl.keystore.type", "PEM")
        .set("ssl.keystore.location", KAFKA_KEYSTORE)
        .set("ssl.truststore.type", "PEM")
        .set("ssl.truststore.location", CA_CERT);
}

/// ZooKeeper takes TLS clients only: a broker in ZooKeeper mode is one, as its node (KIP-515).
pub(super) fn kafka_zookeeper_tls(p: &mut Properties) {
    p.set("zookeeper.ssl.client.enable", true)
        .set(
            "zookeeper.clientCnxnSocket",
            "org.apache.zookeeper.ClientCnxnSocketNetty",
        )
        .set("zookeeper.ssl.keystore.location", KAFKA_KEYSTORE)
        .set("zookeeper.ssl.keystore.type", "PEM")
        .set("zookeeper.ssl.truststore.location", CA_CERT)
        .set("zookeeper.ssl.truststore.type", "PEM");
}

pub fn server_properties(k: &KafkaPlan, sec: &SecurityPlan) -> String {
    let proto = if sec.tls() { "SSL" } else { "PLAINTEXT" };
    // The client listener: the same, or SCRAM over TLS (`clients: scram`).
    let client = if sec.scram() { "SASL_SSL" } else { proto };
    let mut p = Properties::new("Written by imgbuild from the recipe.");
    match k.mode {
        KafkaMode::Kraft => {
            let roles = k.process_roles.as_deref().unwrap_or(&[ProcessRole::Broker]);
            let voters = k.controller_quorum_voters.as_deref().unwrap_or_default();
            p.set("process.roles", comma(roles))
                .set("node.id", k.node_id.unwrap_or_default())
                .set("controller.quorum.voters", comma(voters))
                .set("controller.listener.names", "CONTROLLER")
                .set(
                    "listener.security.protocol.map",
                    format!("CONTROLLER:{proto},CLIENT:{client},INTERNAL:{proto}"),
                );
        }
        KafkaMode::Zookeeper => {
            p.set("broker.id", k.broker_id.unwrap_or_default())
                .set(
                    "zookeeper.connect",
                    k.zookeeper_connect.as_deref().unwrap_or(""),
                )
                .set(
                    "listener.security.protocol.map",
                    format!("CLIENT:{client},INTERNAL:{proto}"),
                );
            if sec.tls() {
                kafka_zookeeper_tls(&mut p);
            }
        }
    }
    // The controller listener is not advertised to clients in KRaft (Kafka rejects it there).
    let advertised: Vec<&Listener> = k
        .advertised_listeners
        .iter()
        .filter(|l| l.name != ListenerName::Controller)
        .collect();
    p.set("listeners", comma(&k.listeners))
        .set("advertised.listeners", comma(&advertised))
        // Replication on its own listener, which the firewall opens to the cluster's nodes only.
        .set("inter.broker.listener.name", "INTERNAL");
    if sec.tls() {
        // Everyone shows a certificate of the cluster's CA (mTLS on every listener): the brokers
        // and controllers their node's (the peer's IP must be in its SANs), clients their user's.
        // The principal is the certificate's CN; the nodes are super users, everyone else may do
        // what the recipe's ACLs allow, and nothing without one.
        kafka_tls(&mut p);
        let authorizer = match k.mode {
            KafkaMode::Kraft => "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            KafkaMode::Zookeeper => "kafka.security.authorizer.AclAuthorizer",
        };
        let supers: Vec<String> = sec
            .super_users
            .iter()
            .map(|n| format!("User:{n}"))
            .collect();
        p.set("ssl.client.auth", "required")
            .set(
                "ssl.principal.mapping.rules",
                "RULE:^CN=([^,]+)$/$1/,DEFAULT",
            )
            .set("authorizer.class.name", authorizer)
            .set("super.users", supers.join(";"))
            .set("allow.everyone.if.no.acl.found", false);
        if sec.scram() {
            // Clients prove a password instead (the credentials are set at format time,
            // KIP-900); they show no certificate (KIP-684: a SASL_SSL listener asks for one
            // only when told to, here explicitly not), and their principal is the SCRAM name.
            p.set("sasl.enabled.mechanisms", SCRAM_MECHANISM)
                .set(
                    "listener.name.client.sasl.enabled.mechanisms",
                    SCRAM_MECHANISM,
                )
                .set(
                    &format!(
                        "listener.name.client.{}.sasl.jaas.config",
                        SCRAM_MECHANISM.to_ascii_lowercase()
                    ),
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;",
                )
                .set("listener.name.client.ssl.client.auth", "none");
        }
    }
    p.set("log.dirs", "/var/lib/kafka/data")
        .set("default.replication.factor", 3)
        .set("min.insync.replicas", 2)
        .set("offsets.topic.replication.factor", 3)
        .set("transaction.state.log.replication.factor", 3)
        .set("transaction.state.log.min.isr", 2)
        .set("unclean.leader.election.enable", false);
    p.render()
}
