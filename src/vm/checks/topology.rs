//! The Python Storm topology of examples/python-wordcount: built and submitted on a node, fed,
//! and its word counts read back exactly.

use super::*;
pub(crate) use crate::apply::storm::{WC_NAME, example_status, kill_example, storm};

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
pub(super) const WC_IN: &str = "sentences";
pub(super) const WC_OUT: &str = "word-counts";
/// Sentences per batch.
pub const SENTENCES: usize = 200;

pub(super) const WORDS: [&str; 12] = [
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
pub(super) fn sentence(i: usize) -> String {
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
pub(super) fn word_counts(n: usize) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for i in 0..n {
        for w in sentence(i).split(' ') {
            *m.entry(w.to_string()).or_insert(0) += 1;
        }
    }
    m
}

/// The running counts in the output topic (`word<TAB>count` lines): each word's highest.
pub(super) fn final_counts(out: &str) -> BTreeMap<String, u64> {
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

pub(super) fn create_topic(c: &Member, bootstrap: &str, topic: &str, rf: usize) -> Result<()> {
    c.tool(
        &[
            crate::layout::kafka_bin::TOPICS,
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
pub(super) fn acls_applied(c: &Member, p: &Plan) -> Result<String> {
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
pub(super) fn topology_status(c: &Member) -> Result<Option<String>> {
    example_status(&|cmd: &[&str], secs: u64| c.tool(cmd, secs))
}

impl Wordcount {
    /// The node it is fed through.
    pub fn via(&self) -> &str {
        &self.via
    }

    /// Send the next `n` sentences with acks=all.
    fn feed(&mut self, c: &Member, n: usize) -> Result<()> {
        let script = format!(
            "printf '%s\\n' \"$@\" | {} --bootstrap-server {} {} {CLIENT} --topic {WC_IN} --producer-property acks=all",
            crate::layout::kafka_bin::CONSOLE_PRODUCER,
            self.bootstrap,
            config_opt(self.modern, "--producer.config")
        );
        let mut cmd = vec!["sh".to_string(), "-c".into(), script, "sh".into()];
        cmd.extend((self.sent..self.sent + n).map(sentence));
        let o = c.exec(
            &cmd.iter().map(String::as_str).collect::<Vec<_>>(),
            Duration::from_secs(300),
        )?;
        // The console producer logs a send that failed and still exits 0: either is a failure,
        // and then which of the sentences were written is unknown (the counts cannot be judged).
        let err = String::from_utf8_lossy(&o.stderr);
        if let Some(l) = err.lines().find(|l| l.contains("Error when sending")) {
            bail!("{}: a sentence was not written: {l}", c.name());
        }
        if !o.status.success() {
            bail!(
                "{}: the console producer failed ({}): {}",
                c.name(),
                o.status,
                crate::util::run::stderr_tail(&err, 6)
            );
        }
        self.sent += n;
        self.expected = word_counts(self.sent);
        Ok(())
    }

    /// Feed `n` more sentences during `up --stay` (while `imgbuild roll` swaps nodes) through
    /// `via`, without waiting for the counts: the check after the stay waits for all of them.
    pub fn feed_through(&mut self, cs: &[Member], via: &str, n: usize) -> Result<()> {
        let c = cs
            .iter()
            .find(|c| c.name() == via)
            .with_context(|| format!("no member {via}"))?;
        self.feed(c, n)
    }

    /// Sentences sent so far.
    pub fn sent(&self) -> usize {
        self.sent
    }

    /// Read the output topic through `c` until it holds the expected counts (or `wait` passes).
    /// A line describing what was read; an error when it never matched.
    fn await_counts(&self, c: &Member, wait: Duration) -> Result<String> {
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
    pub fn more(&mut self, cs: &[Member], via: &str, wait: Duration) -> Result<String> {
        let c = cs
            .iter()
            .find(|c| c.name() == via)
            .context("the feeding node's container")?;
        self.via = via.to_string();
        self.feed(c, SENTENCES)?;
        self.await_counts(c, wait)
    }

    /// Kill the topology and wait until `storm list` no longer shows it.
    pub fn kill(&self, cs: &[Member]) -> Phase {
        let t = Instant::now();
        let (mut lines, mut failures) = (Vec::new(), Vec::new());
        let r = (|| -> Result<()> {
            let c = cs
                .iter()
                .find(|c| c.name() == self.via)
                .context("the topology's node")?;
            if !kill_example(&|cmd: &[&str], secs: u64| c.tool(cmd, secs))? {
                bail!("{WC_NAME} was no longer running when it was to be killed");
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
pub fn topology(nodes: &[&Plan], cs: &[Member]) -> (Phase, Option<Wordcount>) {
    let t = Instant::now();
    let (mut lines, mut failures) = (Vec::new(), Vec::new());
    let kafka = kafka_nodes(nodes);
    let mut wc = None;
    let r = (|| -> Result<()> {
        // Submitted from a container (the mixed runtime's VM would take minutes per JVM).
        let mut submitters: Vec<&&Plan> = nodes
            .iter()
            .filter(|p| p.storm.is_some() && p.kafka.is_some())
            .collect();
        submitters.sort_by_key(|p| container(cs, p).is_vm());
        let Some(p) = submitters.first().copied() else {
            bail!("no node with both Storm and Kafka to submit from");
        };
        let c = container(cs, p);
        let servers = kafka
            .iter()
            .map(|k| bootstrap(k))
            .collect::<Vec<_>>()
            .join(",");
        // The recipe's topics (the reference recipe declares the example's two), created as
        // `imgbuild apply` creates them; one of the example's the recipe does not declare is
        // created by the check, and says so.
        let declared = p
            .kafka
            .as_ref()
            .map(|k| k.topics.clone())
            .unwrap_or_default();
        let via = crate::apply::Via {
            plan: p,
            run: |cmd: &[&str], secs: u64| c.tool(cmd, secs),
            bootstrap: bootstrap(p),
            write: None,
        };
        lines.extend(via.create_missing_topics(&declared)?);
        let rf = kafka.len().min(3);
        for topic in [WC_IN, WC_OUT] {
            if !declared.iter().any(|t| t.name == topic) {
                create_topic(c, &servers, topic, rf)?;
                lines.push(format!(
                    "topic {topic}: not in the recipe, created by the check (3 partitions, replication factor {rf})"
                ));
            }
        }
        if p.security.tls() {
            lines.push(acls_applied(c, p)?);
        }
        // Submitted as `imgbuild submit` submits a directory: the image's example, copied to
        // the node, its jar built there, `storm jar` with Flux, until ACTIVE.
        let example = crate::apply::submit::example(&crate::apply::submit::clients(&kafka))?;
        let on = crate::apply::submit::On {
            node: &p.node.name,
            run: &|cmd: &[&str], secs: u64| c.tool(cmd, secs),
            write: &|path: &str, bytes: &[u8], mode: u32| c.write(path, bytes, mode),
        };
        lines.extend(crate::apply::submit::submit_on(&on, &example).map(|ls| {
            ls.into_iter()
                .map(|l| format!("submit: {l}"))
                .collect::<Vec<_>>()
        })?);
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
        // What the workers' own endpoints say about it (the failing-tuples and not-ACTIVE
        // alerts read these).
        lines.push(super::metrics::workers(
            nodes,
            cs,
            WC_NAME,
            Duration::from_secs(10),
        )?);
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
