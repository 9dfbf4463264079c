//! In which order a roll takes the nodes: those that lead nothing first; the ZooKeeper leader and
//! the active KRaft controller last; among the rest, a Storm node running none of the
//! topologies' workers before one that does, and fewer partition leaderships before more.
//! Ties keep the recipe's order.

use super::gates::Survey;
use crate::plan::Plan;

/// Why a node is where it is in the order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Weight {
    /// Leads ZooKeeper or the KRaft quorum (0/1).
    pub leader: u8,
    /// Runs workers of a topology (0/1).
    pub workers: u8,
    /// Partitions it leads.
    pub partition_leaders: usize,
}

impl Weight {
    pub fn describe(&self) -> String {
        let mut v = Vec::new();
        if self.leader > 0 {
            v.push("leads ZooKeeper or the KRaft quorum".to_string());
        }
        if self.workers > 0 {
            v.push("runs topology workers".to_string());
        }
        v.push(format!("leads {} partitions", self.partition_leaders));
        v.join(", ")
    }
}

/// What `node` holds, as the survey saw it.
pub fn weight(node: &Plan, s: &Survey) -> Weight {
    let name = &node.node.name;
    let health = s.health.get(name).and_then(|h| h.as_ref().ok());
    let zk_leader = health
        .and_then(|h| h.get("zookeeper"))
        .is_some_and(|(_, f)| f.get("mode").is_some_and(|m| m == "leader"));
    let id = crate::vm::checks::broker_id(node);
    // Every node's health names the quorum's leader; any of them will do.
    let kraft_leader = id.is_some_and(|id| {
        s.health.values().flatten().any(|h| {
            h.get("kafka")
                .and_then(|(_, f)| f.get("leader"))
                .is_some_and(|l| *l == id.to_string())
        })
    });
    let partition_leaders = match (&s.kafka, id) {
        (Some(Ok((all, _))), Some(id)) => all.iter().filter(|p| p.leader == i64::from(id)).count(),
        _ => 0,
    };
    Weight {
        leader: u8::from(zk_leader || kraft_leader),
        workers: u8::from(s.workers.get(name).copied().unwrap_or(0) > 0),
        partition_leaders,
    }
}

/// `nodes` in roll order, each with its weight.
pub fn order<'a>(nodes: &[&'a Plan], s: &Survey) -> Vec<(&'a Plan, Weight)> {
    let mut v: Vec<(usize, &Plan, Weight)> = nodes
        .iter()
        .enumerate()
        .map(|(i, p)| (i, *p, weight(p, s)))
        .collect();
    v.sort_by(|a, b| (&a.2, a.0).cmp(&(&b.2, b.0)));
    v.into_iter().map(|(_, p, w)| (p, w)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roll::gates::{Partition, parse_health};

    /// node1 leads ZooKeeper, node2 leads the KRaft quorum and one partition, node3 runs a
    /// worker: node3 first (no leadership), then the two leaders in recipe order.
    #[test]
    fn leaders_go_last_and_workers_after_idle_nodes() {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/cluster.yaml"),
        )
        .unwrap();
        let loaded =
            crate::recipe::parse(std::path::Path::new("/nonexistent/recipe.yaml"), text).unwrap();
        let cluster = crate::plan::resolve(&loaded).unwrap();
        let plans: Vec<&Plan> = cluster.nodes.iter().collect();
        let mut s = Survey::default();
        for (n, mode) in [
            ("node1", "leader"),
            ("node2", "follower"),
            ("node3", "follower"),
        ] {
            s.health.insert(
                n.into(),
                Ok(parse_health(&format!(
                    "imgbuild-health node={n} check=zookeeper ok=yes round=1 mode={mode}\n\
                     imgbuild-health node={n} check=kafka ok=yes round=1 leader=2 max_lag=0\n"
                ))),
            );
        }
        s.kafka = Some(Ok((
            vec![Partition {
                topic: "t".into(),
                partition: 0,
                leader: 2,
                replicas: vec![2, 3, 1],
                isr: vec![2, 3, 1],
            }],
            Default::default(),
        )));
        s.workers.insert("node3".into(), 1);
        s.workers.insert("node1".into(), 0);
        let o: Vec<&str> = order(&plans, &s)
            .iter()
            .map(|(p, _)| p.node.name.as_str())
            .collect();
        assert_eq!(o, ["node3", "node1", "node2"]);
        s.workers.insert("node3".into(), 0);
        s.workers.insert("node1".into(), 0);
        let w = weight(plans[1], &s);
        assert_eq!((w.leader, w.partition_leaders), (1, 1));
        assert_eq!(order(&plans, &s)[0].0.node.name, "node3");
    }
}
