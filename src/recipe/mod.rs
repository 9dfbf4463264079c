//! The recipe as written: serde types mirroring the YAML, and loading them with precise errors.
//!
//! Nothing here interprets the recipe; `plan` does that. Every struct rejects unknown keys.

pub mod diag;
pub mod srcmap;
pub mod template;

use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::Deserialize;

use crate::recipe::diag::{Diagnostic, Pos, RecipeError, did_you_mean};
use crate::recipe::srcmap::{SourceMap, join};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub cluster: Cluster,
    pub base: Base,
    pub components: Components,
    #[serde(default)]
    pub services: Services,
    pub network: Network,
    pub nodes: IndexMap<String, Node>,
    #[serde(default)]
    pub users: Vec<User>,
    #[serde(default)]
    pub disk: Disk,
    #[serde(default)]
    pub overlays: Overlays,
    /// URL prefix rewrites: `FROM: TO` (corporate mirrors, air-gapped sites).
    #[serde(default)]
    pub mirrors: IndexMap<String, String>,
    #[serde(default)]
    pub provenance: Provenance,
    #[serde(default)]
    pub os: Os,
    #[serde(default)]
    pub firewall: Firewall,
    #[serde(default)]
    pub metrics: Metrics,
    #[serde(default)]
    pub pki: Pki,
    /// `tls` (default): TLS and authentication on every Kafka listener and ZooKeeper's quorum;
    /// `plaintext`: neither (labs; imgbuild warns).
    pub security: Option<SecurityMode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecurityMode {
    Tls,
    Plaintext,
}

/// How Kafka's clients authenticate on the client listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientAuth {
    /// A certificate from the cluster's CA; the user is its CN.
    Mtls,
    /// SCRAM-SHA-512 over TLS: a password per user (in the secrets directory), the credentials
    /// set when the storage is formatted (KIP-900; KRaft only).
    Scram,
}

/// A Kafka user (`services.kafka.users`): a principal `User:NAME` and what it may do.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaUser {
    pub name: String,
    #[serde(default)]
    pub allow: Vec<KafkaAcl>,
}

/// One ACL entry: exactly one resource (`NAME`, `PREFIX*` or `*`) and its operations.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaAcl {
    pub topic: Option<String>,
    pub group: Option<String>,
    pub transactional_id: Option<String>,
    /// `cluster: true`: the cluster resource (IdempotentWrite, Create, DescribeConfigs...).
    pub cluster: Option<bool>,
    pub ops: Vec<String>,
}

/// The operator's CA for the cluster's certificates (default: imgbuild makes one in the recipe's
/// secrets directory). Both relative to the recipe; the key is read by openssl only.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pki {
    pub ca_cert: Option<String>,
    pub ca_key: Option<String>,
}

/// Each node's nftables ruleset: cluster-internal ports only from the cluster's nodes, client
/// ports (Kafka's client listener, Storm UI, SSH) from `clients`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Firewall {
    /// Default true; false leaves every port open to every host (labs; imgbuild warns).
    pub enabled: Option<bool>,
    /// CIDRs clients may come from (default: the cluster network).
    pub clients: Option<Vec<String>>,
}

/// The Prometheus endpoints the services export (`plan` lists their ports).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Default true; false: no exporter runs and no metrics port is open.
    pub enabled: Option<bool>,
    /// CIDRs a Prometheus may scrape from (default: the cluster network).
    pub clients: Option<Vec<String>>,
}

/// The OS settings operators set for ZooKeeper, Kafka and Storm hosts.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Os {
    /// Kernel parameters, merged over imgbuild's defaults (`plan` shows the result).
    #[serde(default)]
    pub sysctl: IndexMap<String, String>,
    #[serde(default)]
    pub limits: Limits,
    /// NTP servers for systemd-timesyncd (none: the distribution's default servers).
    #[serde(default)]
    pub ntp: Vec<String>,
}

/// Resource limits of every service unit (LimitNOFILE=, LimitNPROC=).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub nofile: Option<u64>,
    pub nproc: Option<u64>,
}

/// How the provenance of every image is signed (`ssh-keygen -Y sign`); unsigned without a key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// An SSH private key, relative to the recipe; its public half beside it as `KEY.pub`.
    #[serde(default)]
    pub signing_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub name: String,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub source_date_epoch: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Base {
    pub kind: BaseKind,
    // ubuntu-cloud and tarball: one artifact.
    #[serde(default)]
    pub release: Option<String>,
    #[serde(default)]
    pub urls: Option<OneOrMany>,
    #[serde(default)]
    pub digest: Option<Digest>,
    #[serde(default)]
    pub signature: Option<Signature>,
    #[serde(default)]
    pub vars: IndexMap<String, String>,
    // mmdebstrap: built from a package mirror.
    #[serde(default)]
    pub suite: Option<String>,
    #[serde(default)]
    pub mirror: Option<String>,
    #[serde(default)]
    pub apt_components: Option<Vec<String>>,
    #[serde(default)]
    pub packages: Option<Vec<String>>,
    #[serde(default)]
    pub keyring: Option<Keyring>,
}

/// The keys an apt mirror's Release file must be signed with: a keyring file on this machine,
/// or a key URL plus the fingerprints to take from it (nothing else in the file is trusted).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Keyring {
    File(String),
    Pinned(PinnedKeys),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinnedKeys {
    pub url: String,
    pub fingerprints: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BaseKind {
    UbuntuCloud,
    Mmdebstrap,
    Tarball,
}

/// A URL or a list of URLs (mirrors, tried in order).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
    /// Whether the YAML wrote a list (so item paths carry `[i]`).
    pub fn is_list(&self) -> bool {
        matches!(self, OneOrMany::Many(_))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Components {
    #[serde(default)]
    pub java: Option<Component>,
    #[serde(default)]
    pub zookeeper: Option<Component>,
    #[serde(default)]
    pub kafka: Option<Component>,
    #[serde(default)]
    pub storm: Option<Component>,
    #[serde(default)]
    pub python: Option<Component>,
    /// The Prometheus JMX exporter's Java agent jar (`metrics` on Kafka and Storm).
    #[serde(default)]
    pub jmx_exporter: Option<Component>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    pub version: String,
    /// Optional for components with upstream defaults (zookeeper, kafka, storm, python).
    #[serde(default)]
    pub urls: Option<OneOrMany>,
    #[serde(default)]
    pub digest: Option<Digest>,
    #[serde(default)]
    pub signature: Option<Signature>,
    /// Extra template variables for this component's URLs (`{scala}`, `{release}`, ...).
    #[serde(default)]
    pub vars: IndexMap<String, String>,
    /// Its publisher for the SBOM, as SPDX writes a supplier (`Organization: NAME`); default:
    /// the upstream of the reference recipe (Adoptium, the ASF, Astral).
    #[serde(default)]
    pub supplier: Option<String>,
    /// Its declared license for the SBOM, an SPDX expression; default: upstream's.
    #[serde(default)]
    pub license: Option<String>,
}

/// Exactly one of these: an inline digest, or the URL of the publisher's checksum file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Digest {
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub sha512: Option<String>,
    #[serde(default)]
    pub sha256_url: Option<String>,
    #[serde(default)]
    pub sha512_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    pub url: String,
    pub keys: String,
    pub fingerprints: Vec<String>,
    #[serde(default)]
    pub signs: Option<Signs>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Signs {
    /// The signature is over the downloaded file itself (Apache `.asc`).
    Artifact,
    /// The signature is over the checksum file (Ubuntu `SHA256SUMS.gpg`).
    Checksums,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Services {
    #[serde(default)]
    pub zookeeper: ZookeeperService,
    #[serde(default)]
    pub kafka: KafkaService,
    #[serde(default)]
    pub storm: StormService,
    #[serde(default)]
    pub node_exporter: NodeExporterService,
}

/// The distribution's Prometheus node exporter (`metrics` on): the host's disks, memory, network
/// and clock.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeExporterService {
    pub port: Option<u16>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZookeeperService {
    pub client_port: Option<u16>,
    pub quorum_port: Option<u16>,
    pub election_port: Option<u16>,
    pub admin_port: Option<u16>,
    /// ZooKeeper's own Prometheus endpoint (PrometheusMetricsProvider's httpPort).
    pub metrics_port: Option<u16>,
    pub heap_mb: Option<u32>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaService {
    pub mode: Option<KafkaMode>,
    pub cluster_id: Option<String>,
    pub controllers: Option<Vec<String>>,
    pub port: Option<u16>,
    /// The brokers' own listener (replication): reachable from the cluster's nodes only.
    pub internal_port: Option<u16>,
    pub controller_port: Option<u16>,
    /// The broker's Prometheus endpoint (the JMX exporter agent).
    pub metrics_port: Option<u16>,
    pub heap_mb: Option<u32>,
    /// How clients authenticate (default mtls).
    pub clients: Option<ClientAuth>,
    /// The users and their ACLs (ACLs are on with `security: tls`; the brokers are super users).
    pub users: Option<Vec<KafkaUser>>,
    /// The cluster's topics, made and changed on the running cluster by `imgbuild apply`.
    pub topics: Option<Vec<KafkaTopic>>,
}

/// One topic as `imgbuild apply` keeps it on the running cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaTopic {
    pub name: String,
    pub partitions: u32,
    /// Default: 3, or the number of brokers when fewer.
    pub replication_factor: Option<u16>,
    /// Topic-level configs (`min.insync.replicas`, `retention.ms`, `cleanup.policy`...), as
    /// kafka-configs.sh takes them.
    #[serde(default)]
    pub configs: IndexMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KafkaMode {
    Kraft,
    Zookeeper,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StormService {
    pub nimbus_port: Option<u16>,
    pub supervisor_port: Option<u16>,
    pub ui_port: Option<u16>,
    pub logviewer_port: Option<u16>,
    pub slots: Option<Vec<u16>>,
    /// Nimbus's and the supervisor's Prometheus endpoints (the JMX exporter agent).
    pub nimbus_metrics_port: Option<u16>,
    pub supervisor_metrics_port: Option<u16>,
    pub heap_mb: Option<u32>,
    pub worker_heap_mb: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub cidr: String,
    pub gateway: String,
    #[serde(default)]
    pub dns: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub ip: String,
    #[serde(default)]
    pub id: Option<u32>,
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default)]
    pub interface: Option<String>,
    #[serde(default)]
    pub roles: Option<Vec<String>>,
    #[serde(default)]
    pub services: Option<Services>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    pub ssh_authorized_keys: Vec<String>,
    #[serde(default)]
    pub sudo: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    #[serde(default)]
    pub size: Option<String>,
    #[serde(default)]
    pub formats: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overlays {
    #[serde(default)]
    pub dir: Option<String>,
}

/// A parsed recipe together with its text and source map, for pointing errors into it.
pub struct Loaded {
    pub path: PathBuf,
    pub text: String,
    pub map: SourceMap,
    pub recipe: Recipe,
}

impl Loaded {
    pub fn error(&self, diagnostics: Vec<Diagnostic>) -> RecipeError {
        RecipeError {
            file: self.path.clone(),
            source_text: self.text.clone(),
            diagnostics,
        }
    }
}

/// Read and parse a recipe file. I/O problems are plain errors; anything wrong with the
/// content is a [`RecipeError`] pointing into the file.
pub fn load(path: &Path) -> anyhow::Result<Loaded> {
    use anyhow::Context;
    if !path.exists() {
        return Err(crate::recipe::diag::UsageError {
            message: format!("recipe {} does not exist", path.display()),
            hint: Some("pass the recipe with -r FILE (default: recipes/cluster.yaml, run from the repository root)".into()),
        }
        .into());
    }
    let bytes =
        std::fs::read(path).with_context(|| format!("reading recipe {}", path.display()))?;
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let valid = std::str::from_utf8(&e.as_bytes()[..at]).unwrap_or("");
            let line = valid.matches('\n').count() + 1;
            let col = valid.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            return Err(RecipeError {
                file: path.to_path_buf(),
                source_text: String::new(),
                diagnostics: vec![Diagnostic::error(
                    Pos { line, col },
                    "the recipe is not valid UTF-8",
                )],
            }
            .into());
        }
    };
    Ok(parse(path, text)?)
}

/// Parse recipe text (already read from `path`).
pub fn parse(path: &Path, text: String) -> Result<Loaded, RecipeError> {
    let map = SourceMap::scan(&text);
    let fail = |diagnostics| RecipeError {
        file: path.to_path_buf(),
        source_text: text.clone(),
        diagnostics,
    };
    // libyaml's loader is quadratic in nesting depth (100k `[` take 30 s): refuse before it runs.
    if let Some(at) = map.too_deep {
        return Err(fail(vec![Diagnostic::error(
            at,
            format!(
                "the recipe nests deeper than {} levels",
                crate::recipe::srcmap::MAX_DEPTH
            ),
        )]));
    }
    if !map.duplicates.is_empty() {
        let diags = map
            .duplicates
            .iter()
            .map(|d| {
                Diagnostic::error(
                    d.again,
                    format!(
                        "duplicate key `{}` (first defined at line {})",
                        d.path, d.first.line
                    ),
                )
            })
            .collect();
        return Err(fail(diags));
    }
    match serde_norway::from_str::<Recipe>(&text) {
        Ok(recipe) => Ok(Loaded {
            path: path.to_path_buf(),
            text: text.clone(),
            map,
            recipe,
        }),
        Err(e) => Err(fail(vec![serde_diagnostic(&e, &map)])),
    }
}

/// Turn a serde_norway error into a diagnostic with a position and, for unknown keys, a suggestion.
fn serde_diagnostic(e: &serde_norway::Error, map: &SourceMap) -> Diagnostic {
    let full = e.to_string();
    let mut serde_pos = e.location().map(|l| Pos {
        line: l.line(),
        col: l.column(),
    });
    // libyaml: "PROBLEM at line A column B, while CONTEXT at line C column D". The context
    // (where an unterminated quote or bracket began) is the useful place to point at.
    let msg = if let Some((problem, context)) = full.split_once(", while ") {
        let (context, at) = split_location(context);
        serde_pos = at.or(serde_pos);
        format!(
            "{}, while {context} that starts here",
            split_location(problem).0
        )
    } else {
        // serde_norway appends " at line L column C"; we print the position ourselves.
        split_location(&full).0.to_string()
    };
    // "nodes.node1: unknown field `ipp`, expected one of `ip`, `id`"
    let (path, detail) = match msg.split_once(": ") {
        Some((p, d)) if !p.contains(' ') => (p.to_string(), d.to_string()),
        _ => (String::new(), msg.clone()),
    };
    let path = if path == "." { String::new() } else { path };
    if let Some(rest) = detail.strip_prefix("unknown field `")
        && let Some((field, tail)) = rest.split_once('`')
    {
        let expected: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
        let key_path = join(&path, field);
        let at = if map.has(&key_path) {
            map.key(&key_path)
        } else {
            serde_pos.unwrap_or_else(|| map.key(&path))
        };
        let place = if path.is_empty() {
            "at the top level".to_string()
        } else {
            format!("in `{path}`")
        };
        let mut message = format!("unknown key `{field}` {place}");
        if let Some(s) = did_you_mean(field, expected.iter().copied()) {
            message.push_str(&format!(" (did you mean `{s}`?)"));
        }
        let mut d = Diagnostic::error(at, message);
        if matches!(
            field,
            "password" | "passwd" | "plain_text_passwd" | "hashed_passwd"
        ) {
            d = d.with_hint(
                "images never carry passwords; give users `ssh_authorized_keys` instead",
            );
        } else if !expected.is_empty() {
            let list: Vec<String> = expected.iter().map(|s| format!("`{s}`")).collect();
            d = d.with_hint(format!("valid keys here: {}", list.join(", ")));
        }
        return d;
    }
    if let Some(rest) = detail.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or(rest);
        let at = if path.is_empty() {
            serde_pos.unwrap_or(Pos::START)
        } else {
            map.key(&path)
        };
        let place = if path.is_empty() {
            "at the top level".to_string()
        } else {
            format!("in `{path}`")
        };
        return Diagnostic::error(at, format!("missing required key `{field}` {place}"));
    }
    let at = serde_pos.unwrap_or_else(|| map.value(&path));
    let message = if path.is_empty() {
        detail
    } else {
        format!("{path}: {detail}")
    };
    Diagnostic::error(at, message)
}

/// Split "TEXT at line L column C" into TEXT and the position.
fn split_location(s: &str) -> (&str, Option<Pos>) {
    let Some(i) = s.rfind(" at line ") else {
        return (s, None);
    };
    let pos = s[i + 9..].split_once(" column ").and_then(|(l, c)| {
        Some(Pos {
            line: l.trim().parse().ok()?,
            col: c.trim().parse().ok()?,
        })
    });
    (&s[..i], pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match parse(Path::new("r.yaml"), text.to_string()) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn syntax_error_has_position() {
        let e = err("cluster: {name: x\n");
        assert!(e.starts_with("r.yaml:"), "{e}");
    }

    #[test]
    fn duplicate_key_reported_at_second() {
        let e = err("cluster:\n  name: a\n  name: b\n");
        assert!(
            e.starts_with("r.yaml:3:3: duplicate key `cluster.name` (first defined at line 2)"),
            "{e}"
        );
    }

    #[test]
    fn empty_document_is_a_clear_error() {
        let e = err("");
        assert!(e.starts_with("r.yaml:1:1:"), "{e}");
    }
}
