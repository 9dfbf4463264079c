//! The generated Prometheus configuration and alert rules, checked by Prometheus's own promtool
//! (Debian's, extracted by tests/fixtures/prometheus.sh): valid, and the rules fire when the
//! cluster loses a node and stay quiet while it is whole (`promtool test rules`, with series
//! named as the images' exporters name them).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// promtool, extracted once per machine under target/ (keyed by the script), under a lock.
fn promtool() -> PathBuf {
    use sha2::Digest;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/prometheus.sh");
    let hash = hex::encode(&sha2::Sha256::digest(std::fs::read(&script).unwrap())[..6]);
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.join(format!("prometheus-{hash}"));
    let lock = std::fs::File::create(tmp.join("prometheus.lock")).unwrap();
    lock.lock().unwrap();
    if !dir.join("promtool").is_file() {
        let o = Command::new("bash")
            .arg(&script)
            .arg(&dir)
            .output()
            .unwrap();
        common::ok(&o, "tests/fixtures/prometheus.sh");
    }
    dir.join("promtool")
}

/// `imgbuild prometheus -o DIR` for the recipe text.
fn generate(recipe: &str, dir: &Path) -> String {
    let path = dir.join("recipe.yaml");
    std::fs::write(&path, recipe).unwrap();
    let o = Command::new(assert_cmd::cargo::cargo_bin("imgbuild"))
        .arg("-r")
        .arg(&path)
        .arg("prometheus")
        .arg("-o")
        .arg(dir.join("prometheus"))
        .output()
        .unwrap();
    common::ok(&o, "imgbuild prometheus")
}

fn reference() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/cluster.yaml"))
        .unwrap()
}

fn promtool_run(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn generated_config_and_rules_pass_promtool_check() {
    let dir = tempfile::tempdir().unwrap();
    let out = generate(&reference(), dir.path());
    assert!(
        out.contains(
            "(6 jobs: zookeeper, kafka, storm-nimbus, storm-supervisor, storm-worker, node; 21 targets;"
        ),
        "{out}"
    );
    let p = dir.path().join("prometheus");
    let o = promtool_run(&["check", "config", "prometheus.yml"], &p);
    let text = common::ok(&o, "promtool check config");
    assert!(text.contains("1 rule files found"), "{text}");
    let o = promtool_run(&["check", "rules", "rules.yml"], &p);
    let text = common::ok(&o, "promtool check rules");
    assert!(text.contains("SUCCESS: 22 rules found"), "{text}");
    // The check is real: a broken expression is refused.
    let rules = std::fs::read_to_string(p.join("rules.yml")).unwrap();
    std::fs::write(p.join("broken.yml"), rules.replacen("> 0\"", "> \"", 1)).unwrap();
    let o = promtool_run(&["check", "rules", "broken.yml"], &p);
    assert!(!o.status.success(), "promtool took a broken rule");
}

#[test]
fn metrics_off_means_no_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let out = generate(
        &format!("{}\nmetrics:\n  enabled: false\n", reference()),
        dir.path(),
    );
    assert!(out.contains("metrics are off"), "{out}");
    assert!(!dir.path().join("prometheus/prometheus.yml").exists());
}

/// The exporters' series of a 3-node cluster sampled every 15 s for 5 minutes; `lost` (if any)
/// goes away after the first minute: its endpoints stop answering (`up` 0, its own series end),
/// and the survivors' gauges say what the real services say then.
fn series(lost: Option<&str>) -> String {
    let nodes = ["node1", "node2", "node3"];
    let mut out = String::new();
    let mut hosts = String::new();
    let mut s = |name: &str, job: &str, node: &str, healthy: &str, after: &str| {
        let after = if lost.is_some() { after } else { healthy };
        out.push_str(&format!(
            "      - series: '{name}{{job=\"{job}\",node=\"{node}\"}}'\n        values: '{healthy}x3 {after}x16'\n"
        ));
    };
    for n in nodes {
        let gone = lost == Some(n);
        let end = |v: &'static str| if gone { "_" } else { v };
        for job in [
            "zookeeper",
            "kafka",
            "storm-nimbus",
            "storm-supervisor",
            "node",
        ] {
            s("up", job, n, "1", if gone { "0" } else { "1" });
        }
        // The host, healthy: a third of its disks and memory free, its clock synchronised.
        hosts.push_str(&host_series(n, gone, lost.is_some()));
        s("quorum_size", "zookeeper", n, "3", end("3"));
        s("outstanding_requests", "zookeeper", n, "0", end("0"));
        // node1 leads ZooKeeper, is Kafka's active controller and Storm's leader nimbus.
        if n == "node1" {
            s("synced_followers", "zookeeper", n, "2", "1");
            s(
                "kafka_controller_kafkacontroller_activecontrollercount",
                "kafka",
                n,
                "1",
                "1",
            );
            s(
                "kafka_controller_kafkacontroller_activebrokercount",
                "kafka",
                n,
                "3",
                "2",
            );
            s(
                "kafka_controller_kafkacontroller_offlinepartitionscount",
                "kafka",
                n,
                "0",
                "0",
            );
            s(
                "storm_cluster_num_nimbus_leaders",
                "storm-nimbus",
                n,
                "1",
                "1",
            );
            s("storm_cluster_num_supervisors", "storm-nimbus", n, "3", "2");
        } else {
            let c = "kafka_controller_kafkacontroller_activecontrollercount";
            s(c, "kafka", n, "0", end("0"));
        }
        // The survivors lead partitions whose third replica is gone: under-replicated, at min ISR.
        s(
            "kafka_server_replicamanager_underreplicatedpartitions",
            "kafka",
            n,
            "0",
            if gone { "_" } else { "1" },
        );
        s(
            "kafka_server_replicamanager_underminisrpartitioncount",
            "kafka",
            n,
            "0",
            end("0"),
        );
        s(
            "kafka_log_logmanager_offlinelogdirectorycount",
            "kafka",
            n,
            "0",
            end("0"),
        );
        s(
            "storm_supervisor_num_worker_start_timed_out_total",
            "storm-supervisor",
            n,
            "0",
            end("0"),
        );
    }
    // The example's one worker, on node2 (not the lost node): tuples emitted, none failed, its
    // spout awake.
    out.push_str(&worker_series(false, false));
    out + &hosts
}

/// The example topology's worker on node2 (slot 6700) every 15 s for 5 minutes: its bolt
/// emits 300 tuples per interval; with `failing`, 30 of them fail per interval; with
/// `inactive`, its spout sleeps all the time (15 000 ms per interval), as a spout of a
/// deactivated topology does; else not at all.
fn worker_series(failing: bool, inactive: bool) -> String {
    let w = r#"job="storm-worker",node="node2",topology="python-wordcount",task="3""#;
    let fail = if failing { "0+30x19" } else { "0x19" };
    let asleep = if inactive { "0+15000x19" } else { "0x19" };
    format!(
        "      - series: 'up{{job=\"storm-worker\",node=\"node2\"}}'\n        values: '1x19'\n\
         \x20     - series: 'storm_topology_tuples_total{{{w},component=\"split\",action=\"emit\",key=\"default\"}}'\n        values: '0+300x19'\n\
         \x20     - series: 'storm_topology_tuples_total{{{w},component=\"split\",action=\"fail\",key=\"sentences:default\"}}'\n        values: '{fail}'\n\
         \x20     - series: 'storm_spout_inactive_milliseconds_total{{job=\"storm-worker\",node=\"node2\",topology=\"python-wordcount\",task=\"5\",component=\"sentences\"}}'\n        values: '{asleep}'\n"
    )
}

#[test]
fn alerts_fire_when_a_node_is_lost_and_stay_quiet_while_it_is_whole() {
    let dir = tempfile::tempdir().unwrap();
    generate(&reference(), dir.path());
    let p = dir.path().join("prometheus");
    let rules = std::fs::read_to_string(p.join("rules.yml")).unwrap();
    let names: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: \""))
        .map(|l| l.trim_end_matches('"'))
        .collect();
    assert_eq!(names.len(), 22, "{rules}");

    // Whole: at 5 minutes no alert fires.
    let quiet: String = names
        .iter()
        .map(|n| {
            format!("      - eval_time: 4m45s\n        alertname: {n}\n        exp_alerts: []\n")
        })
        .collect();
    // node3 lost at 1 minute: at 30 s nothing yet; at 3 minutes (past `for: 1m`) these fire,
    // and nothing else does.
    let lost = format!(
        "      - eval_time: 30s\n        alertname: KafkaBrokerDown\n        exp_alerts: []\n\
         {}{}{}{}{}{}{}{}",
        expect(
            "KafkaBrokerDown",
            &[
                ("severity", "critical"),
                ("job", "kafka"),
                ("node", "node3")
            ],
            &["Kafka on node3 does not answer its metrics endpoint"]
        ),
        expect(
            "ZooKeeperDown",
            &[
                ("severity", "critical"),
                ("job", "zookeeper"),
                ("node", "node3")
            ],
            &["ZooKeeper on node3 does not answer its metrics endpoint"]
        ),
        expect(
            "KafkaBrokersMissing",
            &[("severity", "critical")],
            &["the active controller counts 2 of 3 brokers"]
        ),
        expect(
            "ZooKeeperQuorumIncomplete",
            &[("severity", "warning")],
            &["the ZooKeeper leader has 1 of 2 followers in sync"]
        ),
        expect(
            "StormSupervisorsMissing",
            &[("severity", "warning")],
            &["nimbus counts 2 of 3 supervisors"]
        ),
        expect_two_under_replicated(),
        expect("KafkaActiveControllerCount", &[], &[]),
        expect("KafkaOfflinePartitions", &[], &[]),
    ) + &expect_storm_down()
        + &expect(
            "NodeExporterDown",
            &[("severity", "critical"), ("job", "node"), ("node", "node3")],
            &["the node exporter on node3 does not answer: the host is down or unreachable"],
        )
        + &[
            "KafkaUnderMinIsrPartitions",
            "KafkaOfflineLogDirectories",
            "ZooKeeperOutstandingRequests",
            "StormNimbusWithoutLeader",
            "StormWorkersFailingToStart",
            "StormTopologyFailingTuples",
            "StormTopologyNotActive",
            "NodeFilesystemAlmostFull",
            "NodeFilesystemFillingUp",
            "NodeMemoryLow",
            "NodeClockNotSynchronising",
            "NodeClockSkew",
        ]
        .map(|n| expect(n, &[], &[]))
        .concat();
    for n in &names {
        assert!(
            lost.contains(&format!("eval_time: 3m\n        alertname: {n}\n")),
            "{n} is not judged after the loss"
        );
    }
    let test = format!(
        "rule_files: [rules.yml]\nevaluation_interval: 15s\ntests:\n\
         \x20 - interval: 15s\n    input_series:\n{}    alert_rule_test:\n{quiet}\
         \x20 - interval: 15s\n    input_series:\n{}    alert_rule_test:\n{lost}",
        series(None),
        series(Some("node3")),
    );
    std::fs::write(p.join("test.yml"), &test).unwrap();
    let o = promtool_run(&["test", "rules", "test.yml"], &p);
    common::ok(&o, &format!("promtool test rules\n{test}"));
}

/// The topology's alerts, from its worker's own series: failing tuples, and a spout asleep
/// because its topology is not ACTIVE; neither while it processes and acknowledges.
#[test]
fn topology_alerts_fire_on_failing_tuples_and_an_inactive_spout() {
    let dir = tempfile::tempdir().unwrap();
    generate(&reference(), dir.path());
    let p = dir.path().join("prometheus");
    let case = |failing: bool, inactive: bool| {
        let failing_alert = expect(
            "StormTopologyFailingTuples",
            &[
                ("severity", "warning"),
                ("topology", "python-wordcount"),
                ("component", "split"),
            ],
            if failing {
                &[
                    "split of topology python-wordcount fails tuples (1.2/s over 5 minutes): they time out or are failed, and are replayed or lost",
                ][..]
            } else {
                &[]
            },
        );
        let inactive_alert = expect(
            "StormTopologyNotActive",
            &[
                ("severity", "warning"),
                ("topology", "python-wordcount"),
                ("component", "sentences"),
            ],
            if inactive {
                &[
                    "topology python-wordcount is not ACTIVE (deactivated, rebalancing or being killed): spout sentences emits nothing",
                ][..]
            } else {
                &[]
            },
        );
        format!(
            "  - interval: 15s\n    input_series:\n{}    alert_rule_test:\n{failing_alert}{inactive_alert}",
            worker_series(failing, inactive)
        )
    };
    let test = format!(
        "rule_files: [rules.yml]\nevaluation_interval: 15s\ntests:\n{}{}{}",
        case(false, false),
        case(true, false),
        case(false, true)
    );
    std::fs::write(p.join("test.yml"), &test).unwrap();
    let o = promtool_run(&["test", "rules", "test.yml"], &p);
    common::ok(&o, &format!("promtool test rules\n{test}"));
}

/// A healthy host's node exporter series (every 15 s, as `series`): the root and data
/// filesystems two thirds full, a third of the memory available, the clock synchronised within a
/// millisecond; a lost node's series end after the first minute.
fn host_series(node: &str, gone: bool, loss: bool) -> String {
    let fs = |mount: &str, dev: &str| {
        format!(
            "device=\"{dev}\",fstype=\"ext4\",job=\"node\",mountpoint=\"{mount}\",node=\"{node}\""
        )
    };
    let mut out = String::new();
    let mut line = |series: String, v: &str| {
        let after = if gone && loss { "_" } else { v };
        out.push_str(&format!(
            "      - series: '{series}'\n        values: '{v}x3 {after}x16'\n"
        ));
    };
    for (mount, dev) in [("/", "/dev/vda2"), ("/var/lib/imgbuild", "/dev/vda4")] {
        line(
            format!("node_filesystem_avail_bytes{{{}}}", fs(mount, dev)),
            "1e9",
        );
        line(
            format!("node_filesystem_size_bytes{{{}}}", fs(mount, dev)),
            "3e9",
        );
        line(
            format!("node_filesystem_readonly{{{}}}", fs(mount, dev)),
            "0",
        );
    }
    let j = format!("job=\"node\",node=\"{node}\"");
    line(format!("node_memory_MemAvailable_bytes{{{j}}}"), "2e9");
    line(format!("node_memory_MemTotal_bytes{{{j}}}"), "6e9");
    line(format!("node_timex_sync_status{{{j}}}"), "1");
    line(format!("node_timex_maxerror_seconds{{{j}}}"), "0.1");
    line(format!("node_timex_offset_seconds{{{j}}}"), "0.001");
    out
}

/// A host in trouble, sampled every minute for 75 minutes: node2's data filesystem 39% free and
/// losing 0.3% of its size a minute (full within a day at that rate, never under 10% here), its
/// root filesystem 5% free, 5% of its memory available, its clock unsynchronised (as the kernel
/// says it before NTP answers: status 0, maximum error 16 s) and 0.2 s off.
#[test]
fn host_alerts_fire_on_full_disks_low_memory_and_an_unsynchronised_clock() {
    let dir = tempfile::tempdir().unwrap();
    generate(&reference(), dir.path());
    let p = dir.path().join("prometheus");
    let n = "node2";
    let fs = |mount: &str| {
        format!(
            "device=\"/dev/vda\",fstype=\"ext4\",job=\"node\",mountpoint=\"{mount}\",node=\"{n}\""
        )
    };
    let j = format!("job=\"node\",node=\"{n}\"");
    let series = [
        (format!("up{{{j}}}"), "1x75".to_string()),
        (
            format!("node_filesystem_avail_bytes{{{}}}", fs("/var/lib/imgbuild")),
            "39e7-3e6x75".to_string(),
        ),
        (
            format!("node_filesystem_size_bytes{{{}}}", fs("/var/lib/imgbuild")),
            "1e9x75".to_string(),
        ),
        (
            format!("node_filesystem_readonly{{{}}}", fs("/var/lib/imgbuild")),
            "0x75".to_string(),
        ),
        (
            format!("node_filesystem_avail_bytes{{{}}}", fs("/")),
            "5e7x75".to_string(),
        ),
        (
            format!("node_filesystem_size_bytes{{{}}}", fs("/")),
            "1e9x75".to_string(),
        ),
        (
            format!("node_filesystem_readonly{{{}}}", fs("/")),
            "0x75".to_string(),
        ),
        (
            format!("node_memory_MemAvailable_bytes{{{j}}}"),
            "3e8x75".to_string(),
        ),
        (
            format!("node_memory_MemTotal_bytes{{{j}}}"),
            "6e9x75".to_string(),
        ),
        (format!("node_timex_sync_status{{{j}}}"), "0x75".to_string()),
        (
            format!("node_timex_maxerror_seconds{{{j}}}"),
            "16x75".to_string(),
        ),
        (
            format!("node_timex_offset_seconds{{{j}}}"),
            "0.2x75".to_string(),
        ),
    ]
    .iter()
    .map(|(s, v)| format!("      - series: '{s}'\n        values: '{v}'\n"))
    .collect::<String>();
    let host = |alert: &str, severity: &str, mount: Option<&str>, summary: &str| {
        let mut labels = vec![("severity", severity), ("job", "node"), ("node", n)];
        if let Some(m) = mount {
            labels.extend([
                ("device", "/dev/vda"),
                ("fstype", "ext4"),
                ("mountpoint", m),
            ]);
        }
        expect(alert, &labels, &[summary]).replace("eval_time: 3m", "eval_time: 75m")
    };
    let tests = [
        host(
            "NodeFilesystemAlmostFull",
            "critical",
            Some("/"),
            "/ on node2 has less than 10% space left",
        ),
        host(
            "NodeFilesystemFillingUp",
            "warning",
            Some("/var/lib/imgbuild"),
            "/var/lib/imgbuild on node2 fills up within 24 hours at this rate",
        ),
        host(
            "NodeMemoryLow",
            "warning",
            None,
            "node2 has less than 10% of its memory available",
        ),
        host(
            "NodeClockNotSynchronising",
            "warning",
            None,
            "the clock of node2 is not synchronised (NTP): ZooKeeper sessions and Kafka's timestamps drift",
        ),
        host(
            "NodeClockSkew",
            "warning",
            None,
            "the clock of node2 is 0.2 s off its time source",
        ),
        // Not yet: the clock's rules hold for 10 minutes, the filling disk's for an hour.
        "      - eval_time: 8m\n        alertname: NodeClockNotSynchronising\n        exp_alerts: []\n".into(),
        "      - eval_time: 50m\n        alertname: NodeFilesystemFillingUp\n        exp_alerts: []\n".into(),
        "      - eval_time: 75m\n        alertname: NodeExporterDown\n        exp_alerts: []\n".into(),
    ]
    .concat();
    let test = format!(
        "rule_files: [rules.yml]\nevaluation_interval: 1m\ntests:\n\
         \x20 - interval: 1m\n    input_series:\n{series}    alert_rule_test:\n{tests}"
    );
    std::fs::write(p.join("test.yml"), &test).unwrap();
    let o = promtool_run(&["test", "rules", "test.yml"], &p);
    common::ok(&o, &format!("promtool test rules\n{test}"));
}

/// An alert test at 3 minutes: `alert` fires once per summary given, with `labels` (none: it
/// stays quiet).
fn expect(alert: &str, labels: &[(&str, &str)], summaries: &[&str]) -> String {
    let fired: Vec<(Vec<(&str, &str)>, String)> = summaries
        .iter()
        .map(|s| (labels.to_vec(), s.to_string()))
        .collect();
    expect_each(alert, &fired)
}

/// The same with each firing alert's own labels and summary.
fn expect_each(alert: &str, fired: &[(Vec<(&str, &str)>, String)]) -> String {
    let mut out = format!("      - eval_time: 3m\n        alertname: {alert}\n");
    if fired.is_empty() {
        out.push_str("        exp_alerts: []\n");
        return out;
    }
    out.push_str("        exp_alerts:\n");
    for (labels, s) in fired {
        let l: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}: \"{v}\""))
            .collect();
        out.push_str(&format!(
            "          - exp_labels: {{{}}}\n            exp_annotations: {{summary: \"{s}\"}}\n",
            l.join(", ")
        ));
    }
    out
}

/// node3's nimbus and supervisor both stop answering.
fn expect_storm_down() -> String {
    let fired: Vec<_> = ["storm-nimbus", "storm-supervisor"]
        .map(|job| {
            (
                vec![("severity", "critical"), ("job", job), ("node", "node3")],
                format!("Storm's {job} on node3 does not answer its metrics endpoint"),
            )
        })
        .into();
    expect_each("StormDaemonDown", &fired)
}

/// node1 and node2 each lead a partition that lost its replica on node3.
fn expect_two_under_replicated() -> String {
    let fired: Vec<_> = ["node1", "node2"]
        .map(|n| {
            (
                vec![("severity", "warning"), ("job", "kafka"), ("node", n)],
                format!("1 under-replicated partitions led by {n}"),
            )
        })
        .into();
    expect_each("KafkaUnderReplicatedPartitions", &fired)
}

/// The Grafana dashboard: Grafana is not installable here, so its shape is checked (unit tests
/// in src/monitor) and every PromQL expression in it is given to promtool as a recording rule,
/// which promtool parses like any other.
#[test]
fn every_dashboard_expression_parses() {
    let dir = tempfile::tempdir().unwrap();
    generate(&reference(), dir.path());
    let p = dir.path().join("prometheus");
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.join("grafana-dashboard.json")).unwrap())
            .unwrap();
    let exprs = imgbuild::monitor::dashboard::expressions(&d);
    assert!(exprs.len() >= 15, "{exprs:?}");
    let rules: Vec<serde_json::Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| serde_json::json!({"record": format!("dashboard:expr_{i}"), "expr": e}))
        .collect();
    // JSON is YAML: a rule file promtool reads.
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(p.join("dashboard-rules.yml"), file.to_string()).unwrap();
    let o = promtool_run(&["check", "rules", "dashboard-rules.yml"], &p);
    let text = common::ok(&o, "promtool check rules (the dashboard's expressions)");
    assert!(
        text.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{text}"
    );
}
