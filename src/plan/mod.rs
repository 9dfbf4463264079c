//! Resolve a parsed recipe into per-node plans: identity, ids, wiring, units and artifacts.
//!
//! This is the only module that reads the raw recipe; everything after it works from [`Plan`].
//! Pure: no I/O beyond what `recipe::load` already did. Every semantic check lives here and
//! points at the place in the recipe that caused it.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::recipe::diag::{Diagnostic, Pos, RecipeError, Severity, did_you_mean};
use crate::recipe::srcmap::{index, join};
use crate::recipe::{self, BaseKind, KafkaMode, Loaded, Signs};

mod artifacts;
pub mod firewall;
pub mod ids;
pub mod mirror;
pub mod security;
pub mod services;
pub mod tuning;
pub mod wiring;
use artifacts::{default_release, resolve_artifacts};
use services::{BoundPort, Component, PortKey, Ports, Unit};

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

    fn parse(s: &str) -> Option<Role> {
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
    /// The memory to boot this node with: its budget, or `asked` — refused when that is less
    /// than the heaps of the JVMs the node starts (they would be OOM-killed or swap to a crawl).
    pub fn guest_memory(&self, asked: Option<u32>) -> anyhow::Result<u32> {
        let (plan, m) = (self, &self.memory);
        match asked {
            None => Ok(m.total_mb),
            Some(mb) if mb < m.heap_mb + 256 => anyhow::bail!(
                "--memory {mb} is too little for {}: its JVMs alone have {} MiB of heap ({} MiB is its budget, see `imgbuild plan {}`)\n\nhint: give at least {} MiB, or lower the heaps in the recipe's services section",
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
    pub heap_mb: u32,
    /// How many brokers the cluster has (every node with the kafka role).
    pub brokers: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct StormPlan {
    pub zookeeper_servers: Vec<Ipv4Addr>,
    pub zookeeper_port: u16,
    pub nimbus_seeds: Vec<Ipv4Addr>,
    pub local_hostname: String,
    pub nimbus_port: u16,
    pub supervisor_port: u16,
    pub ui_port: u16,
    pub logviewer_port: u16,
    pub slots: Vec<u16>,
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
fn boot_from_packages(packages: &[String]) -> BaseBoot {
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

/// Collects diagnostics with positions from the recipe's source map.
struct Ctx<'a> {
    loaded: &'a Loaded,
    diags: Vec<Diagnostic>,
}

impl Ctx<'_> {
    fn at(&self, path: &str) -> Pos {
        self.loaded.map.value(path)
    }
    fn key_at(&self, path: &str) -> Pos {
        self.loaded.map.key(path)
    }
    fn error(&mut self, pos: Pos, msg: impl Into<String>) -> &mut Diagnostic {
        self.diags.push(Diagnostic::error(pos, msg));
        self.diags.last_mut().expect("just pushed")
    }
    fn warn(&mut self, pos: Pos, msg: impl Into<String>) -> &mut Diagnostic {
        self.diags.push(Diagnostic::warning(pos, msg));
        self.diags.last_mut().expect("just pushed")
    }
    fn hint(d: &mut Diagnostic, hint: impl Into<String>) {
        d.hint = Some(hint.into());
    }
}

/// Resolve every node of a loaded recipe. Errors carry every problem found, each with its position.
pub fn resolve(loaded: &Loaded) -> Result<ClusterPlan, RecipeError> {
    let mut cx = Ctx {
        loaded,
        diags: Vec::new(),
    };
    let nodes = resolve_all(&mut cx);
    let mirrors = resolve_mirrors(&mut cx);
    let (errors, warnings): (Vec<_>, Vec<_>) = cx
        .diags
        .into_iter()
        .partition(|d| d.severity == Severity::Error);
    if !errors.is_empty() || nodes.is_none() {
        return Err(loaded.error(errors));
    }
    let warnings = warnings
        .iter()
        .map(|d| d.render(&loaded.path, &loaded.text))
        .collect();
    let nodes = nodes.unwrap_or_default();
    Ok(ClusterPlan {
        artifacts: nodes
            .first()
            .map(|n| n.artifacts.clone())
            .unwrap_or_default(),
        nodes,
        warnings,
        mirrors,
    })
}

fn resolve_mirrors(cx: &mut Ctx) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (from, to) in &cx.loaded.recipe.mirrors {
        match crate::plan::mirror::parse_rule(&format!("{from}={to}")) {
            Ok(rule) => out.push(rule),
            Err(e) => {
                cx.error(cx.key_at(&join("mirrors", from)), e.to_string());
            }
        }
    }
    out
}

/// A node as seen during resolution, before the per-node plan is assembled.
struct NodeDraft {
    name: String,
    id: u32,
    ip: Ipv4Addr,
    mac: Option<String>,
    interface: Option<String>,
    roles: Vec<Role>,
    ports: Ports,
    zk: Zk,
    kafka: Kafka,
    storm: Storm,
}

/// Effective heaps after defaults and per-node overrides (ports are in [`Ports`]).
#[derive(Clone, Default)]
struct Zk {
    heap_mb: u32,
}
#[derive(Clone, Default)]
struct Kafka {
    heap_mb: u32,
}
#[derive(Clone, Default)]
struct Storm {
    heap_mb: u32,
    worker_heap_mb: u32,
}

// Long on purpose: resolution's table of contents: each line resolves or checks one part of the
// recipe, then the shared values are assembled once for node_plan.
fn resolve_all(cx: &mut Ctx) -> Option<Vec<Plan>> {
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
    check_ports(cx, &nodes, kafka_mode);
    let artifacts = resolve_artifacts(cx, &nodes);
    let base = resolve_base(cx);
    let users = resolve_users(cx);
    let signer = resolve_signer(cx);
    let pki = resolve_pki(cx);
    let disk = resolve_disk(cx);
    let os = tuning::resolve_os(cx);
    let firewall = firewall::resolve_firewall(cx, &network, nodes.iter().map(|n| n.ip).collect());
    let security = security::resolve_security(
        cx,
        nodes
            .iter()
            .filter(|n| n.roles.contains(&Role::Kafka))
            .map(|n| n.name.clone())
            .collect(),
    );
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
        brokers: nodes
            .iter()
            .filter(|n| n.roles.contains(&Role::Kafka))
            .count(),
        nimbus_seeds: nodes
            .iter()
            .filter(|n| n.roles.contains(&Role::StormNimbus))
            .map(|n| n.ip)
            .collect(),
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
struct Shared {
    recipe: String,
    recipe_sha256: String,
    zk_connect: String,
    zk_servers: Vec<wiring::ZkServer>,
    zk_ips: Vec<Ipv4Addr>,
    zk_port: u16,
    /// Names of the KRaft controllers.
    controllers: Vec<String>,
    voters: Vec<wiring::Voter>,
    kafka_mode: KafkaMode,
    kafka_version: String,
    cluster_id: Option<String>,
    brokers: usize,
    nimbus_seeds: Vec<Ipv4Addr>,
    hosts: Vec<HostEntry>,
    network: NetworkPlan,
    users: Vec<UserPlan>,
    base: BasePlan,
    artifacts: Vec<Artifact>,
    disk: DiskPlan,
    os: tuning::OsPlan,
    firewall: firewall::FirewallPlan,
    security: security::SecurityPlan,
    pki: PkiPlan,
    signer: Option<Signer>,
    overlay_dir: PathBuf,
}

fn node_plan(r: &crate::recipe::Recipe, w: &Shared, n: &NodeDraft) -> Plan {
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
        ports: n.ports.bound(&n.roles, w.kafka_mode),
        zookeeper: zookeeper_plan(w, n),
        kafka: n.roles.contains(&Role::Kafka).then(|| kafka_plan(w, n)),
        storm: n.roles.iter().any(|r| r.is_storm()).then(|| StormPlan {
            zookeeper_servers: w.zk_ips.clone(),
            zookeeper_port: w.zk_port,
            nimbus_seeds: w.nimbus_seeds.clone(),
            local_hostname: n.ip.to_string(),
            nimbus_port: n.ports.get(PortKey::StormNimbus),
            supervisor_port: n.ports.get(PortKey::StormSupervisor),
            ui_port: n.ports.get(PortKey::StormUi),
            logviewer_port: n.ports.get(PortKey::StormLogviewer),
            slots: n.ports.all(PortKey::StormSlots).to_vec(),
            heap_mb: n.storm.heap_mb,
            worker_heap_mb: n.storm.worker_heap_mb,
        }),
        users: w.users.clone(),
        base: w.base.clone(),
        artifacts: w.artifacts.clone(),
        disk: w.disk.clone(),
        disk_ids: ids::DiskIds::derive(&r.cluster.name, &n.name),
        memory: memory_budget(&n.roles, n, n.ports.all(PortKey::StormSlots)),
        os: w.os.clone(),
        firewall: w.firewall.clone(),
        security: w.security.clone(),
        pki: w.pki.clone(),
        overlays: vec![w.overlay_dir.join("common"), w.overlay_dir.join(&n.name)],
        provenance_signer: w.signer.clone(),
    }
}

/// ZooKeeper's side of a node: a member's myid, or a client of the ensemble (None without one).
fn zookeeper_plan(w: &Shared, n: &NodeDraft) -> Option<ZookeeperPlan> {
    (!w.zk_servers.is_empty()).then(|| ZookeeperPlan {
        myid: n.roles.contains(&Role::Zookeeper).then_some(n.id),
        client_port: n.ports.get(PortKey::ZkClient),
        quorum_port: n.ports.get(PortKey::ZkQuorum),
        election_port: n.ports.get(PortKey::ZkElection),
        admin_port: n.ports.get(PortKey::ZkAdmin),
        heap_mb: n.zk.heap_mb,
        servers: w.zk_servers.clone(),
        connect: w.zk_connect.clone(),
    })
}

/// A Kafka node: in KRaft a broker (and a controller if it is one of the voters), in
/// ZooKeeper mode a broker of the ensemble's /kafka.
fn kafka_plan(w: &Shared, n: &NodeDraft) -> KafkaPlan {
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
                heap_mb: n.kafka.heap_mb,
                brokers: w.brokers,
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
            heap_mb: n.kafka.heap_mb,
            brokers: w.brokers,
        },
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
fn jvm_overhead_mb(heap: u32) -> u32 {
    heap / 8 + 64
}
/// What the OS, systemd, cloud-init and the page cache need besides the JVMs.
const OS_MB: u32 = 512;
/// The heap of a command-line tool JVM (kafka-run-class.sh's default -Xmx256M): the health
/// check runs one at a time.
const TOOL_HEAP_MB: u32 = 256;

/// The memory a node needs: every JVM its roles start, at its heap plus overhead, and the OS.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryPlan {
    /// (what, heap MiB), one per JVM (Storm workers: one per slot).
    pub jvms: Vec<(String, u32)>,
    pub heap_mb: u32,
    /// The guest memory `imgbuild boot`/`up` give this node (heaps + overhead + OS, in 256 MiB steps).
    pub total_mb: u32,
}

fn memory_budget(roles: &[Role], n: &NodeDraft, slots: &[u16]) -> MemoryPlan {
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
    let total: u32 = jvms
        .iter()
        .map(|(_, h)| h + jvm_overhead_mb(*h))
        .sum::<u32>()
        + OS_MB;
    MemoryPlan {
        jvms,
        heap_mb,
        total_mb: total.div_ceil(256) * 256,
    }
}

/// `/etc/hosts` lines for every node: the node names map to their real IPs (never 127.0.1.1).
fn hosts_entries(nodes: &[NodeDraft], domain: Option<&str>) -> Vec<HostEntry> {
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

/// `recipes/cluster.yaml` → `recipes/cluster.secrets/` (beside it, like the lock file).
pub fn secrets_dir(recipe: &Path) -> PathBuf {
    crate::util::fs::beside(recipe, "secrets")
}

/// `pki`: the operator's CA certificate and key, both or neither, both existing files.
fn resolve_pki(cx: &mut Ctx) -> PkiPlan {
    let dir = cx.loaded.path.parent().unwrap_or(Path::new(""));
    let p = &cx.loaded.recipe.pki;
    let operator_ca = match (&p.ca_cert, &p.ca_key) {
        (None, None) => None,
        (Some(c), Some(k)) => {
            let (c, k) = (dir.join(c), dir.join(k));
            for (path, key) in [(&c, "pki.ca_cert"), (&k, "pki.ca_key")] {
                if !path.is_file() {
                    cx.error(cx.at(key), format!("{}: no such file", path.display()));
                }
            }
            Some((c, k))
        }
        (Some(_), None) | (None, Some(_)) => {
            cx.error(
                cx.key_at("pki"),
                "the operator's CA needs both `ca_cert` and `ca_key`",
            );
            None
        }
    };
    PkiPlan {
        dir: secrets_dir(&cx.loaded.path),
        operator_ca,
    }
}

/// `provenance.signing_key`: the private key must exist and its public half (KEY.pub) be an
/// SSH public key; both named, relative to the recipe.
fn resolve_signer(cx: &mut Ctx) -> Option<Signer> {
    let rel = cx.loaded.recipe.provenance.signing_key.as_deref()?;
    let dir = cx.loaded.path.parent().unwrap_or(Path::new(""));
    let key = dir.join(rel);
    let public = PathBuf::from(format!("{}.pub", key.display()));
    let pos = cx.at("provenance.signing_key");
    if !key.is_file() {
        let d = cx.error(pos, format!("{}: no such key file", key.display()));
        Ctx::hint(
            d,
            "make one with `ssh-keygen -t ed25519 -f KEY` (KEY.pub beside it)",
        );
        return None;
    }
    let text = match std::fs::read_to_string(&public) {
        Ok(t) => t,
        Err(e) => {
            let d = cx.error(
                pos,
                format!("{}: {e} (the signing key's public half)", public.display()),
            );
            Ctx::hint(d, "`ssh-keygen -y -f KEY > KEY.pub` writes it");
            return None;
        }
    };
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    let mut fields = line.split_whitespace();
    match (fields.next(), fields.next()) {
        (Some(kind), Some(_)) if kind.starts_with("ssh-") || kind.starts_with("ecdsa-") => {}
        _ => {
            cx.error(pos, format!("{}: not an SSH public key", public.display()));
            return None;
        }
    }
    Some(Signer {
        public_key: line.to_string(),
        key,
    })
}

fn overlay_dir(loaded: &Loaded) -> PathBuf {
    let dir = loaded.path.parent().unwrap_or(Path::new(""));
    let rel = loaded.recipe.overlays.dir.as_deref().unwrap_or("overlays");
    dir.join(rel)
}

fn resolve_network(cx: &mut Ctx) -> Option<NetworkPlan> {
    let net = &cx.loaded.recipe.network;
    let Some((addr, prefix_len)) = parse_cidr(&net.cidr) else {
        let d = cx.error(
            cx.at("network.cidr"),
            format!("`{}` is not an IPv4 network in CIDR form", net.cidr),
        );
        Ctx::hint(d, "write it like 192.168.200.0/24");
        return None;
    };
    let mask = prefix_mask(prefix_len);
    if u32::from(addr) & !mask != 0 {
        let d = cx.error(
            cx.at("network.cidr"),
            format!("`{}` has host bits set", net.cidr),
        );
        Ctx::hint(
            d,
            format!(
                "did you mean {}/{prefix_len}?",
                Ipv4Addr::from(u32::from(addr) & mask)
            ),
        );
    }
    let gateway = match net.gateway.parse::<Ipv4Addr>() {
        Ok(g) => {
            if !in_network(g, addr, prefix_len) {
                cx.error(
                    cx.at("network.gateway"),
                    format!("gateway {g} is outside the network {}", net.cidr),
                );
            }
            g
        }
        Err(_) => {
            cx.error(
                cx.at("network.gateway"),
                format!("`{}` is not an IPv4 address", net.gateway),
            );
            Ipv4Addr::UNSPECIFIED
        }
    };
    let mut dns = Vec::new();
    for (i, s) in net.dns.iter().enumerate() {
        match s.parse::<Ipv4Addr>() {
            Ok(a) => dns.push(a),
            Err(_) => {
                cx.error(
                    cx.at(&index("network.dns", i)),
                    format!("`{s}` is not an IPv4 address"),
                );
            }
        }
    }
    Some(NetworkPlan {
        cidr: format!("{}/{prefix_len}", Ipv4Addr::from(u32::from(addr) & mask)),
        prefix_len,
        gateway,
        dns,
        domain: cx.loaded.recipe.cluster.domain.clone(),
    })
}

fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, p) = s.split_once('/')?;
    let p: u8 = p.parse().ok()?;
    (p <= 32).then_some(())?;
    Some((a.parse().ok()?, p))
}

fn prefix_mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

fn in_network(ip: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    let m = prefix_mask(prefix);
    u32::from(ip) & m == u32::from(net) & m
}

/// Why `s` is not a valid hostname label (RFC 1123, lower case), if it is not.
fn hostname_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        return Some("it is empty");
    }
    if s.len() > 63 {
        return Some("it is longer than 63 characters");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Some("only lower-case letters, digits and `-` are allowed");
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Some("it may not start or end with `-`");
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return Some("it may not be all digits");
    }
    None
}

fn check_hostname_like(cx: &mut Ctx, path: &str, value: &str, what: &str) {
    if let Some(why) = hostname_problem(value) {
        cx.error(
            cx.at(path),
            format!("{what} `{value}` is not a valid hostname: {why}"),
        );
    }
}

fn resolve_nodes(cx: &mut Ctx, network: &NetworkPlan) -> Vec<NodeDraft> {
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
struct Seen {
    ip: HashMap<Ipv4Addr, String>,
    mac: HashMap<String, String>,
}

/// Node names become hostnames, and must not shadow a subcommand (`imgbuild NODE`).
fn check_node_name(cx: &mut Ctx, path: &str, name: &str) {
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
fn resolve_node_ip(
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
fn check_mac(cx: &mut Ctx, seen: &mut Seen, path: &str, name: &str, m: &str) {
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
fn check_cluster_wide(cx: &mut Ctx, path: &str, kafka: &recipe::KafkaService) {
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

fn resolve_roles(cx: &mut Ctx, node_path: &str, roles: Option<&[String]>) -> Vec<Role> {
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

fn effective_services(
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

fn check_ids(cx: &mut Ctx, nodes: &[NodeDraft]) {
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

fn resolve_controllers<'a>(
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

fn check_ensembles(cx: &mut Ctx, nodes: &[NodeDraft], ensemble: &[&NodeDraft], mode: KafkaMode) {
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
fn service_path(cx: &Ctx, node: &str, service: &str, field: &str) -> Option<String> {
    let node_p = join(
        &join(&join(&join("nodes", node), "services"), service),
        field,
    );
    let cluster_p = join(&join("services", service), field);
    [node_p, cluster_p]
        .into_iter()
        .find(|p| cx.loaded.map.has(p))
}

fn check_ports(cx: &mut Ctx, nodes: &[NodeDraft], mode: KafkaMode) {
    // One clash set in the recipe usually hits every node alike: report each once, naming the nodes.
    let mut clashes: BTreeMap<(Pos, String, String), Vec<&str>> = BTreeMap::new();
    for n in nodes {
        let bound = n.ports.bound(&n.roles, mode);
        let node_pos = cx.key_at(&join("nodes", &n.name));
        let mut first: BTreeMap<u16, usize> = BTreeMap::new();
        for (i, b) in bound.iter().enumerate() {
            let (port, what) = (&b.port, b.label());
            let (service, field) = (b.spec().service.name(), b.spec().field);
            let set_at = service_path(cx, &n.name, service, field);
            if *port == 0 {
                let pos = set_at.as_deref().map_or(node_pos, |p| cx.at(p));
                let msg = format!("{what} is 0, which is not a usable port");
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
            let (oservice, ofield) = (bound[j].spec().service.name(), bound[j].spec().field);
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

fn check_kafka_version(cx: &mut Ctx, mode: KafkaMode, version: &str, nodes: &[NodeDraft]) {
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
fn resolve_cluster_id(cx: &mut Ctx, mode: KafkaMode) -> Option<String> {
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

// Long on purpose: the base's kinds (mmdebstrap, tarball, ubuntu-cloud) each need their own keys
// checked at their own recipe paths; one match keeps every kind's checks side by side.
fn resolve_base(cx: &mut Ctx) -> Option<BasePlan> {
    let b = &cx.loaded.recipe.base;
    let only = |cx: &mut Ctx, field: &str, set: bool, kinds: &str| {
        if set {
            cx.error(
                cx.key_at(&join("base", field)),
                format!("`{field}` does not apply to this base kind (only to {kinds})"),
            );
        }
    };
    let is_deb = b.kind == BaseKind::Mmdebstrap;
    if is_deb {
        for (f, set) in [
            ("urls", b.urls.is_some()),
            ("digest", b.digest.is_some()),
            ("signature", b.signature.is_some()),
            ("release", b.release.is_some()),
        ] {
            only(cx, f, set, "ubuntu-cloud and tarball");
        }
        if b.suite.is_none() {
            cx.error(
                cx.key_at("base"),
                "missing required key `suite` in `base` (kind: mmdebstrap)",
            );
        }
        if b.mirror.is_none() {
            cx.error(
                cx.key_at("base"),
                "missing required key `mirror` in `base` (kind: mmdebstrap)",
            );
        }
    } else {
        for (f, set) in [
            ("suite", b.suite.is_some()),
            ("mirror", b.mirror.is_some()),
            ("apt_components", b.apt_components.is_some()),
            ("packages", b.packages.is_some()),
            ("keyring", b.keyring.is_some()),
        ] {
            only(cx, f, set, "mmdebstrap");
        }
    }
    if let Some(m) = &b.mirror
        && !(m.starts_with("http://") || m.starts_with("https://") || m.starts_with("file://"))
    {
        cx.error(
            cx.at("base.mirror"),
            format!("`{m}` is not an http(s) or file URL"),
        );
    }
    let keyring = match &b.keyring {
        None => None,
        Some(recipe::Keyring::File(path)) => Some(KeyringPlan::File { path: path.clone() }),
        Some(recipe::Keyring::Pinned(k)) => {
            let url_ok = k.url.starts_with("https://")
                || k.url.starts_with("http://")
                || k.url.starts_with("file://");
            if !url_ok {
                cx.error(
                    cx.at("base.keyring.url"),
                    format!("`{}` is not an http(s) or file URL", k.url),
                );
            }
            artifacts::pinned_fingerprints(
                cx,
                "base.keyring.fingerprints",
                &k.fingerprints,
                "the archive's Release file is trusted only through the keys pinned here",
            )
            .map(|fingerprints| KeyringPlan::Pinned {
                url: k.url.clone(),
                fingerprints,
            })
        }
    };
    let packages = b.packages.clone().unwrap_or_default();
    let boot = match b.kind {
        BaseKind::Mmdebstrap => boot_from_packages(&packages),
        BaseKind::UbuntuCloud => BaseBoot::None,
        BaseKind::Tarball => BaseBoot::Unknown,
    };
    Some(BasePlan {
        kind: b.kind,
        release: (!is_deb).then(|| b.release.clone().unwrap_or_else(|| default_release(b.kind))),
        suite: b.suite.clone(),
        mirror: b.mirror.clone(),
        apt_components: b
            .apt_components
            .clone()
            .unwrap_or_else(|| if is_deb { vec!["main".into()] } else { vec![] }),
        packages,
        keyring,
        boot,
    })
}

fn resolve_users(cx: &mut Ctx) -> Vec<UserPlan> {
    let users = &cx.loaded.recipe.users;
    if users.is_empty() {
        let at = if cx.loaded.map.has("users") {
            cx.key_at("users")
        } else {
            Pos::START
        };
        let d = cx.warn(
            at,
            "no users: images have no passwords, so without an SSH key nobody can log in",
        );
        Ctx::hint(d, "add `users:` with `ssh_authorized_keys`");
    }
    let mut seen = HashMap::new();
    let mut out = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let p = index("users", i);
        let valid = !u.name.is_empty()
            && u.name.len() <= 32
            && u.name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && u.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !valid {
            cx.error(
                cx.at(&join(&p, "name")),
                format!("`{}` is not a valid user name", u.name),
            );
        } else if u.name == "root" {
            let d = cx.error(
                cx.at(&join(&p, "name")),
                "the user `root` cannot be created",
            );
            Ctx::hint(d, "add a normal user with `sudo: true`");
        } else if let Some(j) = seen.insert(u.name.clone(), i) {
            cx.error(
                cx.at(&join(&p, "name")),
                format!("user `{}` is defined twice (also users[{j}])", u.name),
            );
        }
        if u.ssh_authorized_keys.is_empty() {
            cx.warn(
                cx.at(&join(&p, "ssh_authorized_keys")),
                format!(
                    "user `{}` has no SSH key and no password: it cannot log in",
                    u.name
                ),
            );
        }
        for (k, key) in u.ssh_authorized_keys.iter().enumerate() {
            let kind = key.split_whitespace().next().unwrap_or("");
            let known = [
                "ssh-ed25519",
                "ssh-rsa",
                "ecdsa-sha2-nistp256",
                "ecdsa-sha2-nistp384",
                "ecdsa-sha2-nistp521",
            ]
            .contains(&kind)
                || kind.starts_with("sk-");
            if !known || key.split_whitespace().nth(1).is_none() {
                let d = cx.error(
                    cx.at(&index(&join(&p, "ssh_authorized_keys"), k)),
                    "not an SSH public key (expected `ssh-ed25519 AAAA… comment`)",
                );
                Ctx::hint(d, "paste the contents of ~/.ssh/id_ed25519.pub");
            }
        }
        out.push(UserPlan {
            name: u.name.clone(),
            ssh_authorized_keys: u.ssh_authorized_keys.clone(),
            sudo: u.sudo,
        });
    }
    out
}

/// `8GiB`, `512MiB`, `10G`, `2048M` or a plain number of bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mul: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mul)
}

fn resolve_disk(cx: &mut Ctx) -> DiskPlan {
    let d = &cx.loaded.recipe.disk;
    let size_bytes = match d.size.as_deref() {
        None | Some("auto") => None,
        Some(s) => {
            match parse_size(s) {
                Some(n) if n >= 1 << 30 && n % 512 == 0 => Some(n),
                Some(_) => {
                    cx.error(cx.at("disk.size"), format!("disk size `{s}` is too small or not a multiple of 512 bytes (minimum 1GiB)"));
                    None
                }
                None => {
                    let diag = cx.error(cx.at("disk.size"), format!("`{s}` is not a size"));
                    Ctx::hint(diag, "write it like 8GiB or 4096MiB, or `auto`");
                    None
                }
            }
        }
    };
    let names: Vec<&str> = DiskFormat::ALL.iter().map(|f| f.name()).collect();
    let mut formats = Vec::new();
    let asked = d
        .formats
        .clone()
        .unwrap_or_else(|| vec!["raw".into(), "qcow2".into(), "seed-iso".into()]);
    for (i, f) in asked.iter().enumerate() {
        match DiskFormat::parse(f) {
            Some(x) => formats.push(x),
            None => {
                let mut msg = format!("unknown disk format `{f}`");
                if let Some(m) = did_you_mean(f, names.iter().copied()) {
                    msg.push_str(&format!(" (did you mean `{m}`?)"));
                }
                let diag = cx.error(cx.at(&index("disk.formats", i)), msg);
                Ctx::hint(diag, format!("formats are: {}", names.join(", ")));
            }
        }
    }
    DiskPlan {
        size_bytes,
        formats,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("8GiB"), Some(8 << 30));
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("8 GB"), None);
        assert_eq!(parse_size("99999999999999999999T"), None);
    }

    #[test]
    fn hostnames() {
        assert!(hostname_problem("node1").is_none());
        assert!(hostname_problem("Node1").is_some());
        assert!(hostname_problem("-a").is_some());
        assert!(hostname_problem("123").is_some());
        assert!(hostname_problem(&"a".repeat(64)).is_some());
    }

    #[test]
    fn cidr() {
        assert_eq!(
            parse_cidr("10.0.0.0/8"),
            Some((Ipv4Addr::new(10, 0, 0, 0), 8))
        );
        assert_eq!(parse_cidr("10.0.0.0/33"), None);
        assert!(in_network(
            Ipv4Addr::new(192, 168, 200, 151),
            Ipv4Addr::new(192, 168, 200, 0),
            24
        ));
        assert!(!in_network(
            Ipv4Addr::new(192, 168, 201, 1),
            Ipv4Addr::new(192, 168, 200, 0),
            24
        ));
    }
}
