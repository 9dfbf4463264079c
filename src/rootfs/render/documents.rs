//! The YAML files a node gets — storm.yaml, cloud-init's user-data and network-config — as typed
//! documents serialised by serde: the fields say what is written, the serialiser does the quoting.

use serde::Serialize;

use crate::plan::{Plan, StormPlan};

/// `/etc/storm/storm.yaml`, in the order Storm's defaults.yaml groups them.
#[derive(Serialize)]
struct StormYaml<'a> {
    #[serde(rename = "storm.zookeeper.servers")]
    zookeeper_servers: Vec<String>,
    #[serde(rename = "storm.zookeeper.port")]
    zookeeper_port: u16,
    #[serde(rename = "storm.zookeeper.root")]
    zookeeper_root: &'a str,
    #[serde(rename = "nimbus.seeds")]
    nimbus_seeds: Vec<String>,
    #[serde(rename = "nimbus.thrift.port")]
    nimbus_port: u16,
    #[serde(rename = "topology.min.replication.count")]
    min_replication_count: usize,
    #[serde(rename = "supervisor.worker.heartbeats.max.timeout.secs")]
    heartbeats_recovery_secs: u32,
    #[serde(rename = "storm.local.dir")]
    local_dir: &'a str,
    #[serde(rename = "storm.local.hostname")]
    local_hostname: &'a str,
    #[serde(rename = "storm.log.dir")]
    log_dir: &'a str,
    #[serde(rename = "supervisor.slots.ports")]
    slots: &'a [u16],
    #[serde(rename = "supervisor.thrift.port")]
    supervisor_port: u16,
    #[serde(rename = "ui.port")]
    ui_port: u16,
    #[serde(rename = "logviewer.port")]
    logviewer_port: u16,
    #[serde(rename = "worker.heap.memory.mb")]
    worker_heap_mb: u32,
    #[serde(rename = "topology.worker.max.heap.size.mb")]
    worker_max_heap_mb: u32,
    #[serde(rename = "supervisor.memory.capacity.mb")]
    supervisor_capacity_mb: usize,
    #[serde(rename = "nimbus.childopts")]
    nimbus_childopts: String,
    #[serde(rename = "supervisor.childopts")]
    supervisor_childopts: String,
    #[serde(rename = "ui.childopts")]
    ui_childopts: String,
    #[serde(rename = "logviewer.childopts")]
    logviewer_childopts: String,
    /// Only with TLS or metrics: Storm's default, the ZooKeeper client's TLS options, and the
    /// JMX exporter's agent on the worker's metrics port (`1%ID%`: 1 and the slot's port).
    #[serde(rename = "worker.childopts", skip_serializing_if = "Option::is_none")]
    worker_childopts: Option<String>,
    /// With metrics: the workers' own metrics (tuples acked, failed, emitted, executed per
    /// task; time a spout waits while its topology is not active) as MBeans for the agent.
    #[serde(
        rename = "topology.metrics.reporters",
        skip_serializing_if = "Vec::is_empty"
    )]
    topology_metrics_reporters: Vec<Reporter>,
}

#[derive(Serialize)]
struct Reporter {
    class: &'static str,
}

/// Storm's reporter of a worker's metrics registry to JMX (domain `metrics`, like the daemons').
const STORM_JMX_REPORTER: &str = "org.apache.storm.metrics2.reporters.JmxStormReporter";

/// Storm 2.8's default worker.childopts (storm-client's defaults.yaml), which a storm.yaml
/// value replaces rather than extends.
const STORM_WORKER_CHILDOPTS: &str = "-Xmx%HEAP-MEM%m -XX:+IgnoreUnrecognizedVMOptions -XX:+PrintGCDetails -Xloggc:artifacts/gc.log -XX:+PrintGCDateStamps -XX:+PrintGCTimeStamps -XX:+UseGCLogFileRotation -XX:NumberOfGCLogFiles=10 -XX:GCLogFileSize=1M -XX:+HeapDumpOnOutOfMemoryError -XX:HeapDumpPath=artifacts/heapdump";

pub(crate) fn yaml<T: Serialize>(header: &str, doc: &T) -> String {
    // serde_norway's Value keeps the struct's field order (serde_json's would sort the keys).
    let v = serde_norway::to_value(doc).expect("a plain struct always serialises");
    let mut out = header.to_string();
    block(&v, 0, &mut out);
    out
}

/// A scalar, or a list of scalars, in flow form: JSON's, whose double-quoted strings are YAML
/// double-quoted scalars.
fn flow(v: &serde_norway::Value) -> String {
    use serde_norway::Value;
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => serde_json::Value::String(s.clone()).to_string(),
        Value::Sequence(items) => format!(
            "[{}]",
            items.iter().map(flow).collect::<Vec<_>>().join(", ")
        ),
        Value::Mapping(m) if m.is_empty() => "{}".into(),
        Value::Mapping(_) | Value::Tagged(_) => unreachable!("block() writes these"),
    }
}

fn is_block(v: &serde_norway::Value) -> bool {
    use serde_norway::Value;
    match v {
        Value::Mapping(m) => !m.is_empty(),
        Value::Sequence(items) => items.iter().any(is_block),
        _ => false,
    }
}

/// YAML for readers of YAML 1.1 too (PyYAML in cloud-init, SnakeYAML in Storm): mappings and
/// lists of mappings in block style, in the document's field order; lists of scalars in flow
/// style; every string double-quoted, so that nothing — a MAC of digits, `yes`, `0644` — can be
/// read as a number or a boolean.
fn block(v: &serde_norway::Value, indent: usize, out: &mut String) {
    use serde_norway::Value;
    let pad = " ".repeat(indent);
    let Value::Mapping(m) = v else {
        out.push_str(&format!("{pad}{}\n", flow(v)));
        return;
    };
    for (k, x) in m {
        let k = k.as_str().expect("string keys");
        let key = if k.starts_with(|c: char| c.is_ascii_alphabetic())
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            k.to_string()
        } else {
            serde_json::Value::String(k.to_string()).to_string()
        };
        match x {
            Value::Mapping(_) if is_block(x) => {
                out.push_str(&format!("{pad}{key}:\n"));
                block(x, indent + 2, out);
            }
            Value::Sequence(items) if is_block(x) => {
                out.push_str(&format!("{pad}{key}:\n"));
                for item in items {
                    // `- ` and the item's first line; its other lines aligned under that one.
                    let mut sub = String::new();
                    block(item, indent + 4, &mut sub);
                    out.push_str(&format!("{pad}  - {}", &sub[indent + 4..]));
                }
            }
            _ => out.push_str(&format!("{pad}{key}: {}\n", flow(x))),
        }
    }
}

/// How long a new nimbus leader waits for every node's worker heartbeats before it schedules:
/// the supervisors of live nodes report within seconds (every 5 s), a lost node never does.
/// Measured: with Storm's 600 s, losing the node that ran both the leading nimbus and the
/// topology's worker left the topology unassigned for the whole 420 s the check waited.
pub const HEARTBEATS_RECOVERY_SECS: u32 = 60;

/// `tls`: every Storm JVM that talks to ZooKeeper (the daemons and the workers) does it over
/// TLS, as the node's Storm identity.
pub fn storm_yaml(s: &StormPlan, tls: bool) -> String {
    use super::system::G1;
    use super::zookeeper::{STORM_ZK_NETTY, zk_client_tls_opts};
    let zk_tls = tls.then(|| zk_client_tls_opts(STORM_ZK_NETTY, crate::layout::STORM_KEYSTORE));
    let with_tls = |opts: String| match &zk_tls {
        Some(t) => format!("{opts} {t}"),
        None => opts,
    };
    let heap = with_tls(format!("-Xmx{}m {G1}", s.heap_mb));
    let workers_export = !s.worker_metrics_ports.is_empty();
    let doc = StormYaml {
        zookeeper_servers: s
            .zookeeper_servers
            .iter()
            .map(|ip| ip.to_string())
            .collect(),
        zookeeper_port: s.zookeeper_port,
        zookeeper_root: "/storm",
        nimbus_seeds: s.nimbus_seeds.iter().map(|ip| ip.to_string()).collect(),
        nimbus_port: s.nimbus_port,
        min_replication_count: s.nimbus_seeds.len().clamp(1, 2),
        heartbeats_recovery_secs: HEARTBEATS_RECOVERY_SECS,
        local_dir: "/var/lib/storm",
        local_hostname: &s.local_hostname,
        log_dir: "/var/log/storm",
        slots: &s.slots,
        supervisor_port: s.supervisor_port,
        ui_port: s.ui_port,
        logviewer_port: s.logviewer_port,
        worker_heap_mb: s.worker_heap_mb,
        worker_max_heap_mb: s.worker_heap_mb,
        // The supervisor schedules no more than its slots' workers can hold.
        supervisor_capacity_mb: s.worker_heap_mb as usize * s.slots.len(),
        nimbus_childopts: with_agent(&heap, &s.local_hostname, s.nimbus_metrics_port),
        supervisor_childopts: with_agent(&heap, &s.local_hostname, s.supervisor_metrics_port),
        ui_childopts: heap.clone(),
        logviewer_childopts: heap,
        worker_childopts: (zk_tls.is_some() || workers_export).then(|| {
            let opts = with_tls(STORM_WORKER_CHILDOPTS.to_string());
            if workers_export {
                agent(
                    &opts,
                    &s.local_hostname,
                    "1%ID%",
                    super::STORM_WORKER_METRICS_RULES,
                )
            } else {
                opts
            }
        }),
        topology_metrics_reporters: if workers_export {
            vec![Reporter {
                class: STORM_JMX_REPORTER,
            }]
        } else {
            Vec::new()
        },
    };
    yaml(
        "# Written by imgbuild from the recipe.\n\
         # topology.min.replication.count: a topology is accepted once this many nimbuses hold\n\
         # its code, so a new leader has it.\n\
         # supervisor.worker.heartbeats.max.timeout.secs: how long a new nimbus leader waits for\n\
         # the workers' heartbeats before it assigns anything (Storm's default, 600 s, leaves a\n\
         # topology whose worker was on the lost node down for ten minutes).\n",
        &doc,
    )
}

/// A daemon's JVM options with the JMX exporter's agent serving its Prometheus endpoint on
/// `ip:port` (rules: STORM_METRICS_RULES), when it has one.
fn with_agent(opts: &str, ip: &str, port: Option<u16>) -> String {
    match port {
        Some(port) => agent(opts, ip, &port.to_string(), super::STORM_METRICS_RULES),
        None => opts.to_string(),
    }
}

/// `opts` and the JMX exporter's agent on `ip:port` with `rules` (`port` may be Storm's
/// `1%ID%`, which the supervisor completes per worker).
fn agent(opts: &str, ip: &str, port: &str, rules: &str) -> String {
    format!(
        "{opts} -javaagent:{}={ip}:{port}:{rules}",
        crate::plan::services::JMX_AGENT
    )
}

/// cloud-init's user-data (cloud-config).
#[derive(Serialize)]
struct CloudConfig<'a> {
    hostname: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    fqdn: Option<&'a str>,
    /// imgbuild writes /etc/hosts itself (node names → real IPs, no 127.0.1.1 line).
    manage_etc_hosts: bool,
    locale: &'a str,
    ssh_pwauth: bool,
    disable_root: bool,
    /// The image carries the node's host key (`pki::ssh`), which the operator pins: cloud-init
    /// must not delete it. It makes a key of `ssh_genkeytypes` only where none is (the schema
    /// wants at least one type), so it makes none here; sshd offers only the pinned one.
    ssh_deletekeys: bool,
    ssh_genkeytypes: [&'a str; 1],
    /// An empty `users:` list is invalid cloud-config (minItems 1): with no users it is left out.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    users: Vec<CloudUser<'a>>,
}

#[derive(Serialize)]
struct CloudUser<'a> {
    name: &'a str,
    lock_passwd: bool,
    shell: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sudo: Option<&'a str>,
    ssh_authorized_keys: &'a [String],
}

pub fn user_data(p: &Plan) -> String {
    let doc = CloudConfig {
        hostname: &p.node.hostname,
        fqdn: p.node.fqdn.as_deref(),
        manage_etc_hosts: false,
        locale: "C.UTF-8",
        ssh_pwauth: false,
        disable_root: true,
        ssh_deletekeys: false,
        ssh_genkeytypes: ["ed25519"],
        users: p
            .users
            .iter()
            .map(|u| CloudUser {
                name: &u.name,
                lock_passwd: true,
                shell: "/bin/bash",
                sudo: u.sudo.then_some("ALL=(ALL) NOPASSWD:ALL"),
                ssh_authorized_keys: &u.ssh_authorized_keys,
            })
            .collect(),
    };
    yaml(
        "#cloud-config\n# Written by imgbuild. No passwords: SSH keys only.\n",
        &doc,
    )
}

/// cloud-init's network-config (netplan version 2), one interface.
#[derive(Serialize)]
struct NetworkConfig {
    version: u8,
    ethernets: std::collections::BTreeMap<String, Ethernet>,
}

#[derive(Serialize)]
struct Ethernet {
    #[serde(rename = "match")]
    matching: Match,
    #[serde(rename = "set-name", skip_serializing_if = "Option::is_none")]
    set_name: Option<String>,
    dhcp4: bool,
    dhcp6: bool,
    addresses: Vec<String>,
    routes: Vec<Route>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nameservers: Option<Nameservers>,
}

#[derive(Serialize)]
struct Match {
    #[serde(skip_serializing_if = "Option::is_none")]
    macaddress: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

#[derive(Serialize)]
struct Route {
    /// `to: default` is newer netplan syntax that cloud-init 22.4 (Debian 12) rejects.
    to: &'static str,
    via: String,
}

#[derive(Serialize)]
struct Nameservers {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    addresses: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    search: Vec<String>,
}

pub fn network_config(p: &Plan) -> String {
    let n = &p.node;
    // With a MAC: that NIC, renamed to the recipe's interface name (eth0 by default). Without:
    // the first NIC whose name matches the recipe's (any e* by default).
    let (name, matching, set_name) = match &n.mac {
        Some(mac) => {
            let name = n.interface.clone().unwrap_or_else(|| "eth0".into());
            let m = Match {
                macaddress: Some(mac.clone()),
                name: None,
            };
            (name.clone(), m, Some(name))
        }
        None => {
            let m = Match {
                macaddress: None,
                name: Some(n.interface.clone().unwrap_or_else(|| "e*".into())),
            };
            (
                n.interface.clone().unwrap_or_else(|| "primary".into()),
                m,
                None,
            )
        }
    };
    let net = &p.network;
    let nameservers = (!net.dns.is_empty() || net.domain.is_some()).then(|| Nameservers {
        addresses: net.dns.iter().map(|ip| ip.to_string()).collect(),
        search: net.domain.iter().cloned().collect(),
    });
    let eth = Ethernet {
        matching,
        set_name,
        dhcp4: false,
        dhcp6: false,
        addresses: vec![format!("{}/{}", n.ip, net.prefix_len)],
        routes: vec![Route {
            to: "0.0.0.0/0",
            via: net.gateway.to_string(),
        }],
        nameservers,
    };
    yaml(
        "",
        &NetworkConfig {
            version: 2,
            ethernets: [(name, eth)].into(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a YAML 1.1 reader (PyYAML, as cloud-init uses) makes of a document is exactly the
    /// document: strings stay strings, whatever they look like; nesting survives.
    #[test]
    fn a_yaml_1_1_reader_reads_back_exactly_the_document() {
        #[derive(Serialize)]
        struct Item {
            to: &'static str,
            via: &'static str,
        }
        #[derive(Serialize)]
        struct T {
            mac: &'static str,
            word: &'static str,
            octal: &'static str,
            opts: &'static str,
            quote: &'static str,
            n: u16,
            flag: bool,
            ports: Vec<u16>,
            ips: Vec<&'static str>,
            empty: Vec<u16>,
            routes: Vec<Item>,
            nested: std::collections::BTreeMap<&'static str, Vec<Item>>,
        }
        let doc = T {
            mac: "52:54:00:12:34:56",
            word: "yes",
            octal: "0644",
            opts: "-Xmx384m",
            quote: "a \"b\" # c: d\\",
            n: 2181,
            flag: false,
            ports: vec![6700, 6701],
            ips: vec!["192.168.200.151", "1e3"],
            empty: vec![],
            routes: vec![
                Item {
                    to: "0.0.0.0/0",
                    via: "192.168.200.1",
                },
                Item {
                    to: "10.0.0.0/8",
                    via: "on",
                },
            ],
            nested: [(
                "e*",
                vec![Item {
                    to: "x",
                    via: "null",
                }],
            )]
            .into(),
        };
        let text = yaml("# header\n", &doc);
        assert_eq!(pyyaml(&text), serde_json::to_value(&doc).unwrap(), "{text}");
    }

    fn pyyaml(text: &str) -> serde_json::Value {
        use std::process::Stdio;
        let o = crate::util::run::Cmd::new("python3")
            .args([
                "-c",
                "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin.read())))",
            ])
            .spawn(Stdio::piped(), Stdio::piped(), Stdio::piped())
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(text.as_bytes())?;
                Ok(c.wait_with_output()?)
            })
            .expect("python3 with PyYAML (cloud-init's YAML reader; `make deps` installs it)");
        assert!(
            o.status.success(),
            "{}\n{text}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// The test recipe's user (sudo, an SSH key) and a MAC-matched NIC, as cloud-init reads them.
    #[test]
    fn user_data_and_network_config_as_cloud_init_reads_them() {
        let path = std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/recipes/base.yaml"
        ));
        let c = crate::plan::resolve(&crate::recipe::load(path).unwrap()).unwrap();
        let mut p = c.nodes[0].clone();
        let user = user_data(&p);
        assert!(user.starts_with("#cloud-config\n"), "{user}");
        let u = pyyaml(&user);
        assert_eq!(u["hostname"], p.node.hostname.as_str());
        assert_eq!(u["ssh_pwauth"], false);
        assert_eq!(u["users"][0]["name"], "ops");
        assert_eq!(u["users"][0]["lock_passwd"], true);
        assert_eq!(
            u["users"][0]["ssh_authorized_keys"][0],
            p.users[0].ssh_authorized_keys[0].as_str()
        );
        p.node.mac = Some("52:54:00:12:34:56".into());
        p.node.interface = Some("lan0".into());
        let n = pyyaml(&network_config(&p));
        let eth = &n["ethernets"]["lan0"];
        assert_eq!(eth["match"]["macaddress"], "52:54:00:12:34:56", "{n}");
        assert_eq!(eth["set-name"], "lan0");
        assert_eq!(
            eth["addresses"][0],
            format!("{}/{}", p.node.ip, p.network.prefix_len)
        );
        assert_eq!(n["version"], 2);
    }
}
