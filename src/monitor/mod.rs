//! What a Prometheus needs to watch the cluster, generated from the recipe like the images are:
//! a scrape configuration with one job per exporter and every node's target (the `metrics`
//! ports of the port table), and alert rules whose thresholds come from the cluster's shape (its
//! ensemble, brokers, nimbuses and supervisors), and a Grafana dashboard. `imgbuild build` and
//! `imgbuild prometheus` write them to `images/prometheus/`; `promtool check` and `promtool test
//! rules` test them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::plan::services::{PortKey, Reach};
use crate::plan::{ClusterPlan, Plan};
use crate::rootfs::render::documents::yaml;

pub mod dashboard;

/// How long a condition must hold before its alert fires (one missed scrape or a leader
/// election in progress is not an incident).
pub const FOR: &str = "1m";
/// How often the generated configuration scrapes and evaluates.
pub const INTERVAL: &str = "15s";

/// The scrape job of a metrics port.
pub fn job(key: PortKey) -> Option<&'static str> {
    match key {
        PortKey::ZkMetrics => Some("zookeeper"),
        PortKey::KafkaMetrics => Some("kafka"),
        PortKey::StormNimbusMetrics => Some("storm-nimbus"),
        PortKey::StormSupervisorMetrics => Some("storm-supervisor"),
        PortKey::StormWorkerMetrics => Some("storm-worker"),
        PortKey::NodeExporter => Some("node"),
        _ => None,
    }
}

/// One endpoint to scrape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub job: &'static str,
    pub node: String,
    pub address: String,
}

/// Every node's metrics endpoints, in node order, then port-table order.
pub fn targets(nodes: &[Plan]) -> Vec<Target> {
    nodes
        .iter()
        .flat_map(|p| {
            p.ports
                .iter()
                .filter(|b| b.reach == Reach::Metrics)
                .filter_map(move |b| {
                    Some(Target {
                        job: job(b.key)?,
                        node: p.node.name.clone(),
                        address: format!("{}:{}", p.node.ip, b.port),
                    })
                })
        })
        .collect()
}

#[derive(Serialize)]
struct Config {
    global: Global,
    rule_files: Vec<&'static str>,
    scrape_configs: Vec<ScrapeConfig>,
}

#[derive(Serialize)]
struct Global {
    scrape_interval: &'static str,
    evaluation_interval: &'static str,
}

#[derive(Serialize)]
struct ScrapeConfig {
    job_name: String,
    static_configs: Vec<StaticConfig>,
}

#[derive(Serialize)]
struct StaticConfig {
    targets: Vec<String>,
    labels: BTreeMap<&'static str, String>,
}

/// prometheus.yml: one job per exporter, one static config per node (labelled with the cluster
/// and the node's name, which the alerts name).
pub fn prometheus_yml(c: &ClusterPlan) -> String {
    let mut jobs: Vec<ScrapeConfig> = Vec::new();
    let cluster = c
        .nodes
        .first()
        .map(|p| p.cluster.clone())
        .unwrap_or_default();
    for t in targets(&c.nodes) {
        let i = match jobs.iter().position(|j| j.job_name == t.job) {
            Some(i) => i,
            None => {
                jobs.push(ScrapeConfig {
                    job_name: t.job.to_string(),
                    static_configs: Vec::new(),
                });
                jobs.len() - 1
            }
        };
        jobs[i].static_configs.push(StaticConfig {
            targets: vec![t.address],
            labels: BTreeMap::from([("cluster", cluster.clone()), ("node", t.node)]),
        });
    }
    let recipe = c.nodes.first().map(|p| p.recipe.as_str()).unwrap_or("");
    yaml(
        &format!(
            "# Prometheus scrape configuration of cluster {cluster} (written by imgbuild from {recipe}).\n\
             # Run a Prometheus with it (prometheus --config.file=prometheus.yml, rules.yml beside it),\n\
             # or copy its scrape_configs and rule_files into your own. It must scrape from an address\n\
             # in the recipe's metrics.clients: the nodes' firewalls drop anyone else.\n"
        ),
        &Config {
            global: Global {
                scrape_interval: INTERVAL,
                evaluation_interval: INTERVAL,
            },
            rule_files: vec!["rules.yml"],
            scrape_configs: jobs,
        },
    )
}

#[derive(Serialize)]
struct Rules {
    groups: Vec<Group>,
}

#[derive(Serialize)]
struct Group {
    name: &'static str,
    rules: Vec<Rule>,
}

#[derive(Serialize)]
struct Rule {
    alert: &'static str,
    expr: String,
    #[serde(rename = "for")]
    for_: &'static str,
    labels: BTreeMap<&'static str, &'static str>,
    annotations: BTreeMap<&'static str, String>,
}

/// A rule whose condition must hold longer than [`FOR`] (slow trends: a disk filling, a clock
/// drifting).
fn rule_for(for_: &'static str, r: Rule) -> Rule {
    Rule { for_, ..r }
}

fn rule(alert: &'static str, severity: &'static str, expr: String, summary: String) -> Rule {
    Rule {
        alert,
        expr,
        for_: FOR,
        labels: BTreeMap::from([("severity", severity)]),
        annotations: BTreeMap::from([("summary", summary)]),
    }
}

/// The cluster's shape, which the rules and the dashboard compare with.
pub(crate) struct Shape {
    ensemble: usize,
    brokers: usize,
    nimbuses: usize,
    supervisors: usize,
    /// Nodes with a node exporter.
    hosts: usize,
}

fn shape(c: &ClusterPlan) -> Shape {
    let t = targets(&c.nodes);
    let count = |job: &str| t.iter().filter(|x| x.job == job).count();
    Shape {
        ensemble: count("zookeeper"),
        brokers: count("kafka"),
        nimbuses: count("storm-nimbus"),
        supervisors: count("storm-supervisor"),
        hosts: count("node"),
    }
}

/// The alert names `rules_yml` writes for this cluster, in order.
pub fn alert_names(c: &ClusterPlan) -> Vec<&'static str> {
    groups(c)
        .iter()
        .flat_map(|g| g.rules.iter().map(|r| r.alert))
        .collect()
}

fn groups(c: &ClusterPlan) -> Vec<Group> {
    let s = shape(c);
    let mut out = Vec::new();
    if s.brokers > 0 {
        out.push(Group {
            name: "kafka",
            rules: vec![
                rule(
                    "KafkaBrokerDown",
                    "critical",
                    r#"up{job="kafka"} == 0"#.into(),
                    "Kafka on {{ $labels.node }} does not answer its metrics endpoint".into(),
                ),
                rule(
                    "KafkaBrokersMissing",
                    "critical",
                    format!(
                        "max(kafka_controller_kafkacontroller_activebrokercount) < {}",
                        s.brokers
                    ),
                    format!(
                        "the active controller counts {{{{ $value }}}} of {} brokers",
                        s.brokers
                    ),
                ),
                rule(
                    "KafkaActiveControllerCount",
                    "critical",
                    "(sum(kafka_controller_kafkacontroller_activecontrollercount) or vector(0)) != 1"
                        .into(),
                    "{{ $value }} active Kafka controllers, not one".into(),
                ),
                rule(
                    "KafkaUnderReplicatedPartitions",
                    "warning",
                    "kafka_server_replicamanager_underreplicatedpartitions > 0".into(),
                    "{{ $value }} under-replicated partitions led by {{ $labels.node }}".into(),
                ),
                rule(
                    "KafkaUnderMinIsrPartitions",
                    "critical",
                    "kafka_server_replicamanager_underminisrpartitioncount > 0".into(),
                    "{{ $value }} partitions led by {{ $labels.node }} are under min.insync.replicas: acks=all producers fail".into(),
                ),
                rule(
                    "KafkaOfflinePartitions",
                    "critical",
                    "max(kafka_controller_kafkacontroller_offlinepartitionscount) > 0".into(),
                    "{{ $value }} partitions have no leader".into(),
                ),
                rule(
                    "KafkaOfflineLogDirectories",
                    "critical",
                    "kafka_log_logmanager_offlinelogdirectorycount > 0".into(),
                    "{{ $value }} log directories offline on {{ $labels.node }}".into(),
                ),
            ],
        });
    }
    if s.ensemble > 0 {
        out.push(Group {
            name: "zookeeper",
            rules: vec![
                rule(
                    "ZooKeeperDown",
                    "critical",
                    r#"up{job="zookeeper"} == 0"#.into(),
                    "ZooKeeper on {{ $labels.node }} does not answer its metrics endpoint".into(),
                ),
                rule(
                    "ZooKeeperQuorumIncomplete",
                    "warning",
                    format!(
                        "(max(synced_followers) or vector(0)) < {}",
                        s.ensemble.saturating_sub(1)
                    ),
                    format!(
                        "the ZooKeeper leader has {{{{ $value }}}} of {} followers in sync",
                        s.ensemble.saturating_sub(1)
                    ),
                ),
                rule(
                    "ZooKeeperOutstandingRequests",
                    "warning",
                    "outstanding_requests > 10".into(),
                    "{{ $value }} requests queued on ZooKeeper {{ $labels.node }}".into(),
                ),
            ],
        });
    }
    if s.nimbuses + s.supervisors > 0 {
        let mut rules = vec![rule(
            "StormDaemonDown",
            "critical",
            r#"up{job=~"storm-nimbus|storm-supervisor"} == 0"#.into(),
            "Storm's {{ $labels.job }} on {{ $labels.node }} does not answer its metrics endpoint"
                .into(),
        )];
        if s.nimbuses > 0 {
            rules.push(rule(
                "StormNimbusWithoutLeader",
                "critical",
                "(max(storm_cluster_num_nimbus_leaders) or vector(0)) < 1".into(),
                "no Storm nimbus is the leader: nothing is scheduled".into(),
            ));
            rules.push(rule(
                "StormSupervisorsMissing",
                "warning",
                format!("max(storm_cluster_num_supervisors) < {}", s.supervisors),
                format!(
                    "nimbus counts {{{{ $value }}}} of {} supervisors",
                    s.supervisors
                ),
            ));
        }
        // A worker answers only while it runs in its slot: a free slot's endpoint is down by
        // design, so no rule reads up{job="storm-worker"}.
        rules.push(rule(
            "StormTopologyFailingTuples",
            "warning",
            r#"sum by (topology, component) (rate(storm_topology_tuples_total{action="fail"}[5m])) > 0"#
                .into(),
            "{{ $labels.component }} of topology {{ $labels.topology }} fails tuples ({{ $value | humanize }}/s over 5 minutes): they time out or are failed, and are replayed or lost"
                .into(),
        ));
        rules.push(rule(
            "StormTopologyNotActive",
            "warning",
            // A spout asleep more than half the time because its topology is not ACTIVE.
            "sum by (topology, component) (rate(storm_spout_inactive_milliseconds_total[2m])) > 500"
                .into(),
            "topology {{ $labels.topology }} is not ACTIVE (deactivated, rebalancing or being killed): spout {{ $labels.component }} emits nothing"
                .into(),
        ));
        rules.push(rule(
            "StormWorkersFailingToStart",
            "warning",
            "increase(storm_supervisor_num_worker_start_timed_out_total[5m]) > 0".into(),
            "workers on {{ $labels.node }} timed out starting in the last 5 minutes".into(),
        ));
        out.push(Group {
            name: "storm",
            rules,
        });
    }
    if s.hosts > 0 {
        out.push(Group {
            name: "node",
            rules: node_rules(),
        });
    }
    out
}

/// The node exporter's: the host itself. Local filesystems only (not the EFI system partition,
/// sized to its content, nor memory-backed ones).
fn node_rules() -> Vec<Rule> {
    const FS: &str = r#"{fstype=~"ext4|xfs|btrfs"}"#;
    vec![
        rule(
            "NodeExporterDown",
            "critical",
            r#"up{job="node"} == 0"#.into(),
            "the node exporter on {{ $labels.node }} does not answer: the host is down or unreachable"
                .into(),
        ),
        rule_for(
            "5m",
            rule(
                "NodeFilesystemAlmostFull",
                "critical",
                format!(
                    "node_filesystem_avail_bytes{FS} / node_filesystem_size_bytes{FS} < 0.10 \
                     and node_filesystem_readonly{FS} == 0"
                ),
                "{{ $labels.mountpoint }} on {{ $labels.node }} has less than 10% space left".into(),
            ),
        ),
        rule_for(
            "1h",
            rule(
                "NodeFilesystemFillingUp",
                "warning",
                format!(
                    "predict_linear(node_filesystem_avail_bytes{FS}[6h], 24 * 3600) < 0 \
                     and node_filesystem_avail_bytes{FS} / node_filesystem_size_bytes{FS} < 0.40 \
                     and node_filesystem_readonly{FS} == 0"
                ),
                "{{ $labels.mountpoint }} on {{ $labels.node }} fills up within 24 hours at this rate"
                    .into(),
            ),
        ),
        rule_for(
            "5m",
            rule(
                "NodeMemoryLow",
                "warning",
                "node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes < 0.10".into(),
                "{{ $labels.node }} has less than 10% of its memory available".into(),
            ),
        ),
        rule_for(
            "10m",
            rule(
                "NodeClockNotSynchronising",
                "warning",
                "min_over_time(node_timex_sync_status[5m]) == 0 and node_timex_maxerror_seconds >= 16"
                    .into(),
                "the clock of {{ $labels.node }} is not synchronised (NTP): ZooKeeper sessions and Kafka's timestamps drift"
                    .into(),
            ),
        ),
        rule_for(
            "10m",
            rule(
                "NodeClockSkew",
                "warning",
                "abs(node_timex_offset_seconds) > 0.05".into(),
                "the clock of {{ $labels.node }} is {{ $value }} s off its time source".into(),
            ),
        ),
    ]
}

/// rules.yml: the alerts, with thresholds from the cluster's shape.
pub fn rules_yml(c: &ClusterPlan) -> String {
    yaml(
        "# Alert rules of the cluster (written by imgbuild from the recipe): thresholds from its\n\
         # shape (ensemble, brokers, nimbuses, supervisors). `promtool check rules` validates them.\n",
        &Rules { groups: groups(c) },
    )
}

/// grafana-dashboard.json: the cluster's dashboard for Grafana (see `dashboard`).
pub fn dashboard_json(c: &ClusterPlan) -> String {
    let cluster = c.nodes.first().map(|p| p.cluster.as_str()).unwrap_or("");
    let d = dashboard::dashboard(cluster, &shape(c));
    serde_json::to_string_pretty(&d).expect("a JSON value always serialises") + "\n"
}

/// The files `images/prometheus/` holds.
pub const FILES: [&str; 3] = ["prometheus.yml", "rules.yml", "grafana-dashboard.json"];

/// The files of `images/prometheus/`, by name; none with `metrics` off.
pub fn files(c: &ClusterPlan) -> Vec<(&'static str, String)> {
    if targets(&c.nodes).is_empty() {
        return Vec::new();
    }
    vec![
        (FILES[0], prometheus_yml(c)),
        (FILES[1], rules_yml(c)),
        (FILES[2], dashboard_json(c)),
    ]
}

/// Write the files into `dir`, each through a temporary name and only when its content changed
/// (a no-op build rewrites nothing); with `metrics` off, remove ones an earlier build left.
/// Returns the files written or found up to date.
pub fn write(dir: &Path, c: &ClusterPlan) -> Result<Vec<PathBuf>> {
    let files = files(c);
    if files.is_empty() {
        for name in FILES {
            let p = dir.join(name);
            if p.exists() {
                std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            }
        }
        return Ok(Vec::new());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut out = Vec::new();
    for (name, content) in files {
        let path = dir.join(name);
        if std::fs::read(&path).ok().as_deref() != Some(content.as_bytes()) {
            let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
            std::fs::write(&tmp, &content).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &path)
                .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        }
        out.push(path);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference() -> ClusterPlan {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/cluster.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let loaded = crate::recipe::parse(&path, text).unwrap();
        crate::plan::resolve(&loaded).unwrap()
    }

    #[test]
    fn one_job_per_exporter_with_every_node() {
        let c = reference();
        let t = targets(&c.nodes);
        // Per node: ZooKeeper, Kafka, nimbus, supervisor, two workers (one per slot), the host.
        assert_eq!(t.len(), 21);
        let yml = prometheus_yml(&c);
        for job in [
            "zookeeper",
            "kafka",
            "storm-nimbus",
            "storm-supervisor",
            "storm-worker",
            "node",
        ] {
            assert_eq!(
                yml.matches(&format!("job_name: \"{job}\"")).count(),
                1,
                "{yml}"
            );
        }
        assert!(yml.contains("targets: [\"192.168.200.153:7071\"]"), "{yml}");
        assert!(yml.contains("targets: [\"192.168.200.151:9100\"]"), "{yml}");
        assert!(
            yml.contains("targets: [\"192.168.200.152:16701\"]"),
            "{yml}"
        );
        assert!(yml.contains("node: \"node3\""), "{yml}");
        // Thresholds from the cluster's shape.
        let rules = rules_yml(&c);
        assert!(rules.contains("activebrokercount) < 3"), "{rules}");
        assert!(rules.contains("vector(0)) < 2"), "{rules}");
        assert!(rules.contains("num_supervisors) < 3"), "{rules}");
    }

    #[test]
    fn the_dashboard_is_grafana_shaped_and_laid_out_on_the_grid() {
        let c = reference();
        let d: serde_json::Value = serde_json::from_str(&dashboard_json(&c)).unwrap();
        assert_eq!(d["uid"], "imgbuild-streaming");
        let panels = d["panels"].as_array().unwrap();
        assert!(panels.len() >= 12);
        let mut ids = std::collections::BTreeSet::new();
        for p in panels {
            assert!(ids.insert(p["id"].as_u64().unwrap()), "ids unique");
            let g = &p["gridPos"];
            let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
            assert!(x + w <= 24, "{p}");
            assert!(["stat", "timeseries"].contains(&p["type"].as_str().unwrap()));
            assert!(!p["targets"].as_array().unwrap().is_empty(), "{p}");
        }
        // The cluster's shape in the thresholds: red below 3 brokers.
        let brokers = &panels[0];
        assert_eq!(
            brokers["fieldConfig"]["defaults"]["thresholds"]["steps"][1]["value"],
            3
        );
        assert!(dashboard::expressions(&d).len() > panels.len());
    }

    #[test]
    fn metrics_off_writes_nothing_and_removes_old_files() {
        let dir = tempfile::tempdir().unwrap();
        let c = reference();
        let written = write(dir.path(), &c).unwrap();
        assert_eq!(written.len(), 3);
        let before = std::fs::metadata(&written[0]).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        write(dir.path(), &c).unwrap();
        let after = std::fs::metadata(&written[0]).unwrap().modified().unwrap();
        assert_eq!(before, after, "unchanged content is not rewritten");
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/cluster.yaml");
        let text = std::fs::read_to_string(&path).unwrap() + "\nmetrics:\n  enabled: false\n";
        let off = crate::plan::resolve(&crate::recipe::parse(&path, text).unwrap()).unwrap();
        assert!(write(dir.path(), &off).unwrap().is_empty());
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }
}
