//! `imgbuild roll [NODE...]`: a running cluster to the images `imgbuild build` made, one node at a
//! time, each step gated on the cluster's health as the nodes themselves report it.
//!
//! 1. Every selected node (default: all) is asked, as `imgbuild update --dry-run` asks it,
//!    whether its image differs from what it runs; the others are left alone.
//! 2. One look at the cluster (`gates::survey`) orders them (`order`): nodes that lead nothing
//!    first, the ZooKeeper leader and the active KRaft controller last.
//! 3. For each: the cluster gates must pass (waited for up to `--gate-timeout`); then Kafka on
//!    the node is stopped (systemd's SIGTERM: the broker's controlled shutdown moves its
//!    leaderships away first) right before `imgbuild update` restarts it into the new root slot;
//!    the node's own verdict keeps or refuses the slot (update); then the cluster gates and the
//!    node's (its broker back in every ISR it belongs to, its own health whole) must pass before
//!    the next node is touched.
//! 4. The first gate that does not pass in time stops the roll with one line naming the node,
//!    the gate and what it saw; no second node is taken down. `roll` again continues: nodes
//!    already on their new image are no-ops. What happened is kept in BUILD_DIR/roll/state.json.
//!
//! Nodes are reached over SSH with their pinned host keys (QEMU in `up`/`boot`'s network, or
//! metal). A container of a running `imgbuild up` has no root slots: its tree is swapped by `up`
//! for the one built since, its data directory kept (`vm::cluster::swap`), between the same gates.

pub mod finalize;
pub mod gates;
pub mod order;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::plan::Plan;
use gates::{Gate, Remote};

/// What `roll` was asked.
pub struct Options {
    pub dry_run: bool,
    pub json: bool,
    /// How long a gate may take to pass before the roll stops.
    pub gate_timeout: Duration,
    /// How long `update` waits for a node's verdict.
    pub update_timeout: Duration,
    pub key: Option<std::path::PathBuf>,
    pub user: Option<String>,
    /// `--finalize`: raise Kafka's feature levels to the release every broker runs (`finalize`).
    pub finalize: bool,
    /// `--resubmit-example`: once the roll is done, kill the recipe's example topology and
    /// submit it again from the new images (after a Storm major upgrade).
    pub resubmit_example: bool,
}

/// The roll's record (BUILD_DIR/roll/state.json).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct State {
    /// node → what became of it (`updated`, `current`).
    pub nodes: std::collections::BTreeMap<String, String>,
    /// Where the last roll stopped, if it did.
    pub stopped: Option<String>,
    /// The node the last roll stopped at or after (its update or its gates after failed): the
    /// one node that may be down. A roll taking it again (e.g. back to the image before) takes
    /// it first and without the gates before: no second node goes down.
    #[serde(default)]
    pub at: Option<String>,
}

fn state_path(build_dir: &std::path::Path) -> std::path::PathBuf {
    build_dir.join("roll").join("state.json")
}

fn save(build_dir: &std::path::Path, st: &State) -> Result<()> {
    let p = state_path(build_dir);
    std::fs::create_dir_all(p.parent().expect("has a parent"))?;
    crate::fetch::cache::write_atomic(&p, &serde_json::to_vec_pretty(st)?)
}

fn remote(plan: &Plan, build_dir: &std::path::Path, o: &Options) -> Result<Remote> {
    Ok(Remote {
        name: plan.node.name.clone(),
        addr: plan.node.ip.to_string(),
        login: crate::update::login(plan, build_dir, o.key.as_ref(), o.user.as_ref(), "roll")?,
    })
}

fn show(gates: &[Gate]) -> String {
    gates
        .iter()
        .map(|g| format!("{} {}", g.name, if g.ok { "ok" } else { "FAILED" }))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Look until every gate `judge` gives passes, or the time is up: Ok(gates, seconds) or the
/// first failing gate's line.
fn wait_gates(
    plans: &[&Plan],
    remotes: &[Remote],
    except: Option<&str>,
    timeout: Duration,
    judge: impl Fn(&gates::Survey) -> Vec<Gate>,
) -> std::result::Result<(Vec<Gate>, f64), Gate> {
    let t = Instant::now();
    loop {
        let s = gates::survey(plans, remotes, except);
        let g = judge(&s);
        match g.iter().find(|g| !g.ok) {
            None => return Ok((g, t.elapsed().as_secs_f64())),
            Some(bad) if t.elapsed() >= timeout => return Err(bad.clone()),
            Some(_) => std::thread::sleep(Duration::from_secs(5)),
        }
    }
}

/// When the images bring another Storm release than the nimbus nodes run (their start lines, no
/// JVM): whether running topologies must be resubmitted. Storm has no upgrade tool; within a
/// major release workers of the old one keep running and are restarted on the new supervisors,
/// across majors they must be killed and submitted again.
fn storm_advice(plans: &[&Plan], remotes: &[Remote]) {
    let Some(want) = plans.iter().find_map(|p| {
        p.artifacts
            .iter()
            .find(|a| a.name == crate::plan::services::Component::Storm)
            .map(|a| a.version.clone())
    }) else {
        return;
    };
    let mut runs = std::collections::BTreeSet::new();
    for p in plans
        .iter()
        .filter(|p| p.roles.contains(&crate::plan::Role::StormNimbus))
    {
        let Some(r) = remotes.iter().find(|r| r.name == p.node.name) else {
            continue;
        };
        let cmd = [
            "grep",
            "-h",
            "-o",
            "Starting nimbus server for storm version '[^']*'",
            "/var/log/storm/nimbus.log",
        ];
        if let Ok((0, out, _)) = r.run(&cmd, 60)
            && let Some(v) = out.lines().last().and_then(|l| l.split('\'').nth(1))
        {
            runs.insert(v.to_string());
        }
    }
    runs.remove(&want);
    if runs.is_empty() {
        return;
    }
    let major = |v: &str| v.split('.').next().unwrap_or("").to_string();
    let across = runs.iter().any(|v| major(v) != major(&want));
    let from = runs.into_iter().collect::<Vec<_>>().join(", ");
    if across {
        println!(
            "roll: Storm {from} → {want} crosses a major release: running topologies must be resubmitted after the roll (`storm kill NAME`, then submit again; the image's example: `imgbuild roll --resubmit-example`)"
        );
    } else {
        println!(
            "roll: Storm {from} → {want} (same major release): running topologies need not be resubmitted; their workers restart on the new supervisors as each node is rolled"
        );
    }
}

/// `--resubmit-example`: from the first node with Storm and Kafka, kill the image's example
/// topology if it runs and submit it again (built from what the new image holds), until ACTIVE.
fn resubmit_example(plans: &[&Plan], remotes: &[Remote]) -> Result<()> {
    let t = Instant::now();
    let kafka: Vec<&Plan> = plans
        .iter()
        .copied()
        .filter(|p| p.kafka.is_some())
        .collect();
    let p = plans
        .iter()
        .find(|p| p.storm.is_some() && p.kafka.is_some())
        .context("resubmit: no node with both Storm and Kafka to submit from")?;
    let r = remotes
        .iter()
        .find(|r| r.name == p.node.name)
        .context("resubmit: the node's login")?;
    let run = |cmd: &[&str], secs: u64| r.tool(cmd, secs);
    use crate::apply::storm as topo;
    let killed = topo::kill_example(&run).context("resubmit: killing the example topology")?;
    println!(
        "roll: resubmit: {} on {}",
        if killed {
            "the example topology killed"
        } else {
            "the example topology was not running"
        },
        p.node.name
    );
    // As `imgbuild submit` would submit the image's example directory.
    let example = crate::apply::submit::example(&crate::apply::submit::clients(&kafka))?;
    let on = crate::apply::submit::On {
        node: &p.node.name,
        run: &run,
        write: &|path: &str, bytes: &[u8], mode: u32| r.write(path, bytes, mode),
    };
    for l in crate::apply::submit::submit_on(&on, &example)
        .context("resubmit: submitting the example")?
    {
        println!("roll: resubmit: {l}");
    }
    println!("roll: resubmit: done in {:.0}s", t.elapsed().as_secs_f64());
    Ok(())
}

/// Roll `selected` (of the cluster's `plans`) to the images in `images`.
// Long on purpose: the roll's steps in order, each a call and its one line.
pub fn run(
    plans: &[&Plan],
    selected: &[&Plan],
    images: &std::path::Path,
    build_dir: &std::path::Path,
    o: &Options,
) -> Result<()> {
    let t = Instant::now();
    let remotes = plans
        .iter()
        .map(|p| remote(p, build_dir, o))
        .collect::<Result<Vec<_>>>()?;
    if o.finalize {
        return finalize::run(plans, &remotes, o.dry_run);
    }
    let mut state: State = std::fs::read(state_path(build_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    if let Some(s) = &state.stopped {
        eprintln!(
            "roll: the last roll stopped: {s}; continuing (nodes on their new image are left alone)"
        );
    }
    // 1. Which nodes' images differ (update's dry run: the image checked, the node asked).
    let probe = crate::update::Options {
        host: None,
        dry_run: true,
        timeout: o.update_timeout,
        key: o.key.clone(),
        user: o.user.clone(),
        before_restart: None,
    };
    let mut todo = Vec::new();
    let swap = crate::vm::cluster::swap::is_container;
    for p in selected {
        let name = &p.node.name;
        if swap(build_dir, name) {
            // A container of `up`: its tree, not an image (see vm::cluster::swap).
            match crate::vm::cluster::swap::differs(build_dir, name)? {
                None => {
                    println!(
                        "{name}: already runs this tree (container of imgbuild up): nothing to do"
                    );
                    state.nodes.insert(name.clone(), "current".into());
                }
                Some((key, changes)) => {
                    eprintln!(
                        "{name} (container of imgbuild up): its tree is swapped for build key {}: {}",
                        &key[..12.min(key.len())],
                        changes.join("; ")
                    );
                    todo.push(*p);
                }
            }
            continue;
        }
        match crate::update::run(p, images, build_dir, &probe)? {
            crate::update::Outcome::Current => {
                state.nodes.insert(p.node.name.clone(), "current".into());
            }
            _ => todo.push(*p),
        }
    }
    // 2. The order, from one look at the cluster.
    let s = gates::survey(plans, &remotes, None);
    let mut ordered = order::order(&todo, &s);
    if let Some(i) = ordered
        .iter()
        .position(|(p, _)| Some(&p.node.name) == state.at.as_ref())
    {
        let first = ordered.remove(i);
        ordered.insert(0, first);
    }
    let pre_now = gates::cluster_gates(plans, &s);
    println!(
        "roll: order: {}",
        if ordered.is_empty() {
            "nothing to roll: every node runs its image".to_string()
        } else {
            ordered
                .iter()
                .map(|(p, w)| format!("{} ({})", p.node.name, w.describe()))
                .collect::<Vec<_>>()
                .join(" → ")
        }
    );
    println!(
        "roll: gates before and after each node: {}; after it also: back in ISR, node health",
        pre_now
            .iter()
            .map(|g| g.name)
            .collect::<Vec<_>>()
            .join(", ")
    );
    for g in &pre_now {
        println!(
            "roll: now: {} {}: {}",
            g.name,
            if g.ok { "ok" } else { "FAILED" },
            g.saw
        );
    }
    if !ordered.is_empty() {
        storm_advice(plans, &remotes);
    }
    if o.dry_run || ordered.is_empty() {
        if o.dry_run {
            if o.resubmit_example {
                println!("roll: then the example topology would be killed and submitted again");
            }
            println!("roll: dry run: nothing changed");
        } else if o.resubmit_example {
            resubmit_example(plans, &remotes)?;
        }
        if o.json {
            println!(
                "{}",
                serde_json::json!({
                    "order": ordered.iter().map(|(p, _)| &p.node.name).collect::<Vec<_>>(),
                    "gates": pre_now,
                    "dry_run": o.dry_run,
                })
            );
        }
        return Ok(());
    }
    state.stopped = None;
    save(build_dir, &state)?;
    let stop = |state: &mut State, line: String| -> Result<()> {
        state.stopped = Some(line.clone());
        save(build_dir, state)?;
        bail!("{line}")
    };
    for (p, _) in &ordered {
        let name = p.node.name.as_str();
        // 3a. Before: the cluster whole (but for the node the last roll left down, if this is it).
        if state.at.as_deref() == Some(name) {
            eprintln!(
                "roll: {name}: gates before skipped: the last roll stopped at this node, the one that may be down; it is taken again first"
            );
        } else {
            match wait_gates(plans, &remotes, None, o.gate_timeout, |s| {
                gates::cluster_gates(plans, s)
            }) {
                Ok((g, secs)) => eprintln!(
                    "roll: {name}: gates before passed in {secs:.0}s: {}",
                    show(&g)
                ),
                Err(g) => {
                    return stop(
                        &mut state,
                        format!(
                            "roll stopped before {name}: gate {} failed: {}",
                            g.name, g.saw
                        ),
                    );
                }
            }
        }
        // 3b. The node: Kafka's controlled shutdown right before the restart, then update.
        let r = remotes.iter().find(|r| r.name == name).expect("every node");
        let kafka = p.roles.contains(&crate::plan::Role::Kafka);
        let r = r.clone();
        let before: Option<Box<dyn Fn() -> Result<()>>> = kafka.then(|| {
            Box::new(move || {
                let t = Instant::now();
                let (code, _, err) = r.run(&["systemctl", "stop", "kafka.service"], 600)?;
                if code != 0 {
                    bail!("{}: stopping Kafka failed: {}", r.name, err.trim());
                }
                eprintln!(
                    "roll: {}: Kafka stopped (controlled shutdown) in {:.0}s",
                    r.name,
                    t.elapsed().as_secs_f64()
                );
                Ok(())
            }) as Box<dyn Fn() -> Result<()>>
        });
        let uo = crate::update::Options {
            host: None,
            dry_run: false,
            timeout: o.update_timeout,
            key: o.key.clone(),
            user: o.user.clone(),
            before_restart: before,
        };
        let tn = Instant::now();
        let done = if swap(build_dir, name) {
            // The container's tree swapped by `up`, after the same controlled shutdown.
            uo.before_restart
                .as_ref()
                .map_or(Ok(()), |f| f())
                .and_then(|()| {
                    let secs =
                        crate::vm::cluster::swap::request(build_dir, name, o.update_timeout)?;
                    eprintln!("roll: {name}: its container booted on the new tree in {secs:.0}s");
                    Ok(())
                })
        } else {
            crate::update::run(p, images, build_dir, &uo).map(|_| ())
        };
        if let Err(e) = done {
            state.at = Some(name.to_string());
            return stop(&mut state, format!("roll stopped at {name}: update: {e:#}"));
        }
        // 3c. After: the node back, the cluster whole again.
        match wait_gates(plans, &remotes, Some(name), o.gate_timeout, |s| {
            let mut g = gates::cluster_gates(plans, s);
            g.extend(gates::node_gates(p, s));
            g
        }) {
            Ok((g, secs)) => eprintln!(
                "roll: {name}: gates after passed in {secs:.0}s: {}",
                show(&g)
            ),
            Err(g) => {
                state.at = Some(name.to_string());
                return stop(
                    &mut state,
                    format!(
                        "roll stopped after {name}: gate {} failed: {}",
                        g.name, g.saw
                    ),
                );
            }
        }
        state.nodes.insert(name.to_string(), "updated".into());
        if state.at.as_deref() == Some(name) {
            state.at = None;
        }
        save(build_dir, &state)?;
        println!("roll: {name} done in {:.0}s", tn.elapsed().as_secs_f64());
    }
    println!(
        "roll: {} nodes rolled in {:.0}s",
        ordered.len(),
        t.elapsed().as_secs_f64()
    );
    if o.resubmit_example {
        resubmit_example(plans, &remotes)?;
    }
    if o.json {
        println!("{}", serde_json::to_string(&state)?);
    }
    Ok(())
}
