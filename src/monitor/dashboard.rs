//! A Grafana dashboard of the cluster (JSON model, schemaVersion 39), beside the scrape
//! configuration: brokers, partitions and their replicas, request latency, ZooKeeper's quorum,
//! Storm's supervisors, slots and workers, and each JVM's heap and CPU. Its data source is a
//! variable (`${datasource}`): import it into a Grafana with a Prometheus that runs the
//! generated prometheus.yml. Every expression is one `tests/prometheus.rs` has promtool parse.

use serde_json::{Value, json};

use super::Shape;

/// A panel: its kind, title, width (of 24 columns) and queries (expression, legend).
struct Panel {
    kind: &'static str,
    title: String,
    width: u32,
    queries: Vec<(String, &'static str)>,
    /// A stat that is red below this (the cluster's shape), green at or above it.
    at_least: Option<usize>,
    unit: &'static str,
}

fn stat(title: &str, expr: &str, at_least: Option<usize>) -> Panel {
    Panel {
        kind: "stat",
        title: title.to_string(),
        width: 4,
        queries: vec![(expr.to_string(), "")],
        at_least,
        unit: "short",
    }
}

fn series(title: &str, unit: &'static str, queries: &[(&str, &'static str)]) -> Panel {
    Panel {
        kind: "timeseries",
        title: title.to_string(),
        width: 12,
        queries: queries.iter().map(|(e, l)| (e.to_string(), *l)).collect(),
        at_least: None,
        unit,
    }
}

fn panels(s: &Shape) -> Vec<Panel> {
    let mut out = Vec::new();
    if s.brokers > 0 {
        out.push(stat(
            "Kafka brokers registered",
            "max(kafka_controller_kafkacontroller_activebrokercount)",
            Some(s.brokers),
        ));
        out.push(stat(
            "Active controllers",
            "sum(kafka_controller_kafkacontroller_activecontrollercount)",
            Some(1),
        ));
        out.push(stat(
            "Partitions",
            "max(kafka_controller_kafkacontroller_globalpartitioncount)",
            None,
        ));
        out.push(stat(
            "Offline partitions",
            "max(kafka_controller_kafkacontroller_offlinepartitionscount)",
            None,
        ));
    }
    if s.ensemble > 0 {
        out.push(stat(
            "ZooKeeper followers in sync",
            "max(synced_followers)",
            Some(s.ensemble.saturating_sub(1)),
        ));
    }
    if s.nimbuses > 0 {
        out.push(stat(
            "Storm supervisors",
            "max(storm_cluster_num_supervisors)",
            Some(s.supervisors),
        ));
    }
    if s.brokers > 0 {
        out.push(series(
            "Partitions short of replicas, by leader",
            "short",
            &[
                (
                    "kafka_server_replicamanager_underreplicatedpartitions",
                    "under-replicated {{node}}",
                ),
                (
                    "kafka_server_replicamanager_underminisrpartitioncount",
                    "under min ISR {{node}}",
                ),
            ],
        ));
        out.push(series(
            "Messages in per second",
            "short",
            &[(
                "sum by (node) (rate(kafka_server_brokertopicmetrics_messagesin_total[5m]))",
                "{{node}}",
            )],
        ));
        out.push(series(
            "Request latency, 99th percentile",
            "ms",
            &[(
                "kafka_network_requestmetrics_totaltimems{quantile=\"0.99\"}",
                "{{node}} {{request}}",
            )],
        ));
        out.push(series(
            "Bytes in and out per second",
            "Bps",
            &[
                (
                    "sum by (node) (rate(kafka_server_brokertopicmetrics_bytesin_total[5m]))",
                    "in {{node}}",
                ),
                (
                    "sum by (node) (rate(kafka_server_brokertopicmetrics_bytesout_total[5m]))",
                    "out {{node}}",
                ),
            ],
        ));
    }
    if s.ensemble > 0 {
        out.push(series(
            "ZooKeeper outstanding requests",
            "short",
            &[("outstanding_requests", "{{node}}")],
        ));
    }
    if s.nimbuses + s.supervisors > 0 {
        out.push(series(
            "Storm slots used, workers and topologies",
            "short",
            &[
                (
                    "storm_supervisor_num_slots_used_gauge",
                    "slots used {{node}}",
                ),
                ("max(storm_cluster_num_total_used_workers)", "workers used"),
                ("max(storm_cluster_num_topologies)", "topologies"),
            ],
        ));
        out.push(series(
            "Storm topology throughput: tuples per second",
            "short",
            &[
                (
                    "sum by (topology) (rate(storm_topology_tuples_total{action=\"emit\"}[5m]))",
                    "emitted {{topology}}",
                ),
                (
                    "sum by (topology) (rate(storm_topology_tuples_total{action=\"ack\"}[5m]))",
                    "acked {{topology}}",
                ),
                (
                    "sum by (topology) (rate(storm_topology_tuples_total{action=\"fail\"}[5m]))",
                    "failed {{topology}}",
                ),
            ],
        ));
    }
    out.push(series(
        "JVM heap used",
        "bytes",
        &[(
            // The JMX exporter's name, and ZooKeeper's (its simpleclient's older one).
            "jvm_memory_used_bytes{area=\"heap\"} or jvm_memory_bytes_used{area=\"heap\"}",
            "{{job}} {{node}}",
        )],
    ));
    out.push(series(
        "CPU of each process",
        "percentunit",
        &[("rate(process_cpu_seconds_total[5m])", "{{job}} {{node}}")],
    ));
    if s.hosts > 0 {
        out.push(series(
            "Node CPU busy",
            "percentunit",
            &[(
                "1 - avg by (node) (rate(node_cpu_seconds_total{mode=\"idle\"}[5m]))",
                "{{node}}",
            )],
        ));
        out.push(series(
            "Node memory available",
            "percentunit",
            &[(
                "node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes",
                "{{node}}",
            )],
        ));
        out.push(series(
            "Node filesystem space left",
            "percentunit",
            &[(
                "node_filesystem_avail_bytes{fstype=~\"ext4|xfs|btrfs\"} / node_filesystem_size_bytes{fstype=~\"ext4|xfs|btrfs\"}",
                "{{node}} {{mountpoint}}",
            )],
        ));
        out.push(series(
            "Node network traffic",
            "Bps",
            &[
                (
                    "sum by (node) (rate(node_network_receive_bytes_total{device!=\"lo\"}[5m]))",
                    "in {{node}}",
                ),
                (
                    "sum by (node) (rate(node_network_transmit_bytes_total{device!=\"lo\"}[5m]))",
                    "out {{node}}",
                ),
            ],
        ));
        out.push(series(
            "Node clock offset",
            "s",
            &[("node_timex_offset_seconds", "{{node}}")],
        ));
    }
    out.push(series(
        "Exporters answering",
        "short",
        &[("sum by (job) (up)", "{{job}}")],
    ));
    out
}

fn panel_json(id: usize, p: &Panel, x: u32, y: u32) -> Value {
    let targets: Vec<Value> = p
        .queries
        .iter()
        .enumerate()
        .map(|(i, (expr, legend))| {
            json!({
                "refId": ((b'A' + i as u8) as char).to_string(),
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "expr": expr,
                "legendFormat": legend,
            })
        })
        .collect();
    let thresholds = match p.at_least {
        Some(n) => json!({"mode": "absolute", "steps": [
            {"color": "red", "value": null},
            {"color": "green", "value": n},
        ]}),
        None => json!({"mode": "absolute", "steps": [{"color": "green", "value": null}]}),
    };
    json!({
        "id": id,
        "type": p.kind,
        "title": p.title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"x": x, "y": y, "w": p.width, "h": if p.kind == "stat" { 4 } else { 8 }},
        "fieldConfig": {"defaults": {"unit": p.unit, "thresholds": thresholds}, "overrides": []},
        "options": {},
        "targets": targets,
    })
}

/// The dashboard of cluster `cluster` with the shape `s`.
pub(super) fn dashboard(cluster: &str, s: &Shape) -> Value {
    let mut out = Vec::new();
    let (mut x, mut y, mut row_h) = (0, 0, 0);
    for (i, p) in panels(s).iter().enumerate() {
        let h = if p.kind == "stat" { 4 } else { 8 };
        if x + p.width > 24 {
            x = 0;
            y += row_h;
            row_h = 0;
        }
        out.push(panel_json(i + 1, p, x, y));
        x += p.width;
        row_h = row_h.max(h);
    }
    json!({
        "title": format!("imgbuild cluster {cluster}"),
        "uid": format!("imgbuild-{cluster}"),
        "description": "Generated by imgbuild from the recipe, for the Prometheus of images/prometheus/prometheus.yml.",
        "tags": ["imgbuild", "kafka", "zookeeper", "storm"],
        "schemaVersion": 39,
        "version": 1,
        "editable": true,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "templating": {"list": [{
            "name": "datasource",
            "label": "Prometheus",
            "type": "datasource",
            "query": "prometheus",
        }]},
        "panels": out,
    })
}

/// Every PromQL expression of the dashboard, in panel order.
pub fn expressions(d: &Value) -> Vec<String> {
    d["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect()
}
