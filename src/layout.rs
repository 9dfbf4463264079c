//! Where things live inside a node's image: every in-image path that the plan, the renderer, the
//! PKI and the cluster checks share has its one home here, with `FileSpec`, a file to place in a
//! node's tree. A leaf: it imports nothing of imgbuild, so any stage may read it.

use std::path::PathBuf;

/// A file to place in the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    pub path: PathBuf,
    pub content: Vec<u8>,
    pub mode: u32,
    /// Owner by user name (resolved against the tree's passwd), root when None.
    pub owner: Option<&'static str>,
}

/// The cluster CA's certificate on every node (imgbuild's PKI, `pki/`).
pub const CA_CERT: &str = "/etc/imgbuild/tls/ca.crt";
/// The node's own certificate.
pub const NODE_CERT: &str = "/etc/imgbuild/tls/node.crt";
/// A node's key and certificate, as a PEM keystore per service (0600, owned by it).
pub const KAFKA_KEYSTORE: &str = "/etc/kafka/tls/node.pem";
pub const ZK_KEYSTORE: &str = "/etc/zookeeper/tls/node.pem";
/// A Storm node's client keystore (CN=storm): its daemons and workers to ZooKeeper, its
/// topologies to Kafka (User:storm).
pub const STORM_KEYSTORE: &str = "/etc/storm/tls/client.pem";

/// User storm's Kafka client settings on a Storm node, which the example topology loads when it
/// is submitted (`kafka.client.config` in its wordcount.properties).
pub const STORM_KAFKA_CLIENT: &str = "/etc/storm/kafka-client.properties";

/// What a Kafka tool on a node needs to reach the TLS listeners (controller, inter-broker) as
/// the node itself: `--command-config` of kafka-metadata-quorum.sh and the like.
pub const KAFKA_TLS_CLIENT: &str = "/etc/kafka/tls/client.properties";

/// Where a broker node keeps the script that adds the recipe's ACLs (kafka-acls.service).
pub const KAFKA_ACLS: &str = "/usr/lib/imgbuild/kafka-acls";

/// The distribution's Prometheus node exporter (package `prometheus-node-exporter`, Debian's and
/// Ubuntu's): its binary, its unit (the package's own), and the environment file the unit reads
/// its arguments from (`ARGS`), which imgbuild writes.
pub const NODE_EXPORTER_BIN: &str = "/usr/bin/prometheus-node-exporter";
pub const NODE_EXPORTER_UNIT: &str = "prometheus-node-exporter.service";
pub const NODE_EXPORTER_ARGS: &str = "/etc/default/prometheus-node-exporter";

/// The node's state apart from the OS (`imgbuild-data.service`): a partition labelled
/// [`DATA_LABEL`] mounted here, holding [`DATA_DIRS`] (bind-mounted over `/var/lib/<dir>`) and
/// the [`DATA_IDENTITY`] record; in the container runtime a kept directory bind-mounted here.
pub const DATA_MOUNT: &str = "/var/lib/imgbuild";
/// The GPT partition label (name) of the data partition, and its ext4 label.
pub const DATA_LABEL: &str = "imgbuild-data";
/// The GPT partition names of the two root slots: A is in the image, B made at first boot.
pub const ROOT_A_LABEL: &str = "imgbuild-root-a";
pub const ROOT_B_LABEL: &str = "imgbuild-root-b";
/// The data partition's least size (usr/lib/repart.d/40-data.conf in the image says the same).
pub const DATA_MIN_BYTES: u64 = 1 << 30;
/// What a node keeps across images: `/var/lib/<dir>` for each, on the data partition.
pub const DATA_DIRS: &[&str] = &["zookeeper", "kafka", "storm"];
/// The identity record on the data partition (cluster, Kafka cluster id, node, node id) ...
pub const DATA_IDENTITY: &str = "/var/lib/imgbuild/identity";
/// ... and the one the image expects it to be, checked at every boot before any service starts.
pub const IMAGE_IDENTITY: &str = "/usr/lib/imgbuild/identity";

/// Kafka's command-line tools as the image installs them (the component linked at /opt/kafka),
/// which the cluster checks run on a node.
pub mod kafka_bin {
    pub const TOPICS: &str = "/opt/kafka/bin/kafka-topics.sh";
    pub const CONFIGS: &str = "/opt/kafka/bin/kafka-configs.sh";
    pub const CONSOLE_CONSUMER: &str = "/opt/kafka/bin/kafka-console-consumer.sh";
    pub const METADATA_QUORUM: &str = "/opt/kafka/bin/kafka-metadata-quorum.sh";
    pub const VERIFIABLE_PRODUCER: &str = "/opt/kafka/bin/kafka-verifiable-producer.sh";
    pub const CONSOLE_PRODUCER: &str = "/opt/kafka/bin/kafka-console-producer.sh";
    pub const FEATURES: &str = "/opt/kafka/bin/kafka-features.sh";
}

/// The node's SSH host key (ed25519), made by imgbuild in the recipe's secrets directory and
/// placed only in that node's image, so `imgbuild update` and `imgbuild ssh` can pin it; the
/// public half beside it, and the sshd drop-in that names it as the only host key.
pub const SSH_HOST_KEY: &str = "/etc/ssh/ssh_host_ed25519_key";
pub const SSH_HOST_KEY_PUB: &str = "/etc/ssh/ssh_host_ed25519_key.pub";
pub const SSHD_HOST_KEY_CONF: &str = "/etc/ssh/sshd_config.d/imgbuild-host-key.conf";
