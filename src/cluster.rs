//! `imgbuild up`: boot several nodes on one private virtual L2 segment and judge the cluster
//! from what each node's `imgbuild-health` unit prints on its serial console.
//!
//! The network: this process moves into a network namespace of its own (only a loopback
//! device, multicast routed over it) before starting QEMU, and every VM's NIC is a QEMU socket
//! netdev on one multicast group bound to 127.0.0.1 there: the VMs reach each other at their
//! recipe addresses and nothing can leave the host.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::plan::{ClusterPlan, Plan, Role};
use crate::qemu::{self, Seen};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Ctrl-C and SIGTERM stop the cluster cleanly instead of killing imgbuild outright.
pub fn catch_signals() {
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// Move this process into a new network namespace with loopback up and multicast over it.
pub fn private_network() -> Result<()> {
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        bail!(
            "creating a private network namespace: {} (imgbuild up needs root)",
            std::io::Error::last_os_error()
        );
    }
    for args in [
        &["link", "set", "lo", "up"][..],
        &["link", "set", "lo", "multicast", "on"][..],
        &["route", "add", "224.0.0.0/4", "dev", "lo"][..],
    ] {
        crate::run::Cmd::new("ip")
            .args(args)
            .run()
            .context("setting up the private network")?;
    }
    Ok(())
}

/// The latest report of one check on one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
        } else if let Some(name) = fields.get("check") {
            let ok = fields.get("ok").is_some_and(|v| v == "yes");
            let mut f = fields.clone();
            for k in ["node", "check", "ok", "round"] {
                f.remove(k);
            }
            self.checks.insert(name.clone(), Check { ok, fields: f });
        }
    }

    fn status(&self) -> String {
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
        format!("checking {ok}/{}", self.checks.len())
    }
}

/// Judge the cluster as a whole. Returns one message per failed check, naming node and check.
pub fn judge(
    cluster: &ClusterPlan,
    nodes: &[&Plan],
    states: &BTreeMap<String, NodeState>,
) -> Vec<String> {
    let mut fail = Vec::new();
    let get = |n: &str, c: &str| states.get(n).and_then(|s| s.checks.get(c));
    for p in nodes {
        let n = &p.node.name;
        let Some(s) = states.get(n) else { continue };
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
            let mut want: Vec<&str> = v.split(',').filter_map(|e| e.split('@').next()).collect();
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
    // ZooKeeper-mode Kafka: every broker registered.
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
    // ZooKeeper: exactly one leader, every other ensemble member a follower.
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
    // Storm: a nimbus leader latch and every supervisor registered, as any node's ZooKeeper sees.
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
    fail.dedup();
    fail
}

fn describe(f: &BTreeMap<String, String>) -> String {
    if f.is_empty() {
        return "failed".into();
    }
    f.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One running VM.
struct Running {
    name: String,
    child: Child,
    log: PathBuf,
    offset: u64,
    partial: String,
}

impl Running {
    fn poll(&mut self, state: &mut NodeState) {
        let Ok(mut f) = std::fs::File::open(&self.log) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            return;
        }
        self.offset += buf.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        while let Some(i) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=i).collect();
            state.line(line.trim_end());
        }
    }
}

pub struct UpOptions {
    /// Memory per VM; None: each node's memory budget (`plan`).
    pub memory: Option<u32>,
    pub cpus: u32,
    pub timeout: Duration,
    /// Stop once every node is healthy (or the time is up) and judge; exit status says.
    pub check: bool,
    /// Boot with Secure Boot enforced (OVMF with Microsoft's keys enrolled).
    pub secure_boot: bool,
}

/// Boot `nodes` from `images` and watch them; returns the judgement's failures (empty = ok), or
/// None when interrupted before a judgement.
pub fn up(
    cluster: &ClusterPlan,
    nodes: &[&Plan],
    images: &Path,
    work: &Path,
    o: &UpOptions,
) -> Result<Option<Vec<String>>> {
    let fw = qemu::firmware(o.secure_boot)?;
    std::fs::create_dir_all(work)?;
    let kvm = qemu::kvm_works(&fw, work);
    if !kvm {
        eprintln!(
            "note: KVM is not usable here; software emulation (a cluster boot takes several minutes)"
        );
    }
    private_network()?;
    catch_signals();
    let mut vms = Vec::new();
    let mut states: BTreeMap<String, NodeState> = BTreeMap::new();
    let start = Instant::now();
    for p in nodes {
        let name = &p.node.name;
        let image = crate::image::bootable(images, name)?;
        let nwork = work.join(name);
        std::fs::create_dir_all(&nwork)?;
        let vars = nwork.join("OVMF_VARS.fd");
        std::fs::copy(&fw.vars, &vars)?;
        let log = nwork.join("serial.log");
        let _ = std::fs::remove_file(&log);
        let vm = qemu::Vm {
            name,
            image: &image,
            firmware: &fw,
            vars: &vars,
            kvm,
            memory_mb: qemu::guest_memory(p, o.memory)?,
            cpus: o.cpus,
            mac: p
                .node
                .mac
                .clone()
                .unwrap_or_else(|| qemu::default_mac(name)),
            nic: "virtio-net-pci",
            net: qemu::Net::Mcast {
                group: "230.0.0.1:1234".into(),
            },
            serial_log: &log,
            console: false,
            cdrom: None,
        };
        let child = vm
            .command()
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(nwork.join("qemu.err"))?)
            .spawn()
            .with_context(|| format!("starting QEMU for {name}"))?;
        std::fs::write(nwork.join("qemu.pid"), child.id().to_string())?;
        eprintln!(
            "started {name} ({}), serial log {}",
            image.display(),
            log.display()
        );
        vms.push(Running {
            name: name.clone(),
            child,
            log,
            offset: 0,
            partial: String::new(),
        });
        states.insert(name.clone(), NodeState::default());
    }
    let mut last_table = String::new();
    let result = loop {
        std::thread::sleep(Duration::from_secs(2));
        for vm in &mut vms {
            let st = states.get_mut(&vm.name).expect("state per VM");
            vm.poll(st);
            if let Ok(Some(status)) = vm.child.try_wait() {
                st.summary
                    .get_or_insert_with(|| format!("qemu-exited({status})"));
            }
        }
        let table = status_table(nodes, &states);
        if table != last_table {
            eprintln!("[{:>4}s] {table}", start.elapsed().as_secs());
            last_table = table;
        }
        let done = states.values().all(|s| s.summary.is_some());
        if STOP.load(Ordering::SeqCst) {
            eprintln!("stopping (interrupted)");
            break None;
        }
        if o.check && done {
            break Some(judge(cluster, nodes, &states));
        }
        if start.elapsed() > o.timeout {
            let mut f = judge(cluster, nodes, &states);
            f.insert(
                0,
                format!(
                    "timeout: not every node finished its checks within {}s",
                    o.timeout.as_secs()
                ),
            );
            break Some(f);
        }
    };
    for vm in &mut vms {
        unsafe {
            libc::kill(vm.child.id() as i32, libc::SIGTERM);
        }
    }
    let t = Instant::now();
    for vm in &mut vms {
        while t.elapsed() < Duration::from_secs(10) && matches!(vm.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = vm.child.kill();
        let _ = vm.child.wait();
        let _ = std::fs::remove_file(work.join(&vm.name).join("qemu.pid"));
    }
    eprintln!(
        "stopped {} VMs after {:.0}s",
        vms.len(),
        start.elapsed().as_secs_f64()
    );
    let mut out = std::io::stdout().lock();
    for p in nodes {
        if let Some(s) = states.get(&p.node.name) {
            for (c, chk) in &s.checks {
                let _ = std::io::Write::write_fmt(
                    &mut out,
                    format_args!(
                        "{:<8} {:<10} {:<4} {}\n",
                        p.node.name,
                        c,
                        if chk.ok { "ok" } else { "FAIL" },
                        describe(&chk.fields)
                    ),
                );
            }
        }
    }
    Ok(result)
}

/// One line: every node's address and state (printed whenever it changes).
fn status_table(nodes: &[&Plan], states: &BTreeMap<String, NodeState>) -> String {
    nodes
        .iter()
        .map(|p| {
            let st = states
                .get(&p.node.name)
                .map(|s| s.status())
                .unwrap_or_default();
            format!("{} {}: {st}", p.node.name, p.node.ip)
        })
        .collect::<Vec<_>>()
        .join("  |  ")
}

/// `imgbuild down`: stop VMs a previous `imgbuild up` left running (pid files under `work`).
pub fn down(work: &Path) -> Result<usize> {
    let mut n = 0;
    let Ok(rd) = std::fs::read_dir(work) else {
        return Ok(0);
    };
    for e in rd.flatten() {
        let pidfile = e.path().join("qemu.pid");
        let Ok(text) = std::fs::read_to_string(&pidfile) else {
            continue;
        };
        if let Ok(pid) = text.trim().parse::<i32>() {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim().starts_with("qemu-system")
                && unsafe { libc::kill(pid, libc::SIGTERM) } == 0
            {
                n += 1;
            }
        }
        let _ = std::fs::remove_file(&pidfile);
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference() -> ClusterPlan {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/cluster.yaml");
        crate::plan::resolve(&crate::recipe::load(&path).unwrap()).unwrap()
    }

    /// The serial-console lines of a healthy node of the reference cluster.
    fn healthy(p: &Plan, zk_mode: &str) -> NodeState {
        let n = &p.node.name;
        let mut s = NodeState::default();
        for l in [
            format!(
                "imgbuild-health node={n} check=hostname ok=yes round=1 value={}",
                p.node.hostname
            ),
            format!(
                "imgbuild-health node={n} check=ip ok=yes round=1 value={}",
                p.node.ip
            ),
            format!("imgbuild-health node={n} check=zookeeper ok=yes round=1 mode={zk_mode}"),
            format!("imgbuild-health node={n} check=kafka ok=yes round=1 voters=1,2,3 leader=1"),
            format!(
                "imgbuild-health node={n} check=storm ok=yes round=1 nimbuses=3 leader_latch=3 supervisors=3"
            ),
            format!("imgbuild-health node={n} check=python ok=yes round=1 version=3.13.12"),
            format!("imgbuild-health node={n} summary=healthy round=1"),
        ] {
            s.line(&l);
        }
        s
    }

    #[test]
    fn judge_passes_a_healthy_cluster_and_names_what_breaks() {
        let c = reference();
        let nodes: Vec<&Plan> = c.nodes.iter().collect();
        let modes = ["follower", "follower", "leader"];
        let good: BTreeMap<String, NodeState> = nodes
            .iter()
            .zip(modes)
            .map(|(p, m)| (p.node.name.clone(), healthy(p, m)))
            .collect();
        assert_eq!(judge(&c, &nodes, &good), Vec::<String>::new());

        // node3's ZooKeeper never joins; its health unit keeps reporting it.
        let mut bad = good.clone();
        let n3 = bad.get_mut("node3").unwrap();
        n3.summary = None;
        n3.line("imgbuild-health node=node3 check=zookeeper ok=no round=9 mode=down");
        let f = judge(&c, &nodes, &bad);
        assert!(
            f.iter().any(|m| m == "node3: zookeeper: mode=down"),
            "{f:?}"
        );
        assert!(
            f.iter()
                .any(|m| m.contains("node3: zookeeper: mode down, expected leader or follower")),
            "{f:?}"
        );

        // Two leaders, a missing voter, a missing supervisor.
        let mut bad = good.clone();
        bad.get_mut("node1")
            .unwrap()
            .line("imgbuild-health node=node1 check=zookeeper ok=yes round=2 mode=leader");
        bad.get_mut("node2")
            .unwrap()
            .line("imgbuild-health node=node2 check=kafka ok=yes round=2 voters=1,2 leader=1");
        bad.get_mut("node3").unwrap().line("imgbuild-health node=node3 check=storm ok=yes round=2 nimbuses=3 leader_latch=3 supervisors=2");
        let f = judge(&c, &nodes, &bad);
        assert!(
            f.iter().any(|m| m.starts_with("zookeeper: 2 leaders")),
            "{f:?}"
        );
        assert!(
            f.iter()
                .any(|m| m == "node2: kafka: sees voters 1,2, expected 1,2,3"),
            "{f:?}"
        );
        assert!(
            f.iter()
                .any(|m| m == "node3: storm: 2 supervisors registered, expected 3"),
            "{f:?}"
        );
    }

    #[test]
    fn health_lines_are_parsed() {
        let mut s = NodeState::default();
        s.line("[  80.1] python3[512]: imgbuild-health node=node1 check=zookeeper ok=no round=1 mode=down");
        s.line("imgbuild-health node=node1 check=zookeeper ok=yes round=2 mode=leader");
        s.line("imgbuild-health node=node1 check=kafka ok=yes round=2 voters=1,2,3 leader=1");
        assert_eq!(s.status(), "checking 2/2");
        s.line("imgbuild-health node=node1 summary=healthy round=2");
        assert_eq!(s.summary.as_deref(), Some("healthy"));
        let zk = &s.checks["zookeeper"];
        assert!(zk.ok);
        assert_eq!(zk.fields["mode"], "leader");
        assert_eq!(s.checks["kafka"].fields["voters"], "1,2,3");
    }
}
