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
use crate::vm::container::Container;

pub const TOPIC: &str = "imgbuild-check";
/// Every Kafka tool the check runs on a node is this node's client: over TLS with its certificate
/// (a super user) with `security: tls`, plaintext otherwise.
const CLIENT: &str = crate::rootfs::render::KAFKA_TLS_CLIENT;

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

/// A node's container.
pub fn container_of<'a>(cs: &'a [Container], p: &Plan) -> Result<&'a Container> {
    cs.iter()
        .find(|c| c.name == p.node.name)
        .with_context(|| format!("{}'s container", p.node.name))
}

fn text(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Run a tool in `c`; Err with its stderr's tail when it fails.
fn tool(c: &Container, cmd: &[&str], timeout: u64) -> Result<String> {
    let o = c.exec(cmd, Duration::from_secs(timeout))?;
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        let tail: Vec<&str> = err.lines().rev().take(8).collect();
        bail!(
            "{}: `{}` failed ({}): {}",
            c.name,
            cmd.join(" "),
            o.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        );
    }
    Ok(text(&o))
}

/// ZooKeeper's `srvr` answer from node `p`'s client port, asked from inside `c` with the image's
/// python3: over TLS as the node when ZooKeeper takes TLS clients only.
fn srvr(c: &Container, p: &Plan, port: u16) -> Result<String> {
    let ip = p.node.ip.to_string();
    let tls = crate::rootfs::render::zk_client_keystore(p).map_or(String::new(), |ks| {
        format!(
            "import ssl\nctx=ssl.create_default_context(cafile='{}')\nctx.load_cert_chain('{ks}')\ns=ctx.wrap_socket(s,server_hostname='{ip}')\n",
            crate::rootfs::render::CA_CERT
        )
    });
    let script = format!(
        "import socket\ns=socket.create_connection(('{ip}',{port}),timeout=10)\n{tls}s.sendall(b'srvr')\nb=b''\nwhile True:\n  d=s.recv(4096)\n  if not d: break\n  b+=d\nprint(b.decode())"
    );
    tool(c, &["/usr/bin/python3", "-c", &script], 30)
}

fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        l.strip_prefix(key)
            .map(|v| v.trim_start_matches(':').trim())
    })
}

fn bootstrap(p: &Plan) -> String {
    format!(
        "{}:{}",
        p.node.ip,
        p.kafka.as_ref().map_or(9092, |k| k.port)
    )
}

fn kafka_nodes<'a>(nodes: &[&'a Plan]) -> Vec<&'a Plan> {
    nodes
        .iter()
        .copied()
        .filter(|p| p.roles.contains(&Role::Kafka))
        .collect()
}

fn container<'a>(cs: &'a [Container], p: &Plan) -> &'a Container {
    container_of(cs, p).expect("a container per node")
}

/// Versions as the running services report them: the broker's "Kafka version" line in server.log,
/// ZooKeeper's `srvr`, `storm version` and each nimbus's start line.
pub fn versions(nodes: &[&Plan], cs: &[Container]) -> Phase {
    let t = Instant::now();
    let (mut lines, mut failures) = (Vec::new(), Vec::new());
    for p in nodes {
        let c = container(cs, p);
        if let Some(z) = &p.zookeeper
            && z.myid.is_some()
        {
            match srvr(c, p, z.client_port) {
                Ok(s) => lines.push(format!(
                    "{}: zookeeper {} ({})",
                    p.node.name,
                    field(&s, "Zookeeper version").unwrap_or("?"),
                    field(&s, "Mode").unwrap_or("?")
                )),
                Err(e) => failures.push(format!("{}: zookeeper srvr: {e:#}", p.node.name)),
            }
        }
        if p.kafka.is_some() {
            // server.log in LOG_DIR, which Kafka's log4j2.yaml writes (upstream's and the
            // fixture's): the journal is no witness here, since journald attributes a busy
            // container's lines to the stream late or never (measured: the line missing from
            // `-u kafka`, and in one clean-clone CI run from `-t kafka-server-start.sh`).
            match tool(
                c,
                &[
                    "grep",
                    "-m1",
                    "-o",
                    "Kafka version: [^ ]*",
                    "/var/log/kafka/server.log",
                ],
                30,
            ) {
                Ok(l) => match l.trim().strip_prefix("Kafka version: ") {
                    Some(v) if !v.is_empty() => {
                        lines.push(format!("{}: broker says Kafka version: {v}", p.node.name))
                    }
                    _ => failures.push(format!(
                        "{}: kafka: no \"Kafka version\" line in /var/log/kafka/server.log",
                        p.node.name
                    )),
                },
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
    }
    if let Some(p) = nodes.iter().find(|p| p.storm.is_some()) {
        match run_tool(container(cs, p), &storm(&["version"]), 120) {
            Ok(v) => lines.push(format!(
                "{}: storm version: {}",
                p.node.name,
                v.lines().next().unwrap_or("?")
            )),
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    for p in nodes
        .iter()
        .filter(|p| p.roles.contains(&Role::StormNimbus))
    {
        match tool(
            container(cs, p),
            &[
                "grep",
                "-m1",
                "-o",
                "Starting nimbus server for storm version.*",
                "/var/log/storm/nimbus.log",
            ],
            30,
        ) {
            Ok(l) => lines.push(format!("{}: nimbus.log: {}", p.node.name, l.trim())),
            Err(e) => failures.push(format!("{}: nimbus: {e:#}", p.node.name)),
        }
    }
    Phase {
        name: "versions",
        seconds: t.elapsed().as_secs_f64(),
        lines,
        failures,
    }
}

/// Produce MESSAGES values `<round>.<n>` with acks=all through `via` (VerifiableProducer prints
/// one JSON line per acknowledged send); the acknowledged values.
fn produce(via: &Container, p: &Plan, round: usize) -> Result<BTreeSet<String>> {
    let out = tool(
        via,
        &[
            "/opt/kafka/bin/kafka-verifiable-producer.sh",
            "--bootstrap-server",
            &bootstrap(p),
            config_opt(modern_tools(p), "--producer.config"),
            CLIENT,
            "--topic",
            TOPIC,
            "--max-messages",
            &MESSAGES.to_string(),
            "--acks",
            "-1",
            "--value-prefix",
            &round.to_string(),
            "--repeating-keys",
            "30",
        ],
        300,
    )?;
    let mut acked = BTreeSet::new();
    for l in out.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        if v["name"] == "producer_send_success"
            && let Some(val) = v["value"].as_str()
        {
            acked.insert(val.to_string());
        }
    }
    Ok(acked)
}

/// `topic` read from the beginning through `via` with kafka-console-consumer.sh and `extra`
/// arguments (which give it a --timeout-ms).
fn console_consumer(
    via: &Container,
    bootstrap: &str,
    modern: bool,
    topic: &str,
    extra: &[&str],
) -> Result<String> {
    let mut cmd = vec![
        "/opt/kafka/bin/kafka-console-consumer.sh",
        "--bootstrap-server",
        bootstrap,
        config_opt(modern, "--consumer.config"),
        CLIENT,
        "--topic",
        topic,
        "--from-beginning",
    ];
    cmd.extend_from_slice(extra);
    tool(via, &cmd, 300).or_else(|e| {
        // The consumer exits non-zero on its timeout; what it printed is still the answer.
        if e.to_string().contains("TimeoutException") {
            Ok(String::new())
        } else {
            Err(e)
        }
    })
}

/// Every value in the topic, read from the beginning through `via`.
fn consume(via: &Container, p: &Plan, expect: usize) -> Result<Vec<String>> {
    let out = console_consumer(
        via,
        &bootstrap(p),
        modern_tools(p),
        TOPIC,
        &[
            "--max-messages",
            &expect.to_string(),
            "--timeout-ms",
            "60000",
        ],
    )?;
    Ok(out.lines().map(str::to_string).collect())
}

/// Acknowledged values all consumed, nothing consumed that was never produced.
fn compare(acked: &BTreeSet<String>, seen: &[String], what: &str, f: &mut Vec<String>) -> String {
    let seen_set: BTreeSet<&str> = seen.iter().map(String::as_str).collect();
    let lost = acked
        .iter()
        .filter(|v| !seen_set.contains(v.as_str()))
        .count();
    let corrupt = seen
        .iter()
        .filter(|v| {
            let mut parts = v.splitn(2, '.');
            !(parts.next().is_some_and(|r| r.parse::<u32>().is_ok())
                && parts.next().is_some_and(|n| n.parse::<u32>().is_ok()))
        })
        .count();
    if lost > 0 {
        f.push(format!(
            "{what}: {lost} acknowledged messages never consumed"
        ));
    }
    if corrupt > 0 {
        f.push(format!(
            "{what}: {corrupt} consumed messages are not what was produced"
        ));
    }
    format!(
        "{what}: {}/{} acknowledged messages consumed, {lost} lost, {corrupt} corrupted, {} duplicates",
        acked.len() - lost,
        acked.len(),
        seen.len().saturating_sub(seen_set.len())
    )
}

/// Partitions of the topic and their ISR sizes, from `kafka-topics.sh --describe`.
fn isr_sizes(via: &Container, bootstrap: &str) -> Result<Vec<usize>> {
    let out = tool(
        via,
        &[
            "/opt/kafka/bin/kafka-topics.sh",
            "--bootstrap-server",
            bootstrap,
            "--command-config",
            CLIENT,
            "--describe",
            "--topic",
            TOPIC,
        ],
        180,
    )?;
    Ok(out
        .lines()
        .filter(|l| l.contains("Partition:"))
        .filter_map(|l| {
            let isr = l.split("Isr:").nth(1)?.split_whitespace().next()?;
            Some(isr.split(',').filter(|s| !s.is_empty()).count())
        })
        .collect())
}

/// The Kafka round trip: topic, produce through one node, consume through another, replication.
pub fn round_trip(nodes: &[&Plan], cs: &[Container]) -> (Phase, BTreeSet<String>) {
    let t = Instant::now();
    let (mut lines, mut failures) = (Vec::new(), Vec::new());
    let mut acked = BTreeSet::new();
    let kafka = kafka_nodes(nodes);
    let result = (|| -> Result<()> {
        let (a, b) = match kafka.as_slice() {
            [a, b, ..] => (*a, *b),
            [a] => (*a, *a),
            [] => bail!("no Kafka node"),
        };
        let (ca, cb) = (container(cs, a), container(cs, b));
        let rf = kafka.len().min(3);
        let isr = rf.min(2);
        tool(
            ca,
            &[
                "/opt/kafka/bin/kafka-topics.sh",
                "--bootstrap-server",
                &bootstrap(a),
                "--command-config",
                CLIENT,
                "--create",
                "--if-not-exists",
                "--topic",
                TOPIC,
                "--partitions",
                "3",
                "--replication-factor",
                &rf.to_string(),
                "--config",
                &format!("min.insync.replicas={isr}"),
            ],
            180,
        )?;
        lines.push(format!(
            "topic {TOPIC}: 3 partitions, replication factor {rf}, min.insync.replicas {isr}"
        ));
        acked = produce(ca, a, 1)?;
        let seen = consume(cb, b, acked.len())?;
        lines.push(format!(
            "produced through {} with acks=all, consumed through {}",
            a.node.name, b.node.name
        ));
        lines.push(compare(&acked, &seen, "round trip", &mut failures));
        if acked.len() < MESSAGES {
            failures.push(format!(
                "round trip: only {}/{MESSAGES} messages acknowledged",
                acked.len()
            ));
        }
        replication(ca, a, &mut lines, &mut failures)?;
        Ok(())
    })();
    if let Err(e) = result {
        failures.push(format!("round trip: {e:#}"));
    }
    (
        Phase {
            name: "kafka round trip",
            seconds: t.elapsed().as_secs_f64(),
            lines,
            failures,
        },
        acked,
    )
}

/// After the round trip: no under-replicated partition, and (KRaft) every voter within 1000
/// records of the leader.
fn replication(
    ca: &Container,
    a: &Plan,
    lines: &mut Vec<String>,
    failures: &mut Vec<String>,
) -> Result<()> {
    let under = tool(
        ca,
        &[
            "/opt/kafka/bin/kafka-topics.sh",
            "--bootstrap-server",
            &bootstrap(a),
            "--command-config",
            CLIENT,
            "--describe",
            "--under-replicated-partitions",
        ],
        180,
    )?;
    let n = under.lines().filter(|l| l.contains("Partition:")).count();
    lines.push(format!("under-replicated partitions: {n}"));
    if n > 0 {
        failures.push(format!("kafka: {n} under-replicated partitions"));
    }
    if let Some(k) = &a.kafka
        && let Some(port) = k.controller_port
    {
        let rep = tool(
            ca,
            &[
                "/opt/kafka/bin/kafka-metadata-quorum.sh",
                "--bootstrap-controller",
                &format!("{}:{port}", a.node.ip),
                // The controller listener is mTLS: the tool presents the node's certificate.
                "--command-config",
                CLIENT,
                "describe",
                "--replication",
            ],
            180,
        )?;
        // NodeId DirectoryId LogEndOffset Lag LastFetchTimestamp LastCaughtUpTimestamp Status
        let lags: Vec<(String, i64)> = rep
            .lines()
            .skip(1)
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                let status = cols.last()?.to_string();
                Some((
                    format!("{}:{status}", cols.first()?),
                    cols.get(3)?.parse().ok()?,
                ))
            })
            .collect();
        let far = lags.iter().filter(|(_, lag)| *lag > 1000).count();
        lines.push(format!(
            "KRaft voters' lag: {}",
            lags.iter()
                .map(|(n, l)| format!("{n} {l}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        if far > 0 || lags.is_empty() {
            failures.push(format!(
                "kafka: voters not within 1000 of the leader: {rep}"
            ));
        }
    }
    Ok(())
}

/// The Python word-count topology of examples/ (installed on every Storm node), submitted
/// from a node with what its image holds and kept running until [`Wordcount::kill`].
pub struct Wordcount {
    /// The node it is submitted and fed through.
    via: String,
    bootstrap: String,
    /// Sentences sent so far and the word counts they make.
    sent: usize,
    expected: BTreeMap<String, u64>,
    /// The Kafka tools take `--command-config` (config_opt).
    modern: bool,
}

// The example's own names (its wordcount.properties): with `security: tls` the topology runs as
// User:storm, and what it may touch is what the recipe's ACLs for user storm allow.
const WC_NAME: &str = "python-wordcount";
const WC_IN: &str = "sentences";
const WC_OUT: &str = "word-counts";
const WC_DIR: &str = "/usr/share/imgbuild/examples/python-wordcount";
/// Sentences per batch.
pub const SENTENCES: usize = 200;

const WORDS: [&str; 12] = [
    "kafka",
    "storm",
    "zookeeper",
    "python",
    "bolt",
    "spout",
    "topic",
    "node",
    "stream",
    "tuple",
    "leader",
    "replica",
];

/// Sentence `i` of the known input: 3 to 7 words, deterministic. Each batch of [`SENTENCES`]
/// after the first has words of its own ("kafka-1"...): the example counts in memory, so when
/// its worker moves to another node (the node-loss phase) counting starts again, and a batch
/// fed after the move must still come out exact.
fn sentence(i: usize) -> String {
    let batch = i / SENTENCES;
    (0..3 + i % 5)
        .map(|j| {
            let w = WORDS[(i * 7 + j * 5 + i / 3) % WORDS.len()];
            if batch == 0 {
                w.to_string()
            } else {
                format!("{w}-{batch}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Word counts of sentences `0..n`.
fn word_counts(n: usize) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for i in 0..n {
        for w in sentence(i).split(' ') {
            *m.entry(w.to_string()).or_insert(0) += 1;
        }
    }
    m
}

/// The running counts in the output topic (`word<TAB>count` lines): each word's highest.
fn final_counts(out: &str) -> BTreeMap<String, u64> {
    let mut m: BTreeMap<String, u64> = BTreeMap::new();
    for l in out.lines() {
        if let Some((w, c)) = l.split_once('\t')
            && let Ok(c) = c.trim().parse::<u64>()
        {
            let e = m.entry(w.to_string()).or_insert(0);
            *e = (*e).max(c);
        }
    }
    m
}

fn storm(args: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "/usr/bin/env",
        "STORM_CONF_DIR=/etc/storm",
        "PYTHON=/opt/python/bin/python3",
        "/opt/storm/bin/storm",
    ]
    .map(String::from)
    .to_vec();
    v.extend(args.iter().map(|a| a.to_string()));
    v
}

fn run_tool(c: &Container, cmd: &[String], timeout: u64) -> Result<String> {
    let refs: Vec<&str> = cmd.iter().map(String::as_str).collect();
    tool(c, &refs, timeout)
}

fn create_topic(c: &Container, bootstrap: &str, topic: &str, rf: usize) -> Result<()> {
    tool(
        c,
        &[
            "/opt/kafka/bin/kafka-topics.sh",
            "--bootstrap-server",
            bootstrap,
            "--command-config",
            CLIENT,
            "--create",
            "--if-not-exists",
            "--topic",
            topic,
            "--partitions",
            "3",
            "--replication-factor",
            &rf.to_string(),
            "--config",
            &format!("min.insync.replicas={}", rf.min(2)),
        ],
        180,
    )
    .map(drop)
}

/// With `security: tls`, wait until kafka-acls.service on the submitting node has added the
/// recipe's ACLs (the topology's User:storm may do nothing before).
fn acls_applied(c: &Container, p: &Plan) -> Result<String> {
    if !crate::rootfs::render::acl_unit(p) {
        return Ok(format!(
            "{}: no ACL in the recipe: User:storm may touch nothing",
            p.node.name
        ));
    }
    let t = Instant::now();
    loop {
        let o = c.exec(
            &["systemctl", "is-active", "kafka-acls.service"],
            Duration::from_secs(30),
        )?;
        let state = text(&o).trim().to_string();
        if state == "active" {
            let n: usize = p.security.users.iter().map(|u| u.allow.len()).sum();
            return Ok(format!(
                "kafka-acls.service on {}: the recipe's {n} ACLs added ({:.0}s after the check asked)",
                p.node.name,
                t.elapsed().as_secs_f64()
            ));
        }
        if t.elapsed() > Duration::from_secs(300) {
            bail!(
                "kafka-acls.service on {} still {state} after 300s",
                p.node.name
            );
        }
        std::thread::sleep(Duration::from_secs(3));
    }
}

/// The topology's state in `storm list` (ACTIVE, INACTIVE, KILLED...), if it is listed.
fn topology_status(c: &Container) -> Result<Option<String>> {
    let out = run_tool(c, &storm(&["list"]), 180)?;
    Ok(out.lines().find_map(|l| {
        let mut cols = l.split_whitespace();
        (cols.next() == Some(WC_NAME)).then(|| cols.next().unwrap_or("?").to_string())
    }))
}

impl Wordcount {
    /// Send the next `n` sentences with acks=all.
    fn feed(&mut self, c: &Container, n: usize) -> Result<()> {
        let script = format!(
            "printf '%s\\n' \"$@\" | /opt/kafka/bin/kafka-console-producer.sh --bootstrap-server {} {} {CLIENT} --topic {WC_IN} --producer-property acks=all",
            self.bootstrap,
            config_opt(self.modern, "--producer.config")
        );
        let mut cmd = vec!["sh".to_string(), "-c".into(), script, "sh".into()];
        cmd.extend((self.sent..self.sent + n).map(sentence));
        run_tool(c, &cmd, 300)?;
        self.sent += n;
        self.expected = word_counts(self.sent);
        Ok(())
    }

    /// Read the output topic through `c` until it holds the expected counts (or `wait` passes).
    /// A line describing what was read; an error when it never matched.
    fn await_counts(&self, c: &Container, wait: Duration) -> Result<String> {
        let t = Instant::now();
        let mut got = BTreeMap::new();
        while t.elapsed() < wait {
            let out = console_consumer(
                c,
                &self.bootstrap,
                self.modern,
                WC_OUT,
                &[
                    if self.modern {
                        "--formatter-property"
                    } else {
                        "--property"
                    },
                    "print.key=true",
                    "--timeout-ms",
                    "15000",
                ],
            )?;
            got = final_counts(&out);
            if got == self.expected {
                let total: u64 = got.values().sum();
                return Ok(format!(
                    "output topic {WC_OUT}: {} words, {total} counted = the {} sentences' words exactly (after {:.0}s; e.g. {})",
                    got.len(),
                    self.sent,
                    t.elapsed().as_secs_f64(),
                    got.iter()
                        .take(3)
                        .map(|(w, n)| format!("{w}={n}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                ));
            }
            std::thread::sleep(Duration::from_secs(5));
        }
        let wrong: Vec<String> = self
            .expected
            .iter()
            .filter(|(w, n)| got.get(*w) != Some(n))
            .map(|(w, n)| format!("{w}: {} (expected {n})", got.get(w).copied().unwrap_or(0)))
            .chain(
                got.keys()
                    .filter(|w| !self.expected.contains_key(*w))
                    .map(|w| format!("{w}: never sent")),
            )
            .collect();
        bail!(
            "output topic {WC_OUT} after {:.0}s: {} of {} words wrong: {}",
            wait.as_secs_f64(),
            wrong.len(),
            self.expected.len(),
            wrong.join(", ")
        )
    }

    /// Feed another batch through `c` and wait for the counts (the node-loss phase).
    pub fn more(&mut self, cs: &[Container], via: &str, wait: Duration) -> Result<String> {
        let c = cs
            .iter()
            .find(|c| c.name == via)
            .context("the feeding node's container")?;
        self.via = via.to_string();
        self.feed(c, SENTENCES)?;
        self.await_counts(c, wait)
    }

    /// Kill the topology and wait until `storm list` no longer shows it.
    pub fn kill(&self, cs: &[Container]) -> Phase {
        let t = Instant::now();
        let (mut lines, mut failures) = (Vec::new(), Vec::new());
        let r = (|| -> Result<()> {
            let c = cs
                .iter()
                .find(|c| c.name == self.via)
                .context("the topology's node")?;
            run_tool(c, &storm(&["kill", WC_NAME, "-w", "1"]), 300)?;
            let deadline = Instant::now() + Duration::from_secs(120);
            while let Some(s) = topology_status(c)? {
                if Instant::now() > deadline {
                    bail!("{WC_NAME} still listed as {s} 120s after `storm kill`");
                }
                std::thread::sleep(Duration::from_secs(3));
            }
            lines.push(format!("{WC_NAME} killed: no longer in `storm list`"));
            Ok(())
        })();
        if let Err(e) = r {
            failures.push(format!("topology kill: {e:#}"));
        }
        Phase {
            name: "topology killed",
            seconds: t.elapsed().as_secs_f64(),
            lines,
            failures,
        }
    }
}

/// Submit the Python topology (Flux, offline, from the image), wait for ACTIVE, feed it known
/// sentences through Kafka and check the word counts it writes to Kafka.
// Long on purpose: submit, wait for ACTIVE, feed, poll the counts: one sequence against one running
// topology, each step a few lines and a tool call.
pub fn topology(nodes: &[&Plan], cs: &[Container]) -> (Phase, Option<Wordcount>) {
    let t = Instant::now();
    let (mut lines, mut failures) = (Vec::new(), Vec::new());
    let kafka = kafka_nodes(nodes);
    let mut wc = None;
    let r = (|| -> Result<()> {
        let Some(p) = nodes
            .iter()
            .find(|p| p.storm.is_some() && p.kafka.is_some())
        else {
            bail!("no node with both Storm and Kafka to submit from");
        };
        let c = container(cs, p);
        let servers = kafka
            .iter()
            .map(|k| bootstrap(k))
            .collect::<Vec<_>>()
            .join(",");
        let rf = kafka.len().min(3);
        for topic in [WC_IN, WC_OUT] {
            create_topic(c, &servers, topic, rf)?;
        }
        let jar = "/tmp/imgbuild-wordcount.jar";
        let built = tool(
            c,
            &[
                "/opt/python/bin/python3",
                &format!("{WC_DIR}/build-jar.py"),
                jar,
            ],
            120,
        )?;
        lines.push(format!("built on {}: {}", p.node.name, built.trim()));
        let mut props = format!(
            "topology.name={WC_NAME}\nkafka.bootstrap={servers}\ninput.topic={WC_IN}\noutput.topic={WC_OUT}\n"
        );
        if p.security.tls() {
            props.push_str(&format!(
                "kafka.security.protocol=SSL\nkafka.ssl.keystore={}\nkafka.ssl.truststore={}\n",
                crate::pki::STORM_KEYSTORE,
                crate::rootfs::render::CA_CERT
            ));
            lines.push(acls_applied(c, p)?);
        } else {
            props.push_str("kafka.security.protocol=PLAINTEXT\n");
        }
        tool(
            c,
            &[
                "sh",
                "-c",
                "printf '%s' \"$1\" >/tmp/imgbuild-wordcount.properties",
                "sh",
                &props,
            ],
            30,
        )?;
        let submit = Instant::now();
        run_tool(
            c,
            &storm(&[
                "jar",
                jar,
                "org.apache.storm.flux.Flux",
                "--remote",
                "--filter",
                "/tmp/imgbuild-wordcount.properties",
                &format!("{WC_DIR}/topology.yaml"),
            ]),
            600,
        )?;
        let mut status = None;
        while submit.elapsed() < Duration::from_secs(300) {
            status = topology_status(c)?;
            if status.as_deref() == Some("ACTIVE") {
                break;
            }
            std::thread::sleep(Duration::from_secs(3));
        }
        if status.as_deref() != Some("ACTIVE") {
            bail!(
                "{WC_NAME}: {} 300s after submission",
                status.unwrap_or_else(|| "not listed".into())
            );
        }
        lines.push(format!(
            "{WC_NAME} (Flux: Kafka spout -> Python split -> Python count -> Kafka bolt) ACTIVE {:.0}s after `storm jar` on {}",
            submit.elapsed().as_secs_f64(),
            p.node.name
        ));
        let mut w = Wordcount {
            via: p.node.name.clone(),
            bootstrap: servers,
            sent: 0,
            expected: BTreeMap::new(),
            modern: modern_tools(p),
        };
        w.feed(c, SENTENCES)?;
        lines.push(format!("{SENTENCES} sentences into {WC_IN} with acks=all"));
        lines.push(w.await_counts(c, Duration::from_secs(300))?);
        wc = Some(w);
        Ok(())
    })();
    if let Err(e) = r {
        failures.push(format!("topology: {e:#}"));
    }
    (
        Phase {
            name: "storm topology",
            seconds: t.elapsed().as_secs_f64(),
            lines,
            failures,
        },
        wc,
    )
}

/// Where Storm runs the topology, as each node in `up` sees it: (node, runs a worker). A worker
/// is a process running Storm's worker main class (the probe, whose own command line names the
/// class in two halves, is not one).
fn storm_placement(nodes: &[&Plan], cs: &[Container], up: &[&str]) -> Vec<(String, bool)> {
    const PROBE: &str = r#"
import glob, os
main = b'org.apache.storm.daemon.' + b'worker.Worker'
w = False
for f in glob.glob('/proc/[0-9]*/cmdline'):
    try:
        w = w or main in open(f, 'rb').read().split(b'\0')
    except OSError:
        pass
print('worker' if w else 'none')
"#;
    nodes
        .iter()
        .filter(|p| p.storm.is_some() && up.contains(&p.node.name.as_str()))
        .map(|p| {
            let seen = tool(container(cs, p), &["/usr/bin/python3", "-c", PROBE], 30)
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            (p.node.name.clone(), seen == "worker")
        })
        .collect()
}

fn placement_line(placement: &[(String, bool)]) -> String {
    placement
        .iter()
        .map(|(n, w)| format!("{n}: {}", if *w { "worker" } else { "no worker" }))
        .collect::<Vec<_>>()
        .join("; ")
}

/// After a node's loss, wait until the topology has a worker on a surviving node again (Storm
/// notices the lost supervisor, a new nimbus leader takes over if need be, and reassigns).
fn await_worker(
    nodes: &[&Plan],
    cs: &[Container],
    survivors: &[&str],
    lost_at: Instant,
    wait: Duration,
) -> Result<String> {
    let t = lost_at;
    loop {
        let p = storm_placement(nodes, cs, survivors);
        if let Some((n, _)) = p.iter().find(|(_, w)| *w) {
            return Ok(format!(
                "worker on {n} {:.0}s after the loss ({})",
                t.elapsed().as_secs_f64(),
                placement_line(&p)
            ));
        }
        if t.elapsed() > wait {
            bail!(
                "no worker of {WC_NAME} on {} {:.0}s after the loss ({})",
                survivors.join(", "),
                wait.as_secs_f64(),
                placement_line(&p)
            );
        }
        std::thread::sleep(Duration::from_secs(3));
    }
}

/// The last Storm log lines that explain a stalled topology (leadership, assignments, workers
/// started or lost), from each node in `up`: printed with a failure.
fn storm_log_tail(nodes: &[&Plan], cs: &[Container], up: &[&str]) -> String {
    const PATTERN: &str =
        "leadership|assignment|not alive|Launching worker|Worker Process|Exception|ERROR";
    nodes
        .iter()
        .filter(|p| p.storm.is_some() && up.contains(&p.node.name.as_str()))
        .map(|p| {
            let script = format!(
                "for f in /var/log/storm/nimbus.log /var/log/storm/supervisor.log; do grep -hE '{PATTERN}' \"$f\" 2>/dev/null | tail -n 6 | sed \"s|^|  $(basename \"$f\"): |\"; done"
            );
            let tail = tool(container(cs, p), &["sh", "-c", &script], 30)
                .unwrap_or_else(|e| format!("  ? ({e:#})\n"));
            format!("{}:\n{}", p.node.name, tail.trim_end())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// ZooKeeper modes of the ensemble members among `up`.
fn zk_modes(nodes: &[&Plan], cs: &[Container], up: &[&str]) -> Vec<(String, String)> {
    nodes
        .iter()
        .filter(|p| up.contains(&p.node.name.as_str()))
        .filter_map(|p| {
            let z = p.zookeeper.as_ref()?;
            z.myid?;
            let c = container(cs, p);
            let mode = srvr(c, p, z.client_port)
                .ok()
                .and_then(|s| field(&s, "Mode").map(str::to_string))
                .unwrap_or_else(|| "down".into());
            Some((p.node.name.clone(), mode))
        })
        .collect()
}

fn quorum_ok(modes: &[(String, String)]) -> bool {
    modes.iter().filter(|(_, m)| m == "leader").count() == 1
        && modes.iter().all(|(_, m)| m == "leader" || m == "follower")
}

/// Power a node off (the one running the topology's worker, else the last Kafka node); produce
/// and consume through the others; boot it again and wait for it to rejoin (ZooKeeper member again, every partition's ISR whole). `wait_healthy` boots the
/// node and returns once its health unit reports healthy again (or fails).
pub fn node_loss(
    nodes: &[&Plan],
    cs: &mut [Container],
    acked_before: &BTreeSet<String>,
    mut wordcount: Option<&mut Wordcount>,
    wait_healthy: &mut dyn FnMut(&mut Container) -> Result<f64>,
) -> Phase {
    let t = Instant::now();
    let mut ph = Phase {
        name: "node loss and rejoin",
        seconds: 0.0,
        lines: Vec::new(),
        failures: Vec::new(),
    };
    let result = (|| -> Result<()> {
        let loss = Loss::choose(nodes, cs, wordcount.is_some(), &mut ph)?;
        let vi = cs
            .iter()
            .position(|c| c.name == loss.victim.node.name)
            .context("victim container")?;
        cs[vi].power_off();
        ph.lines
            .push(format!("{} powered off", loss.victim.node.name));
        let lost_at = Instant::now();
        loss.zookeeper_keeps_quorum(cs, lost_at, &mut ph);
        loss.kafka_goes_on(cs, acked_before, &mut ph)?;
        if let Some(w) = wordcount.as_deref_mut() {
            loss.storm_goes_on(cs, w, lost_at, &mut ph);
        }
        // The node comes back with its disk as it was.
        let secs = wait_healthy(&mut cs[vi])?;
        ph.lines.push(format!(
            "{} booted again, healthy after {secs:.0}s",
            loss.victim.node.name
        ));
        loss.rejoined(cs, wordcount.is_some(), &mut ph);
        Ok(())
    })();
    if let Err(e) = result {
        ph.failures.push(format!("node loss: {e:#}"));
    }
    ph.seconds = t.elapsed().as_secs_f64();
    ph
}

/// One node's loss: who is lost, and the two Kafka nodes that produce and consume meanwhile.
struct Loss<'a> {
    nodes: &'a [&'a Plan],
    kafka: Vec<&'a Plan>,
    victim: &'a Plan,
    a: &'a Plan,
    b: &'a Plan,
    all: Vec<&'a str>,
    survivors: Vec<&'a str>,
}

impl<'a> Loss<'a> {
    /// The victim: the Kafka node running the topology's worker (so Storm must reassign it,
    /// from a nimbus that may be a new leader), else the last Kafka node.
    fn choose(
        nodes: &'a [&'a Plan],
        cs: &[Container],
        topology: bool,
        ph: &mut Phase,
    ) -> Result<Loss<'a>> {
        let kafka = kafka_nodes(nodes);
        if kafka.len() < 3 {
            bail!("the node-loss phase needs at least three Kafka nodes");
        }
        let all: Vec<&str> = nodes.iter().map(|p| p.node.name.as_str()).collect();
        let placement = if topology {
            let p = storm_placement(nodes, cs, &all);
            ph.lines
                .push(format!("storm before the loss: {}", placement_line(&p)));
            p
        } else {
            Vec::new()
        };
        let victim = kafka
            .iter()
            .copied()
            .find(|k| placement.iter().any(|(n, w)| *w && *n == k.node.name))
            .unwrap_or(kafka[kafka.len() - 1]);
        let others: Vec<&Plan> = kafka
            .iter()
            .copied()
            .filter(|k| k.node.name != victim.node.name)
            .collect();
        let survivors = all
            .iter()
            .copied()
            .filter(|n| *n != victim.node.name)
            .collect();
        Ok(Loss {
            nodes,
            victim,
            a: others[0],
            b: others[1],
            kafka,
            all,
            survivors,
        })
    }

    fn victim(&self) -> &str {
        &self.victim.node.name
    }

    /// The survivors elect a new leader if the victim led (a few ticks): wait for them.
    fn zookeeper_keeps_quorum(&self, cs: &[Container], lost_at: Instant, ph: &mut Phase) {
        let mut modes = zk_modes(self.nodes, cs, &self.survivors);
        while !quorum_ok(&modes) && lost_at.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_secs(2));
            modes = zk_modes(self.nodes, cs, &self.survivors);
        }
        ph.lines.push(format!(
            "zookeeper without {} (after {:.0}s): {}",
            self.victim(),
            lost_at.elapsed().as_secs_f64(),
            modes_line(&modes)
        ));
        if !quorum_ok(&modes) {
            ph.failures.push(format!(
                "zookeeper lost its quorum without {}",
                self.victim()
            ));
        }
    }

    /// A second round produced through one survivor, both rounds consumed through another.
    fn kafka_goes_on(
        &self,
        cs: &[Container],
        acked_before: &BTreeSet<String>,
        ph: &mut Phase,
    ) -> Result<()> {
        let (a, b) = (self.a, self.b);
        let acked = produce(container(cs, a), a, 2)?;
        let mut all = acked_before.clone();
        all.extend(acked.iter().cloned());
        let seen = consume(container(cs, b), b, all.len())?;
        let line = compare(
            &all,
            &seen,
            &format!("without {} (both rounds)", self.victim()),
            &mut ph.failures,
        );
        ph.lines.push(line);
        if acked.len() < MESSAGES {
            ph.failures.push(format!(
                "without {}: only {}/{MESSAGES} messages acknowledged (min.insync.replicas should allow writes)",
                self.victim(),
                acked.len()
            ));
        }
        Ok(())
    }

    /// The topology goes on: a worker on a survivor again, and a new batch counted exactly.
    fn storm_goes_on(&self, cs: &[Container], w: &mut Wordcount, lost_at: Instant, ph: &mut Phase) {
        let victim = self.victim();
        let r = await_worker(
            self.nodes,
            cs,
            &self.survivors,
            lost_at,
            Duration::from_secs(420),
        )
        .and_then(|l| {
            ph.lines.push(format!("topology without {victim}: {l}"));
            w.more(cs, &self.a.node.name, Duration::from_secs(420))
        });
        match r {
            Ok(l) => ph.lines.push(format!(
                "topology without {victim}: {SENTENCES} more sentences through {}; {l}",
                self.a.node.name
            )),
            Err(e) => {
                ph.failures
                    .push(format!("topology without {victim}: {e:#}"));
                ph.lines.push(format!(
                    "storm without {victim}: {}\n{}",
                    placement_line(&storm_placement(self.nodes, cs, &self.survivors)),
                    storm_log_tail(self.nodes, cs, &self.survivors)
                ));
            }
        }
    }

    /// Back: a ZooKeeper member again, every partition's ISR whole, the topology ACTIVE.
    fn rejoined(&self, cs: &[Container], topology: bool, ph: &mut Phase) {
        let want_isr = self.kafka.len().min(3);
        let deadline = Instant::now() + Duration::from_secs(600);
        let (mut modes, mut isr) = (Vec::new(), Vec::new());
        while Instant::now() < deadline {
            modes = zk_modes(self.nodes, cs, &self.all);
            isr = isr_sizes(container(cs, self.a), &bootstrap(self.a)).unwrap_or_default();
            if quorum_ok(&modes) && !isr.is_empty() && isr.iter().all(|n| *n == want_isr) {
                break;
            }
            std::thread::sleep(Duration::from_secs(5));
        }
        ph.lines.push(format!(
            "after the rejoin: zookeeper {}; ISR sizes {isr:?}",
            modes_line(&modes)
        ));
        if topology {
            match topology_status(container(cs, self.a)) {
                Ok(Some(s)) if s == "ACTIVE" => {
                    ph.lines.push(format!("after the rejoin: {WC_NAME} ACTIVE"))
                }
                Ok(s) => ph.failures.push(format!(
                    "after the rejoin: {WC_NAME} is {}",
                    s.unwrap_or_else(|| "not listed".into())
                )),
                Err(e) => ph
                    .failures
                    .push(format!("after the rejoin: storm list: {e:#}")),
            }
        }
        if !quorum_ok(&modes) {
            ph.failures.push(format!(
                "{}: did not rejoin the ZooKeeper ensemble",
                self.victim()
            ));
        }
        if isr.is_empty() || !isr.iter().all(|n| *n == want_isr) {
            ph.failures.push(format!(
                "{}: the ISR did not come back to {want_isr} ({isr:?})",
                self.victim()
            ));
        }
    }
}

fn modes_line(modes: &[(String, String)]) -> String {
    modes
        .iter()
        .map(|(n, m)| format!("{n}={m}"))
        .collect::<Vec<_>>()
        .join(" ")
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
