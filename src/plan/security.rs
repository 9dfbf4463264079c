//! Who may talk to the cluster's services: TLS or plaintext (`security:`), how Kafka's clients
//! authenticate, its super users (the nodes) and the recipe's users with their ACLs.

use serde::Serialize;

use super::Ctx;
use crate::recipe::srcmap::{index, join};
use crate::recipe::{ClientAuth, KafkaMode, SecurityMode};

/// The principal every Storm node's topologies use with Kafka (a certificate per node, CN=storm).
pub const STORM_USER: &str = "storm";

#[derive(Debug, Clone, Serialize)]
pub struct SecurityPlan {
    pub mode: SecurityMode,
    /// How Kafka's clients authenticate on the client listener: mTLS (the user is the
    /// certificate's CN) or SCRAM-SHA-512 over TLS (the user is the SCRAM name). The nodes and
    /// their tools always use certificates, on the inter-broker and controller listeners.
    pub clients: ClientAuth,
    /// The brokers and controllers: every Kafka node, by its certificate's CN (its hostname).
    pub super_users: Vec<String>,
    pub users: Vec<KafkaUserPlan>,
}

impl SecurityPlan {
    pub fn tls(&self) -> bool {
        self.mode == SecurityMode::Tls
    }
    /// Whether Kafka's client listener takes SCRAM (SASL_SSL) rather than certificates.
    pub fn scram(&self) -> bool {
        self.tls() && self.clients == ClientAuth::Scram
    }
}

/// The SCRAM mechanism of `clients: scram`, on the client listener and in the credentials.
pub const SCRAM_MECHANISM: &str = "SCRAM-SHA-512";

#[derive(Debug, Clone, Serialize)]
pub struct KafkaUserPlan {
    pub name: String,
    pub allow: Vec<AclPlan>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resource {
    Topic,
    Group,
    TransactionalId,
    Cluster,
}

impl Resource {
    /// As the recipe and `plan` name it.
    pub fn name(self) -> &'static str {
        match self {
            Resource::Topic => "topic",
            Resource::Group => "group",
            Resource::TransactionalId => "transactional-id",
            Resource::Cluster => "cluster",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AclPlan {
    pub resource: Resource,
    /// The resource's name (`*` for every one; empty for the cluster).
    pub name: String,
    /// A name given as `PREFIX*` matches every resource starting with PREFIX.
    pub prefixed: bool,
    /// kafka-acls.sh's operation names (Read, Write, DescribeConfigs...).
    pub ops: Vec<String>,
}

impl AclPlan {
    /// kafka-acls.sh's arguments after `--add --allow-principal User:NAME`.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = self
            .ops
            .iter()
            .flat_map(|o| ["--operation".to_string(), o.clone()])
            .collect();
        // kafka-acls.sh's resource options are the resources' names: --topic, --group...
        a.push(format!("--{}", self.resource.name()));
        if self.resource != Resource::Cluster {
            a.push(self.name.clone());
            if self.prefixed {
                a.extend(["--resource-pattern-type".into(), "prefixed".into()]);
            }
        }
        a
    }
}

/// The operations kafka-acls.sh knows, as the recipe spells them and as the tool does.
const OPS: [(&str, &str); 11] = [
    ("read", "Read"),
    ("write", "Write"),
    ("create", "Create"),
    ("delete", "Delete"),
    ("alter", "Alter"),
    ("describe", "Describe"),
    ("cluster_action", "ClusterAction"),
    ("describe_configs", "DescribeConfigs"),
    ("alter_configs", "AlterConfigs"),
    ("idempotent_write", "IdempotentWrite"),
    ("all", "All"),
];

/// A name Kafka and a certificate's CN both take as they are: no separators, no spaces.
fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

pub(super) fn resolve_security(cx: &mut Ctx, kafka_nodes: Vec<String>) -> SecurityPlan {
    let r = &cx.loaded.recipe;
    let mode = r.security.unwrap_or(SecurityMode::Tls);
    let clients = r.services.kafka.clients.unwrap_or(ClientAuth::Mtls);
    let users = r.services.kafka.users.clone().unwrap_or_default();
    if mode == SecurityMode::Plaintext {
        cx.warn(
            cx.at("security"),
            "security: plaintext: Kafka and ZooKeeper accept anyone who reaches their ports, unencrypted and unauthenticated (labs only)",
        );
    }
    if clients == ClientAuth::Scram && r.services.kafka.mode == Some(KafkaMode::Zookeeper) {
        // KIP-900's format-time credentials are KRaft's; in ZooKeeper mode they live in ZooKeeper.
        let d = cx.error(
            cx.at("services.kafka.clients"),
            "SCRAM clients need KRaft: imgbuild sets the credentials when the storage is formatted (KIP-900), which ZooKeeper mode has no step for",
        );
        Ctx::hint(d, "use `clients: mtls`, or `mode: kraft`");
    }
    if clients == ClientAuth::Scram && mode == SecurityMode::Plaintext {
        cx.warn(
            cx.at("services.kafka.clients"),
            "`clients: scram` does nothing with `security: plaintext` (no authentication at all)",
        );
    }
    let mut out = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let at = index("services.kafka.users", i);
        if !plain_name(&u.name) {
            cx.error(
                cx.at(&join(&at, "name")),
                format!(
                    "`{}` is not a user name (letters, digits, `.`, `_`, `-`; up to 64)",
                    u.name
                ),
            );
            continue;
        }
        if kafka_nodes.contains(&u.name) {
            cx.error(
                cx.at(&join(&at, "name")),
                format!(
                    "`{}` is a Kafka node's name, and so a super user: a user cannot be one",
                    u.name
                ),
            );
            continue;
        }
        if users[..i].iter().any(|o| o.name == u.name) {
            cx.error(
                cx.at(&join(&at, "name")),
                format!("user `{}` is declared twice", u.name),
            );
            continue;
        }
        let mut allow = Vec::new();
        for (j, a) in u.allow.iter().enumerate() {
            let at = index(&join(&at, "allow"), j);
            if let Some(acl) = resolve_acl(cx, &at, a) {
                allow.push(acl);
            }
        }
        out.push(KafkaUserPlan {
            name: u.name.clone(),
            allow,
        });
    }
    SecurityPlan {
        mode,
        clients,
        super_users: kafka_nodes,
        users: out,
    }
}

fn resolve_acl(cx: &mut Ctx, at: &str, a: &crate::recipe::KafkaAcl) -> Option<AclPlan> {
    let named = [
        (Resource::Topic, &a.topic, "topic"),
        (Resource::Group, &a.group, "group"),
        (
            Resource::TransactionalId,
            &a.transactional_id,
            "transactional_id",
        ),
    ];
    let mut given: Vec<(Resource, String)> = named
        .iter()
        .filter_map(|(r, n, _)| n.as_ref().map(|n| (*r, n.clone())))
        .collect();
    if a.cluster == Some(true) {
        given.push((Resource::Cluster, String::new()));
    }
    let [(resource, name)] = given.as_slice() else {
        cx.error(
            cx.at(at),
            "an ACL names exactly one resource: `topic`, `group`, `transactional_id` or `cluster: true`",
        );
        return None;
    };
    let (base, prefixed) = match name.strip_suffix('*') {
        Some(p) if !p.is_empty() => (p.to_string(), true),
        _ => (name.clone(), false),
    };
    if *resource != Resource::Cluster && base != "*" && !plain_name(&base) {
        let key = named
            .iter()
            .find(|(r, _, _)| r == resource)
            .map_or("topic", |(_, _, k)| *k);
        cx.error(
            cx.at(&join(at, key)),
            format!("`{name}` is not a resource name (NAME, PREFIX* or *)"),
        );
        return None;
    }
    let mut ops = Vec::new();
    for (k, op) in a.ops.iter().enumerate() {
        match OPS.iter().find(|(r, _)| r == op) {
            Some((_, tool)) => ops.push(tool.to_string()),
            None => {
                cx.error(
                    cx.at(&index(&join(at, "ops"), k)),
                    format!(
                        "`{op}` is not a Kafka operation (one of {})",
                        OPS.map(|(r, _)| r).join(", ")
                    ),
                );
                return None;
            }
        }
    }
    if ops.is_empty() {
        cx.error(cx.at(at), "an ACL allows at least one operation (`ops`)");
        return None;
    }
    Some(AclPlan {
        resource: *resource,
        name: base,
        prefixed,
        ops,
    })
}
