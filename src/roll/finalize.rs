//! `imgbuild roll --finalize`: after a roll to a new Kafka release, raise the cluster's feature
//! levels (`metadata.version` and the others) to that release's, the Kafka way: only once every
//! broker runs the recipe's release, with the cluster's gates passing, feature by feature with
//! `kafka-features.sh upgrade --feature NAME=LEVEL` at the levels `version-mapping` gives for the
//! release. `kraft.version` is left alone: raising it (which `upgrade --release-version` does,
//! KAFKA-21426) turns the static quorum imgbuild configures (`controller.quorum.voters`) into a
//! dynamic one. A raised `metadata.version` cannot be lowered again: it is said before and after.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};

use super::gates::{self, Remote};
use crate::plan::Plan;

/// Feature levels as `kafka-features.sh describe` prints them: name → finalized level (as
/// printed: a number, or for metadata.version a release name such as `4.3-IV0`).
pub fn parse_describe(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| {
            let mut name = None;
            let mut level = None;
            let words: Vec<&str> = l.split_whitespace().collect();
            for w in words.windows(2) {
                match w[0] {
                    "Feature:" => name = Some(w[1]),
                    "FinalizedVersionLevel:" => level = Some(w[1]),
                    _ => {}
                }
            }
            Some((name?.to_string(), level?.to_string()))
        })
        .collect()
}

/// Levels as `kafka-features.sh version-mapping` prints them: `name=N` or `name=N (release)`.
pub fn parse_mapping(out: &str) -> BTreeMap<String, u32> {
    out.lines()
        .filter_map(|l| {
            let (name, rest) = l.trim().split_once('=')?;
            let n = rest.split_whitespace().next()?.parse().ok()?;
            Some((name.trim().to_string(), n))
        })
        .collect()
}

/// The features to raise: every one of the release's mapping above its finalized level, but
/// `kraft.version` (see the module). `current_metadata` is the finalized metadata.version as a
/// number (describe names it by release).
pub fn raises(
    target: &BTreeMap<String, u32>,
    finalized: &BTreeMap<String, String>,
    current_metadata: Option<u32>,
) -> Vec<(String, u32, u32)> {
    target
        .iter()
        .filter(|(f, _)| f.as_str() != "kraft.version")
        .filter_map(|(f, &want)| {
            let have = if f == "metadata.version" {
                current_metadata?
            } else {
                finalized.get(f).and_then(|l| l.parse().ok()).unwrap_or(0)
            };
            (want > have).then(|| (f.clone(), have, want))
        })
        .collect()
}

/// `major.minor` of a Kafka version: the release `version-mapping` knows.
fn release(version: &str) -> String {
    version.split('.').take(2).collect::<Vec<_>>().join(".")
}

// Long on purpose: the finalization's steps in order (versions, gates, levels, raise, levels
// again), each a tool call and its line.
pub fn run(plans: &[&Plan], remotes: &[Remote], dry_run: bool) -> Result<()> {
    let brokers: Vec<&&Plan> = plans.iter().filter(|p| p.kafka.is_some()).collect();
    let Some(version) = brokers
        .first()
        .and_then(|p| p.kafka.as_ref())
        .map(|k| k.version.clone())
    else {
        bail!("finalize: the recipe has no Kafka node");
    };
    let remote = |p: &Plan| {
        remotes
            .iter()
            .find(|r| r.name == p.node.name)
            .expect("a remote per node")
    };
    // 1. Every broker runs the recipe's release (what it logged at its latest start).
    let script = crate::vm::checks::kafka_version_script("/var/log/kafka");
    let mut behind = Vec::new();
    for p in &brokers {
        let says = match remote(p).run(&["sh", "-c", &script], 60) {
            Ok((0, out, _)) => out
                .trim()
                .strip_prefix("Kafka version: ")
                .unwrap_or("?")
                .to_string(),
            Ok((c, _, err)) => format!("? (exit {c}: {})", err.trim()),
            Err(e) => format!("? ({e:#})"),
        };
        println!("finalize: {}: broker runs Kafka {says}", p.node.name);
        if says != version {
            behind.push(format!("{} runs {says}", p.node.name));
        }
    }
    if !behind.is_empty() {
        bail!(
            "finalize refused: the recipe's Kafka is {version} and {}: roll every node first (metadata.version unchanged, nothing written)",
            behind.join(", ")
        );
    }
    // 2. The cluster whole.
    let s = gates::survey(plans, remotes, None);
    if let Some(g) = gates::cluster_gates(plans, &s).into_iter().find(|g| !g.ok) {
        bail!(
            "finalize refused: gate {} failed: {} (metadata.version unchanged, nothing written)",
            g.name,
            g.saw
        );
    }
    // 3. The levels now and the release's, from the quickest broker that answers.
    let via = brokers
        .iter()
        .min_by(|a, b| {
            let t = |p: &&&Plan| s.took.get(&p.node.name).copied().unwrap_or(f64::MAX);
            t(a).total_cmp(&t(b))
        })
        .expect("a broker");
    let r = remote(via);
    let bootstrap = crate::vm::checks::bootstrap(via);
    let tool = |args: &[&str]| -> Result<String> {
        let mut cmd = vec![
            crate::layout::kafka_bin::FEATURES,
            "--bootstrap-server",
            &bootstrap,
            "--command-config",
            crate::layout::KAFKA_TLS_CLIENT,
        ];
        cmd.extend(args);
        match r.run(&cmd, 300)? {
            (0, out, _) => Ok(out),
            (c, out, err) => bail!(
                "{}: kafka-features.sh {} exited {c}: {}",
                r.name,
                args.join(" "),
                format!("{out}\n{err}").trim().lines().last().unwrap_or("")
            ),
        }
    };
    let before = parse_describe(&tool(&["describe"])?);
    let rel = release(&version);
    let target = parse_mapping(&tool(&["version-mapping", "--release-version", &rel])?);
    if target.is_empty() {
        bail!(
            "finalize: {}: version-mapping for {rel} printed no levels",
            r.name
        );
    }
    let level = |m: &BTreeMap<String, String>| -> Result<u32> {
        let name = m
            .get("metadata.version")
            .with_context(|| format!("finalize: {}: describe names no metadata.version", r.name))?;
        parse_mapping(&tool(&["version-mapping", "--release-version", name])?)
            .get("metadata.version")
            .copied()
            .with_context(|| format!("finalize: {}: no level for metadata.version {name}", r.name))
    };
    let current_md = Some(level(&before)?);
    let show = |m: &BTreeMap<String, String>| {
        m.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!("finalize: feature levels now: {}", show(&before));
    let up = raises(&target, &before, current_md);
    if up.is_empty() {
        println!("finalize: nothing to raise: the cluster is at Kafka {rel}'s levels already");
        return Ok(());
    }
    let list = up
        .iter()
        .map(|(f, have, want)| format!("{f} {have} → {want}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "finalize: to raise for Kafka {rel} (kraft.version left alone: the quorum stays static): {list}"
    );
    println!(
        "finalize: this cannot be undone: a raised metadata.version is never lowered, and no broker older than Kafka {rel} can join the cluster after it"
    );
    let mut args = vec!["upgrade".to_string()];
    for (f, _, want) in &up {
        args.push("--feature".into());
        args.push(format!("{f}={want}"));
    }
    if dry_run {
        args.push("--dry-run".into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let said = tool(&args).context("finalize: kafka-features.sh upgrade")?;
    for l in said.lines().filter(|l| !l.trim().is_empty()) {
        println!("finalize: {}: {}", r.name, l.trim());
    }
    if dry_run {
        println!("finalize: dry run: the upgrade validated, nothing changed");
        return Ok(());
    }
    let after = parse_describe(&tool(&["describe"])?);
    println!("finalize: feature levels after: {}", show(&after));
    let still = raises(&target, &after, Some(level(&after)?));
    if !still.is_empty() {
        bail!(
            "finalize: {}: still below Kafka {rel}'s levels after the upgrade: {}",
            r.name,
            still
                .iter()
                .map(|(f, have, want)| format!("{f} {have} (want {want})"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!(
        "finalize: done: metadata.version {} → {}",
        before.get("metadata.version").map_or("?", String::as_str),
        after.get("metadata.version").map_or("?", String::as_str)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // As Kafka 4.4.0's kafka-features.sh printed them on the fixture cluster after the roll.
    const DESCRIBE: &str = "Feature: eligible.leader.replicas.version          SupportedMinVersion: 0                SupportedMaxVersion: 1                FinalizedVersionLevel: 1                Epoch: 1040
Feature: group.version                             SupportedMinVersion: 0                SupportedMaxVersion: 1                FinalizedVersionLevel: 1                Epoch: 1040
Feature: kraft.version                             SupportedMinVersion: 0                SupportedMaxVersion: 1                FinalizedVersionLevel: 0                Epoch: 1040
Feature: metadata.version                          SupportedMinVersion: 3.3-IV3          SupportedMaxVersion: 4.4-IV2          FinalizedVersionLevel: 4.3-IV0          Epoch: 1040
Feature: share.version                             SupportedMinVersion: 0                SupportedMaxVersion: 2                FinalizedVersionLevel: 1                Epoch: 1040
Feature: streams.version                           SupportedMinVersion: 0                SupportedMaxVersion: 1                FinalizedVersionLevel: 1                Epoch: 1040
Feature: transaction.version                       SupportedMinVersion: 0                SupportedMaxVersion: 2                FinalizedVersionLevel: 2                Epoch: 1040
";
    const MAPPING_44: &str = "metadata.version=33 (4.4)
kraft.version=1
transaction.version=2
group.version=1
eligible.leader.replicas.version=1
share.version=2
streams.version=1
";

    #[test]
    fn the_release_levels_are_raised_but_kraft_version_and_nothing_lowered() {
        let d = parse_describe(DESCRIBE);
        assert_eq!(d["metadata.version"], "4.3-IV0");
        assert_eq!(d["kraft.version"], "0");
        let t = parse_mapping(MAPPING_44);
        assert_eq!(t["metadata.version"], 33);
        let up = raises(&t, &d, Some(30));
        assert_eq!(
            up,
            vec![
                ("metadata.version".to_string(), 30, 33),
                ("share.version".to_string(), 1, 2)
            ]
        );
        // At the release's levels: nothing; an unknown metadata level is never guessed.
        assert!(raises(&t, &d, Some(33)).len() == 1);
        assert!(
            raises(&t, &d, None)
                .iter()
                .all(|(f, _, _)| f != "metadata.version")
        );
        assert_eq!(release("4.4.0"), "4.4");
    }
}
