//! What `imgbuild up --runtime container --check` proves beyond membership, the way Bigtop's
//! Kafka smoke test, cp-ansible's health check and Kafka's ProduceConsumeValidate test do: the
//! real services' versions; a Kafka round trip (a topic with 3 partitions, replication factor 3
//! and min.insync.replicas 2; messages produced with acks=all through one node and consumed
//! through another, every acknowledged one seen and none corrupted; no under-replicated
//! partition; every voter near the leader); then the loss of a node (powered off: producing and
//! consuming go on, ZooKeeper keeps its quorum) and its return (it rejoins, every partition's ISR
//! is whole again). Every tool runs inside a node, from the image, as an operator would.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::plan::{Plan, Role};
use crate::vm::member::Member;

mod boot;
pub mod firewall;
pub mod kafkaauth;
mod list;
pub mod metrics;
mod node_loss;
mod partition;
mod round_trip;
pub mod stay;
pub mod topology;
mod versions;
pub mod zkauth;

pub use boot::*;
pub use list::*;
pub use node_loss::*;
pub use partition::*;
pub use round_trip::*;
pub use topology::*;
pub use versions::*;

pub const TOPIC: &str = "imgbuild-check";
/// Every Kafka tool the check runs on a node is this node's client: over TLS with its certificate
/// (a super user) with `security: tls`, plaintext otherwise (User:storm's topology and the
/// refusals are the clients of the client listener).
const CLIENT: &str = crate::layout::KAFKA_TLS_CLIENT;

/// The option that gives a console or verifiable client its properties file: `--command-config`
/// from Kafka 4.2 (KIP-1147, which deprecates the old ones with a line on stdout, where the
/// messages go), `legacy` (`--producer.config`, `--consumer.config`) before.
pub fn config_opt(modern: bool, legacy: &'static str) -> &'static str {
    if modern { "--command-config" } else { legacy }
}

/// Whether the node's Kafka takes `--command-config` everywhere (4.2 and later).
pub fn modern_tools(p: &Plan) -> bool {
    let v = p.kafka.as_ref().map(|k| k.version.as_str()).unwrap_or("");
    let mut n = v.split('.').map(|x| x.parse::<u32>().unwrap_or(0));
    let (major, minor) = (n.next().unwrap_or(0), n.next().unwrap_or(0));
    (major, minor) >= (4, 2)
}
/// Messages produced in each round (the issue asks for at least 1000).
pub const MESSAGES: usize = 1000;

/// One phase's outcome, printed by `up` and judged by `--check`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Phase {
    pub name: &'static str,
    pub seconds: f64,
    pub lines: Vec<String>,
    pub failures: Vec<String>,
}

impl Phase {
    /// Run `f`, which adds lines and failures, as phase `name`, timed; an error it returns is
    /// one more failure (`name: error`).
    pub fn timed(
        name: &'static str,
        f: impl FnOnce(&mut Vec<String>, &mut Vec<String>) -> Result<()>,
    ) -> Phase {
        let t = Instant::now();
        let (mut lines, mut failures) = (Vec::new(), Vec::new());
        if let Err(e) = f(&mut lines, &mut failures) {
            failures.push(format!("{name}: {e:#}"));
        }
        Phase {
            name,
            seconds: t.elapsed().as_secs_f64(),
            lines,
            failures,
        }
    }
}

/// A node's member of the cluster (its container, or the mixed runtime's VM).
pub fn container_of<'a>(cs: &'a [Member], p: &Plan) -> Result<&'a Member> {
    cs.iter()
        .find(|c| c.name() == p.node.name)
        .with_context(|| format!("{}'s container or VM", p.node.name))
}

/// Where a JVM tool (a Kafka or Storm client) runs for node `p`: its own container, or for a VM
/// a container peer, whose tool then talks to the VM's listeners over the network. Under
/// software emulation one client JVM in the VM takes minutes; the listeners, the broker and the
/// data it holds are the VM's all the same.
pub fn via<'a>(cs: &'a [Member], p: &Plan) -> Result<&'a Member> {
    let own = container_of(cs, p)?;
    if !own.is_vm() {
        return Ok(own);
    }
    cs.iter().find(|c| !c.is_vm()).with_context(|| {
        format!(
            "{}: no container peer to run the check's tools from",
            p.node.name
        )
    })
}

/// The node's label in a phase's lines: `node1 (VM)` for the mixed runtime's VM.
pub fn label(cs: &[Member], p: &Plan) -> String {
    match container_of(cs, p) {
        Ok(m) if m.is_vm() => format!("{} (VM)", p.node.name),
        _ => p.node.name.clone(),
    }
}

fn text(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// ZooKeeper's `srvr` answer from node `p`'s client port, asked from inside `c` with the image's
/// python3: over TLS as the node when ZooKeeper takes TLS clients only.
fn srvr(c: &Member, p: &Plan, port: u16) -> Result<String> {
    let ip = p.node.ip.to_string();
    let tls = crate::rootfs::render::zk_client_keystore(p).map_or(String::new(), |ks| {
        format!(
            "import ssl\nctx=ssl.create_default_context(cafile='{}')\nctx.load_cert_chain('{ks}')\ns=ctx.wrap_socket(s,server_hostname='{ip}')\n",
            crate::layout::CA_CERT
        )
    });
    let script = format!(
        "import socket\ns=socket.create_connection(('{ip}',{port}),timeout=10)\n{tls}s.sendall(b'srvr')\nb=b''\nwhile True:\n  d=s.recv(4096)\n  if not d: break\n  b+=d\nprint(b.decode())"
    );
    c.tool(&["/usr/bin/python3", "-c", &script], 30)
}

fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        l.strip_prefix(key)
            .map(|v| v.trim_start_matches(':').trim())
    })
}

/// Where a node's own tools reach its broker: the client listener, or with SCRAM clients the
/// inter-broker one (the node shows its certificate; see `KafkaPlan::own_port`).
pub(crate) fn bootstrap(p: &Plan) -> String {
    p.own_bootstrap()
}

fn kafka_nodes<'a>(nodes: &[&'a Plan]) -> Vec<&'a Plan> {
    nodes
        .iter()
        .copied()
        .filter(|p| p.roles.contains(&Role::Kafka))
        .collect()
}

fn container<'a>(cs: &'a [Member], p: &Plan) -> &'a Member {
    container_of(cs, p).expect("a member per node")
}

fn via_of<'a>(cs: &'a [Member], p: &Plan) -> &'a Member {
    via(cs, p).expect("a container among the members")
}

/// A node's own health round, once, at once (no waiting): `health.py --timeout 0`.
pub const HEALTH_ROUND: [&str; 4] = [
    "/usr/bin/python3",
    "/usr/lib/imgbuild/health.py",
    "--timeout",
    "0",
];

/// One check of a node's health round: ok, and its key=value fields.
pub type Check = (bool, BTreeMap<String, String>);

/// Parse `imgbuild-health node=N check=NAME ok=yes|no k=v ...` lines into checks by name.
pub fn parse_health(out: &str) -> BTreeMap<String, Check> {
    let mut m = BTreeMap::new();
    for l in out.lines() {
        let Some(rest) = l.trim().strip_prefix("imgbuild-health ") else {
            continue;
        };
        let kv: BTreeMap<String, String> = rest
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (Some(check), Some(ok)) = (kv.get("check"), kv.get("ok")) else {
            continue;
        };
        let fields = kv
            .iter()
            .filter(|(k, _)| !["node", "check", "ok", "round"].contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        m.insert(check.clone(), (ok == "yes", fields));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_acknowledged_message_must_be_consumed_uncorrupted() {
        let acked: BTreeSet<String> = (0..5).map(|i| format!("1.{i}")).collect();
        let mut f = Vec::new();
        let seen: Vec<String> = ["1.0", "1.1", "1.2", "1.3", "1.4", "1.4"]
            .map(String::from)
            .to_vec();
        let line = compare(&acked, &seen, "rt", &mut f);
        assert!(f.is_empty(), "{f:?}");
        assert_eq!(
            line,
            "rt: 5/5 acknowledged messages consumed, 0 lost, 0 corrupted, 1 duplicates"
        );
        let seen: Vec<String> = ["1.0", "1.1", "garbage"].map(String::from).to_vec();
        compare(&acked, &seen, "rt", &mut f);
        assert_eq!(
            f,
            [
                "rt: 3 acknowledged messages never consumed",
                "rt: 1 consumed messages are not what was produced"
            ]
        );
    }

    /// Issue 27, acceptance 2: the check fails when the VM's broker is out of an ISR.
    #[test]
    fn the_vms_broker_must_be_in_every_isr() {
        let (line, f) = in_every_isr("node1 (VM)", 1, &[vec![1, 2, 3], vec![2, 3, 1]]);
        assert_eq!(
            line,
            "node1 (VM)'s broker 1 in the ISR of 2/2 partitions of imgbuild-check ([[1, 2, 3], [2, 3, 1]])"
        );
        assert_eq!(f, None);
        let (_, f) = in_every_isr("node1 (VM)", 1, &[vec![1, 2, 3], vec![2, 3]]);
        assert_eq!(
            f.as_deref(),
            Some("node1 (VM): broker 1 is in the ISR of only 1/2 partitions of imgbuild-check")
        );
        assert!(
            in_every_isr("node1 (VM)", 1, &[]).1.is_some(),
            "no partition seen"
        );
    }

    #[test]
    fn srvr_fields_and_quorum() {
        let srvr = "Zookeeper version: 3.9.5-293c895, built on 2026-02-11 20:18 UTC\nLatency min/avg/max: 0/0.5/3\nMode: follower\nNode count: 5\n";
        assert_eq!(
            field(srvr, "Zookeeper version"),
            Some("3.9.5-293c895, built on 2026-02-11 20:18 UTC")
        );
        assert_eq!(field(srvr, "Mode"), Some("follower"));
        let m = |v: &[&str]| -> Vec<(String, String)> {
            v.iter()
                .enumerate()
                .map(|(i, m)| (format!("node{i}"), m.to_string()))
                .collect()
        };
        assert!(quorum_ok(&m(&["leader", "follower"])));
        assert!(!quorum_ok(&m(&["down", "down"])));
        assert!(!quorum_ok(&m(&["leader", "leader", "follower"])));
    }

    #[test]
    fn word_counts_are_judged_by_each_words_highest_running_count() {
        assert_eq!(sentence(0), "kafka spout leader");
        let want = word_counts(SENTENCES);
        assert_eq!(
            want.values().sum::<u64>(),
            (0..SENTENCES).map(|i| 3 + i as u64 % 5).sum::<u64>()
        );
        let out = "kafka\t1\nkafka\t2\nstorm\t1\nkafka\t2\nnoise\n";
        let got = final_counts(out);
        assert_eq!(
            got,
            BTreeMap::from([("kafka".into(), 2), ("storm".into(), 1)])
        );
    }

    #[test]
    fn a_later_batch_has_words_of_its_own_so_a_restarted_count_stays_exact() {
        let first = word_counts(SENTENCES);
        let both = word_counts(2 * SENTENCES);
        assert_eq!(sentence(SENTENCES), "zookeeper-1 node-1 kafka-1");
        // The first batch's counts are unchanged by the second ...
        for (w, n) in &first {
            assert_eq!(both.get(w), Some(n), "{w}");
        }
        // ... whose words are new: what a fresh count bolt emits for them is the whole truth.
        let second: Vec<_> = both.keys().filter(|w| !first.contains_key(*w)).collect();
        assert_eq!(second.len(), WORDS.len());
        assert!(second.iter().all(|w| w.ends_with("-1")), "{second:?}");
    }
}
