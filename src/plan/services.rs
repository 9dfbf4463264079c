//! The services as types: the components an image carries, the systemd units a role enables,
//! and one table of every port a service binds (its recipe key, default and who may reach it),
//! which feeds resolution, the port-clash check and `plan` output.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::Role;
use crate::recipe::{self, KafkaMode};

/// A downloaded input of the image: the base tarball or one of the components it lays out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Component {
    Base,
    Java,
    Zookeeper,
    Kafka,
    Storm,
    Python,
    #[serde(rename = "jmx_exporter")]
    JmxExporter,
}

impl Component {
    /// The recipe's `components:` entries, in the order they are resolved and laid out.
    pub const RECIPE: [Component; 6] = [
        Component::Java,
        Component::Zookeeper,
        Component::Kafka,
        Component::Storm,
        Component::Python,
        Component::JmxExporter,
    ];

    /// A component that is one jar (laid out as /opt/NAME-VERSION/FILE), not a tarball.
    pub fn jar(self) -> Option<&'static str> {
        match self {
            Component::JmxExporter => Some(JMX_AGENT_JAR),
            _ => None,
        }
    }

    /// The component a fetched input's name stands for.
    pub fn from_name(name: &str) -> Option<Component> {
        std::iter::once(Component::Base)
            .chain(Component::RECIPE)
            .find(|c| c.name() == name)
    }

    /// Who publishes it and under which license, as SPDX says them (the SBOM's supplier and
    /// declared license), for the upstream the reference recipe names; a recipe that takes a
    /// component from elsewhere says so (`components.NAME.supplier`, `license`). The base's
    /// come from the distribution it turns out to be, and its packages' own licenses.
    pub fn publisher(self) -> Option<(&'static str, &'static str)> {
        match self {
            Component::Base => None,
            Component::Java => Some((
                "Organization: Eclipse Adoptium",
                "GPL-2.0-only WITH Classpath-exception-2.0",
            )),
            Component::Zookeeper | Component::Kafka | Component::Storm => {
                Some(("Organization: The Apache Software Foundation", "Apache-2.0"))
            }
            Component::Python => Some((
                "Organization: Astral Software Inc. (python-build-standalone)",
                "PSF-2.0",
            )),
            Component::JmxExporter => Some(("Organization: The Prometheus Authors", "Apache-2.0")),
        }
    }

    /// Its name in the recipe, the lock file, the cache and messages.
    pub fn name(self) -> &'static str {
        match self {
            Component::Base => "base",
            Component::Java => "java",
            Component::Zookeeper => "zookeeper",
            Component::Kafka => "kafka",
            Component::Storm => "storm",
            Component::Python => "python",
            Component::JmxExporter => "jmx_exporter",
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The JMX exporter agent in the image: `-javaagent:` of Kafka's and Storm's daemons.
pub const JMX_AGENT_JAR: &str = "jmx_prometheus_javaagent.jar";
pub const JMX_AGENT: &str = "/opt/jmx_exporter/jmx_prometheus_javaagent.jar";

/// A systemd unit imgbuild installs; a node enables the ones its roles need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Unit {
    #[serde(rename = "zookeeper.service")]
    Zookeeper,
    /// One-shot `kafka-storage.sh format` before the first KRaft start.
    #[serde(rename = "kafka-format.service")]
    KafkaFormat,
    #[serde(rename = "kafka.service")]
    Kafka,
    #[serde(rename = "storm-nimbus.service")]
    StormNimbus,
    #[serde(rename = "storm-supervisor.service")]
    StormSupervisor,
    #[serde(rename = "storm-ui.service")]
    StormUi,
    #[serde(rename = "storm-logviewer.service")]
    StormLogviewer,
}

impl Unit {
    /// In install order (the order `rootfs` writes them and the shared snapshot lists them).
    pub const ALL: [Unit; 7] = [
        Unit::Zookeeper,
        Unit::Kafka,
        Unit::KafkaFormat,
        Unit::StormNimbus,
        Unit::StormSupervisor,
        Unit::StormUi,
        Unit::StormLogviewer,
    ];

    /// The unit's file name under /etc/systemd/system.
    pub fn file_name(self) -> &'static str {
        match self {
            Unit::Zookeeper => "zookeeper.service",
            Unit::KafkaFormat => "kafka-format.service",
            Unit::Kafka => "kafka.service",
            Unit::StormNimbus => "storm-nimbus.service",
            Unit::StormSupervisor => "storm-supervisor.service",
            Unit::StormUi => "storm-ui.service",
            Unit::StormLogviewer => "storm-logviewer.service",
        }
    }

    /// The units a node with these roles enables, in start order.
    pub fn for_roles(roles: &[Role], mode: KafkaMode) -> Vec<Unit> {
        roles
            .iter()
            .flat_map(|r| Unit::for_role(*r, mode))
            .copied()
            .collect()
    }

    /// The units a role enables, in start order.
    pub fn for_role(role: Role, mode: KafkaMode) -> &'static [Unit] {
        match role {
            Role::Zookeeper => &[Unit::Zookeeper],
            Role::Kafka if mode == KafkaMode::Kraft => &[Unit::KafkaFormat, Unit::Kafka],
            Role::Kafka => &[Unit::Kafka],
            Role::StormNimbus => &[Unit::StormNimbus],
            Role::StormSupervisor => &[Unit::StormSupervisor],
            Role::StormUi => &[Unit::StormUi],
            Role::StormLogviewer => &[Unit::StormLogviewer],
        }
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.file_name())
    }
}

/// Which port of which service: the key of [`PORTS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum PortKey {
    ZkClient,
    ZkQuorum,
    ZkElection,
    ZkAdmin,
    Kafka,
    KafkaInternal,
    KafkaController,
    StormNimbus,
    StormSupervisor,
    StormSlots,
    StormUi,
    StormLogviewer,
    ZkMetrics,
    KafkaMetrics,
    StormNimbusMetrics,
    StormSupervisorMetrics,
    StormWorkerMetrics,
    NodeExporter,
}

/// Who talks to a port: only the cluster's own nodes, or clients outside it too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reach {
    Cluster,
    Clients,
    /// A Prometheus endpoint: bound only with `metrics` on, open to `metrics.clients`.
    Metrics,
}

/// One row of the port table.
pub struct PortSpec {
    pub key: PortKey,
    /// The `services:` block that sets it, and its key there.
    pub service: &'static str,
    pub field: &'static str,
    /// How messages and `plan` name it.
    pub label: &'static str,
    /// Bound by nodes with this role (None: by every node; and, for `kraft_only`, only in KRaft
    /// mode).
    pub role: Option<Role>,
    pub kraft_only: bool,
    pub default: &'static [u16],
    pub reach: Reach,
    /// The value a `services:` block gives it, if any.
    pub recipe: fn(&recipe::Services) -> Option<Vec<u16>>,
}

/// Every port a service binds. ZooKeeper's own AdminServer default is 8080, which Storm UI
/// also takes; imgbuild moves it to 8081.
pub const PORTS: [PortSpec; 18] = [
    PortSpec {
        key: PortKey::ZkClient,
        service: "zookeeper",
        field: "client_port",
        label: "ZooKeeper client_port",
        role: Some(Role::Zookeeper),
        kraft_only: false,
        default: &[2181],
        reach: Reach::Cluster,
        recipe: |s| s.zookeeper.client_port.map(|p| vec![p]),
    },
    PortSpec {
        key: PortKey::ZkQuorum,
        service: "zookeeper",
        field: "quorum_port",
        label: "ZooKeeper quorum_port",
        role: Some(Role::Zookeeper),
        kraft_only: false,
        default: &[2888],
        reach: Reach::Cluster,
        recipe: |s| s.zookeeper.quorum_port.map(|p| vec![p]),
    },
    PortSpec {
        key: PortKey::ZkElection,
        service: "zookeeper",
        field: "election_port",
        label: "ZooKeeper election_port",
        role: Some(Role::Zookeeper),
        kraft_only: false,
        default: &[3888],
        reach: Reach::Cluster,
        recipe: |s| s.zookeeper.election_port.map(|p| vec![p]),
    },
    PortSpec {
        key: PortKey::ZkAdmin,
        service: "zookeeper",
        field: "admin_port",
        label: "ZooKeeper admin_port (AdminServer)",
        role: Some(Role::Zookeeper),
        kraft_only: false,
        default: &[8081],
        reach: Reach::Cluster,
        recipe: |s| s.zookeeper.admin_port.map(|p| vec![p]),
    },
    PortSpec {
        key: PortKey::Kafka,
        service: "kafka",
        field: "port",
        label: "Kafka port",
        role: Some(Role::Kafka),
        kraft_only: false,
        default: &[9092],
        reach: Reach::Clients,
        recipe: |s| s.kafka.port.map(|p| vec![p]),
    },
    PortSpec {
        key: PortKey::KafkaInternal,
        service: "kafka",
        field: "internal_port",
        label: "Kafka internal_port (inter-broker)",
        role: Some(Role::Kafka),
        kraft_only: false,
        default: &[9094],
        reach: Reach::Cluster,
        recipe: |s| s.kafka.internal_port.map(|p| vec![p]),
    },
    PortSpec {
        key: PortKey::KafkaController,
        service: "kafka",
        field: "controller_port",
        label: "Kafka controller_port",
        role: Some(Role::Kafka),
        kraft_only: true,
        default: &[9093],
        reach: Reach::Cluster,
        recipe: |s| s.kafka.controller_port.map(|p| vec![p]),
    },
    PortSpec {
        key: PortKey::StormNimbus,
        service: "storm",
        field: "nimbus_port",
        label: "Storm nimbus_port",
        role: Some(Role::StormNimbus),
        kraft_only: false,
        default: &[6627],
        reach: Reach::Cluster,
        recipe: |s| s.storm.nimbus_port.map(|p| vec![p]),
    },
    PortSpec {
        key: PortKey::StormSupervisor,
        service: "storm",
        field: "supervisor_port",
        label: "Storm supervisor_port",
        role: Some(Role::StormSupervisor),
        kraft_only: false,
        default: &[6628],
        reach: Reach::Cluster,
        recipe: |s| s.storm.supervisor_port.map(|p| vec![p]),
    },
    PortSpec {
        key: PortKey::StormSlots,
        service: "storm",
        field: "slots",
        label: "Storm worker slot",
        role: Some(Role::StormSupervisor),
        kraft_only: false,
        default: &[6700, 6701],
        reach: Reach::Cluster,
        recipe: |s| s.storm.slots.clone(),
    },
    PortSpec {
        key: PortKey::StormUi,
        service: "storm",
        field: "ui_port",
        label: "Storm ui_port",
        role: Some(Role::StormUi),
        kraft_only: false,
        default: &[8080],
        reach: Reach::Clients,
        recipe: |s| s.storm.ui_port.map(|p| vec![p]),
    },
    PortSpec {
        key: PortKey::StormLogviewer,
        service: "storm",
        field: "logviewer_port",
        label: "Storm logviewer_port",
        role: Some(Role::StormLogviewer),
        kraft_only: false,
        default: &[8000],
        reach: Reach::Cluster,
        recipe: |s| s.storm.logviewer_port.map(|p| vec![p]),
    },
    PortSpec {
        key: PortKey::ZkMetrics,
        service: "zookeeper",
        field: "metrics_port",
        label: "ZooKeeper metrics_port (Prometheus)",
        role: Some(Role::Zookeeper),
        kraft_only: false,
        default: &[7000],
        reach: Reach::Metrics,
        recipe: |s| s.zookeeper.metrics_port.map(|p| vec![p]),
    },
    PortSpec {
        key: PortKey::KafkaMetrics,
        service: "kafka",
        field: "metrics_port",
        label: "Kafka metrics_port (Prometheus)",
        role: Some(Role::Kafka),
        kraft_only: false,
        default: &[7071],
        reach: Reach::Metrics,
        recipe: |s| s.kafka.metrics_port.map(|p| vec![p]),
    },
    PortSpec {
        key: PortKey::StormNimbusMetrics,
        service: "storm",
        field: "nimbus_metrics_port",
        label: "Storm nimbus_metrics_port (Prometheus)",
        role: Some(Role::StormNimbus),
        kraft_only: false,
        default: &[7072],
        reach: Reach::Metrics,
        recipe: |s| s.storm.nimbus_metrics_port.map(|p| vec![p]),
    },
    PortSpec {
        key: PortKey::StormSupervisorMetrics,
        service: "storm",
        field: "supervisor_metrics_port",
        label: "Storm supervisor_metrics_port (Prometheus)",
        role: Some(Role::StormSupervisor),
        kraft_only: false,
        default: &[7073],
        reach: Reach::Metrics,
        recipe: |s| s.storm.supervisor_metrics_port.map(|p| vec![p]),
    },
    // Storm hands a worker's JVM options only its slot's port (`%ID%` in worker.childopts), so
    // each worker's endpoint is that port with a 1 in front: slot 6700, metrics on 16700.
    PortSpec {
        key: PortKey::StormWorkerMetrics,
        service: "storm",
        field: "slots",
        label: "Storm worker metrics port (Prometheus)",
        role: Some(Role::StormSupervisor),
        kraft_only: false,
        default: &[16700, 16701],
        reach: Reach::Metrics,
        recipe: |s| {
            s.storm
                .slots
                .as_ref()
                .map(|v| v.iter().map(|&p| worker_metrics_port(p)).collect())
        },
    },
    PortSpec {
        key: PortKey::NodeExporter,
        service: "node_exporter",
        field: "port",
        label: "node exporter port (Prometheus)",
        role: None,
        kraft_only: false,
        default: &[9100],
        reach: Reach::Metrics,
        recipe: |s| s.node_exporter.port.map(|p| vec![p]),
    },
];

/// The metrics port of the worker in slot `slot`: the slot's digits after a 1 (what
/// `1%ID%` in worker.childopts becomes), or 0 (refused by the recipe's checks) for a slot
/// outside 1000..=9999, where that is not `slot + 10000`.
pub fn worker_metrics_port(slot: u16) -> u16 {
    if (1000..=9999).contains(&slot) {
        slot + 10000
    } else {
        0
    }
}

/// Every port's value for one node: the node's `services:` override, else the cluster's, else
/// the table's default. Ports of roles the node lacks are resolved too (other nodes read
/// them, e.g. the ZooKeeper client port a Storm-only node connects to).
#[derive(Debug, Clone, Default)]
pub struct Ports(BTreeMap<PortKey, Vec<u16>>);

impl Ports {
    pub fn resolve(cluster: &recipe::Services, node: Option<&recipe::Services>) -> Ports {
        let mut map = BTreeMap::new();
        for spec in &PORTS {
            let value = node
                .and_then(|n| (spec.recipe)(n))
                .or_else(|| (spec.recipe)(cluster))
                .unwrap_or_else(|| spec.default.to_vec());
            map.insert(spec.key, value);
        }
        Ports(map)
    }

    /// A single-port key's value (the first of a list).
    pub fn get(&self, key: PortKey) -> u16 {
        self.all(key).first().copied().unwrap_or(0)
    }

    pub fn all(&self, key: PortKey) -> &[u16] {
        self.0.get(&key).map_or(&[], Vec::as_slice)
    }

    /// The ports a node with these roles binds, in table order (the metrics ports only when
    /// `metrics` is on).
    pub fn bound(&self, roles: &[Role], mode: KafkaMode, metrics: bool) -> Vec<BoundPort> {
        let mut out = Vec::new();
        for spec in &PORTS {
            if spec.role.is_some_and(|r| !roles.contains(&r))
                || (spec.kraft_only && mode != KafkaMode::Kraft)
                || (spec.reach == Reach::Metrics && !metrics)
            {
                continue;
            }
            for &port in self.all(spec.key) {
                out.push(BoundPort {
                    port,
                    key: spec.key,
                    reach: spec.reach,
                });
            }
        }
        out
    }
}

/// A port a node listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BoundPort {
    pub port: u16,
    pub key: PortKey,
    pub reach: Reach,
}

impl BoundPort {
    pub fn spec(&self) -> &'static PortSpec {
        spec(self.key)
    }

    /// `ZooKeeper client_port`, or `Storm worker slot 6700` for one of a list.
    pub fn label(&self) -> String {
        let s = self.spec();
        if s.default.len() > 1 {
            format!("{} {}", s.label, self.port)
        } else {
            s.label.to_string()
        }
    }
}

pub fn spec(key: PortKey) -> &'static PortSpec {
    PORTS
        .iter()
        .find(|s| s.key == key)
        .expect("every PortKey has a row")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_follow_roles() {
        let names = |roles: &[Role], mode| {
            Unit::for_roles(roles, mode)
                .iter()
                .map(|u| u.file_name())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(
                &[Role::Zookeeper, Role::Kafka, Role::StormUi],
                KafkaMode::Kraft
            ),
            [
                "zookeeper.service",
                "kafka-format.service",
                "kafka.service",
                "storm-ui.service"
            ]
        );
        assert_eq!(
            names(&[Role::Kafka], KafkaMode::Zookeeper),
            ["kafka.service"]
        );
        let json = serde_json::to_string(&Unit::for_roles(&[Role::StormNimbus], KafkaMode::Kraft));
        assert_eq!(json.unwrap(), r#"["storm-nimbus.service"]"#);
    }

    #[test]
    fn every_key_has_one_row() {
        for (i, a) in PORTS.iter().enumerate() {
            assert_eq!(spec(a.key).field, a.field);
            assert!(PORTS[i + 1..].iter().all(|b| b.key != a.key), "{:?}", a.key);
        }
    }

    #[test]
    fn node_overrides_cluster_overrides_default() {
        let mut cluster = recipe::Services::default();
        cluster.kafka.port = Some(19092);
        cluster.storm.slots = Some(vec![7000]);
        let mut node = recipe::Services::default();
        node.kafka.port = Some(29092);
        let p = Ports::resolve(&cluster, Some(&node));
        assert_eq!(p.get(PortKey::Kafka), 29092);
        assert_eq!(p.all(PortKey::StormSlots), &[7000]);
        assert_eq!(p.get(PortKey::ZkAdmin), 8081);
        let q = Ports::resolve(&cluster, None);
        assert_eq!(q.get(PortKey::Kafka), 19092);
    }

    #[test]
    fn bound_follows_roles_and_mode() {
        let p = Ports::resolve(&recipe::Services::default(), None);
        let kraft: Vec<u16> = p
            .bound(&[Role::Kafka], KafkaMode::Kraft, true)
            .iter()
            .map(|b| b.port)
            .collect();
        // Every node's node exporter too, whatever its roles.
        assert_eq!(kraft, [9092, 9094, 9093, 7071, 9100]);
        let off: Vec<u16> = p
            .bound(&[Role::Kafka], KafkaMode::Kraft, false)
            .iter()
            .map(|b| b.port)
            .collect();
        assert_eq!(off, [9092, 9094, 9093]);
        let zk: Vec<u16> = p
            .bound(&[Role::Kafka], KafkaMode::Zookeeper, true)
            .iter()
            .map(|b| b.port)
            .collect();
        assert_eq!(zk, [9092, 9094, 7071, 9100]);
        let sup = p.bound(&[Role::StormSupervisor], KafkaMode::Kraft, true);
        assert_eq!(sup[1].label(), "Storm worker slot 6700");
        assert_eq!(sup[0].label(), "Storm supervisor_port");
    }
}
