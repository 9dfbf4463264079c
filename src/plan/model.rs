//! The resolved plan's types: what every later stage reads instead of the recipe (a node's
//! identity, services, base, artifacts, disk), with the constants they are checked against.

use super::*;

/// Version of the `plan --json` document; bumped on any incompatible change (docs/plan-json.md).
pub const SCHEMA_VERSION: u32 = 2;

/// Names a node may not take: they are (or will be) subcommands, and `imgbuild NODE` must stay unambiguous.
pub const RESERVED_NAMES: &[&str] = &[
    "all",
    "boot",
    "build",
    "cache",
    "completions",
    "down",
    "fetch",
    "flash",
    "help",
    "lock",
    "man",
    "plan",
    "rootfs",
    "ssh",
    "up",
    "validate",
    "verify",
    "version",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Zookeeper,
    Kafka,
    StormNimbus,
    StormSupervisor,
    StormUi,
    StormLogviewer,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Zookeeper,
        Role::Kafka,
        Role::StormNimbus,
        Role::StormSupervisor,
        Role::StormUi,
        Role::StormLogviewer,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::Zookeeper => "zookeeper",
            Role::Kafka => "kafka",
            Role::StormNimbus => "storm-nimbus",
            Role::StormSupervisor => "storm-supervisor",
            Role::StormUi => "storm-ui",
            Role::StormLogviewer => "storm-logviewer",
        }
    }

    pub(super) fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == s)
    }

    pub fn is_storm(self) -> bool {
        matches!(
            self,
            Role::StormNimbus | Role::StormSupervisor | Role::StormUi | Role::StormLogviewer
        )
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything imgbuild knows about one node after resolving the recipe. Serialized as `plan --json`.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub schema: u32,
    pub recipe: String,
    pub recipe_sha256: String,
    pub cluster: String,
    pub source_date_epoch: Option<u64>,
    pub node: NodeIdentity,
    pub network: NetworkPlan,
    pub hosts: Vec<HostEntry>,
    pub roles: Vec<Role>,
    pub units: Vec<Unit>,
    /// Every port the node listens on, from the port table (the `plan` text shows them).
    #[serde(skip)]
    pub ports: Vec<BoundPort>,
    pub zookeeper: Option<ZookeeperPlan>,
    pub kafka: Option<KafkaPlan>,
    pub storm: Option<StormPlan>,
    pub users: Vec<UserPlan>,
    pub base: BasePlan,
    pub artifacts: Vec<Artifact>,
    pub disk: DiskPlan,
    /// Derived from (cluster, node): not part of the plan's JSON, which shows what was asked.
    #[serde(skip)]
    pub disk_ids: ids::DiskIds,
    pub memory: MemoryPlan,
    pub os: tuning::OsPlan,
    pub firewall: firewall::FirewallPlan,
    pub security: security::SecurityPlan,
    /// Where the cluster's certificates are (not in the JSON: their digests are in the build key).
    #[serde(skip)]
    pub pki: PkiPlan,
    pub overlays: Vec<PathBuf>,
    /// Who signs the provenance (absent from the JSON, and so from the build key, when no one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provenance_signer: Option<Signer>,
}

/// The cluster's PKI: the secrets directory beside the recipe, and the operator's CA if given.
#[derive(Debug, Clone, Default)]
pub struct PkiPlan {
    pub dir: PathBuf,
    /// (certificate, key) of the operator's CA.
    pub operator_ca: Option<(PathBuf, PathBuf)>,
}

/// The recipe's provenance signing key: its public half (in the plan and the build key) and
/// where the private half is (read by ssh-keygen only, never copied).
#[derive(Debug, Clone, Serialize)]
pub struct Signer {
    /// `ssh-ed25519 AAAA... comment`, as in KEY.pub.
    pub public_key: String,
    #[serde(skip)]
    pub key: PathBuf,
}

impl Plan {
    /// Where the node's own tools reach its broker: the client listener, or with SCRAM clients
    /// the inter-broker one (the node shows its certificate; see `KafkaPlan::own_port`).
    pub fn own_bootstrap(&self) -> String {
        format!(
            "{}:{}",
            self.node.ip,
            self.kafka
                .as_ref()
                .map_or(9092, |k| k.own_port(&self.security))
        )
    }

    /// The node exporter's port when this node runs it (`metrics` on).
    pub fn node_exporter_port(&self) -> Option<u16> {
        self.ports
            .iter()
            .find(|b| b.key == super::services::PortKey::NodeExporter)
            .map(|b| b.port)
    }

    /// The memory to boot this node with: its budget, or `asked` — refused when that is less
    /// than the heaps of the JVMs the node starts (they would be OOM-killed or swap to a crawl).
    pub fn guest_memory(&self, asked: Option<u32>) -> anyhow::Result<u32> {
        let (plan, m) = (self, &self.memory);
        match asked {
            None => Ok(m.total_mb),
            Some(mb) if mb < m.heap_mb + 256 => anyhow::bail!(
                "--memory {mb} is too little for {}: its JVMs alone have {} MiB of heap ({} MiB is its budget, see `imgbuild plan {}`)

hint: give at least {} MiB, or lower the heaps in the recipe's services section",
                plan.node.name,
                m.heap_mb,
                m.total_mb,
                plan.node.name,
                m.total_mb
            ),
            Some(mb) => Ok(mb),
        }
    }

    /// The base in a few words, for messages: `mmdebstrap noble from URL`, `tarball URL`.
    pub fn base_description(&self) -> String {
        let b = &self.base;
        let url = || {
            self.artifacts
                .iter()
                .find(|a| a.name == Component::Base)
                .and_then(|a| a.urls.first().cloned())
                .unwrap_or_default()
        };
        match b.kind {
            BaseKind::Mmdebstrap => format!(
                "mmdebstrap {} from {}",
                b.suite.as_deref().unwrap_or("-"),
                b.mirror.as_deref().unwrap_or("-")
            ),
            BaseKind::UbuntuCloud => format!("ubuntu-cloud {}", url()),
            BaseKind::Tarball => format!("tarball {}", url()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeIdentity {
    pub name: String,
    pub hostname: String,
    pub fqdn: Option<String>,
    pub id: u32,
    pub ip: Ipv4Addr,
    pub mac: Option<String>,
    pub interface: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NetworkPlan {
    pub cidr: String,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostEntry {
    pub ip: Ipv4Addr,
    pub names: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ZookeeperPlan {
    /// This node's `myid`, or null when the node is not in the ensemble (it is still a client).
    pub myid: Option<u32>,
    pub client_port: u16,
    pub quorum_port: u16,
    pub election_port: u16,
    pub admin_port: u16,
    /// ZooKeeper's Prometheus endpoint on the node's address (None: metrics off).
    pub metrics_port: Option<u16>,
    pub heap_mb: u32,
    /// The ensemble, in id order.
    #[serde(serialize_with = "wiring::as_texts")]
    pub servers: Vec<wiring::ZkServer>,
    /// `IP:PORT,...` of every ensemble member.
    pub connect: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct KafkaPlan {
    pub mode: KafkaMode,
    pub version: String,
    pub node_id: Option<u32>,
    pub broker_id: Option<u32>,
    #[serde(serialize_with = "wiring::as_comma_opt")]
    pub process_roles: Option<Vec<wiring::ProcessRole>>,
    pub cluster_id: Option<String>,
    #[serde(serialize_with = "wiring::as_comma_opt")]
    pub controller_quorum_voters: Option<Vec<wiring::Voter>>,
    pub zookeeper_connect: Option<String>,
    #[serde(serialize_with = "wiring::as_comma")]
    pub listeners: Vec<wiring::Listener>,
    /// The listeners brokers and clients are told of: CLIENT and INTERNAL (KRaft rejects an
    /// advertised CONTROLLER listener; the renderer leaves it out). Shown in the plan as the
    /// listeners, as before.
    #[serde(serialize_with = "wiring::as_comma")]
    pub advertised_listeners: Vec<wiring::Listener>,
    pub port: u16,
    /// The brokers' replication listener (INTERNAL), firewalled to the cluster's nodes.
    pub internal_port: u16,
    pub controller_port: Option<u16>,
    /// The broker's Prometheus endpoint (the JMX exporter agent) on the node's address (None:
    /// metrics off).
    pub metrics_port: Option<u16>,
    pub heap_mb: u32,
    /// How many brokers the cluster has (every node with the kafka role).
    pub brokers: usize,
    /// The cluster's topics (`services.kafka.topics`), which `imgbuild apply` keeps on the
    /// running cluster: not in the image.
    pub topics: Vec<super::topics::TopicPlan>,
}

impl KafkaPlan {
    /// The port a node's own Kafka tools use, as the node (a super user, by its certificate):
    /// the client listener, or the inter-broker one when the client listener takes SCRAM only.
    pub fn own_port(&self, sec: &super::security::SecurityPlan) -> u16 {
        if sec.scram() {
            self.internal_port
        } else {
            self.port
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StormPlan {
    pub zookeeper_servers: Vec<Ipv4Addr>,
    pub zookeeper_port: u16,
    pub nimbus_seeds: Vec<Ipv4Addr>,
    /// How many supervisors the cluster has: a node's Storm is healthy once all are registered.
    pub supervisors: usize,
    pub local_hostname: String,
    pub nimbus_port: u16,
    pub supervisor_port: u16,
    pub ui_port: u16,
    pub logviewer_port: u16,
    pub slots: Vec<u16>,
    /// Nimbus's and the supervisor's Prometheus endpoints (the JMX exporter agent), on nodes
    /// that run them with metrics on.
    pub nimbus_metrics_port: Option<u16>,
    pub supervisor_metrics_port: Option<u16>,
    /// Each worker's endpoint, one per slot in slot order (empty with metrics off or on a node
    /// without a supervisor): the slot's port with a 1 in front.
    pub worker_metrics_ports: Vec<u16>,
    /// Heap of each Storm daemon (nimbus, supervisor, ui, logviewer).
    pub heap_mb: u32,
    /// Heap of one worker JVM; the supervisor offers `slots × worker_heap_mb`.
    pub worker_heap_mb: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct UserPlan {
    pub name: String,
    pub ssh_authorized_keys: Vec<String>,
    pub sudo: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct BasePlan {
    pub kind: BaseKind,
    pub release: Option<String>,
    pub suite: Option<String>,
    pub mirror: Option<String>,
    pub apt_components: Vec<String>,
    pub packages: Vec<String>,
    pub keyring: Option<KeyringPlan>,
    /// What the base is known to bring for booting, before it is built (mmdebstrap: from its
    /// package list; ubuntu-cloud: nothing, REFERENCE.md §8; tarball: unknown until extracted).
    pub boot: BaseBoot,
}

/// The keys an mmdebstrap base's Release file is checked with.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum KeyringPlan {
    /// A keyring file on the build machine.
    File { path: String },
    /// A key file downloaded from `url`, of which only the pinned keys are used.
    Pinned {
        url: String,
        fingerprints: Vec<String>,
    },
}

/// The boot pieces a base brings, as far as the plan can tell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum BaseBoot {
    /// From the package list: the kernel package and the UEFI chain ("shim+grub", "systemd-boot").
    Packages {
        kernel: Option<String>,
        loader: Option<String>,
    },
    /// Canonical's cloud root tarball: its build purges every linux-* and grub-* package.
    None,
    /// A tarball: known once it is extracted.
    Unknown,
}

impl BaseBoot {
    /// Why a disk image cannot boot from this base, with what to add; None when it can (or may).
    pub fn missing(&self) -> Option<String> {
        match self {
            BaseBoot::Packages { kernel, loader } => {
                let mut want = Vec::new();
                if kernel.is_none() {
                    want.push("a kernel (linux-generic on Ubuntu, linux-image-amd64 on Debian) and initramfs-tools");
                }
                if loader.is_none() {
                    want.push("a UEFI boot chain (shim-signed and grub-efi-amd64-signed, or systemd-boot)");
                }
                (!want.is_empty()).then(|| format!("base.packages lacks {}", want.join(" and ")))
            }
            BaseBoot::None => Some(
                "Canonical's cloud root tarball has no kernel, initrd, GRUB or shim (its build purges \
                 linux-* and grub-*), so it cannot make a bootable disk"
                    .into(),
            ),
            BaseBoot::Unknown => None,
        }
    }
}

/// The kernel and boot chain an apt package list brings.
pub(super) fn boot_from_packages(packages: &[String]) -> BaseBoot {
    let has = |p: &str| packages.iter().any(|x| x == p);
    let kernel = packages
        .iter()
        .find(|p| {
            p.starts_with("linux-image-")
                || matches!(
                    p.as_str(),
                    "linux-generic" | "linux-virtual" | "linux-kvm" | "linux-generic-hwe-24.04"
                )
        })
        .cloned();
    let loader = if has("shim-signed") && has("grub-efi-amd64-signed") {
        Some("shim+grub".to_string())
    } else if has("systemd-boot") {
        Some("systemd-boot".to_string())
    } else {
        None
    };
    BaseBoot::Packages { kernel, loader }
}

/// A file to download and verify.
#[derive(Debug, Clone, Serialize)]
pub struct Artifact {
    pub name: Component,
    pub version: String,
    /// Tried in order: the first is the primary, the rest are mirrors/archives.
    pub urls: Vec<String>,
    pub digest: DigestSource,
    pub signature: Option<SignaturePlan>,
    /// Its publisher as SPDX writes a supplier (`Organization: NAME`), for the SBOM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supplier: Option<String>,
    /// Its declared license, an SPDX license expression, for the SBOM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    Sha256,
    Sha512,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "source", rename_all = "kebab-case")]
pub enum DigestSource {
    /// The digest is written in the recipe.
    Inline { algorithm: Algorithm, value: String },
    /// The publisher's checksum file; `urls[i]` belongs to the artifact's `urls[i]`.
    ChecksumFile {
        algorithm: Algorithm,
        urls: Vec<String>,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct SignaturePlan {
    /// Detached signature; `urls[i]` belongs to the artifact's `urls[i]`.
    pub urls: Vec<String>,
    pub keys: String,
    /// Upper-case hex, no spaces.
    pub fingerprints: Vec<String>,
    pub signs: Signs,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiskPlan {
    /// The raw disk's size; None: the content plus headroom (see `image::layout`).
    pub size_bytes: Option<u64>,
    pub formats: Vec<DiskFormat>,
}

impl DiskPlan {
    pub fn wants(&self, f: DiskFormat) -> bool {
        self.formats.contains(&f)
    }
}

/// Every node's plan, plus the warnings found on the way.
pub struct ClusterPlan {
    pub nodes: Vec<Plan>,
    pub warnings: Vec<String>,
    /// Mirror rules from the recipe, `(from, to)`.
    pub mirrors: Vec<(String, String)>,
    /// The artifacts every node needs (the same list for all nodes).
    pub artifacts: Vec<Artifact>,
}

impl ClusterPlan {
    pub fn node(&self, name: &str) -> Option<&Plan> {
        self.nodes.iter().find(|p| p.node.name == name)
    }

    pub fn names(&self) -> Vec<&str> {
        self.nodes.iter().map(|p| p.node.name.as_str()).collect()
    }
}

/// What `images/<node>/` holds besides the raw disk (which is always written: the rest come from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskFormat {
    Raw,
    Qcow2,
    SeedIso,
    SeedFat,
    RootfsTar,
}

impl DiskFormat {
    pub const ALL: [DiskFormat; 5] = [
        DiskFormat::Raw,
        DiskFormat::Qcow2,
        DiskFormat::SeedIso,
        DiskFormat::SeedFat,
        DiskFormat::RootfsTar,
    ];

    /// The name the recipe uses.
    pub fn name(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::SeedIso => "seed-iso",
            DiskFormat::SeedFat => "seed-fat",
            DiskFormat::RootfsTar => "rootfs-tar",
        }
    }

    pub fn parse(s: &str) -> Option<DiskFormat> {
        DiskFormat::ALL.into_iter().find(|f| f.name() == s)
    }
}

/// Default heaps, consistent with each other and with the memory a node is booted with
/// (`MemoryPlan::total_mb`): ZooKeeper needs little, the broker most; Storm's daemons are
/// small, its workers take what topologies need.
pub struct DefaultHeaps {
    pub zookeeper: u32,
    pub kafka: u32,
    pub storm: u32,
    pub storm_worker: u32,
}
pub const DEFAULT_HEAP_MB: DefaultHeaps = DefaultHeaps {
    zookeeper: 512,
    kafka: 1024,
    storm: 384,
    storm_worker: 512,
};

/// A JVM's memory beyond its heap (metaspace, code cache, thread stacks, direct buffers).
pub(super) fn jvm_overhead_mb(heap: u32) -> u32 {
    heap / 8 + 64
}
/// What the OS, systemd, cloud-init and the page cache need besides the JVMs.
pub(super) const OS_MB: u32 = 512;
/// The heap of a command-line tool JVM (kafka-run-class.sh's default -Xmx256M): the health
/// check runs one at a time.
pub(super) const TOOL_HEAP_MB: u32 = 256;

/// The memory a node needs: every JVM its roles start, at its heap plus overhead, and the OS.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryPlan {
    /// (what, heap MiB), one per JVM (Storm workers: one per slot).
    pub jvms: Vec<(String, u32)>,
    pub heap_mb: u32,
    /// How many JVMs carry a Prometheus exporter (each counted at EXPORTER_MB beyond its heap).
    pub exporters: u32,
    /// The guest memory `imgbuild boot`/`up` give this node (heaps + overhead + OS, in 256 MiB steps).
    pub total_mb: u32,
}
