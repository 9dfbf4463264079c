//! What the roll looks at between nodes, read from the nodes themselves over (pinned) SSH, the
//! way an operator would look: each node's own `health.py` round (ZooKeeper's mode, the KRaft
//! quorum's leader and lag, Storm's nimbuses and supervisors as registered in ZooKeeper — no JVM,
//! which under emulation takes minutes), `kafka-topics.sh --describe` and its four problem
//! filters from one broker node, `storm list` from a nimbus node, and each Storm node's worker
//! processes. The gates are judged from that one look; nothing here changes the cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::plan::{Plan, Role};
use crate::vm::member::Login;

/// A node reached over SSH as the recipe's sudo user.
#[derive(Clone)]
pub struct Remote {
    pub name: String,
    pub addr: String,
    pub login: Login,
}

impl Remote {
    /// Run `cmd` as root with the image's tools; (exit code, stdout, stderr).
    pub fn run(&self, cmd: &[&str], timeout: u64) -> Result<(i32, String, String)> {
        let o =
            crate::vm::member::ssh_command(&self.login, &self.addr, Duration::from_secs(timeout))
                .arg(crate::vm::member::sudo_tool_line(cmd))
                .output()
                .with_context(|| format!("{}: ssh", self.name))?;
        Ok((
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        ))
    }

    /// Write a file on the node as root (renamed into place once whole).
    pub fn write(&self, path: &str, bytes: &[u8], mode: u32) -> Result<()> {
        crate::vm::member::ssh_write(&self.login, &self.addr, &self.name, path, bytes, mode)
    }

    /// Run `cmd` as root and require that it succeed: its stdout, or an error naming the node,
    /// the command, its exit code and the tail of its stderr (as `Member::tool` for `up`).
    pub fn tool(&self, cmd: &[&str], timeout: u64) -> Result<String> {
        let (code, out, err) = self.run(cmd, timeout)?;
        if code != 0 {
            anyhow::bail!(
                "{}: `{}` failed (exit {code}): {}",
                self.name,
                cmd.join(" "),
                crate::util::run::stderr_tail(&err, 6)
            );
        }
        Ok(out)
    }
}

/// A node's health round, parsed (the health unit's lines; shared with `up`'s checks).
pub use crate::vm::checks::{Check, parse_health};

/// A partition as `kafka-topics.sh --describe` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub topic: String,
    pub partition: u32,
    pub leader: i64,
    pub replicas: Vec<u32>,
    pub isr: Vec<u32>,
}

impl Partition {
    pub fn label(&self) -> String {
        format!("{}-{}", self.topic, self.partition)
    }
}

/// The partition lines of `kafka-topics.sh --describe` (any filter). Leader `none` is -1.
pub fn parse_partitions(out: &str) -> Vec<Partition> {
    let field = |l: &str, k: &str| -> Option<String> {
        let mut it = l.split_whitespace();
        while let Some(w) = it.next() {
            if w == k {
                return it.next().map(str::to_string);
            }
        }
        None
    };
    let ids = |s: Option<String>| -> Vec<u32> {
        s.unwrap_or_default()
            .split(',')
            .filter_map(|x| x.parse().ok())
            .collect()
    };
    out.lines()
        .filter(|l| l.contains("Partition:") && l.trim_start().starts_with("Topic:"))
        .filter_map(|l| {
            Some(Partition {
                topic: field(l, "Topic:")?,
                partition: field(l, "Partition:")?.parse().ok()?,
                leader: field(l, "Leader:")?.parse().unwrap_or(-1),
                replicas: ids(field(l, "Replicas:")),
                isr: ids(field(l, "Isr:")),
            })
        })
        .collect()
}

/// A topology as `storm list` shows it: (name, status, workers).
pub fn parse_topologies(out: &str) -> Vec<Topology> {
    out.lines()
        .skip_while(|l| !l.starts_with("Topology_name"))
        .skip(1)
        .filter(|l| !l.starts_with('-') && !l.trim().is_empty())
        .filter_map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            Some((
                c.first()?.to_string(),
                c.get(1)?.to_string(),
                c.get(3)?.parse().ok()?,
            ))
        })
        .collect()
}

/// The problem filters of `kafka-topics.sh --describe`, each of which must list nothing.
pub const FILTERS: [&str; 4] = [
    "--under-replicated-partitions",
    "--under-min-isr-partitions",
    "--at-min-isr-partitions",
    "--unavailable-partitions",
];

/// What could be seen, or why not.
pub type Look<T> = std::result::Result<T, String>;
/// Every partition, and what each problem filter listed.
pub type KafkaLook = (Vec<Partition>, BTreeMap<String, Vec<String>>);
/// A topology in `storm list`: (name, status, workers).
pub type Topology = (String, String, u32);

/// One look at the cluster.
#[derive(Debug, Default)]
pub struct Survey {
    /// Each node's health round, or why it could not be had.
    pub health: BTreeMap<String, Look<BTreeMap<String, Check>>>,
    /// Every partition, and what each problem filter listed; or why they could not be had.
    pub kafka: Option<Look<KafkaLook>>,
    /// The topologies `storm list` shows, or why it could not be had.
    pub topologies: Option<Look<Vec<Topology>>>,
    /// Storm worker processes on each Storm node.
    pub workers: BTreeMap<String, u32>,
    /// How long each node took for its health round: the cluster-wide tools (JVMs) run on the
    /// quickest first (a VM under emulation takes minutes for one).
    pub took: BTreeMap<String, f64>,
}

/// Take one look at the cluster: `plans` every node, `remotes` how to reach each, `except` a
/// node not to run the cluster-wide tools on (the one being rolled).
pub fn survey(plans: &[&Plan], remotes: &[Remote], except: Option<&str>) -> Survey {
    let mut s = Survey::default();
    let remote = |n: &str| remotes.iter().find(|r| r.name == n);
    for p in plans {
        let name = &p.node.name;
        let Some(r) = remote(name) else { continue };
        let t = std::time::Instant::now();
        let h = r
            .run(&crate::vm::checks::HEALTH_ROUND, 180)
            .map_err(|e| format!("{e:#}"))
            .and_then(|(code, out, err)| {
                let checks = parse_health(&out);
                if checks.is_empty() {
                    Err(format!(
                        "no health round (exit {code}): {}",
                        err.lines().last().unwrap_or("no answer")
                    ))
                } else {
                    Ok(checks)
                }
            });
        s.took.insert(name.clone(), t.elapsed().as_secs_f64());
        s.health.insert(name.clone(), h);
        if p.roles.contains(&Role::StormSupervisor)
            && let Ok((_, out, _)) = r.run(
                &[
                    "/usr/bin/pgrep",
                    "-c",
                    "-f",
                    // Bracketed: the pattern must not match the command line carrying it.
                    "[o]rg.apache.storm.daemon.worker.Worker",
                ],
                60,
            )
        {
            s.workers
                .insert(name.clone(), out.trim().parse().unwrap_or(0));
        }
    }
    // The cluster-wide tools on a node that is not being rolled and answered, the quickest first;
    // the next one when a node's tool fails.
    let mut by_speed: Vec<&&Plan> = plans
        .iter()
        .filter(|p| {
            Some(p.node.name.as_str()) != except
                && s.health.get(&p.node.name).is_some_and(|h| h.is_ok())
        })
        .collect();
    by_speed.sort_by(|a, b| {
        let t = |p: &&&Plan| s.took.get(&p.node.name).copied().unwrap_or(f64::MAX);
        t(a).total_cmp(&t(b))
    });
    let first_ok = |role: Role, look: &dyn Fn(&Plan, &Remote) -> Look<()>| -> Option<Look<()>> {
        let mut last = None;
        for p in by_speed.iter().filter(|p| p.roles.contains(&role)) {
            let r = remote(&p.node.name).expect("answered");
            match look(p, r) {
                Ok(()) => return Some(Ok(())),
                Err(e) => last = Some(Err(e)),
            }
        }
        last
    };
    let kafka = std::cell::RefCell::new(None);
    if plans.iter().any(|p| p.roles.contains(&Role::Kafka)) {
        let got = first_ok(Role::Kafka, &|p, r| {
            let k = kafka_look(p, r)?;
            *kafka.borrow_mut() = Some(k);
            Ok(())
        });
        s.kafka = Some(match (got, kafka.into_inner()) {
            (Some(Ok(())), Some(k)) => Ok(k),
            (Some(Err(e)), _) => Err(e),
            _ => Err("no broker node answered to run kafka-topics.sh on".into()),
        });
    }
    let tops = std::cell::RefCell::new(None);
    if plans.iter().any(|p| p.roles.contains(&Role::StormNimbus)) {
        let got = first_ok(Role::StormNimbus, &|p, r| {
            let cmd = crate::apply::storm::storm(&["list"]);
            let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
            match r.run(&cmd, 300) {
                Ok((0, out, _)) => {
                    *tops.borrow_mut() = Some(parse_topologies(&out));
                    Ok(())
                }
                Ok((c, _, err)) => Err(format!(
                    "{}: storm list exited {c}: {}",
                    p.node.name,
                    err.lines().last().unwrap_or("")
                )),
                Err(e) => Err(format!("{e:#}")),
            }
        });
        s.topologies = Some(match (got, tops.into_inner()) {
            (Some(Ok(())), Some(t)) => Ok(t),
            (Some(Err(e)), _) => Err(e),
            _ => Err("no nimbus node answered to run storm list on".into()),
        });
    }
    s
}

/// `kafka-topics.sh --describe`, whole and through each problem filter, on `p` as the node.
fn kafka_look(p: &Plan, r: &Remote) -> Look<KafkaLook> {
    let bootstrap = crate::vm::checks::bootstrap(p);
    let run = |filter: Option<&str>| -> Look<Vec<Partition>> {
        let mut cmd = vec![
            crate::layout::kafka_bin::TOPICS,
            "--bootstrap-server",
            &bootstrap,
            "--command-config",
            crate::layout::KAFKA_TLS_CLIENT,
            "--describe",
        ];
        cmd.extend(filter);
        match r.run(&cmd, 300) {
            Ok((0, out, _)) => Ok(parse_partitions(&out)),
            Ok((c, _, err)) => Err(format!(
                "{}: kafka-topics.sh --describe {} exited {c}: {}",
                p.node.name,
                filter.unwrap_or(""),
                err.lines().last().unwrap_or("")
            )),
            Err(e) => Err(format!("{e:#}")),
        }
    };
    let all = run(None)?;
    let mut problems = BTreeMap::new();
    for f in FILTERS {
        problems.insert(
            f.trim_start_matches("--").to_string(),
            run(Some(f))?.iter().map(Partition::label).collect(),
        );
    }
    Ok((all, problems))
}

/// A gate's verdict: its name, whether it passed, and what it saw.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Gate {
    pub name: &'static str,
    pub ok: bool,
    pub saw: String,
}

/// The gates that hold for the whole cluster (before every node, and after it): every node
/// answered; no partition under-replicated, under min ISR, at min ISR or unavailable; ZooKeeper's
/// every member serving with one leader; every KRaft voter listed and within 1000 records of the
/// leader; every supervisor registered; every topology ACTIVE.
pub fn cluster_gates(plans: &[&Plan], s: &Survey) -> Vec<Gate> {
    let mut g = Vec::new();
    let silent: Vec<String> = s
        .health
        .iter()
        .filter_map(|(n, h)| h.as_ref().err().map(|e| format!("{n}: {e}")))
        .collect();
    g.push(Gate {
        name: "nodes answer",
        ok: silent.is_empty() && s.health.len() == plans.len(),
        saw: if silent.is_empty() {
            format!(
                "{}/{} nodes ran their health round",
                s.health.len(),
                plans.len()
            )
        } else {
            silent.join("; ")
        },
    });
    let check = |n: &str, c: &str| -> Option<&Check> { s.health.get(n)?.as_ref().ok()?.get(c) };
    let has = |r: Role| plans.iter().filter(move |p| p.roles.contains(&r));
    if let Some(k) = &s.kafka {
        g.push(match k {
            Ok((_, problems)) => {
                let bad: Vec<String> = problems
                    .iter()
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(f, v)| {
                        let more = if v.len() > 4 { ", ..." } else { "" };
                        let first: Vec<&str> = v.iter().take(4).map(String::as_str).collect();
                        format!("{} {f} ({}{more})", v.len(), first.join(","))
                    })
                    .collect();
                Gate {
                    name: "kafka partitions",
                    ok: bad.is_empty(),
                    saw: if bad.is_empty() {
                        "none under-replicated, under or at min ISR, or unavailable".into()
                    } else {
                        bad.join("; ")
                    },
                }
            }
            Err(e) => Gate {
                name: "kafka partitions",
                ok: false,
                saw: e.clone(),
            },
        });
    }
    let zk: Vec<&&Plan> = has(Role::Zookeeper).collect();
    if !zk.is_empty() {
        let modes: Vec<(String, String)> = zk
            .iter()
            .map(|p| {
                let m = check(&p.node.name, "zookeeper")
                    .and_then(|(_, f)| f.get("mode").cloned())
                    .unwrap_or_else(|| "unknown".into());
                (p.node.name.clone(), m)
            })
            .collect();
        let leaders = modes.iter().filter(|(_, m)| m == "leader").count();
        let serving = modes
            .iter()
            .all(|(_, m)| ["leader", "follower", "standalone"].contains(&m.as_str()));
        g.push(Gate {
            name: "zookeeper quorum",
            ok: serving && (leaders == 1 || (zk.len() == 1 && modes[0].1 == "standalone")),
            saw: modes
                .iter()
                .map(|(n, m)| format!("{n} {m}"))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let kraft: Vec<&&Plan> = has(Role::Kafka)
        .filter(|p| {
            p.kafka
                .as_ref()
                .is_some_and(|k| k.mode == crate::recipe::KafkaMode::Kraft)
        })
        .collect();
    if !kraft.is_empty() {
        let seen: Vec<String> = kraft
            .iter()
            .map(|p| match check(&p.node.name, "kafka") {
                Some((ok, f)) => format!(
                    "{}: {} leader {} max lag {} unheard {}",
                    p.node.name,
                    if *ok { "ok" } else { "NOT OK" },
                    f.get("leader").map_or("?", String::as_str),
                    f.get("max_lag").map_or("?", String::as_str),
                    f.get("unheard").map_or("?", String::as_str)
                ),
                None => format!("{}: no report", p.node.name),
            })
            .collect();
        g.push(Gate {
            name: "kraft voters",
            ok: kraft
                .iter()
                .all(|p| check(&p.node.name, "kafka").is_some_and(|(ok, _)| *ok)),
            saw: seen.join("; "),
        });
    }
    let storm: Vec<&&Plan> = plans.iter().filter(|p| p.storm.is_some()).collect();
    if !storm.is_empty() {
        let seen: Vec<String> = storm
            .iter()
            .map(|p| match check(&p.node.name, "storm") {
                Some((ok, f)) => format!(
                    "{}: {} supervisors {} nimbuses {}",
                    p.node.name,
                    if *ok { "ok" } else { "NOT OK" },
                    f.get("supervisors").map_or("?", String::as_str),
                    f.get("nimbuses").map_or("?", String::as_str)
                ),
                None => format!("{}: no report", p.node.name),
            })
            .collect();
        g.push(Gate {
            name: "storm supervisors",
            ok: storm
                .iter()
                .all(|p| check(&p.node.name, "storm").is_some_and(|(ok, _)| *ok)),
            saw: seen.join("; "),
        });
    }
    if let Some(t) = &s.topologies {
        g.push(match t {
            Ok(ts) => {
                let inactive: Vec<String> = ts
                    .iter()
                    .filter(|(_, st, _)| st != "ACTIVE")
                    .map(|(n, st, _)| format!("{n} {st}"))
                    .collect();
                Gate {
                    name: "storm topologies",
                    ok: inactive.is_empty(),
                    saw: if ts.is_empty() {
                        "no topology runs".into()
                    } else if inactive.is_empty() {
                        ts.iter()
                            .map(|(n, st, w)| format!("{n} {st} ({w} workers)"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    } else {
                        inactive.join(", ")
                    },
                }
            }
            Err(e) => Gate {
                name: "storm topologies",
                ok: false,
                saw: e.clone(),
            },
        });
    }
    g
}

/// The gates that hold for `node` after it was rolled, besides the cluster's: its broker in the
/// ISR of every partition it hosts; its own health round whole.
pub fn node_gates(node: &Plan, s: &Survey) -> Vec<Gate> {
    let mut g = Vec::new();
    let name = &node.node.name;
    if let (Some(Ok((all, _))), Some(id)) = (&s.kafka, crate::vm::checks::broker_id(node)) {
        let hosted: Vec<&Partition> = all.iter().filter(|p| p.replicas.contains(&id)).collect();
        let out: Vec<String> = hosted
            .iter()
            .filter(|p| !p.isr.contains(&id))
            .map(|p| p.label())
            .collect();
        g.push(Gate {
            name: "back in ISR",
            ok: out.is_empty(),
            saw: if out.is_empty() {
                format!(
                    "broker {id} in the ISR of all {} partitions it hosts",
                    hosted.len()
                )
            } else {
                format!("broker {id} not in the ISR of {}", out.join(","))
            },
        });
    }
    let failed: Vec<String> = match s.health.get(name) {
        Some(Ok(h)) => h
            .iter()
            .filter(|(_, (ok, _))| !ok)
            .map(|(c, (_, f))| {
                format!(
                    "{c} ({})",
                    f.iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            })
            .collect(),
        Some(Err(e)) => vec![e.clone()],
        None => vec!["not looked at".into()],
    };
    g.push(Gate {
        name: "node health",
        ok: failed.is_empty(),
        saw: if failed.is_empty() {
            format!("{name}: every check of its health round passed")
        } else {
            format!("{name}: {}", failed.join("; "))
        },
    });
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_lines_and_partitions_and_topologies_are_read_as_the_tools_print_them() {
        let h = parse_health(
            "imgbuild-health node=node1 check=zookeeper ok=yes round=1 mode=leader\n\
             imgbuild-health node=node1 check=kafka ok=no round=1 voters=1,2,3 leader=2 max_lag=5000 unheard=none\n\
             imgbuild-health node=node1 round=1 failed=kafka\n",
        );
        assert_eq!(h.len(), 2);
        assert!(h["zookeeper"].0 && h["zookeeper"].1["mode"] == "leader");
        assert!(!h["kafka"].0 && h["kafka"].1["max_lag"] == "5000");
        // Kafka 4.x's describe: a topic line, then one line per partition (tab-separated).
        let d = "Topic: t\tTopicId: abc\tPartitionCount: 2\tReplicationFactor: 3\tConfigs: min.insync.replicas=2\n\
                 \tTopic: t\tPartition: 0\tLeader: 1\tReplicas: 1,2,3\tIsr: 1,2,3\tElr: \tLastKnownElr: \n\
                 \tTopic: t\tPartition: 1\tLeader: none\tReplicas: 2,3,1\tIsr: 2\tElr: \tLastKnownElr: \n";
        let ps = parse_partitions(d);
        assert_eq!(ps.len(), 2);
        assert_eq!((ps[0].leader, ps[0].isr.clone()), (1, vec![1, 2, 3]));
        assert_eq!((ps[1].leader, ps[1].label()), (-1, "t-1".to_string()));
        let t = parse_topologies(
            "Topology_name        Status     Num_tasks  Num_workers  Uptime_secs  Topology_Id          Owner               \n\
             ----------------------------------------------------------------------------------------\n\
             python-wordcount     ACTIVE     9          1            73           python-wordcount-1-1 storm               \n",
        );
        assert_eq!(
            t,
            [("python-wordcount".to_string(), "ACTIVE".to_string(), 1)]
        );
        assert!(parse_topologies("No topologies running.\n").is_empty());
    }
}
