//! `imgbuild apply`: the running cluster's content to what the recipe declares — its topics
//! (`services.kafka.topics`) and its users' ACLs (`services.kafka.users`) — the way kafka-gitops
//! or Strimzi's topic and user operators keep them: read what the cluster holds, print the
//! difference as a plan, make it, read the cluster back.
//!
//! 1. One Kafka node answers (the first of the recipe's that does), reached over SSH as
//!    `imgbuild roll` reaches it (its pinned host key; inside a running `imgbuild up`'s network);
//!    its own tools, as the node (a super user, by its certificate), read the topics
//!    (`kafka-topics.sh --describe`), their dynamic configs (`kafka-configs.sh --describe`) and
//!    the ACLs (`kafka-acls.sh --list`).
//! 2. The plan: topics to create, partitions to add, configs to set or remove (a topic's dynamic
//!    configs are the recipe's, no more), ACLs to add. What it will not do is said too: a topic
//!    or an ACL that the recipe does not name is kept unless `--allow-delete` (which names it);
//!    fewer partitions or another replication factor is refused (Kafka cannot take partitions
//!    away; a replication change is a reassignment), and then nothing is changed at all.
//! 3. Each change by the node's tool; then the cluster is read again and must hold exactly the
//!    plan's result (else exit 1 naming what differs). A second `apply` says nothing to do.
//!
//! Internal topics (`__*`) are never touched. First boot still adds the recipe's ACLs by itself
//! (kafka-acls.service), so a fresh cluster is right without an apply.

pub mod storm;
pub mod submit;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use anyhow::{Context, Result, bail};

use crate::layout::{KAFKA_TLS_CLIENT, kafka_bin};
use crate::plan::Plan;
use crate::plan::security::{Resource, SCRAM_MECHANISM, SecurityPlan};
use crate::plan::topics::TopicPlan;
use crate::roll::gates::Remote;

pub const ACLS: &str = "/opt/kafka/bin/kafka-acls.sh";

/// What `apply` was asked.
pub struct Options {
    pub dry_run: bool,
    pub allow_delete: bool,
    pub key: Option<std::path::PathBuf>,
    pub user: Option<String>,
}

/// A topic as the cluster holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveTopic {
    pub partitions: u32,
    pub replication_factor: u16,
    /// Its dynamic (topic-level) configs only: what was set on it, not the brokers' defaults.
    pub configs: BTreeMap<String, String>,
}

/// One ACL entry as kafka-acls.sh lists it: who, on what, which operation (ALLOW).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Acl {
    pub principal: String,
    /// TOPIC, GROUP, TRANSACTIONAL_ID, CLUSTER.
    pub resource: String,
    pub name: String,
    /// LITERAL or PREFIXED.
    pub pattern: String,
    /// READ, WRITE, DESCRIBE_CONFIGS...
    pub operation: String,
}

impl Acl {
    pub fn show(&self) -> String {
        format!(
            "{} {} on {} {}{}",
            self.principal,
            self.operation,
            self.resource.to_lowercase(),
            self.name,
            if self.pattern == "PREFIXED" { "*" } else { "" }
        )
    }

    /// kafka-acls.sh's arguments for this entry after `--add` or `--remove`.
    fn args(&self) -> Vec<String> {
        let mut a = vec![
            "--allow-principal".to_string(),
            self.principal.clone(),
            "--operation".into(),
            camel(&self.operation),
        ];
        match self.resource.as_str() {
            "CLUSTER" => a.push("--cluster".into()),
            r => {
                a.push(format!("--{}", r.to_lowercase().replace('_', "-")));
                a.push(self.name.clone());
            }
        }
        if self.pattern == "PREFIXED" {
            a.extend(["--resource-pattern-type".into(), "prefixed".into()]);
        }
        a
    }
}

/// `DESCRIBE_CONFIGS` → `DescribeConfigs` (how kafka-acls.sh names operations).
fn camel(op: &str) -> String {
    op.split('_')
        .map(|w| {
            let w = w.to_lowercase();
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// `DescribeConfigs` → `DESCRIBE_CONFIGS` (how kafka-acls.sh lists them).
fn upper_snake(op: &str) -> String {
    let mut s = String::new();
    for (i, c) in op.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            s.push('_');
        }
        s.push(c.to_ascii_uppercase());
    }
    s
}

/// The cluster's content as `apply` manages it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Live {
    pub topics: BTreeMap<String, LiveTopic>,
    pub acls: BTreeSet<Acl>,
    /// With `clients: scram`, the users that have a SCRAM-SHA-512 credential (None: not read).
    pub users: Option<BTreeSet<String>>,
}

/// The recipe's users' ACLs, one entry per operation (none with `security: plaintext`: no
/// authorizer).
pub fn wanted_acls(sec: &SecurityPlan) -> BTreeSet<Acl> {
    if !sec.tls() {
        return BTreeSet::new();
    }
    let mut out = BTreeSet::new();
    for u in &sec.users {
        for a in &u.allow {
            let (resource, name) = match a.resource {
                Resource::Topic => ("TOPIC", a.name.clone()),
                Resource::Group => ("GROUP", a.name.clone()),
                Resource::TransactionalId => ("TRANSACTIONAL_ID", a.name.clone()),
                Resource::Cluster => ("CLUSTER", "kafka-cluster".to_string()),
            };
            for op in &a.ops {
                out.insert(Acl {
                    principal: format!("User:{}", u.name),
                    resource: resource.into(),
                    name: name.clone(),
                    pattern: if a.prefixed { "PREFIXED" } else { "LITERAL" }.into(),
                    operation: upper_snake(op),
                });
            }
        }
    }
    out
}

/// One change the plan makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    CreateTopic(TopicPlan),
    AddPartitions {
        topic: String,
        from: u32,
        to: u32,
    },
    SetConfig {
        topic: String,
        key: String,
        from: Option<String>,
        to: String,
    },
    RemoveConfig {
        topic: String,
        key: String,
        was: String,
    },
    DeleteTopic(String),
    AddAcl(Acl),
    RemoveAcl(Acl),
    /// A recipe user's SCRAM credential, from its password in the secrets directory.
    AddUser(String),
    RemoveUser(String),
}

impl Change {
    pub fn show(&self) -> String {
        match self {
            Change::CreateTopic(t) => format!("+ create topic {}", t.describe()),
            Change::AddPartitions { topic, from, to } => {
                format!("~ topic {topic}: partitions {from} -> {to}")
            }
            Change::SetConfig {
                topic,
                key,
                from,
                to,
            } => match from {
                Some(f) => format!("~ topic {topic}: {key} {f} -> {to}"),
                None => format!("~ topic {topic}: {key} (broker default) -> {to}"),
            },
            Change::RemoveConfig { topic, key, was } => {
                format!("~ topic {topic}: {key} {was} -> broker default (not in the recipe)")
            }
            Change::DeleteTopic(t) => format!("- delete topic {t} (--allow-delete)"),
            Change::AddAcl(a) => format!("+ acl {}", a.show()),
            Change::RemoveAcl(a) => format!("- acl {} (--allow-delete)", a.show()),
            Change::AddUser(u) => format!(
                "+ user {u}: {SCRAM_MECHANISM} credential (its password: the secrets directory's users/{u}.password)"
            ),
            Change::RemoveUser(u) => {
                format!("- user {u}: {SCRAM_MECHANISM} credential removed (--allow-delete)")
            }
        }
    }
}

/// The difference between the recipe and the cluster: the changes, what is refused (then nothing
/// is changed), and what is left alone though the recipe does not name it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub changes: Vec<Change>,
    pub refused: Vec<String>,
    pub kept: Vec<String>,
}

pub fn diff(topics: &[TopicPlan], acls: &BTreeSet<Acl>, live: &Live, allow_delete: bool) -> Diff {
    let mut d = Diff::default();
    for t in topics {
        let Some(l) = live.topics.get(&t.name) else {
            d.changes.push(Change::CreateTopic(t.clone()));
            continue;
        };
        if t.partitions > l.partitions {
            d.changes.push(Change::AddPartitions {
                topic: t.name.clone(),
                from: l.partitions,
                to: t.partitions,
            });
        } else if t.partitions < l.partitions {
            d.refused.push(format!(
                "topic {}: partitions {} -> {} refused: Kafka cannot take partitions away (make a new topic and move the data)",
                t.name, l.partitions, t.partitions
            ));
        }
        if t.replication_factor != l.replication_factor {
            d.refused.push(format!(
                "topic {}: replication factor {} -> {} refused: that is a partition reassignment (kafka-reassign-partitions.sh), which apply does not do",
                t.name, l.replication_factor, t.replication_factor
            ));
        }
        for (k, v) in &t.configs {
            if l.configs.get(k) != Some(v) {
                d.changes.push(Change::SetConfig {
                    topic: t.name.clone(),
                    key: k.clone(),
                    from: l.configs.get(k).cloned(),
                    to: v.clone(),
                });
            }
        }
        for (k, v) in &l.configs {
            if !t.configs.contains_key(k) {
                d.changes.push(Change::RemoveConfig {
                    topic: t.name.clone(),
                    key: k.clone(),
                    was: v.clone(),
                });
            }
        }
    }
    for name in live.topics.keys() {
        if name.starts_with("__") || topics.iter().any(|t| &t.name == name) {
            continue;
        }
        if allow_delete {
            d.changes.push(Change::DeleteTopic(name.clone()));
        } else {
            d.kept.push(format!(
                "topic {name}: not in the recipe, kept (--allow-delete deletes it)"
            ));
        }
    }
    for a in acls.difference(&live.acls) {
        d.changes.push(Change::AddAcl(a.clone()));
    }
    for a in live.acls.difference(acls) {
        if allow_delete {
            d.changes.push(Change::RemoveAcl(a.clone()));
        } else {
            d.kept.push(format!(
                "acl {}: not in the recipe, kept (--allow-delete removes it)",
                a.show()
            ));
        }
    }
    d
}

/// With `clients: scram`: a credential for every recipe user that has none; one for a user the
/// recipe does not name is removed with `allow_delete`, else kept. (A password changed in the
/// secrets directory is not seen: Kafka never shows a credential, only that there is one.)
pub fn diff_users(wanted: &BTreeSet<String>, live: &Live, allow_delete: bool, d: &mut Diff) {
    let Some(have) = &live.users else {
        return;
    };
    for u in wanted.difference(have) {
        d.changes.push(Change::AddUser(u.clone()));
    }
    for u in have.difference(wanted) {
        if allow_delete {
            d.changes.push(Change::RemoveUser(u.clone()));
        } else {
            d.kept.push(format!(
                "user {u}: a {SCRAM_MECHANISM} credential, not in the recipe, kept (--allow-delete removes it)"
            ));
        }
    }
}

/// `kafka-configs.sh --describe --entity-type users`: the users with a SCRAM-SHA-512 credential
/// (`SCRAM credential configs for user-principal 'NAME' are SCRAM-SHA-512=iterations=8192`).
pub fn parse_users(out: &str) -> BTreeSet<String> {
    out.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("SCRAM credential configs for user-principal '")?;
            let (name, mechs) = rest.split_once("' are ")?;
            mechs
                .split(", ")
                .any(|m| m.starts_with(&format!("{SCRAM_MECHANISM}=")))
                .then(|| name.to_string())
        })
        .collect()
}

/// `kafka-topics.sh --describe`'s topic lines: name, partition count, replication factor.
pub fn parse_topics(out: &str) -> BTreeMap<String, LiveTopic> {
    let mut topics = BTreeMap::new();
    for l in out.lines().filter(|l| l.contains("PartitionCount:")) {
        let field = |k: &str| {
            l.split('\t')
                .find_map(|f| f.trim().strip_prefix(k))
                .map(|v| v.trim().to_string())
        };
        let (Some(name), Some(p), Some(rf)) = (
            field("Topic:"),
            field("PartitionCount:").and_then(|v| v.parse().ok()),
            field("ReplicationFactor:").and_then(|v| v.parse().ok()),
        ) else {
            continue;
        };
        topics.insert(
            name,
            LiveTopic {
                partitions: p,
                replication_factor: rf,
                configs: BTreeMap::new(),
            },
        );
    }
    topics
}

/// `kafka-configs.sh --describe --entity-type topics`: each topic's dynamic configs.
pub fn parse_configs(out: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut all: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut topic: Option<String> = None;
    for l in out.lines() {
        if let Some(rest) = l.strip_prefix("Dynamic configs for topic ") {
            let name = rest.trim_end().trim_end_matches("are:").trim().to_string();
            all.entry(name.clone()).or_default();
            topic = Some(name);
        } else if let (Some(t), Some(kv)) = (&topic, l.strip_prefix("  ")) {
            let kv = kv.split(" sensitive=").next().unwrap_or(kv);
            if let Some((k, v)) = kv.split_once('=') {
                all.entry(t.clone())
                    .or_default()
                    .insert(k.trim().to_string(), v.to_string());
            }
        }
    }
    all
}

/// `kafka-acls.sh --list`: every ALLOW entry.
pub fn parse_acls(out: &str) -> BTreeSet<Acl> {
    let mut acls = BTreeSet::new();
    let mut resource: Option<(String, String, String)> = None;
    let field = |s: &str, k: &str| {
        s.split(", ")
            .find_map(|f| f.trim_start_matches('(').strip_prefix(k))
            .map(|v| v.trim().trim_end_matches([')', '`', ':']).to_string())
    };
    for l in out.lines() {
        if let Some(rest) = l.strip_prefix("Current ACLs for resource `ResourcePattern(") {
            resource = match (
                field(rest, "resourceType="),
                field(rest, "name="),
                field(rest, "patternType="),
            ) {
                (Some(r), Some(n), Some(p)) => Some((r, n, p)),
                _ => None,
            };
        } else if let (Some((r, n, p)), Some(entry)) = (&resource, l.trim().strip_prefix('(')) {
            if field(entry, "permissionType=").as_deref() != Some("ALLOW") {
                continue;
            }
            if let (Some(principal), Some(op)) =
                (field(entry, "principal="), field(entry, "operation="))
            {
                acls.insert(Acl {
                    principal,
                    resource: r.clone(),
                    name: n.clone(),
                    pattern: p.clone(),
                    operation: op,
                });
            }
        }
    }
    acls
}

/// A Kafka node to run the tools on (`run`: a command as root there, over SSH for `apply`, in a
/// cluster member for `up --check`), and how its tools reach its broker.
pub(crate) struct Via<'a, R: Fn(&[&str], u64) -> Result<String> + Sync> {
    pub plan: &'a Plan,
    pub run: R,
    pub bootstrap: String,
    /// How to put a file on the node (a user's credential goes there, not on a command line).
    pub write: Option<&'a submit::Write<'a>>,
}

impl<R: Fn(&[&str], u64) -> Result<String> + Sync> Via<'_, R> {
    fn tool(&self, bin: &str, args: &[String], timeout: u64) -> Result<String> {
        let mut cmd: Vec<&str> = vec![
            bin,
            "--bootstrap-server",
            &self.bootstrap,
            "--command-config",
            KAFKA_TLS_CLIENT,
        ];
        cmd.extend(args.iter().map(String::as_str));
        (self.run)(&cmd, timeout)
    }

    /// What the cluster holds: the three listings at once (each a JVM on the node).
    fn read(&self, acls: bool) -> Result<Live> {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let (t, c, a, u) = std::thread::scope(|sc| {
            let t = sc.spawn(|| self.tool(kafka_bin::TOPICS, &s(&["--describe"]), 300));
            let c = sc.spawn(|| {
                self.tool(
                    kafka_bin::CONFIGS,
                    &s(&["--describe", "--entity-type", "topics"]),
                    300,
                )
            });
            let a = acls.then(|| sc.spawn(|| self.tool(ACLS, &s(&["--list"]), 300)));
            let u = self.plan.security.scram().then(|| {
                sc.spawn(|| {
                    self.tool(
                        kafka_bin::CONFIGS,
                        &s(&["--describe", "--entity-type", "users"]),
                        300,
                    )
                })
            });
            (
                t.join().expect("a thread"),
                c.join().expect("a thread"),
                a.map(|a| a.join().expect("a thread")),
                u.map(|u| u.join().expect("a thread")),
            )
        });
        let mut topics = parse_topics(&t?);
        for (name, configs) in parse_configs(&c?) {
            if let Some(t) = topics.get_mut(&name) {
                t.configs = configs;
            }
        }
        Ok(Live {
            topics,
            acls: a.transpose()?.map(|a| parse_acls(&a)).unwrap_or_default(),
            users: u.transpose()?.map(|u| parse_users(&u)),
        })
    }

    fn make(&self, c: &Change) -> Result<()> {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        // A value with a comma (cleanup.policy=compact,delete) goes in brackets.
        let kv = |k: &str, v: &str| {
            if v.contains(',') {
                format!("{k}=[{v}]")
            } else {
                format!("{k}={v}")
            }
        };
        match c {
            Change::CreateTopic(t) => {
                let mut a = s(&["--create", "--topic", &t.name]);
                a.extend(s(&["--partitions", &t.partitions.to_string()]));
                a.extend(s(&[
                    "--replication-factor",
                    &t.replication_factor.to_string(),
                ]));
                for (k, v) in &t.configs {
                    a.extend(["--config".to_string(), format!("{k}={v}")]);
                }
                self.tool(kafka_bin::TOPICS, &a, 300)?;
            }
            Change::AddPartitions { topic, to, .. } => {
                let a = s(&["--alter", "--topic", topic, "--partitions", &to.to_string()]);
                self.tool(kafka_bin::TOPICS, &a, 300)?;
            }
            Change::SetConfig { topic, key, to, .. } => {
                let a = s(&[
                    "--alter",
                    "--entity-type",
                    "topics",
                    "--entity-name",
                    topic,
                    "--add-config",
                    &kv(key, to),
                ]);
                self.tool(kafka_bin::CONFIGS, &a, 300)?;
            }
            Change::RemoveConfig { topic, key, .. } => {
                let a = s(&[
                    "--alter",
                    "--entity-type",
                    "topics",
                    "--entity-name",
                    topic,
                    "--delete-config",
                    key,
                ]);
                self.tool(kafka_bin::CONFIGS, &a, 300)?;
            }
            Change::DeleteTopic(t) => {
                self.tool(kafka_bin::TOPICS, &s(&["--delete", "--topic", t]), 300)?;
            }
            Change::AddAcl(acl) => {
                let mut a = vec!["--add".to_string()];
                a.extend(acl.args());
                self.tool(ACLS, &a, 300)?;
            }
            Change::RemoveAcl(acl) => {
                let mut a = vec!["--remove".to_string(), "--force".to_string()];
                a.extend(acl.args());
                self.tool(ACLS, &a, 300)?;
            }
            Change::AddUser(u) => {
                // The password in a root-only file on the node (kafka-configs.sh reads it with
                // --add-config-file), never on a command line another process could read.
                let write = self
                    .write
                    .context("no way to put the credential's file on the node")?;
                let pw = crate::pki::scram::password(self.plan, u)?;
                let file = format!("/run/imgbuild-apply-user-{u}.properties");
                write(
                    &file,
                    format!(
                        "{SCRAM_MECHANISM}=iterations={},password={pw}\n",
                        crate::pki::scram::ITERATIONS
                    )
                    .as_bytes(),
                    0o600,
                )?;
                let a = s(&[
                    "--alter",
                    "--add-config-file",
                    &file,
                    "--entity-type",
                    "users",
                    "--entity-name",
                    u,
                ]);
                let r = self.tool(kafka_bin::CONFIGS, &a, 300);
                let removed = (self.run)(&["rm", "-f", &file], 60);
                r?;
                removed?;
            }
            Change::RemoveUser(u) => {
                let a = s(&[
                    "--alter",
                    "--delete-config",
                    SCRAM_MECHANISM,
                    "--entity-type",
                    "users",
                    "--entity-name",
                    u,
                ]);
                self.tool(kafka_bin::CONFIGS, &a, 300)?;
            }
        }
        Ok(())
    }
}

impl<R: Fn(&[&str], u64) -> Result<String> + Sync> Via<'_, R> {
    /// The recipe's topics created where the cluster lacks them, as `apply` creates them; the
    /// ones it has are left as they are (changing those is `apply`'s, with its plan): what `up
    /// --check` does before it submits the example. A line per topic.
    pub(crate) fn create_missing_topics(&self, topics: &[TopicPlan]) -> Result<Vec<String>> {
        let live = parse_topics(&self.tool(kafka_bin::TOPICS, &["--describe".to_string()], 300)?);
        let mut lines = Vec::new();
        for t in topics {
            let c = Change::CreateTopic(t.clone());
            if let Some(l) = live.get(&t.name) {
                lines.push(format!(
                    "topic {} (the recipe's): there already, {} partitions, replication factor {}",
                    t.name, l.partitions, l.replication_factor
                ));
                continue;
            }
            self.make(&c).with_context(|| c.show())?;
            lines.push(format!(
                "the recipe's topic created as `imgbuild apply` does: {}",
                c.show().trim_start_matches("+ ")
            ));
        }
        Ok(lines)
    }
}

/// Why a node's tool failed, in a few words: its stderr's last line (e.g. ssh's "Network is
/// unreachable") rather than the whole command line.
pub(crate) fn why(e: &anyhow::Error) -> String {
    let m = format!("{e:#}");
    let short = m
        .split_once(" failed (exit ")
        .and_then(|(_, r)| r.split_once("): "))
        .map_or(m.as_str(), |(_, t)| t);
    short
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("")
        .to_string()
}

/// The first of the recipe's Kafka nodes that lets its tools read the cluster: the node, how to
/// reach it, and what it read.
fn connect<'a>(
    plans: &[&'a Plan],
    build_dir: &std::path::Path,
    o: &Options,
    acls: bool,
) -> Result<(&'a Plan, Remote, Live)> {
    let mut tried = Vec::new();
    for p in plans.iter().filter(|p| p.kafka.is_some()) {
        let remote = Remote {
            name: p.node.name.clone(),
            addr: p.node.ip.to_string(),
            login: crate::update::login(p, build_dir, o.key.as_ref(), o.user.as_ref(), "apply")?,
        };
        let via = Via {
            plan: p,
            run: |cmd: &[&str], secs: u64| remote.tool(cmd, secs),
            bootstrap: p.own_bootstrap(),
            write: None,
        };
        match via.read(acls) {
            Ok(live) => return Ok((p, remote, live)),
            Err(e) => tried.push(format!("{} ({}): {}", p.node.name, p.node.ip, why(&e))),
        }
    }
    if tried.is_empty() {
        bail!("apply: the recipe has no Kafka node");
    }
    bail!(
        "apply: the cluster is not running, or no Kafka node answered ({})",
        tried.join("; ")
    )
}

/// Plan and (unless `dry_run`) apply. Ok(false) when something was refused.
pub fn run(plans: &[&Plan], build_dir: &std::path::Path, o: &Options) -> Result<bool> {
    let k = plans
        .iter()
        .find_map(|p| p.kafka.as_ref().map(|k| (p, k)))
        .context("apply: the recipe has no Kafka node")?;
    let (p0, kafka) = k;
    let want_acls = wanted_acls(&p0.security);
    let acls = p0.security.tls();
    let (p, remote, live) = connect(plans, build_dir, o, acls)?;
    let write = |path: &str, bytes: &[u8], mode: u32| remote.write(path, bytes, mode);
    let via = Via {
        plan: p,
        run: |cmd: &[&str], secs: u64| remote.tool(cmd, secs),
        bootstrap: p.own_bootstrap(),
        write: Some(&write),
    };
    eprintln!(
        "apply: the cluster through {} ({}): {} topics, {} ACL entries{}",
        via.plan.node.name,
        via.bootstrap,
        live.topics.keys().filter(|t| !t.starts_with("__")).count(),
        live.acls.len(),
        live.users
            .as_ref()
            .map(|u| format!(", {} users with a {SCRAM_MECHANISM} credential", u.len()))
            .unwrap_or_default()
    );
    let want_users: BTreeSet<String> = p0.security.users.iter().map(|u| u.name.clone()).collect();
    let plan_of = |live: &Live| {
        let mut d = diff(&kafka.topics, &want_acls, live, o.allow_delete);
        diff_users(&want_users, live, o.allow_delete, &mut d);
        d
    };
    let d = plan_of(&live);
    let what = if live.users.is_some() {
        "topics, users and ACLs"
    } else {
        "topics and ACLs"
    };
    let mut text = String::new();
    for c in &d.changes {
        let _ = writeln!(text, "  {}", c.show());
    }
    for r in &d.refused {
        let _ = writeln!(text, "  ! {r}");
    }
    for k in &d.kept {
        let _ = writeln!(text, "  = {k}");
    }
    eprint!("{text}");
    if !d.refused.is_empty() {
        eprintln!(
            "apply: {} refused: nothing changed (change the recipe, or the cluster by hand)",
            d.refused.len()
        );
        return Ok(false);
    }
    if d.changes.is_empty() {
        eprintln!("apply: nothing to do: the cluster holds the recipe's {what}");
        return Ok(true);
    }
    if o.dry_run {
        eprintln!(
            "apply: {} change{} (dry run: nothing changed)",
            d.changes.len(),
            if d.changes.len() == 1 { "" } else { "s" }
        );
        return Ok(true);
    }
    if d.changes.iter().any(|c| matches!(c, Change::AddUser(_))) {
        // A user new to the recipe gets its password now, as a build would make it.
        crate::pki::scram::ensure(p0)?;
    }
    for c in &d.changes {
        via.make(c)
            .with_context(|| format!("apply: {}", c.show()))?;
    }
    // Read back: the cluster must now hold exactly the plan's result.
    let after = via.read(acls)?;
    let left = plan_of(&after);
    if !left.changes.is_empty() {
        bail!(
            "apply: made {} changes, but the cluster read back still differs: {}",
            d.changes.len(),
            left.changes
                .iter()
                .map(Change::show)
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    eprintln!(
        "apply: {} change{} made; read back: the cluster holds the recipe's {what}",
        d.changes.len(),
        if d.changes.len() == 1 { "" } else { "s" }
    );
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str, partitions: u32, rf: u16, configs: &[(&str, &str)]) -> TopicPlan {
        TopicPlan {
            name: name.into(),
            partitions,
            replication_factor: rf,
            configs: configs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// Kafka 4.x's output, as the tools print it.
    const DESCRIBE: &str = "Topic: sentences\tTopicId: 1b2Yb9vCQm2vJ5Z7vX1h3A\tPartitionCount: 3\tReplicationFactor: 3\tConfigs: min.insync.replicas=2\n\
\tTopic: sentences\tPartition: 0\tLeader: 1\tReplicas: 1,2,3\tIsr: 1,2,3\tElr: \tLastKnownElr: \n\
Topic: imgbuild-check\tTopicId: x\tPartitionCount: 3\tReplicationFactor: 3\tConfigs: \n\
Topic: __consumer_offsets\tTopicId: y\tPartitionCount: 50\tReplicationFactor: 3\tConfigs: compression.type=producer,cleanup.policy=compact,segment.bytes=104857600\n";
    const CONFIGS: &str = "Dynamic configs for topic sentences are:\n  min.insync.replicas=2 sensitive=false synonyms={DYNAMIC_TOPIC_CONFIG:min.insync.replicas=2, STATIC_BROKER_CONFIG:min.insync.replicas=2, DEFAULT_CONFIG:min.insync.replicas=1}\n\
Dynamic configs for topic imgbuild-check are:\n\
Dynamic configs for topic __consumer_offsets are:\n  cleanup.policy=compact sensitive=false synonyms={DYNAMIC_TOPIC_CONFIG:cleanup.policy=compact, DEFAULT_CONFIG:log.cleanup.policy=delete}\n";
    const ACL_LIST: &str = "Current ACLs for resource `ResourcePattern(resourceType=TOPIC, name=sentences, patternType=LITERAL)`: \n \t(principal=User:storm, host=*, operation=READ, permissionType=ALLOW)\n\t(principal=User:storm, host=*, operation=DESCRIBE, permissionType=ALLOW) \n\n\
Current ACLs for resource `ResourcePattern(resourceType=GROUP, name=python-, patternType=PREFIXED)`: \n \t(principal=User:storm, host=*, operation=READ, permissionType=ALLOW)\n\n\
Current ACLs for resource `ResourcePattern(resourceType=CLUSTER, name=kafka-cluster, patternType=LITERAL)`: \n \t(principal=User:storm, host=*, operation=IDEMPOTENT_WRITE, permissionType=ALLOW)\n \t(principal=User:eve, host=*, operation=ALL, permissionType=DENY)\n";

    fn live() -> Live {
        let mut topics = parse_topics(DESCRIBE);
        for (n, c) in parse_configs(CONFIGS) {
            if let Some(t) = topics.get_mut(&n) {
                t.configs = c;
            }
        }
        Live {
            topics,
            acls: parse_acls(ACL_LIST),
            users: None,
        }
    }

    #[test]
    fn scram_users_planned_both_ways() {
        let out = "Quota configs for user-principal 'storm' are producer_byte_rate=1024\n\
SCRAM credential configs for user-principal 'storm' are SCRAM-SHA-512=iterations=8192\n\
SCRAM credential configs for user-principal 'old' are SCRAM-SHA-256=iterations=4096, SCRAM-SHA-512=iterations=8192\n\
SCRAM credential configs for user-principal 'only256' are SCRAM-SHA-256=iterations=4096\n";
        let users = parse_users(out);
        assert_eq!(
            users.iter().map(String::as_str).collect::<Vec<_>>(),
            ["old", "storm"]
        );
        let mut l = live();
        let want: BTreeSet<String> = ["storm", "auditor"].map(String::from).into();
        // Not read (mTLS clients): nothing planned.
        let mut d = Diff::default();
        diff_users(&want, &l, false, &mut d);
        assert_eq!(d, Diff::default());
        l.users = Some(users);
        let mut d = Diff::default();
        diff_users(&want, &l, false, &mut d);
        assert_eq!(d.changes, [Change::AddUser("auditor".into())]);
        assert_eq!(
            d.kept,
            [
                "user old: a SCRAM-SHA-512 credential, not in the recipe, kept (--allow-delete removes it)"
            ]
        );
        let mut d = Diff::default();
        diff_users(&want, &l, true, &mut d);
        assert_eq!(
            d.changes,
            [
                Change::AddUser("auditor".into()),
                Change::RemoveUser("old".into())
            ]
        );
        assert!(d.kept.is_empty());
        assert_eq!(
            Change::AddUser("auditor".into()).show(),
            "+ user auditor: SCRAM-SHA-512 credential (its password: the secrets directory's users/auditor.password)"
        );
    }

    #[test]
    fn the_tools_output_parsed() {
        let l = live();
        assert_eq!(l.topics.len(), 3);
        assert_eq!(
            l.topics["sentences"],
            LiveTopic {
                partitions: 3,
                replication_factor: 3,
                configs: BTreeMap::from([("min.insync.replicas".into(), "2".into())]),
            }
        );
        assert!(l.topics["imgbuild-check"].configs.is_empty());
        // ALLOW entries only (the DENY is not the recipe's kind).
        assert_eq!(l.acls.len(), 4, "{:?}", l.acls);
        assert!(
            l.acls
                .iter()
                .all(|a| a.pattern == "LITERAL" || a.pattern == "PREFIXED")
        );
        assert!(l.acls.contains(&Acl {
            principal: "User:storm".into(),
            resource: "GROUP".into(),
            name: "python-".into(),
            pattern: "PREFIXED".into(),
            operation: "READ".into(),
        }));
    }

    #[test]
    fn a_plan_names_exactly_the_changes_and_refuses_what_kafka_cannot_do() {
        let l = live();
        let acls = l.acls.clone();
        // The cluster as the recipe says: nothing to do; what the recipe does not name is kept.
        let same = [topic("sentences", 3, 3, &[("min.insync.replicas", "2")])];
        let d = diff(&same, &acls, &l, false);
        assert!(d.changes.is_empty() && d.refused.is_empty(), "{d:?}");
        assert_eq!(
            d.kept,
            ["topic imgbuild-check: not in the recipe, kept (--allow-delete deletes it)"]
        );
        // More partitions, another retention, a new topic, one more ACL.
        let mut more = acls.clone();
        let new_acl = Acl {
            principal: "User:storm".into(),
            resource: "TOPIC".into(),
            name: "word-counts".into(),
            pattern: "LITERAL".into(),
            operation: "WRITE".into(),
        };
        more.insert(new_acl.clone());
        let want = [
            topic(
                "sentences",
                6,
                3,
                &[("min.insync.replicas", "2"), ("retention.ms", "86400000")],
            ),
            topic("word-counts", 3, 3, &[]),
        ];
        let d = diff(&want, &more, &l, false);
        assert_eq!(
            d.changes,
            [
                Change::AddPartitions {
                    topic: "sentences".into(),
                    from: 3,
                    to: 6
                },
                Change::SetConfig {
                    topic: "sentences".into(),
                    key: "retention.ms".into(),
                    from: None,
                    to: "86400000".into()
                },
                Change::CreateTopic(want[1].clone()),
                Change::AddAcl(new_acl),
            ]
        );
        // --allow-delete: the topic the recipe does not name goes, __* never; configs the recipe
        // drops go back to the brokers' default.
        let d = diff(&[topic("sentences", 3, 3, &[])], &acls, &l, true);
        assert_eq!(
            d.changes,
            [
                Change::RemoveConfig {
                    topic: "sentences".into(),
                    key: "min.insync.replicas".into(),
                    was: "2".into()
                },
                Change::DeleteTopic("imgbuild-check".into()),
            ]
        );
        // Fewer partitions, another replication factor: refused.
        let d = diff(
            &[topic("sentences", 2, 2, &[("min.insync.replicas", "2")])],
            &acls,
            &l,
            false,
        );
        assert_eq!(d.refused.len(), 2, "{d:?}");
        assert!(d.refused[0].contains("partitions 3 -> 2 refused"));
        assert!(d.refused[1].contains("replication factor 3 -> 2 refused"));
    }

    #[test]
    fn acl_names_both_ways() {
        assert_eq!(upper_snake("DescribeConfigs"), "DESCRIBE_CONFIGS");
        assert_eq!(camel("DESCRIBE_CONFIGS"), "DescribeConfigs");
        assert_eq!(camel("READ"), "Read");
        let a = Acl {
            principal: "User:storm".into(),
            resource: "TRANSACTIONAL_ID".into(),
            name: "tx-".into(),
            pattern: "PREFIXED".into(),
            operation: "IDEMPOTENT_WRITE".into(),
        };
        assert_eq!(
            a.args(),
            [
                "--allow-principal",
                "User:storm",
                "--operation",
                "IdempotentWrite",
                "--transactional-id",
                "tx-",
                "--resource-pattern-type",
                "prefixed"
            ]
        );
    }
}
