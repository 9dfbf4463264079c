//! A node's loss and return: ZooKeeper keeps its quorum, Kafka loses no acknowledged message,
//! Storm moves the topology's worker, and the node rejoins.

use super::*;

/// Where Storm runs the topology, as each node in `up` sees it: (node, runs a worker). A worker
/// is a process running Storm's worker main class (the probe, whose own command line names the
/// class in two halves, is not one).
pub(super) fn storm_placement(nodes: &[&Plan], cs: &[Member], up: &[&str]) -> Vec<(String, bool)> {
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
            let seen = container(cs, p)
                .tool(&["/usr/bin/python3", "-c", PROBE], 30)
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            (p.node.name.clone(), seen == "worker")
        })
        .collect()
}

pub(super) fn placement_line(placement: &[(String, bool)]) -> String {
    placement
        .iter()
        .map(|(n, w)| format!("{n}: {}", if *w { "worker" } else { "no worker" }))
        .collect::<Vec<_>>()
        .join("; ")
}

/// After a node's loss, wait until the topology has a worker on a surviving node again (Storm
/// notices the lost supervisor, a new nimbus leader takes over if need be, and reassigns).
pub(super) fn await_worker(
    nodes: &[&Plan],
    cs: &[Member],
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
pub(super) fn storm_log_tail(nodes: &[&Plan], cs: &[Member], up: &[&str]) -> String {
    const PATTERN: &str =
        "leadership|assignment|not alive|Launching worker|Worker Process|Exception|ERROR";
    nodes
        .iter()
        .filter(|p| p.storm.is_some() && up.contains(&p.node.name.as_str()))
        .map(|p| {
            let script = format!(
                "for f in /var/log/storm/nimbus.log /var/log/storm/supervisor.log; do grep -hE '{PATTERN}' \"$f\" 2>/dev/null | tail -n 6 | sed \"s|^|  $(basename \"$f\"): |\"; done"
            );
            let tail = container(cs, p).tool(&["sh", "-c", &script], 30)
                .unwrap_or_else(|e| format!("  ? ({e:#})\n"));
            format!("{}:\n{}", p.node.name, tail.trim_end())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// ZooKeeper modes of the ensemble members among `up`.
pub(super) fn zk_modes(nodes: &[&Plan], cs: &[Member], up: &[&str]) -> Vec<(String, String)> {
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

pub(super) fn quorum_ok(modes: &[(String, String)]) -> bool {
    modes.iter().filter(|(_, m)| m == "leader").count() == 1
        && modes.iter().all(|(_, m)| m == "leader" || m == "follower")
}

/// Power a node off (the mixed runtime's VM, else the one running the topology's worker, else
/// the last Kafka node); produce and consume through the others; boot it again and wait for it
/// to rejoin (ZooKeeper member again, every partition's ISR whole). `wait_healthy` boots the
/// node (unless it was booted already: when and where its console then began) and returns once
/// its health unit reports healthy again (or fails).
///
/// A VM is booted again at once, cut off the nodes' network (its port off the bridge, as a
/// partition does) until the checks without it have ended: under emulation its firmware,
/// kernel and systemd take minutes before any service runs, which then overlap those checks
/// instead of following them, and the cut keeps them without it however fast it boots. Put
/// back, its services find their peers and it must rejoin as from a plain power-off.
pub fn node_loss(
    nodes: &[&Plan],
    cs: &mut [Member],
    acked_before: &BTreeSet<String>,
    mut wordcount: Option<&mut Wordcount>,
    wait_healthy: &mut super::boot::Reboot<'_>,
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
            .position(|c| c.name() == loss.victim.node.name)
            .context("victim container")?;
        let how = if cs[vi].is_vm() {
            "powered off (QEMU killed: no shutdown in the guest)"
        } else {
            "powered off"
        };
        cs[vi].power_off();
        ph.lines.push(format!("{} {how}", loss.victim.node.name));
        let lost_at = Instant::now();
        let early = if cs[vi].is_vm() {
            cs[vi].cut_off(true)?;
            match super::boot::boot_marked(&mut cs[vi]) {
                Ok(b) => Some(b),
                Err(e) => {
                    let _ = cs[vi].cut_off(false);
                    return Err(e);
                }
            }
        } else {
            None
        };
        let without = (|| -> Result<()> {
            loss.zookeeper_keeps_quorum(cs, lost_at, &mut ph);
            loss.kafka_goes_on(cs, acked_before, &mut ph)?;
            if let Some(w) = wordcount.as_deref_mut() {
                loss.storm_goes_on(cs, w, lost_at, &mut ph);
            }
            Ok(())
        })();
        let cut_for = lost_at.elapsed().as_secs_f64();
        if early.is_some() {
            cs[vi].cut_off(false)?;
        }
        without?;
        // The node comes back with its disk as it was.
        let secs = wait_healthy(&mut cs[vi], early)?;
        ph.lines.push(match early {
            Some(_) => format!(
                "{} booted again from the same image and disk, healthy after {secs:.0}s (booted at once, off the nodes' network for the {cut_for:.0}s of the checks without it)",
                loss.victim.node.name
            ),
            None => format!("{} booted again, healthy after {secs:.0}s", loss.victim.node.name),
        });
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
pub(super) struct Loss<'a> {
    pub(super) nodes: &'a [&'a Plan],
    pub(super) kafka: Vec<&'a Plan>,
    pub(super) victim: &'a Plan,
    pub(super) a: &'a Plan,
    pub(super) b: &'a Plan,
    pub(super) all: Vec<&'a str>,
    pub(super) survivors: Vec<&'a str>,
}

impl<'a> Loss<'a> {
    /// The victim: the Kafka node running the topology's worker (so Storm must reassign it,
    /// from a nimbus that may be a new leader), else the last Kafka node.
    fn choose(
        nodes: &'a [&'a Plan],
        cs: &[Member],
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
        // The mixed runtime's VM first: its power-off and return are what the runtime proves.
        let victim = kafka
            .iter()
            .copied()
            .find(|k| container(cs, k).is_vm())
            .or_else(|| {
                kafka
                    .iter()
                    .copied()
                    .find(|k| placement.iter().any(|(n, w)| *w && *n == k.node.name))
            })
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
    fn zookeeper_keeps_quorum(&self, cs: &[Member], lost_at: Instant, ph: &mut Phase) {
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
        cs: &[Member],
        acked_before: &BTreeSet<String>,
        ph: &mut Phase,
    ) -> Result<()> {
        let (a, b) = (self.a, self.b);
        let acked = produce(via_of(cs, a), a, 2)?;
        let mut all = acked_before.clone();
        all.extend(acked.iter().cloned());
        let seen = consume(via_of(cs, b), b, all.len())?;
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
    fn storm_goes_on(&self, cs: &[Member], w: &mut Wordcount, lost_at: Instant, ph: &mut Phase) {
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
    fn rejoined(&self, cs: &[Member], topology: bool, ph: &mut Phase) {
        let want_isr = self.kafka.len().min(3);
        let t = Instant::now();
        let deadline = t + Duration::from_secs(600);
        let (mut modes, mut isr) = (Vec::new(), Vec::new());
        while Instant::now() < deadline {
            modes = zk_modes(self.nodes, cs, &self.all);
            isr = isr_sizes(via_of(cs, self.a), &bootstrap(self.a)).unwrap_or_default();
            if quorum_ok(&modes) && !isr.is_empty() && isr.iter().all(|n| *n == want_isr) {
                break;
            }
            std::thread::sleep(Duration::from_secs(5));
        }
        ph.lines.push(format!(
            "after the rejoin: zookeeper {}; ISR sizes {isr:?} ({:.0}s after it was healthy)",
            modes_line(&modes),
            t.elapsed().as_secs_f64()
        ));
        if topology {
            match topology_status(via_of(cs, self.a)) {
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

pub(super) fn modes_line(modes: &[(String, String)]) -> String {
    modes
        .iter()
        .map(|(n, m)| format!("{n}={m}"))
        .collect::<Vec<_>>()
        .join(" ")
}
