//! The cluster's topics as the recipe declares them (`services.kafka.topics`), checked against
//! the cluster's shape when the recipe is resolved. They are the running cluster's content, not
//! the images': `imgbuild apply` makes the cluster hold them, and the build key leaves them out.

use std::collections::BTreeMap;

use serde::Serialize;

use super::Ctx;
use crate::recipe::diag::did_you_mean;
use crate::recipe::srcmap::{index, join};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicPlan {
    pub name: String,
    pub partitions: u32,
    pub replication_factor: u16,
    /// Topic-level configs, as kafka-configs.sh takes them.
    pub configs: BTreeMap<String, String>,
}

impl TopicPlan {
    /// `sentences: 3 partitions, replication factor 3, min.insync.replicas=2`
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{}: {} partitions, replication factor {}",
            self.name, self.partitions, self.replication_factor
        );
        for (k, v) in &self.configs {
            s.push_str(&format!(", {k}={v}"));
        }
        s
    }
}

/// The replication factor a topic gets when the recipe names none.
pub const DEFAULT_REPLICATION: u16 = 3;

/// Kafka 4's topic-level configs (TopicConfig and LogConfig): what `configs` may name.
pub const TOPIC_CONFIGS: &[&str] = &[
    "cleanup.policy",
    "compression.gzip.level",
    "compression.lz4.level",
    "compression.type",
    "compression.zstd.level",
    "delete.retention.ms",
    "file.delete.delay.ms",
    "flush.messages",
    "flush.ms",
    "follower.replication.throttled.replicas",
    "index.interval.bytes",
    "leader.replication.throttled.replicas",
    "local.retention.bytes",
    "local.retention.ms",
    "max.compaction.lag.ms",
    "max.message.bytes",
    "message.timestamp.after.max.ms",
    "message.timestamp.before.max.ms",
    "message.timestamp.type",
    "min.cleanable.dirty.ratio",
    "min.compaction.lag.ms",
    "min.insync.replicas",
    "preallocate",
    "remote.log.copy.disable",
    "remote.log.delete.on.disable",
    "remote.storage.enable",
    "retention.bytes",
    "retention.ms",
    "segment.bytes",
    "segment.index.bytes",
    "segment.jitter.ms",
    "segment.ms",
    "unclean.leader.election.enable",
];

/// Configs whose value is a whole number (-1 allowed where Kafka takes it for "no limit").
const NUMERIC: &[&str] = &[
    "delete.retention.ms",
    "file.delete.delay.ms",
    "flush.messages",
    "flush.ms",
    "index.interval.bytes",
    "local.retention.bytes",
    "local.retention.ms",
    "max.compaction.lag.ms",
    "max.message.bytes",
    "message.timestamp.after.max.ms",
    "message.timestamp.before.max.ms",
    "min.compaction.lag.ms",
    "min.insync.replicas",
    "retention.bytes",
    "retention.ms",
    "segment.bytes",
    "segment.index.bytes",
    "segment.jitter.ms",
    "segment.ms",
];

/// A topic name Kafka takes: letters, digits, `.`, `_`, `-`, up to 249, not `.` or `..`.
fn topic_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 249
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

pub(super) fn resolve_topics(cx: &mut Ctx, brokers: usize) -> Vec<TopicPlan> {
    let topics = cx.loaded.recipe.services.kafka.topics.clone();
    let Some(topics) = topics else {
        return Vec::new();
    };
    if brokers == 0 && !topics.is_empty() {
        cx.error(
            cx.at("services.kafka.topics"),
            "the recipe declares topics but no node has the kafka role",
        );
        return Vec::new();
    }
    let mut out = Vec::new();
    for (i, t) in topics.iter().enumerate() {
        let at = index("services.kafka.topics", i);
        let errors = cx.diags.len();
        if !topic_name(&t.name) {
            cx.error(
                cx.at(&join(&at, "name")),
                format!(
                    "`{}` is not a topic name (letters, digits, `.`, `_`, `-`; up to 249)",
                    t.name
                ),
            );
        } else if t.name.starts_with("__") {
            cx.error(
                cx.at(&join(&at, "name")),
                format!("`{}`: names starting with `__` are Kafka's own", t.name),
            );
        } else if topics[..i].iter().any(|o| o.name == t.name) {
            cx.error(
                cx.at(&join(&at, "name")),
                format!("topic `{}` is declared twice", t.name),
            );
        }
        if t.partitions == 0 {
            cx.error(
                cx.at(&join(&at, "partitions")),
                "a topic has at least one partition",
            );
        }
        let rf = t
            .replication_factor
            .unwrap_or(DEFAULT_REPLICATION.min(brokers as u16));
        if rf == 0 || usize::from(rf) > brokers {
            let d = cx.error(
                cx.at(&join(&at, "replication_factor")),
                format!(
                    "topic `{}`: replication factor {rf}, but the cluster has {brokers} broker{}",
                    t.name,
                    if brokers == 1 { "" } else { "s" }
                ),
            );
            Ctx::hint(
                d,
                format!(
                    "a replication factor from 1 to {brokers} (each replica on its own broker)"
                ),
            );
        }
        for (k, v) in &t.configs {
            let key_at = join(&join(&at, "configs"), k);
            if !TOPIC_CONFIGS.contains(&k.as_str()) {
                let d = cx.error(
                    cx.key_at(&key_at),
                    format!("`{k}` is not a Kafka topic config"),
                );
                if let Some(s) = did_you_mean(k, TOPIC_CONFIGS.iter().copied()) {
                    Ctx::hint(d, format!("did you mean `{s}`?"));
                }
                continue;
            }
            if NUMERIC.contains(&k.as_str()) && v.parse::<i64>().is_err() {
                cx.error(
                    cx.at(&key_at),
                    format!("`{k}` takes a whole number, not `{v}`"),
                );
                continue;
            }
            if k == "cleanup.policy"
                && !v
                    .split(',')
                    .all(|p| matches!(p.trim(), "delete" | "compact"))
            {
                cx.error(
                    cx.at(&key_at),
                    format!("cleanup.policy is `delete`, `compact` or both, not `{v}`"),
                );
            }
            if k == "min.insync.replicas" {
                match v.parse::<i64>() {
                    Ok(m) if m >= 1 && m < i64::from(rf) => {}
                    Ok(m) => {
                        let d = cx.error(
                            cx.at(&key_at),
                            format!(
                                "topic `{}`: min.insync.replicas {m} with replication factor {rf}: \
                                 a producer with acks=all could not write once a replica is down",
                                t.name
                            ),
                        );
                        Ctx::hint(
                            d,
                            format!("at least 1 and below the replication factor ({rf})"),
                        );
                    }
                    Err(_) => {}
                }
            }
        }
        if cx.diags.len() == errors {
            out.push(TopicPlan {
                name: t.name.clone(),
                partitions: t.partitions,
                replication_factor: rf,
                configs: t
                    .configs
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            });
        }
    }
    out
}
