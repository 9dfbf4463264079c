//! Judging `imgbuild up`'s cluster from the nodes' health lines: each node's checks, then what
//! only the whole cluster shows (brokers registered, one ZooKeeper leader, Storm's nimbuses and
//! supervisors).

use super::*;

/// The latest report of one check on one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    pub ok: bool,
    pub fields: BTreeMap<String, String>,
}

/// Everything read so far from one node's serial console.
#[derive(Debug, Clone, Default)]
pub struct NodeState {
    pub seen: Seen,
    pub checks: BTreeMap<String, Check>,
    /// "healthy" / "unhealthy" once the health unit has finished.
    pub summary: Option<String>,
    /// The checks that failed in the last complete round (None before one has ended).
    pub round_failed: Option<Vec<String>>,
    /// When each check first passed (`note_first_ok`).
    pub first_ok: BTreeMap<String, Instant>,
}

impl NodeState {
    pub fn line(&mut self, line: &str) {
        self.seen.line(line);
        let Some(i) = line.find("imgbuild-health ") else {
            return;
        };
        let fields: BTreeMap<String, String> = line[i + 16..]
            .split_whitespace()
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k.to_string(), v.to_string()))
            })
            .collect();
        if let Some(s) = fields.get("summary") {
            self.summary = Some(s.clone());
        } else if let Some(f) = fields.get("failed") {
            self.round_failed = Some(
                f.split(',')
                    .filter(|c| !c.is_empty() && *c != "none")
                    .map(str::to_string)
                    .collect(),
            );
        } else if let Some(name) = fields.get("check") {
            let ok = fields.get("ok").is_some_and(|v| v == "yes");
            let mut f = fields.clone();
            for k in ["node", "check", "ok", "round"] {
                f.remove(k);
            }
            self.checks.insert(name.clone(), Check { ok, fields: f });
        }
    }

    pub(super) fn status(&self) -> String {
        if let Some(s) = &self.summary {
            return s.clone();
        }
        if self.checks.is_empty() {
            return if self.seen.cloud_init_finished {
                "cloud-init done".into()
            } else if self.seen.lines > 0 {
                "booting".into()
            } else {
                "starting".into()
            };
        }
        let ok = self.checks.values().filter(|c| c.ok).count();
        // A slow node explains itself: what is still starting, and since when (health.py's
        // unit= and since= fields on a failing check).
        let waiting: Vec<String> = self
            .checks
            .iter()
            .filter(|(_, c)| !c.ok)
            .map(|(name, c)| {
                let f = &c.fields;
                let state = f.get("unit").or_else(|| f.get("supervisor"));
                let since = f.get("since").or_else(|| f.get("supervisor_since"));
                match (state, since) {
                    (Some(state), Some(s)) => format!("{name}: {state} {s}"),
                    (Some(state), None) => format!("{name}: {state}"),
                    _ => name.clone(),
                }
            })
            .collect();
        if waiting.is_empty() {
            format!("checking {ok}/{}", self.checks.len())
        } else {
            format!(
                "checking {ok}/{} ({})",
                self.checks.len(),
                waiting.join(", ")
            )
        }
    }

    /// When each check was first seen passing (for the time each service took on a slow node).
    pub fn note_first_ok(&mut self, at: Instant) {
        for (name, c) in &self.checks {
            if c.ok {
                self.first_ok.entry(name.clone()).or_insert(at);
            }
        }
    }
}

/// Judge the cluster as a whole. Returns one message per failed check, naming node and check.
pub fn judge(
    cluster: &ClusterPlan,
    nodes: &[&Plan],
    states: &BTreeMap<String, NodeState>,
) -> Vec<String> {
    let mut fail = Vec::new();
    for p in nodes {
        judge_node(p, states, &mut fail);
    }
    judge_brokers(nodes, states, &mut fail);
    judge_zookeeper(cluster, nodes, states, &mut fail);
    judge_storm(cluster, nodes, states, &mut fail);
    fail.dedup();
    fail
}

/// A check's latest report on a node.
pub(super) fn check<'a>(
    states: &'a BTreeMap<String, NodeState>,
    n: &str,
    c: &str,
) -> Option<&'a Check> {
    states.get(n).and_then(|s| s.checks.get(c))
}

/// One node on its own: its health summary, hostname, address and the Kafka voters it sees.
pub(super) fn judge_node(p: &Plan, states: &BTreeMap<String, NodeState>, fail: &mut Vec<String>) {
    let get = |n: &str, c: &str| check(states, n, c);
    let n = &p.node.name;
    let Some(s) = states.get(n) else { return };
    if s.summary.as_deref() != Some("healthy") {
        for (c, chk) in &s.checks {
            if !chk.ok {
                fail.push(format!("{n}: {c}: {}", describe(&chk.fields)));
            }
        }
        if s.checks.is_empty() {
            fail.push(format!(
                "{n}: health: no report on the serial console ({})",
                s.status()
            ));
        }
    }
    match get(n, "hostname") {
        Some(c) if c.fields.get("value") == Some(&p.node.hostname) => {}
        Some(c) => fail.push(format!(
            "{n}: hostname: expected {}, got {}",
            p.node.hostname,
            c.fields.get("value").map_or("-", String::as_str)
        )),
        None => {}
    }
    if let Some(c) = get(n, "ip")
        && c.fields.get("value") != Some(&p.node.ip.to_string())
    {
        fail.push(format!("{n}: ip: expected {} on an interface", p.node.ip));
    }
    if let Some(k) = &p.kafka
        && let Some(v) = &k.controller_quorum_voters
        && let Some(c) = get(n, "kafka")
    {
        let mut want: Vec<String> = v.iter().map(|v| v.id.to_string()).collect();
        want.sort();
        let mut got: Vec<&str> = c
            .fields
            .get("voters")
            .map(|s| s.split(',').collect())
            .unwrap_or_default();
        got.sort();
        if got != want {
            fail.push(format!(
                "{n}: kafka: sees voters {}, expected {}",
                got.join(","),
                want.join(",")
            ));
        }
    }
}

/// ZooKeeper-mode Kafka: every broker registered.
pub(super) fn judge_brokers(
    nodes: &[&Plan],
    states: &BTreeMap<String, NodeState>,
    fail: &mut Vec<String>,
) {
    let get = |n: &str, c: &str| check(states, n, c);
    for p in nodes {
        if let Some(k) = &p.kafka
            && k.mode == crate::recipe::KafkaMode::Zookeeper
            && let Some(c) = get(&p.node.name, "kafka")
        {
            let got = c
                .fields
                .get("brokers")
                .map(|b| b.split(',').filter(|x| x.parse::<u32>().is_ok()).count())
                .unwrap_or(0);
            if got != k.brokers {
                fail.push(format!(
                    "{}: kafka: {got} brokers registered in ZooKeeper, expected {}",
                    p.node.name, k.brokers
                ));
            }
        }
    }
}

/// ZooKeeper: exactly one leader, every other ensemble member a follower.
pub(super) fn judge_zookeeper(
    cluster: &ClusterPlan,
    nodes: &[&Plan],
    states: &BTreeMap<String, NodeState>,
    fail: &mut Vec<String>,
) {
    let get = |n: &str, c: &str| check(states, n, c);
    let zk: Vec<&&Plan> = nodes
        .iter()
        .filter(|p| p.zookeeper.as_ref().is_some_and(|z| z.myid.is_some()))
        .collect();
    if !zk.is_empty() {
        let modes: Vec<(String, String)> = zk
            .iter()
            .map(|p| {
                let m = get(&p.node.name, "zookeeper")
                    .and_then(|c| c.fields.get("mode").cloned())
                    .unwrap_or_else(|| "unknown".into());
                (p.node.name.clone(), m)
            })
            .collect();
        let leaders = modes.iter().filter(|(_, m)| m == "leader").count();
        let ensemble = cluster
            .nodes
            .iter()
            .filter(|p| p.zookeeper.as_ref().is_some_and(|z| z.myid.is_some()))
            .count();
        if ensemble > 1 {
            if leaders != 1 {
                fail.push(format!(
                    "zookeeper: {leaders} leaders ({})",
                    modes
                        .iter()
                        .map(|(n, m)| format!("{n}={m}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            for (n, m) in &modes {
                if m != "leader" && m != "follower" {
                    fail.push(format!(
                        "{n}: zookeeper: mode {m}, expected leader or follower"
                    ));
                }
            }
        }
    }
}

/// Storm: a nimbus leader latch and every supervisor registered, as any node's ZooKeeper sees.
pub(super) fn judge_storm(
    cluster: &ClusterPlan,
    nodes: &[&Plan],
    states: &BTreeMap<String, NodeState>,
    fail: &mut Vec<String>,
) {
    let get = |n: &str, c: &str| check(states, n, c);
    let supervisors = cluster
        .nodes
        .iter()
        .filter(|p| p.roles.contains(&Role::StormSupervisor))
        .count();
    for p in nodes {
        if let Some(c) = get(&p.node.name, "storm") {
            let num = |k: &str| {
                c.fields
                    .get(k)
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0)
            };
            if num("leader_latch") == 0 || num("nimbuses") == 0 {
                fail.push(format!(
                    "{}: storm: no nimbus leader registered",
                    p.node.name
                ));
            }
            if num("supervisors") != supervisors {
                fail.push(format!(
                    "{}: storm: {} supervisors registered, expected {supervisors}",
                    p.node.name,
                    num("supervisors")
                ));
            }
        }
    }
}

pub(super) fn describe(f: &BTreeMap<String, String>) -> String {
    if f.is_empty() {
        return "failed".into();
    }
    f.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The states as judged: `ignore`d checks dropped, and a node whose remaining checks all pass
/// counted healthy (its health unit keeps trying the ignored ones).
pub(super) fn judged(
    states: &BTreeMap<String, NodeState>,
    ignore: &[String],
) -> BTreeMap<String, NodeState> {
    if ignore.is_empty() {
        return states.clone();
    }
    states
        .iter()
        .map(|(n, s)| {
            let mut s = s.clone();
            s.checks.retain(|c, _| !ignore.contains(c));
            // Only once a whole round has ended with nothing but ignored checks failing: a
            // round still in progress has not yet reported its later checks.
            if s.summary.is_none()
                && s.round_failed
                    .as_ref()
                    .is_some_and(|f| f.iter().all(|c| ignore.contains(c)))
                && s.checks.values().all(|c| c.ok)
            {
                s.summary = Some("healthy".into());
            }
            (n.clone(), s)
        })
        .collect()
}
