//! The Kafka round trip: a replicated topic, every acknowledged message consumed through another
//! node, and the partitions' replication.

use super::*;

/// Produce MESSAGES values `<round>.<n>` with acks=all through `via` (VerifiableProducer prints
/// one JSON line per acknowledged send); the acknowledged values.
pub(super) fn produce(via: &Member, p: &Plan, round: usize) -> Result<BTreeSet<String>> {
    let out = via.tool(
        &[
            crate::layout::kafka_bin::VERIFIABLE_PRODUCER,
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
    Ok(acked_values(&out))
}

/// The values VerifiableProducer's JSON lines say were acknowledged.
pub(super) fn acked_values(out: &str) -> BTreeSet<String> {
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
    acked
}

/// `topic` read from the beginning through `via` with kafka-console-consumer.sh and `extra`
/// arguments (which give it a --timeout-ms).
pub(super) fn console_consumer(
    via: &Member,
    bootstrap: &str,
    modern: bool,
    topic: &str,
    extra: &[&str],
) -> Result<String> {
    let mut cmd = vec![
        crate::layout::kafka_bin::CONSOLE_CONSUMER,
        "--bootstrap-server",
        bootstrap,
        config_opt(modern, "--consumer.config"),
        CLIENT,
        "--topic",
        topic,
        "--from-beginning",
    ];
    cmd.extend_from_slice(extra);
    let o = via.exec(&cmd, Duration::from_secs(300))?;
    let err = String::from_utf8_lossy(&o.stderr);
    // Its idle timeout ends the read (with an error line, and by some releases a non-zero exit):
    // what it printed before is the answer.
    if !o.status.success() && !err.contains("TimeoutException") {
        bail!(
            "{}: `{}` failed ({}): {}",
            via.name(),
            cmd.join(" "),
            o.status,
            crate::util::run::stderr_tail(&err, 8)
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Every value in the topic, read from the beginning through `via`.
pub(super) fn consume(via: &Member, p: &Plan, expect: usize) -> Result<Vec<String>> {
    let out = console_consumer(
        via,
        &bootstrap(p),
        modern_tools(p),
        TOPIC,
        &[
            "--max-messages",
            &expect.to_string(),
            // Patience, not a verdict: it ends as soon as `expect` values are read. Through a
            // VM under software emulation (the group coordinator or a leader on it) the first
            // fetch once came after more than 60 s (0 of 1000 read, then judged lost).
            "--timeout-ms",
            "180000",
        ],
    )?;
    Ok(out.lines().map(str::to_string).collect())
}

/// Acknowledged values all consumed, nothing consumed that was never produced.
pub(super) fn compare(
    acked: &BTreeSet<String>,
    seen: &[String],
    what: &str,
    f: &mut Vec<String>,
) -> String {
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
    // A send that expired (no acknowledgement) may still have been written: shown, not judged.
    let unacked = seen_set.iter().filter(|v| !acked.contains(**v)).count();
    format!(
        "{what}: {}/{} acknowledged messages consumed, {lost} lost, {corrupt} corrupted, {} duplicates{}",
        acked.len() - lost,
        acked.len(),
        seen.len().saturating_sub(seen_set.len()),
        if unacked > 0 {
            format!(
                "; {unacked} consumed that were sent but not acknowledged (written before the send expired)"
            )
        } else {
            String::new()
        }
    )
}

/// Partitions of the topic and their ISR sizes, from `kafka-topics.sh --describe`.
pub(super) fn isr_sizes(via: &Member, bootstrap: &str) -> Result<Vec<usize>> {
    Ok(isrs(via, bootstrap, TOPIC)?.iter().map(Vec::len).collect())
}

/// Partitions of the topic and their in-sync replicas (broker ids), from `kafka-topics.sh
/// --describe`.
pub(super) fn isrs(via: &Member, bootstrap: &str, topic: &str) -> Result<Vec<Vec<u32>>> {
    let out = via.tool(
        &[
            crate::layout::kafka_bin::TOPICS,
            "--bootstrap-server",
            bootstrap,
            "--command-config",
            CLIENT,
            "--describe",
            "--topic",
            topic,
        ],
        180,
    )?;
    Ok(out
        .lines()
        .filter(|l| l.contains("Partition:"))
        .filter_map(|l| {
            let isr = l.split("Isr:").nth(1)?.split_whitespace().next()?;
            Some(isr.split(',').filter_map(|s| s.parse().ok()).collect())
        })
        .collect())
}

/// The broker id of `p` (KRaft node.id, or ZooKeeper-mode broker.id).
pub(crate) fn broker_id(p: &Plan) -> Option<u32> {
    let k = p.kafka.as_ref()?;
    k.node_id.or(k.broker_id)
}

/// The mixed runtime's VM holds a replica of every partition and is in every ISR.
pub(super) fn vm_in_every_isr(
    cs: &[Member],
    vm: &Plan,
    via: &Member,
    bootstrap: &str,
    lines: &mut Vec<String>,
    failures: &mut Vec<String>,
) -> Result<()> {
    let id = broker_id(vm).context("the VM's broker id")?;
    let isr = isrs(via, bootstrap, TOPIC)?;
    let (line, failure) = in_every_isr(&label(cs, vm), id, &isr);
    lines.push(line);
    failures.extend(failure);
    Ok(())
}

/// Whether broker `id` is in the ISR of every partition: the line to print, and the failure.
pub(super) fn in_every_isr(who: &str, id: u32, isr: &[Vec<u32>]) -> (String, Option<String>) {
    let with = isr.iter().filter(|r| r.contains(&id)).count();
    let line = format!(
        "{who}'s broker {id} in the ISR of {with}/{} partitions of {TOPIC} ({isr:?})",
        isr.len()
    );
    let failure = (isr.is_empty() || with < isr.len()).then(|| {
        format!(
            "{who}: broker {id} is in the ISR of only {with}/{} partitions of {TOPIC}",
            isr.len()
        )
    });
    (line, failure)
}

/// The Kafka round trip: topic, produce through one node, consume through another, replication.
pub fn round_trip(nodes: &[&Plan], cs: &[Member]) -> (Phase, BTreeSet<String>) {
    let t = Instant::now();
    let (mut lines, mut failures) = (Vec::new(), Vec::new());
    let mut acked = BTreeSet::new();
    let mut kafka = kafka_nodes(nodes);
    // The mixed runtime's VM first: messages go through its broker.
    kafka.sort_by_key(|k| !container(cs, k).is_vm());
    let result = (|| -> Result<()> {
        let (a, b) = match kafka.as_slice() {
            [a, b, ..] => (*a, *b),
            [a] => (*a, *a),
            [] => bail!("no Kafka node"),
        };
        let (ca, cb) = (via_of(cs, a), via_of(cs, b));
        let rf = kafka.len().min(3);
        let isr = rf.min(2);
        ca.tool(
            &[
                crate::layout::kafka_bin::TOPICS,
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
        let from = |c: &Member, p: &Plan| {
            if c.name() == p.node.name {
                String::new()
            } else {
                format!(" (the client on {})", c.name())
            }
        };
        lines.push(format!(
            "produced through {}'s broker{} with acks=all, consumed through {}'s{}",
            label(cs, a),
            from(ca, a),
            label(cs, b),
            from(cb, b)
        ));
        lines.push(compare(&acked, &seen, "round trip", &mut failures));
        if acked.len() < MESSAGES {
            failures.push(format!(
                "round trip: only {}/{MESSAGES} messages acknowledged",
                acked.len()
            ));
        }
        replication(ca, a, &mut lines, &mut failures)?;
        if let Some(vm) = kafka.iter().find(|k| container(cs, k).is_vm()) {
            vm_in_every_isr(cs, vm, ca, &bootstrap(a), &mut lines, &mut failures)?;
        }
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

/// How long under-replicated partitions after the round trip may take to be in sync again.
const UNDER_SETTLE: Duration = Duration::from_secs(180);

/// After the round trip: no under-replicated partition (once the followers caught up, within
/// UNDER_SETTLE), and (KRaft) every voter within 1000 records of the leader.
pub(super) fn replication(
    ca: &Member,
    a: &Plan,
    lines: &mut Vec<String>,
    failures: &mut Vec<String>,
) -> Result<()> {
    // A follower that fell behind under the round trip's load (a VM under software emulation:
    // measured once, 34 partitions right after it) leaves the ISR for replica.lag.time.max.ms and
    // is back once it has caught up: judged after up to UNDER_SETTLE, the first count shown.
    let bootstrap = bootstrap(a);
    let under = || -> Result<Vec<String>> {
        let out = ca.tool(
            &[
                crate::layout::kafka_bin::TOPICS,
                "--bootstrap-server",
                &bootstrap,
                "--command-config",
                CLIENT,
                "--describe",
                "--under-replicated-partitions",
            ],
            180,
        )?;
        Ok(out
            .lines()
            .filter(|l| l.contains("Partition:"))
            .map(|l| {
                let field = |k: &str| {
                    l.split('\t')
                        .find_map(|f| f.trim().strip_prefix(k))
                        .map(str::trim)
                        .unwrap_or("?")
                        .to_string()
                };
                format!("{}-{}", field("Topic:"), field("Partition:"))
            })
            .collect())
    };
    let t = Instant::now();
    let first = under()?;
    let mut now = first.clone();
    while !now.is_empty() && t.elapsed() < UNDER_SETTLE {
        std::thread::sleep(Duration::from_secs(10));
        now = under()?;
    }
    if first.is_empty() {
        lines.push("under-replicated partitions: 0".to_string());
    } else if now.is_empty() {
        lines.push(format!(
            "under-replicated partitions: 0 ({} right after the round trip, every replica back in sync {:.0}s later)",
            first.len(),
            t.elapsed().as_secs_f64()
        ));
    } else {
        lines.push(format!("under-replicated partitions: {}", now.len()));
        failures.push(format!(
            "kafka: {} under-replicated partitions {:.0}s after the round trip (e.g. {})",
            now.len(),
            t.elapsed().as_secs_f64(),
            now.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    if let Some(k) = &a.kafka
        && let Some(port) = k.controller_port
    {
        let rep = ca.tool(
            &[
                crate::layout::kafka_bin::METADATA_QUORUM,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_but_unacknowledged_send_is_shown_and_a_missing_acknowledged_one_is_lost() {
        let acked: BTreeSet<String> = ["3.0", "3.1"].map(String::from).into();
        let mut f = Vec::new();
        let seen = ["3.0", "3.2", "3.1"].map(String::from);
        let line = compare(&acked, &seen, "through the partition", &mut f);
        assert!(f.is_empty(), "{f:?}");
        assert_eq!(
            line,
            "through the partition: 2/2 acknowledged messages consumed, 0 lost, 0 corrupted, 0 duplicates; 1 consumed that were sent but not acknowledged (written before the send expired)"
        );
        let line = compare(&acked, &seen[..2], "round trip", &mut f);
        assert_eq!(f, ["round trip: 1 acknowledged messages never consumed"]);
        assert!(line.starts_with("round trip: 1/2 acknowledged messages consumed, 1 lost"));
    }
}
