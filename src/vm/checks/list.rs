//! `up --check`'s checks after the cluster is healthy, as one ordered table. A check is its
//! phase's name, when it applies, and its run; what it needs from an earlier check (the round
//! trip's acknowledged messages, the topology left running) it finds in the `Ctx`. A new check is
//! a file in this folder and a line in `CHECKS`.

use std::collections::BTreeSet;
use std::path::Path;

use super::boot::Reboot;
use super::{Phase, Wordcount};
use crate::plan::Plan;
use crate::vm::member::Member;

/// What the checks ask for on the command line.
pub struct Wanted {
    /// The nodes share one bridge with the host (containers, or the mixed runtime): the data
    /// path can be driven from inside them. Three VMs alone are judged on membership only.
    pub bridged: bool,
    pub node_loss: bool,
    pub partition: bool,
    /// `--stay`: after the checks, the cluster (and the topology) stays up until interrupted,
    /// for `imgbuild roll`; then the topology's counts are checked again.
    pub stay: bool,
}

/// `--stay`: keep the cluster up until interrupted, answering roll's swaps and feeding the
/// topology; the lines of what happened, and what failed.
pub type Stay<'a> =
    dyn FnMut(&mut [Member], Option<&mut Wordcount>) -> (Vec<String>, Vec<String>) + 'a;

/// What the checks share: the cluster, and what earlier checks leave for later ones.
pub struct Ctx<'a> {
    pub nodes: &'a [&'a Plan],
    pub members: &'a mut [Member],
    /// Where a check may keep files of this run (its check identities).
    pub work: &'a Path,
    pub wanted: Wanted,
    /// Boot a powered-off member again and wait until it is healthy: the seconds it took.
    pub reboot: &'a mut Reboot<'a>,
    /// The round trip's acknowledged messages, when it passed (node loss reads them again).
    pub acked: Option<BTreeSet<String>>,
    /// The Python topology the topology check left running (node loss feeds it; the last check
    /// kills it).
    pub wordcount: Option<Wordcount>,
    /// Keep the cluster up until interrupted (`--stay`), answering roll's swaps and feeding the
    /// topology: what happened, and what failed.
    pub stay: &'a mut Stay<'a>,
    /// A check so far failed (then nothing stays up).
    pub failed: bool,
}

/// One cluster check.
pub struct Check {
    /// Its phase's name, in the report and in `up --json`.
    pub name: &'static str,
    /// Whether it runs for this cluster and these options.
    pub applies: fn(&Ctx) -> bool,
    pub run: fn(&mut Ctx) -> Phase,
}

fn any(c: &Ctx, f: fn(&Plan) -> bool) -> bool {
    c.nodes.iter().any(|p| f(p))
}

/// In order: each may rely on those before it.
pub const CHECKS: &[Check] = &[
    Check {
        name: "firewall",
        applies: |_| true,
        run: |c| super::firewall::run(c.nodes),
    },
    Check {
        name: "versions",
        applies: |c| c.wanted.bridged,
        run: |c| super::versions(c.nodes, c.members),
    },
    Check {
        name: "metrics",
        applies: |c| {
            c.wanted.bridged
                && any(c, |p| {
                    p.ports
                        .iter()
                        .any(|b| b.reach == crate::plan::services::Reach::Metrics)
                })
        },
        run: |c| super::metrics::metrics(c.nodes, c.members),
    },
    Check {
        name: "kafka round trip",
        applies: |c| c.wanted.bridged,
        run: |c| {
            let (phase, acked) = super::round_trip(c.nodes, c.members);
            c.acked = phase.failures.is_empty().then_some(acked);
            phase
        },
    },
    Check {
        name: "kafka refusals",
        applies: |c| c.wanted.bridged && any(c, |p| p.kafka.is_some() && p.security.tls()),
        run: |c| super::kafkaauth::refusals(c.nodes, c.members, c.work),
    },
    Check {
        name: "zookeeper refusals",
        applies: |c| c.wanted.bridged && any(c, |p| p.zookeeper.is_some() && p.security.tls()),
        run: |c| super::zkauth::refusals(c.nodes, c.members, c.work),
    },
    Check {
        name: "storm topology",
        applies: |c| c.wanted.bridged && any(c, |p| p.storm.is_some() && p.kafka.is_some()),
        run: |c| {
            let (phase, wc) = super::topology(c.nodes, c.members);
            c.wordcount = wc;
            phase
        },
    },
    Check {
        name: "node loss and rejoin",
        applies: |c| c.wanted.bridged && c.wanted.node_loss && c.acked.is_some(),
        run: |c| {
            let acked = c.acked.clone().unwrap_or_default();
            super::node_loss(
                c.nodes,
                c.members,
                &acked,
                c.wordcount.as_mut(),
                &mut *c.reboot,
            )
        },
    },
    Check {
        name: "network partition",
        applies: |c| c.wanted.bridged && c.wanted.partition,
        run: |c| super::partition(c.nodes, c.members),
    },
    Check {
        name: "after the stay",
        applies: |c| c.wanted.stay && !c.failed,
        run: super::stay::after_stay,
    },
    Check {
        name: "topology killed",
        applies: |c| c.wordcount.is_some(),
        run: |c| match &c.wordcount {
            Some(w) => w.kill(c.members),
            None => Phase::timed("topology killed", |_, _| Ok(())),
        },
    },
];

/// Run every check that applies, in order, handing each phase to `report` as it finishes.
pub fn run_all(ctx: &mut Ctx, report: &mut dyn FnMut(&Phase)) {
    for check in CHECKS {
        if (check.applies)(ctx) {
            let mut phase = (check.run)(ctx);
            debug_assert_eq!(phase.name, check.name, "a check's phase has its table name");
            phase.name = check.name;
            ctx.failed |= !phase.failures.is_empty();
            report(&phase);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_check_has_its_own_name() {
        let names: BTreeSet<&str> = CHECKS.iter().map(|c| c.name).collect();
        assert_eq!(names.len(), CHECKS.len());
        // What needs an earlier check comes after it.
        let at = |n: &str| CHECKS.iter().position(|c| c.name == n).unwrap();
        assert!(at("kafka round trip") < at("node loss and rejoin"));
        assert!(at("storm topology") < at("node loss and rejoin"));
        assert_eq!(CHECKS.last().unwrap().name, "topology killed");
    }
}
