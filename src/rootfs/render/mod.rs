//! What goes into a node's root filesystem, as text: service configs, systemd units, identity
//! and the cloud-init seed. Pure functions of the [`Plan`]; `rootfs` writes them.
//!
//! Config choices follow REFERENCE.md §4–§6: autopurge on, 4lw whitelist, AdminServer off 8080,
//! listeners on the node's IP (never localhost), `storm.local.hostname` set, no 127.0.1.1 line.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::layout::{
    CA_CERT, FileSpec, IMAGE_IDENTITY, KAFKA_ACLS, KAFKA_KEYSTORE, KAFKA_TLS_CLIENT,
    NODE_EXPORTER_ARGS, NODE_EXPORTER_UNIT, STORM_KAFKA_CLIENT, STORM_KEYSTORE, ZK_KEYSTORE,
};
use crate::plan::security::SecurityPlan;
use crate::plan::services::{Component, JMX_AGENT, Reach, Unit};
use crate::plan::wiring::{Listener, ListenerName, ProcessRole, comma};
use crate::plan::{KafkaPlan, Plan, Role, ZookeeperPlan};
use crate::recipe::KafkaMode;
use crate::rootfs::props::Properties;

pub mod documents;
mod health;
mod kafka;
mod system;
mod zookeeper;

pub use health::*;
pub use kafka::*;
pub use system::*;
pub use zookeeper::*;

/// A node's files that hold secrets: the PKI's (CA, certificates, keystores, SCRAM credentials),
/// and with SCRAM user storm's client settings with its password, rendered here (0600, storm),
/// right after the Storm keystore. Empty with `security: plaintext`.
pub fn secret_files(p: &Plan) -> anyhow::Result<Vec<FileSpec>> {
    let mut out = crate::pki::node_files(p)?;
    if p.storm.is_some() && p.security.scram() {
        let pw = crate::pki::storm_password(p)?;
        let client = FileSpec {
            path: STORM_KAFKA_CLIENT.trim_start_matches('/').into(),
            content: storm_kafka_client(&p.security, pw.as_deref()).into_bytes(),
            mode: 0o600,
            owner: Some("storm"),
        };
        let keystore = std::path::Path::new(STORM_KEYSTORE.trim_start_matches('/'));
        let at = out
            .iter()
            .position(|f| f.path == keystore)
            .map_or(out.len(), |i| i + 1);
        out.insert(at, client);
    }
    out.extend(crate::pki::ssh::node_files(p)?);
    Ok(out)
}

/// The JMX exporter's rules: which MBeans become which Prometheus metrics.
pub const KAFKA_METRICS_RULES: &str = "/etc/kafka/metrics.yaml";
pub const STORM_METRICS_RULES: &str = "/etc/storm/metrics.yaml";
pub const STORM_WORKER_METRICS_RULES: &str = "/etc/storm/worker-metrics.yaml";

fn file(path: &str, content: String, mode: u32) -> FileSpec {
    FileSpec {
        path: PathBuf::from(path),
        content: content.into_bytes(),
        mode,
        owner: None,
    }
}

/// A system user per service: (name, home/data directory, description).
pub const SERVICE_USERS: &[(&str, &str, &str)] = &[
    ("zookeeper", "/var/lib/zookeeper", "Apache ZooKeeper"),
    ("kafka", "/var/lib/kafka", "Apache Kafka"),
    ("storm", "/var/lib/storm", "Apache Storm"),
];

/// examples/python-wordcount, as installed on every Storm node.
pub(crate) const EXAMPLE: &[(&str, &str, u32)] = &[
    (
        "README.md",
        include_str!("../../../examples/python-wordcount/README.md"),
        0o644,
    ),
    (
        "topology.yaml",
        include_str!("../../../examples/python-wordcount/topology.yaml"),
        0o644,
    ),
    (
        "wordcount.properties",
        include_str!("../../../examples/python-wordcount/wordcount.properties"),
        0o644,
    ),
    (
        "build-jar.py",
        include_str!("../../../examples/python-wordcount/build-jar.py"),
        0o755,
    ),
    (
        "multilang/resources/split_sentence.py",
        include_str!("../../../examples/python-wordcount/multilang/resources/split_sentence.py"),
        0o644,
    ),
    (
        "multilang/resources/count_words.py",
        include_str!("../../../examples/python-wordcount/multilang/resources/count_words.py"),
        0o644,
    ),
];

/// Every unit's file, fixed text from assets/units. Notes on them:
/// - kafka.service in ZooKeeper mode orders after a local ZooKeeper when the node has one but
///   never pulls one in (Wants= would start ZooKeeper on a broker outside the ensemble, which has
///   no myid and restarts forever); in KRaft mode it requires kafka-format.service, which formats
///   the log dir with the cluster id baked into the image on the first boot only.
/// - storm-supervisor.service keeps the default KillMode=control-group: the worker JVMs it
///   forks stop with it.
fn unit_text(unit: Unit, mode: KafkaMode) -> &'static str {
    match (unit, mode) {
        (Unit::Zookeeper, _) => include_str!("../assets/units/zookeeper.service"),
        (Unit::KafkaFormat, _) => include_str!("../assets/units/kafka-format.service"),
        (Unit::Kafka, KafkaMode::Kraft) => include_str!("../assets/units/kafka.kraft.service"),
        (Unit::Kafka, KafkaMode::Zookeeper) => {
            include_str!("../assets/units/kafka.zookeeper.service")
        }
        (Unit::StormNimbus, _) => include_str!("../assets/units/storm-nimbus.service"),
        (Unit::StormSupervisor, _) => include_str!("../assets/units/storm-supervisor.service"),
        (Unit::StormUi, _) => include_str!("../assets/units/storm-ui.service"),
        (Unit::StormLogviewer, _) => include_str!("../assets/units/storm-logviewer.service"),
    }
}

/// The units installed on every node (roles decide which are enabled): kafka-format.service
/// only in KRaft mode.
pub fn units(kafka_mode: KafkaMode) -> Vec<FileSpec> {
    let mut out: Vec<FileSpec> = Unit::ALL
        .into_iter()
        .filter(|u| *u != Unit::KafkaFormat || kafka_mode == KafkaMode::Kraft)
        .map(|u| {
            file(
                &format!("etc/systemd/system/{}", u.file_name()),
                unit_text(u, kafka_mode).to_string(),
                0o644,
            )
        })
        .collect();
    out.push(file(
        "etc/systemd/system/imgbuild-health.service",
        include_str!("../assets/units/imgbuild-health.service").to_string(),
        0o644,
    ));
    out.push(file(
        "etc/systemd/system/imgbuild-firewall.service",
        include_str!("../assets/units/imgbuild-firewall.service").to_string(),
        0o644,
    ));
    out.push(file(
        "usr/lib/imgbuild/health.py",
        include_str!("../assets/health.py").to_string(),
        0o755,
    ));
    out.extend(data_partition_files());
    out
}

/// The node's state apart from the OS: systemd-repart's definitions (root slot A as written,
/// slot B the size of the running slot, the data partition the rest of the disk; made at first
/// boot on the real disk, so the raw image stays content-sized), and `imgbuild-data.service`,
/// which formats the data partition only when blank, checks its identity record and mounts
/// the services' state from it before any of them starts. cloud-init no longer grows the root.
fn data_partition_files() -> Vec<FileSpec> {
    const FILES: &[(&str, &str, u32)] = &[
        (
            "usr/lib/repart.d/20-root-a.conf",
            include_str!("../assets/repart.d/20-root-a.conf"),
            0o644,
        ),
        (
            "usr/lib/repart.d/40-data.conf",
            include_str!("../assets/repart.d/40-data.conf"),
            0o644,
        ),
        (
            "etc/systemd/system/systemd-repart.service.d/imgbuild.conf",
            "# imgbuild: slot B's definition, sized from the running slot.\n[Service]\nExecStartPre=/usr/lib/imgbuild/repart-slot\n",
            0o644,
        ),
        (
            "usr/lib/imgbuild/repart-slot",
            include_str!("../assets/repart-slot"),
            0o755,
        ),
        (
            "etc/systemd/system/imgbuild-data.service",
            include_str!("../assets/units/imgbuild-data.service"),
            0o644,
        ),
        (
            "usr/lib/imgbuild/data",
            include_str!("../assets/data"),
            0o755,
        ),
        (
            "usr/lib/imgbuild/slot",
            include_str!("../assets/slot"),
            0o755,
        ),
        (
            "etc/systemd/system/imgbuild-slot.service",
            include_str!("../assets/units/imgbuild-slot.service"),
            0o644,
        ),
        (
            "etc/cloud/cloud.cfg.d/91_imgbuild_disk.cfg",
            "# Written by imgbuild: the root stays in its slot; systemd-repart gives the rest of the\n# disk to slot B and the data partition.\ngrowpart:\n  mode: \"off\"\nresize_rootfs: false\n",
            0o644,
        ),
    ];
    FILES
        .iter()
        .map(|(path, text, mode)| file(path, text.to_string(), *mode))
        .collect()
}

/// The identity a node's data partition must carry (`/usr/lib/imgbuild/identity`).
pub fn data_identity(p: &Plan) -> String {
    format!(
        "cluster={}\nkafka_cluster_id={}\nnode={}\nnode_id={}\n",
        p.cluster,
        p.kafka
            .as_ref()
            .and_then(|k| k.cluster_id.as_deref())
            .unwrap_or("-"),
        p.node.name,
        p.node.id
    )
}

/// `sysusers.d` entries and `tmpfiles.d` lines for the service users and their directories.
pub fn sysusers_and_tmpfiles() -> Vec<FileSpec> {
    let mut sysusers = String::from("# Service users of the imgbuild cluster image.\n");
    let mut tmpfiles =
        String::from("# Data and log directories of the imgbuild cluster services.\n");
    for (name, home, desc) in SERVICE_USERS {
        let _ = writeln!(sysusers, "u {name} - \"{desc}\" {home} /usr/sbin/nologin");
        let _ = writeln!(tmpfiles, "d {home} 0750 {name} {name} -");
        let _ = writeln!(tmpfiles, "d /var/log/{name} 0750 {name} {name} -");
    }
    tmpfiles.push_str("d /var/lib/kafka/data 0750 kafka kafka -\n");
    vec![
        file("usr/lib/sysusers.d/imgbuild.conf", sysusers, 0o644),
        file("usr/lib/tmpfiles.d/imgbuild.conf", tmpfiles, 0o644),
    ]
}

/// The files that make this node itself: identity, service configs, seed.
// Long on purpose: the list of every file a node gets, one entry each: reading it top to bottom is
// reading the node's configuration.
pub fn node_files(p: &Plan) -> Vec<FileSpec> {
    let mut out = vec![
        file("etc/hostname", format!("{}\n", p.node.hostname), 0o644),
        file("etc/hosts", hosts(p), 0o644),
        // Empty: systemd generates a unique id on first boot (every node a distinct machine).
        file("etc/machine-id", String::new(), 0o444),
        file(
            "etc/cloud/cloud.cfg.d/90_imgbuild_datasource.cfg",
            "# Written by imgbuild: the seed is embedded in the image; look nowhere else.\ndatasource_list: [ NoCloud, None ]\n"
                .to_string(),
            0o644,
        ),
    ];
    let java_env = "JAVA_HOME=/opt/java\n";
    if let Some(z) = &p.zookeeper {
        out.push(file(
            "etc/zookeeper/zoo.cfg",
            zoo_cfg(z, p.security.tls(), p.node.ip),
            0o644,
        ));
        // zkEnv.sh puts ZOOCFGDIR first on the classpath: without a logback.xml there, logback
        // falls back to its default (everything at DEBUG on the console, into the journal).
        out.push(file(
            "etc/zookeeper/logback.xml",
            ZOOKEEPER_LOGBACK.to_string(),
            0o644,
        ));
        out.push(file(
            "etc/default/zookeeper",
            format!(
                "# Environment of zookeeper.service (written by imgbuild)\n{java_env}ZOOCFGDIR=/etc/zookeeper\nZOO_LOG_DIR=/var/log/zookeeper\nZK_SERVER_HEAP={}\n\
                 SERVER_JVMFLAGS={G1}\n",
                z.heap_mb
            ),
            0o644,
        ));
        if let Some(id) = z.myid {
            let mut f = file("var/lib/zookeeper/myid", format!("{id}\n"), 0o644);
            f.owner = Some("zookeeper");
            out.push(f);
        }
    }
    if let Some(k) = &p.kafka {
        out.push(file(
            "etc/kafka/server.properties",
            server_properties(k, &p.security),
            0o644,
        ));
        out.push(file(
            KAFKA_TLS_CLIENT.trim_start_matches('/'),
            kafka_tls_client(p.security.tls()),
            0o644,
        ));
        if let Some(script) = kafka_acls(p) {
            out.push(file(KAFKA_ACLS.trim_start_matches('/'), script, 0o755));
            out.push(file(
                "etc/systemd/system/kafka-acls.service",
                include_str!("../assets/units/kafka-acls.service").to_string(),
                0o644,
            ));
        }
        let mut env = format!(
            "# Environment of kafka.service (written by imgbuild)\n{java_env}KAFKA_HEAP_OPTS=-Xms{h}m -Xmx{h}m\nLOG_DIR=/var/log/kafka\n",
            h = k.heap_mb
        );
        if let Some(id) = &k.cluster_id {
            out.push(file("etc/kafka/cluster.id", format!("{id}\n"), 0o644));
            let _ = writeln!(env, "KAFKA_CLUSTER_ID={id}");
        }
        out.push(file("etc/default/kafka", env, 0o644));
        // The broker's JVM alone (not kafka-format's or a tool's) loads the exporter's agent.
        if let Some(port) = k.metrics_port {
            out.push(file(
                KAFKA_METRICS_RULES.trim_start_matches('/'),
                include_str!("../assets/metrics/kafka.yaml").to_string(),
                0o644,
            ));
            out.push(file(
                "etc/default/kafka-metrics",
                format!(
                    "# The broker's Prometheus endpoint (written by imgbuild): the JMX exporter's agent.\n\
                     KAFKA_OPTS=-javaagent:{JMX_AGENT}={ip}:{port}:{KAFKA_METRICS_RULES}\n",
                    ip = p.node.ip
                ),
                0o644,
            ));
        }
    }
    if let Some(s) = &p.storm {
        out.push(file(
            "etc/storm/storm.yaml",
            documents::storm_yaml(s, p.security.tls()),
            0o644,
        ));
        // User storm's Kafka client settings (with SCRAM they hold its password: the PKI's).
        if !p.security.scram() {
            out.push(file(
                STORM_KAFKA_CLIENT.trim_start_matches('/'),
                storm_kafka_client(&p.security, None),
                0o644,
            ));
        }
        // The Python topology of examples/, so an operator (and `up --check`) builds and
        // submits it offline with what the image holds.
        for (name, content, mode) in EXAMPLE {
            out.push(file(
                &format!("usr/share/imgbuild/examples/python-wordcount/{name}"),
                content.to_string(),
                *mode,
            ));
        }
        if s.nimbus_metrics_port.is_some() || s.supervisor_metrics_port.is_some() {
            out.push(file(
                STORM_METRICS_RULES.trim_start_matches('/'),
                include_str!("../assets/metrics/storm.yaml").to_string(),
                0o644,
            ));
        }
        if !s.worker_metrics_ports.is_empty() {
            out.push(file(
                STORM_WORKER_METRICS_RULES.trim_start_matches('/'),
                include_str!("../assets/metrics/storm-worker.yaml").to_string(),
                0o644,
            ));
        }
        let python = if p.artifacts.iter().any(|a| a.name == Component::Python) {
            "/opt/python/bin/python3"
        } else {
            "python3"
        };
        out.push(file(
            "etc/default/storm",
            format!(
                "# Environment of the storm-* services (written by imgbuild)\n{java_env}STORM_CONF_DIR=/etc/storm\n\
                 PATH=/opt/python/bin:/opt/java/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
                 # bin/storm runs storm.py with $PYTHON; multilang bolts find python3 first on PATH.\n\
                 PYTHON={python}\n"
            ),
            0o644,
        ));
    }
    if let Some(port) = p.node_exporter_port() {
        out.extend(node_exporter(p, port));
    }
    out.push(file("etc/fstab", fstab(p), 0o644));
    out.push(file(
        IMAGE_IDENTITY.trim_start_matches('/'),
        data_identity(p),
        0o644,
    ));
    out.push(file("etc/imgbuild/health.json", health_config(p), 0o644));
    out.extend(tuning_files(p));
    if p.firewall.enabled {
        out.push(file(
            "etc/imgbuild/firewall.nft",
            firewall_ruleset(p),
            0o644,
        ));
    }
    for (name, content) in seed(p) {
        out.push(file(
            &format!("var/lib/cloud/seed/nocloud/{name}"),
            content,
            0o600,
        ));
    }
    out
}

/// The distribution's node exporter on the node's address: its arguments (the package's unit
/// reads them from its environment file, which the package ships with none: every address), and
/// a drop-in that starts it once that address is up and brings it back whenever it stops.
fn node_exporter(p: &Plan, port: u16) -> Vec<FileSpec> {
    vec![
        file(
            NODE_EXPORTER_ARGS.trim_start_matches('/'),
            format!(
                "# Arguments of prometheus-node-exporter.service (written by imgbuild): the node's\n\
                 # address only (the firewall opens it to metrics.clients).\n\
                 ARGS=\"--web.listen-address={ip}:{port}\"\n",
                ip = p.node.ip
            ),
            0o644,
        ),
        file(
            &format!("etc/systemd/system/{NODE_EXPORTER_UNIT}.d/imgbuild.conf"),
            "# Written by imgbuild: the exporter binds the node's address, so it starts after the\n\
             # network is up, and it comes back whenever it stops.\n\
             [Unit]\nWants=network-online.target\nAfter=network-online.target\nStartLimitIntervalSec=0\n\n\
             [Service]\nRestart=always\nRestartSec=5\n"
                .to_string(),
            0o644,
        ),
    ]
}

/// The NoCloud seed: (file name, content) for meta-data, user-data and network-config.
pub fn seed(p: &Plan) -> Vec<(&'static str, String)> {
    let user = documents::user_data(p);
    let net = documents::network_config(p);
    // The instance id changes exactly when this node's own seed does, so cloud-init re-runs its
    // per-instance modules after such a change, and edits elsewhere in the recipe leave it alone.
    let h = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(format!(
            "{}\0{user}\0{net}",
            p.node.hostname
        )))
    };
    let meta = format!(
        "instance-id: {}-{}-{}\nlocal-hostname: {}\n",
        p.cluster,
        p.node.name,
        &h[..12],
        p.node.hostname
    );
    vec![
        ("meta-data", meta),
        ("user-data", user),
        ("network-config", net),
    ]
}

/// Symlinks that enable this node's units: (link path, target).
pub fn enablement(p: &Plan) -> Vec<(PathBuf, PathBuf)> {
    p.units
        .iter()
        .map(|u| u.file_name())
        .chain([
            "imgbuild-health.service",
            "imgbuild-data.service",
            "imgbuild-slot.service",
        ])
        .map(|u| ("multi-user.target.wants", u))
        // Wanted by kafka.service, not by a target: a target would wait for it (it waits for
        // the cluster), and the boot would not be complete before it is.
        .chain(acl_unit(p).then_some(("kafka.service.wants", "kafka-acls.service")))
        .chain(
            p.firewall
                .enabled
                .then_some(("sysinit.target.wants", "imgbuild-firewall.service")),
        )
        .map(|(wants, u)| {
            (
                PathBuf::from("etc/systemd/system").join(wants).join(u),
                PathBuf::from("/etc/systemd/system").join(u),
            )
        })
        // The node exporter is the package's unit: enabled with `metrics` on, masked with it off
        // (the base may carry the package, whose installation enabled it).
        .chain(std::iter::once(match p.node_exporter_port() {
            Some(_) => (
                PathBuf::from("etc/systemd/system/multi-user.target.wants")
                    .join(NODE_EXPORTER_UNIT),
                PathBuf::from("/lib/systemd/system").join(NODE_EXPORTER_UNIT),
            ),
            None => (
                PathBuf::from("etc/systemd/system").join(NODE_EXPORTER_UNIT),
                PathBuf::from("/dev/null"),
            ),
        }))
        .collect()
}

#[cfg(test)]
mod tests {
    //! Regression tests for bugs found by reading the rendered files against upstream's scripts.
    use super::*;
    use std::path::Path;

    fn cluster(text: &str) -> crate::plan::ClusterPlan {
        let path = Path::new("recipe.yaml");
        let loaded = crate::recipe::parse(path, text.to_string()).unwrap();
        crate::plan::resolve(&loaded).unwrap()
    }

    fn reference_text() -> String {
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/cluster.yaml"))
            .unwrap()
    }

    /// A ZooKeeper-mode (Kafka 3.9) cluster whose node4 is a broker outside the ensemble.
    fn zookeeper_mode() -> crate::plan::ClusterPlan {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/recipes/kafka-zookeeper-mode.yaml"),
        )
        .unwrap()
        .replace(
            "  node3: {ip: 192.168.200.153}\n",
            "  node3: {ip: 192.168.200.153}\n  node4: {ip: 192.168.200.154, roles: [kafka]}\n",
        );
        assert!(text.contains("node4"));
        cluster(&text)
    }

    fn unit<'a>(units: &'a [FileSpec], name: &str) -> &'a str {
        let f = units
            .iter()
            .find(|f| f.path == Path::new("etc/systemd/system").join(name))
            .unwrap();
        std::str::from_utf8(&f.content).unwrap()
    }

    fn node_file(p: &Plan, path: &str) -> Option<String> {
        node_files(p)
            .into_iter()
            .find(|f| f.path == Path::new(path))
            .map(|f| String::from_utf8(f.content).unwrap())
    }

    /// Bug 1: kafka-run-class.sh runs `$JAVA_HOME/bin/java`, else `java` from PATH; the health
    /// unit (which runs kafka-metadata-quorum.sh) had neither, so the Kafka check never passed.
    #[test]
    fn the_health_unit_gives_kafka_tools_a_java() {
        let units = units(KafkaMode::Kraft);
        let health = unit(&units, "imgbuild-health.service");
        let env: Vec<&str> = health
            .lines()
            .filter_map(|l| l.strip_prefix("Environment="))
            .collect();
        let java_home = env.iter().find_map(|e| e.strip_prefix("JAVA_HOME="));
        let path = env.iter().find_map(|e| e.strip_prefix("PATH="));
        assert_eq!(java_home, Some("/opt/java"), "{health}");
        assert!(
            path.is_some_and(|p| p.split(':').any(|d| d == "/opt/java/bin")),
            "{health}"
        );
    }

    /// Bug 2: zkEnv.sh puts ZOOCFGDIR first on the classpath; with only zoo.cfg there, logback
    /// found no configuration and logged everything at DEBUG into the journal.
    #[test]
    fn zookeeper_finds_a_logback_configuration_in_its_config_dir() {
        let c = cluster(&reference_text());
        let p = &c.nodes[0];
        let env = node_file(p, "etc/default/zookeeper").unwrap();
        let dir = env
            .lines()
            .find_map(|l| l.strip_prefix("ZOOCFGDIR="))
            .unwrap();
        let logback = node_file(p, &format!("{}/logback.xml", dir.trim_start_matches('/')))
            .unwrap_or_else(|| panic!("no logback.xml in ZOOCFGDIR {dir}"));
        assert!(logback.contains("<root level=\"INFO\">"), "{logback}");
        assert!(!logback.contains("DEBUG"), "{logback}");
    }

    /// The heaps a node's rendered files give its JVMs, in MiB.
    fn rendered_heaps(p: &Plan) -> u32 {
        let mb = |s: &str, prefix: &str| -> u32 {
            s.split_whitespace()
                .chain(s.split('"'))
                .find_map(|w| {
                    w.strip_prefix(prefix)?
                        .trim_end_matches(['m', '"'])
                        .parse()
                        .ok()
                })
                .unwrap_or(0)
        };
        let mut total = 0;
        if p.roles.contains(&crate::plan::Role::Zookeeper) {
            let env = node_file(p, "etc/default/zookeeper").unwrap();
            total += mb(&env, "ZK_SERVER_HEAP=");
        }
        if p.roles.contains(&crate::plan::Role::Kafka) {
            let env = node_file(p, "etc/default/kafka").unwrap();
            total += mb(&env, "-Xmx");
        }
        if let Some(storm) = node_file(p, "etc/storm/storm.yaml") {
            let value = |k: &str| -> u32 {
                storm
                    .lines()
                    .find_map(|l| l.strip_prefix(k))
                    .map(|v| mb(v, "-Xmx").max(v.trim().parse().unwrap_or(0)))
                    .unwrap_or(0)
            };
            for (role, key) in [
                (crate::plan::Role::StormNimbus, "nimbus.childopts:"),
                (crate::plan::Role::StormSupervisor, "supervisor.childopts:"),
                (crate::plan::Role::StormUi, "ui.childopts:"),
                (crate::plan::Role::StormLogviewer, "logviewer.childopts:"),
            ] {
                if p.roles.contains(&role) {
                    total += value(key);
                }
            }
            if p.roles.contains(&crate::plan::Role::StormSupervisor) {
                // The supervisor launches as many workers as its capacity holds.
                let cap = value("supervisor.memory.capacity.mb:");
                let worker = value("worker.heap.memory.mb:");
                let slots = p.storm.as_ref().unwrap().slots.len() as u32;
                assert!(worker > 0 && cap == worker * slots, "{storm}");
                total += cap;
            }
        }
        total
    }

    /// Bug 3: six 1 GiB daemon heaps and four 1 GiB worker slots (with Storm's default 4096 MiB
    /// supervisor capacity) in the 2 GiB VM `imgbuild up` gave every node.
    #[test]
    fn a_node_is_booted_with_more_memory_than_its_jvm_heaps() {
        for c in [cluster(&reference_text()), zookeeper_mode()] {
            for p in &c.nodes {
                let heaps = rendered_heaps(p);
                assert!(heaps > 0, "{}", p.node.name);
                let vm = p.guest_memory(None).unwrap();
                // Heaps plus a tool JVM and the OS must fit.
                assert!(
                    vm >= heaps + 256 + 512,
                    "{}: VM {vm} MiB for {heaps} MiB of heaps",
                    p.node.name
                );
                assert!(p.guest_memory(Some(heaps)).is_err());
            }
        }
    }

    /// With several nimbuses a topology is accepted only once two hold its code: a nimbus
    /// taking over the lead (the old leader's node lost) must have the code of every topology.
    /// And every Storm node carries the Python example topology, to build and submit offline.
    #[test]
    fn storm_nodes_replicate_topology_code_and_carry_the_example() {
        let c = cluster(&reference_text());
        let p = &c.nodes[0];
        let storm = node_file(p, "etc/storm/storm.yaml").unwrap();
        assert!(
            storm.contains("topology.min.replication.count: 2\n"),
            "{storm}"
        );
        // A new nimbus leader schedules within a minute of a node's loss, not Storm's ten.
        assert!(
            storm.contains("supervisor.worker.heartbeats.max.timeout.secs: 60\n"),
            "{storm}"
        );
        let dir = "usr/share/imgbuild/examples/python-wordcount";
        for f in [
            "topology.yaml",
            "build-jar.py",
            "multilang/resources/split_sentence.py",
        ] {
            assert!(node_file(p, &format!("{dir}/{f}")).is_some(), "{f}");
        }
        let flux = node_file(p, &format!("{dir}/topology.yaml")).unwrap();
        assert!(
            flux.contains("FluxShellBolt") && flux.contains("python3"),
            "{flux}"
        );
    }

    /// Every file a node's tree gets from the renderers, as text: path, mode and owner, then the
    /// content (the example topology, fixed text checked elsewhere, only by path).
    fn rendered(files: &[FileSpec]) -> String {
        let mut out = String::new();
        for f in files {
            let path = f.path.display().to_string();
            let _ = writeln!(
                out,
                "=== {path} ({:o}{})",
                f.mode,
                f.owner.map(|o| format!(", {o}")).unwrap_or_default()
            );
            if !path.starts_with("usr/share/imgbuild/examples/") {
                out.push_str(&String::from_utf8_lossy(&f.content));
                if !out.ends_with('\n') {
                    out.push('\n');
                }
            }
        }
        out
    }

    /// Snapshots of every rendered file (insta; no root, milliseconds): node1..3 of the
    /// reference recipe and a ZooKeeper-mode cluster with a broker outside the ensemble, plus
    /// the shared units, users and tmpfiles. A change to any rendered byte shows here.
    #[test]
    fn rendered_files_snapshots() {
        let scram = reference_text().replace("    clients: mtls\n", "    clients: scram\n");
        assert!(scram.contains("clients: scram"));
        for (name, c) in [
            ("reference", cluster(&reference_text())),
            ("zkmode", zookeeper_mode()),
            // Kafka's clients by SCRAM: server.properties' SASL_SSL client listener, the ACL
            // script on the inter-broker port (the files with secrets are the PKI's: pki::scram).
            ("scram", cluster(&scram)),
        ] {
            let mode = c.nodes[0].kafka.as_ref().unwrap().mode;
            let mut shared = units(mode);
            shared.extend(sysusers_and_tmpfiles());
            insta::assert_snapshot!(format!("{name}-shared"), rendered(&shared));
            for p in &c.nodes {
                let mut text = rendered(&node_files(p));
                for (link, target) in enablement(p) {
                    let _ = writeln!(text, "=== link {} -> {}", link.display(), target.display());
                }
                insta::assert_snapshot!(format!("{name}-{}", p.node.name), text);
            }
        }
    }

    /// `metrics: {enabled: false}`: no exporter configured and no metrics port in the
    /// firewall; on (the reference recipe) ZooKeeper's endpoint binds the node's address only.
    #[test]
    fn metrics_off_leaves_no_endpoint_and_no_open_port() {
        let on = cluster(&reference_text());
        let files = rendered(&node_files(&on.nodes[1]));
        assert!(files.contains("metricsProvider.httpHost=192.168.200.152\n"));
        assert!(files.contains("ip saddr @metrics tcp dport 7000 accept"));
        for port in [7071, 7072, 7073] {
            assert!(files.contains(&format!("ip saddr @metrics tcp dport {port} accept")));
            assert!(files.contains(&format!("{JMX_AGENT}=192.168.200.152:{port}:")));
        }
        // The distribution's node exporter on the node's address, started once it is up.
        assert!(files.contains("ip saddr @metrics tcp dport 9100 accept"));
        assert!(files.contains("ARGS=\"--web.listen-address=192.168.200.152:9100\""));
        assert!(files.contains("After=network-online.target\nStartLimitIntervalSec=0"));
        let wants =
            PathBuf::from("etc/systemd/system/multi-user.target.wants").join(NODE_EXPORTER_UNIT);
        assert!(enablement(&on.nodes[1]).iter().any(|(l, _)| *l == wants));
        // Each worker's own endpoint on 1 and its slot's port, and Storm's JMX reporter on.
        for port in [16700, 16701] {
            assert!(files.contains(&format!("ip saddr @metrics tcp dport {port} accept")));
        }
        assert!(files.contains(&format!(
            "-javaagent:{JMX_AGENT}=192.168.200.152:1%ID%:/etc/storm/worker-metrics.yaml\""
        )));
        assert!(
            files.contains("  - class: \"org.apache.storm.metrics2.reporters.JmxStormReporter\"")
        );
        // ZooKeeper, Kafka, nimbus, supervisor, two workers, the node exporter.
        assert_eq!(on.nodes[1].memory.exporters, 7);
        let text = format!("{}\nmetrics:\n  enabled: false\n", reference_text());
        let off = cluster(&text);
        for p in &off.nodes {
            let files = rendered(&node_files(p));
            assert!(!files.contains("metricsProvider"), "{}", p.node.name);
            assert!(!files.contains("@metrics") && !files.contains("dport 70"));
            assert!(!files.contains("javaagent") && !files.contains("kafka-metrics"));
            assert!(!files.contains("metrics.yaml") && !files.contains("JmxStormReporter"));
            assert_eq!(p.memory.exporters, 0);
            assert!(p.artifacts.iter().all(|a| a.name != Component::JmxExporter));
            // The package's unit masked (its installation enabled it), its arguments not written.
            assert!(!files.contains("web.listen-address") && !files.contains("dport 9100"));
            let masked = (
                PathBuf::from("etc/systemd/system").join(NODE_EXPORTER_UNIT),
                PathBuf::from("/dev/null"),
            );
            assert!(enablement(p).contains(&masked), "{}", p.node.name);
        }
        // The recipe's jmx_exporter entry is left out of the images, and the user is told.
        assert!(off.warnings.iter().any(|w| w.contains("metrics are off")));
    }

    /// `security: plaintext` turns off TLS, authentication and ACLs everywhere, and keeps the
    /// listeners and quorum as they are; `tls` (the reference recipe) has them all.
    #[test]
    fn plaintext_has_no_tls_no_authorizer_and_no_acl_unit() {
        let text = reference_text().replace("security: tls\n", "security: plaintext\n");
        let c = cluster(&text);
        let p = &c.nodes[0];
        let files = rendered(&node_files(p));
        let server = server_properties(p.kafka.as_ref().unwrap(), &p.security);
        assert!(server.contains(
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,CLIENT:PLAINTEXT,INTERNAL:PLAINTEXT\n"
        ));
        for absent in ["ssl.", "authorizer", "super.users"] {
            assert!(!server.contains(absent), "{absent} in {server}");
        }
        assert!(!files.contains("sslQuorum") && !files.contains("kafka-acls"));
        assert!(files.contains("security.protocol=PLAINTEXT\n"));
        assert!(
            !enablement(p)
                .iter()
                .any(|(l, _)| l.ends_with("kafka-acls.service"))
        );
        assert!(c.warnings.iter().any(|w| w.contains("security: plaintext")));
        let tls = cluster(&reference_text());
        let t = &tls.nodes[0];
        let server = server_properties(t.kafka.as_ref().unwrap(), &t.security);
        assert!(server.contains("ssl.client.auth=required\n"));
        assert!(server.contains("super.users=User:node1;User:node2;User:node3\n"));
        assert!(
            enablement(t)
                .iter()
                .any(|(l, _)| l.ends_with("kafka-acls.service"))
        );
    }

    /// Bug 4: ZooKeeper-mode kafka.service had Wants=zookeeper.service, which starts ZooKeeper
    /// on a broker outside the ensemble (no myid: "myid file is missing", restarting forever).
    #[test]
    fn a_zookeeper_mode_broker_does_not_pull_in_zookeeper() {
        let c = zookeeper_mode();
        let node4 = c.nodes.iter().find(|p| p.node.name == "node4").unwrap();
        assert!(node4.zookeeper.as_ref().is_some_and(|z| z.myid.is_none()));
        assert!(!node4.units.contains(&Unit::Zookeeper));
        let units = units(KafkaMode::Zookeeper);
        let kafka = unit(&units, "kafka.service");
        for l in kafka.lines() {
            if let Some(v) = l
                .strip_prefix("Wants=")
                .or_else(|| l.strip_prefix("Requires="))
                .or_else(|| l.strip_prefix("BindsTo="))
            {
                assert!(!v.contains("zookeeper"), "{kafka}");
            }
        }
    }

    /// Bug 5: the health check always used --bootstrap-controller (Kafka 3.7+, KIP-919) though
    /// KRaft recipes may use 3.3+, and ZooKeeper-mode Kafka had no check at all. Now KRaft is
    /// asked over the wire (DescribeQuorum v0, served by every KRaft controller) at a controller
    /// endpoint, whatever the version; ZooKeeper mode reads the brokers' registrations.
    #[test]
    fn the_kafka_health_check_fits_the_version_and_mode() {
        let health =
            |p: &Plan| -> serde_json::Value { serde_json::from_str(&health_config(p)).unwrap() };
        let c = cluster(&reference_text());
        let old = cluster(&reference_text().replace("version: 4.3.1", "version: 3.6.2"));
        for (c, v) in [(&c, "4.3.1"), (&old, "3.6.2")] {
            for p in &c.nodes {
                assert_eq!(p.kafka.as_ref().unwrap().version, v);
                let k = &health(p)["kafka"];
                assert_eq!(k["mode"], "kraft");
                assert_eq!(k["controller"], format!("{}:9093", p.node.ip), "{k}");
                assert_eq!(k["voters"], serde_json::json!([1, 2, 3]));
                assert!(k.get("quorum_tool").is_none(), "no JVM tool: {k}");
            }
        }
        let zk = zookeeper_mode();
        for p in &zk.nodes {
            let k = &health(p)["kafka"];
            assert_eq!(k["mode"], "zookeeper", "{}: {k}", p.node.name);
            assert_eq!(k["brokers_path"], "/kafka/brokers/ids");
            assert_eq!(k["brokers"], 4);
            assert_eq!(k["broker_id"], p.node.id);
        }
    }
}
