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
use crate::vm::container::Container;
use crate::vm::member::{Member, VmMember};
use crate::vm::qemu::{self, Seen};

mod judge;
mod start;
pub mod swap;
pub use judge::*;
use start::*;

static STOP: AtomicBool = AtomicBool::new(false);

/// The multicast group of the nodes' NICs (inside the private namespace only).
const GROUP: &str = "230.0.0.1:1234";

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Whether SIGINT or SIGTERM came since `catch_signals`.
pub fn stopping() -> bool {
    STOP.load(Ordering::SeqCst)
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
        crate::util::run::Cmd::new("ip")
            .args(args)
            .run()
            .context("setting up the private network")?;
    }
    Ok(())
}

/// How a node runs: a QEMU process of the all-QEMU runtime, or the member (a container, or the
/// mixed runtime's VM) at this index of `up`'s members.
enum Handle {
    Vm(Child),
    Member(usize),
}

/// One running node and where its console goes.
struct Running {
    name: String,
    handle: Handle,
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

    fn exited(&mut self, cs: &mut [Member]) -> Option<std::process::ExitStatus> {
        match &mut self.handle {
            Handle::Vm(c) => c.try_wait().ok().flatten(),
            Handle::Member(i) => cs[*i].exited(),
        }
    }

    fn stop(&mut self, cs: &mut [Member]) {
        self.halt(cs);
        self.finish(cs);
    }

    /// Ask the node to stop, without waiting (`finish` waits).
    fn halt(&mut self, cs: &mut [Member]) {
        match &mut self.handle {
            Handle::Vm(child) => unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            },
            Handle::Member(i) => cs[*i].halt(),
        }
    }

    fn finish(&mut self, cs: &mut [Member]) {
        match &mut self.handle {
            Handle::Vm(child) => {
                let t = Instant::now();
                while t.elapsed() < Duration::from_secs(10) && matches!(child.try_wait(), Ok(None))
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            Handle::Member(i) => cs[*i].finish(),
        }
    }
}

/// What `up` needs before it starts anything: its tools (QEMU, systemd-nspawn, ip, and for the
/// mixed runtime qemu-img and ssh), each `--vm` among the nodes it boots.
pub fn preflight(plans: &[&Plan], o: &UpOptions) -> Result<()> {
    use crate::util::tools::{IP, MOUNT, NSENTER, NSPAWN, QEMU, QEMU_IMG, SCRIPT, SSH, TIMEOUT};
    match o.runtime {
        Runtime::Qemu => crate::util::tools::require(&[QEMU, IP])?,
        Runtime::Container => {
            crate::util::tools::require(&[NSPAWN, SCRIPT, IP, MOUNT, NSENTER, TIMEOUT])?
        }
    }
    if !o.vms.is_empty() {
        for v in &o.vms {
            anyhow::ensure!(
                plans.iter().any(|p| &p.node.name == v),
                "--vm {v}: no such node among those `up` boots ({})",
                plans
                    .iter()
                    .map(|p| p.node.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        crate::util::tools::require(&[QEMU, QEMU_IMG, SSH])?;
    }
    Ok(())
}

/// Where the nodes run: QEMU (the judge of booting) or systemd-nspawn containers (native speed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Runtime {
    Qemu,
    Container,
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
    pub runtime: Runtime,
    /// Checks reported but not judged (`--ignore kafka`): a node is done when the rest pass.
    pub ignore: Vec<String>,
    /// Leave out the node-loss phase (`--no-node-loss`).
    pub no_node_loss: bool,
    /// `--json`: the human report goes to stderr, stdout is left for the JSON document.
    pub json: bool,
    /// `--partition`: after the node loss, cut a container node off the others and heal it.
    pub partition: bool,
    /// `--vm NODE`: these nodes boot their images in QEMU among the others' containers (the
    /// mixed runtime, on the containers' bridge).
    pub vms: Vec<String>,
    /// `--stay`: with --check, the cluster stays up after the checks until interrupted.
    pub stay: bool,
}

impl UpOptions {
    /// Whether `p` boots its image in QEMU.
    fn in_vm(&self, p: &Plan) -> bool {
        self.runtime == Runtime::Qemu || self.vms.contains(&p.node.name)
    }

    /// Whether the nodes share the containers' bridge (containers, mixed or not).
    fn bridged(&self) -> bool {
        self.runtime == Runtime::Container
    }
}

/// What `up` saw: every node's last reports, the phases run after the membership checks, and
/// the judgement's failures (empty = ok).
pub struct UpResult {
    pub states: BTreeMap<String, NodeState>,
    pub healthy_after: Option<f64>,
    pub phases: Vec<crate::vm::checks::Phase>,
    pub failures: Vec<String>,
}

/// The human report's lines: stdout, or stderr when stdout carries JSON.
fn say(json: bool, line: &str) {
    if json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

/// The host's address on the nodes' network and the pid file `imgbuild ssh` enters by. Without
/// it the cluster still runs (said on stderr): it is the way in, not part of what is judged.
fn host_link(nodes: &[&Plan], build_dir: &Path, runtime: Runtime) {
    // (the mixed runtime's VMs are on the bridge too)
    use crate::vm::hostlink;
    let r = hostlink::host_address(nodes).and_then(|addr| {
        match runtime {
            Runtime::Qemu => hostlink::attach_qemu(GROUP, addr)?,
            Runtime::Container => hostlink::attach_bridge(crate::vm::container::BRIDGE, addr)?,
        }
        std::fs::write(
            hostlink::pid_file(build_dir),
            std::process::id().to_string(),
        )?;
        Ok(addr)
    });
    match r {
        Ok((ip, _)) => eprintln!(
            "host: {ip} on the nodes' network, inside this run's namespace (`imgbuild ssh NODE`)"
        ),
        Err(e) => eprintln!("note: no way in from the host (`imgbuild ssh`): {e:#}"),
    }
}

/// `imgbuild boot`'s way in, the same as `up`'s: as root, this process moves into a network
/// namespace of its own, the VM's NIC goes on a multicast segment there, the host gets an
/// address on it and the pid file `imgbuild ssh` enters by. Otherwise (not root, or no
/// namespace) the VM stays isolated and None says so.
pub fn boot_network(node: &Plan, build_dir: &Path) -> Option<crate::vm::qemu::Net> {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "note: not root, so the VM's network is isolated (`imgbuild ssh` needs boot as root)"
        );
        return None;
    }
    if let Err(e) =
        private_network().and_then(|()| Ok(std::fs::create_dir_all(build_dir.join("up"))?))
    {
        eprintln!("note: no way in from the host (`imgbuild ssh`): {e:#}");
        return None;
    }
    host_link(&[node], build_dir, Runtime::Qemu);
    Some(crate::vm::qemu::Net::Mcast {
        group: GROUP.into(),
    })
}

/// Boot `nodes` and watch them; returns what was seen and judged, or None when interrupted
/// before a judgement. With `--check` in the container runtime, the data path and
/// the loss of a node are proven after the membership checks pass (see `datapath`).
pub fn up(
    cluster: &ClusterPlan,
    nodes: &[&Plan],
    images: &Path,
    build_dir: &Path,
    o: &UpOptions,
) -> Result<Option<UpResult>> {
    let work = build_dir.join("up");
    let _lock = lock_work(&work)?;
    let vm = vm_runtime(o, &work)?;
    private_network()?;
    if o.bridged() {
        crate::vm::container::prepare()?;
    }
    host_link(nodes, build_dir, o.runtime);
    catch_signals();
    let mut containers: Vec<Member> = Vec::new();
    let start = Instant::now();
    let mut running = Vec::new();
    for p in nodes {
        let nwork = work.join(&p.node.name);
        std::fs::create_dir_all(&nwork)?;
        let vm = vm.as_ref().map(|(f, k)| (f, *k));
        match start_node(p, images, build_dir, &nwork, o, vm, &mut containers) {
            Ok(r) => running.push(r),
            Err(e) => {
                for r in &mut running {
                    r.stop(&mut containers);
                }
                return Err(e);
            }
        }
    }
    let mut states: BTreeMap<String, NodeState> = nodes
        .iter()
        .map(|p| (p.node.name.clone(), NodeState::default()))
        .collect();
    let result = watch(
        cluster,
        nodes,
        o,
        start,
        &mut running,
        &mut containers,
        &mut states,
        build_dir,
    );
    print_checks(nodes, &states, o);
    let healthy_at = start.elapsed().as_secs_f64();
    let mut phases = Vec::new();
    let result = match result {
        Some(f) if f.is_empty() && o.check => {
            say(o.json, &format!("phase boot to healthy: {healthy_at:.0} s"));
            let mut f = Vec::new();
            for m in containers.iter().filter(|m| m.is_vm()) {
                let p = nodes
                    .iter()
                    .find(|p| p.node.name == m.name())
                    .expect("a plan per member");
                let ph = vm_services(p, m, &states, start, o.timeout);
                report(o, &ph, &mut f, &mut phases);
            }
            if f.is_empty() {
                f.extend(after_healthy(nodes, &mut containers, o, &work, &mut phases));
            }
            Some(f)
        }
        other => other,
    };
    let healthy = result.as_ref().is_some_and(|_| {
        judged(&states, &o.ignore)
            .values()
            .all(|s| s.summary.as_deref() == Some("healthy"))
    });
    // All at once: each member's shutdown (a JVM's, a VM's) runs beside the others'.
    for r in &mut running {
        r.halt(&mut containers);
    }
    for r in &mut running {
        r.finish(&mut containers);
        let _ = std::fs::remove_file(work.join(&r.name).join("qemu.pid"));
        let _ = std::fs::remove_file(work.join(&r.name).join("running.json"));
    }
    crate::vm::hostlink::forget(build_dir);
    eprintln!(
        "stopped {} nodes after {:.0}s",
        running.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(result.map(|failures| UpResult {
        states,
        healthy_after: healthy.then_some(healthy_at),
        phases,
        failures,
    }))
}

/// One `up` per build directory: nodes of two runs would share work directories and names.
/// Held until the returned file is dropped.
fn lock_work(work: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(work)?;
    let lock = std::fs::File::create(work.join(".lock"))
        .with_context(|| format!("creating {}", work.join(".lock").display()))?;
    if lock.try_lock().is_err() {
        bail!(
            "another `imgbuild up` is running on {} (stop it first, or use another --build-dir)",
            work.display()
        );
    }
    Ok(lock)
}

/// For QEMU (all VMs, or the mixed runtime's): the firmware and whether KVM works; nothing
/// for containers only.
fn vm_runtime(o: &UpOptions, work: &Path) -> Result<Option<(qemu::Firmware, bool)>> {
    if o.runtime == Runtime::Container && o.vms.is_empty() {
        return Ok(None);
    }
    let fw = qemu::firmware(o.secure_boot)?;
    let kvm = qemu::kvm_works(&fw, work);
    if !kvm {
        eprintln!(
            "note: KVM is not usable here; software emulation (a cluster boot takes several minutes)"
        );
    }
    Ok(Some((fw, kvm)))
}

/// Poll every node's reports every 2 s, showing the status table when it changes, until
/// interrupted (None), every node reported (with --check) or the timeout: then the judgement.
/// Without --check, roll's requests to swap a container's tree are answered meanwhile.
#[allow(clippy::too_many_arguments)]
fn watch(
    cluster: &ClusterPlan,
    nodes: &[&Plan],
    o: &UpOptions,
    start: Instant,
    running: &mut [Running],
    containers: &mut [Member],
    states: &mut BTreeMap<String, NodeState>,
    build_dir: &Path,
) -> Option<Vec<String>> {
    let mut last_table = String::new();
    loop {
        std::thread::sleep(Duration::from_secs(2));
        if !o.check {
            swap::serve(nodes, build_dir, containers, |n| {
                states.insert(n.to_string(), NodeState::default());
            });
        }
        for r in running.iter_mut() {
            let st = states.get_mut(&r.name).expect("state per node");
            r.poll(st);
            st.note_first_ok(Instant::now());
            if let Some(status) = r.exited(containers) {
                st.summary
                    .get_or_insert_with(|| format!("exited({status})"));
            }
        }
        let table = status_table(nodes, states);
        if table != last_table {
            eprintln!("[{:>4}s] {table}", start.elapsed().as_secs());
            last_table = table;
        }
        let view = judged(states, &o.ignore);
        let done = view.values().all(|s| s.summary.is_some());
        if STOP.load(Ordering::SeqCst) {
            eprintln!("stopping (interrupted)");
            return None;
        }
        if o.check && done {
            return Some(judge(cluster, nodes, &view));
        }
        if start.elapsed() > o.timeout {
            let mut f = judge(cluster, nodes, &view);
            f.insert(
                0,
                format!(
                    "timeout: not every node finished its checks within {}s",
                    o.timeout.as_secs()
                ),
            );
            return Some(f);
        }
    }
}

/// The mixed runtime's VM once healthy: when each of its services first passed its check (from
/// `up`'s start: firmware, boot chain, kernel, systemd and the JVMs under emulation), and the
/// check's login over SSH, which every later phase needs.
fn vm_services(
    p: &Plan,
    m: &Member,
    states: &BTreeMap<String, NodeState>,
    start: Instant,
    timeout: Duration,
) -> crate::vm::checks::Phase {
    crate::vm::checks::Phase::timed("the VM among containers", |lines, _| {
        let Member::Vm(v) = m else { return Ok(()) };
        let st = states.get(&v.name).context("the VM's state")?;
        let mut seen: Vec<(String, f64)> = st
            .first_ok
            .iter()
            .map(|(c, t)| (c.clone(), t.duration_since(start).as_secs_f64()))
            .collect();
        seen.sort_by(|a, b| a.1.total_cmp(&b.1));
        lines.push(format!(
            "{} (VM, its image in QEMU): each check first passed after {} (seconds from power-on)",
            v.name,
            seen.iter()
                .map(|(c, s)| format!("{c} {s:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        if let Some(sb) = st.seen.secure_boot {
            lines.push(format!(
                "{}: the kernel says Secure Boot {}",
                v.name,
                if sb { "enabled" } else { "disabled" }
            ));
        }
        let secs = v.await_login(timeout)?;
        lines.push(format!(
            "{}: the check logs in over SSH as the recipe's sudo user ({secs:.0}s more)",
            v.name
        ));
        // The health unit judges the KRaft quorum (the controller); the broker's client
        // listener comes up after it, minutes later under emulation: wait for it, as every
        // later phase produces through it.
        if let Some(port) = p.kafka.as_ref().map(|k| k.port) {
            let addr = std::net::SocketAddr::from((v.ip, port));
            let t = Instant::now();
            while std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).is_err() {
                if t.elapsed() > timeout {
                    anyhow::bail!(
                        "{}: Kafka's client port {addr} not listening {}s after healthy",
                        v.name,
                        timeout.as_secs()
                    );
                }
                std::thread::sleep(Duration::from_secs(5));
            }
            lines.push(format!(
                "{}: Kafka's client port {addr} listening after {:.0}s (from power-on)",
                v.name,
                start.elapsed().as_secs_f64()
            ));
        }
        Ok(())
    })
}

/// Once every node is healthy: the checks of `vm::checks::CHECKS` that apply, in order (the
/// firewall probed from outside; with the nodes on the host's bridge, the data path).
fn after_healthy(
    nodes: &[&Plan],
    containers: &mut [Member],
    o: &UpOptions,
    work: &Path,
    phases: &mut Vec<crate::vm::checks::Phase>,
) -> Vec<String> {
    let mut failures = Vec::new();
    if !o.bridged() {
        say(
            o.json,
            "note: the data-path and node-loss phases run in the container runtime (--runtime container): under software emulation every Kafka tool JVM takes minutes",
        );
    }
    let timeout = o.timeout;
    let mut reboot = |c: &mut Member, booted| boot_until_healthy(c, timeout, booted);
    let json = o.json;
    let mut stay = |cs: &mut [Member], wc: Option<&mut crate::vm::checks::Wordcount>| {
        stay(nodes, work, cs, wc, json)
    };
    let mut ctx = crate::vm::checks::Ctx {
        nodes,
        members: containers,
        work,
        wanted: crate::vm::checks::Wanted {
            bridged: o.bridged(),
            node_loss: !o.no_node_loss,
            partition: o.partition,
            stay: o.stay,
        },
        reboot: &mut reboot,
        acked: None,
        wordcount: None,
        stay: &mut stay,
        failed: false,
    };
    crate::vm::checks::run_all(&mut ctx, &mut |p| report(o, p, &mut failures, phases));
    failures
}

/// Sentences fed to the topology every [`FEED_EVERY`] during the stay.
const FEED_BATCH: usize = 20;
const FEED_EVERY: Duration = Duration::from_secs(15);
/// A node swapped less than this long ago is not fed through (its network and JVMs starting).
const FEED_SETTLE: Duration = Duration::from_secs(60);

/// `--stay`: once the checks passed, keep the cluster up until interrupted, answering roll's
/// requests to swap a container's tree (`swap`). `UP/staying` exists meanwhile. The topology, when
/// one runs, is fed a batch of sentences every [`FEED_EVERY`] through a Kafka node not swapped
/// in the last minute (the check after the stay waits for their counts). What happened, and what
/// failed.
fn stay(
    nodes: &[&Plan],
    work: &Path,
    cs: &mut [Member],
    mut wc: Option<&mut crate::vm::checks::Wordcount>,
    json: bool,
) -> (Vec<String>, Vec<String>) {
    let build_dir = work.parent().unwrap_or(Path::new("."));
    let t = Instant::now();
    let _ = std::fs::write(work.join("staying"), format!("{}\n", std::process::id()));
    say(
        json,
        "up: the checks passed; the cluster stays up (imgbuild roll may swap its containers' trees; Ctrl-C ends the stay and checks the topology again)",
    );
    let mut swapped: Vec<(String, Instant)> = Vec::new();
    let mut failures = Vec::new();
    let first = wc.as_deref().map_or(0, |w| w.sent());
    let mut fed: BTreeMap<String, usize> = BTreeMap::new();
    let mut last_feed = Instant::now();
    while !STOP.load(Ordering::SeqCst) {
        for m in cs.iter_mut() {
            m.exited(); // puts a rebooted container's veth on the bridge
        }
        swap::serve(nodes, build_dir, cs, |n| {
            swapped.push((n.to_string(), Instant::now()))
        });
        if let Some(w) = wc.as_deref_mut()
            && failures.is_empty()
            && last_feed.elapsed() >= FEED_EVERY
        {
            last_feed = Instant::now();
            let settled = |n: &str| {
                !swapped
                    .iter()
                    .any(|(s, at)| s == n && at.elapsed() < FEED_SETTLE)
            };
            let via = std::iter::once(w.via().to_string())
                .chain(
                    nodes
                        .iter()
                        .filter(|p| p.kafka.is_some())
                        .map(|p| p.node.name.clone()),
                )
                .find(|n| settled(n) && cs.iter().any(|m| m.name() == n && !m.is_vm()));
            if let Some(via) = via {
                match w.feed_through(cs, &via, FEED_BATCH) {
                    Ok(()) => *fed.entry(via).or_default() += FEED_BATCH,
                    Err(e) => failures.push(format!(
                        "topology during the stay: feeding {FEED_BATCH} sentences failed, so the counts cannot be judged: {e:#}"
                    )),
                }
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let _ = std::fs::remove_file(work.join("staying"));
    let mut lines = vec![format!(
        "stayed up {:.0}s; trees swapped: {}",
        t.elapsed().as_secs_f64(),
        if swapped.is_empty() {
            "none".to_string()
        } else {
            swapped
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }
    )];
    if let Some(w) = wc {
        lines.push(format!(
            "topology during the stay: {} sentences fed with acks=all ({}; every {}s, no node swapped in the last {}s)",
            w.sent() - first,
            if fed.is_empty() {
                "none".to_string()
            } else {
                fed.iter()
                    .map(|(n, k)| format!("{k} through {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            FEED_EVERY.as_secs(),
            FEED_SETTLE.as_secs()
        ));
    }
    (lines, failures)
}

/// Print a phase as it finishes (its lines, then its failures) and keep it for the report.
fn report(
    o: &UpOptions,
    p: &crate::vm::checks::Phase,
    failures: &mut Vec<String>,
    phases: &mut Vec<crate::vm::checks::Phase>,
) {
    say(o.json, &format!("phase {}: {:.0} s", p.name, p.seconds));
    for l in &p.lines {
        say(o.json, &format!("  {l}"));
    }
    for f in &p.failures {
        say(o.json, &format!("  FAIL {f}"));
    }
    failures.extend(p.failures.iter().cloned());
    phases.push(p.clone());
}

/// Boot a stopped member again (unless `booted` says when it was, and where its console then
/// ended) and follow its console until its health unit says healthy (a VM: and until the check
/// can log in again). The seconds from the boot.
fn boot_until_healthy(
    c: &mut Member,
    timeout: Duration,
    booted: Option<crate::vm::checks::Booted>,
) -> Result<f64> {
    let (t, from) = match booted {
        Some(b) => b,
        None => crate::vm::checks::boot_marked(c)?,
    };
    let mut st = NodeState::default();
    let mut console = Running {
        name: c.name().to_string(),
        handle: Handle::Member(0),
        log: c.log().to_path_buf(),
        offset: from,
        partial: String::new(),
    };
    let mut last = String::new();
    while t.elapsed() < timeout {
        console.poll(&mut st);
        if st.summary.as_deref() == Some("healthy") {
            if let Member::Vm(v) = c {
                v.await_login(timeout.saturating_sub(t.elapsed()))?;
            }
            return Ok(t.elapsed().as_secs_f64());
        }
        if let Some(s) = c.exited() {
            bail!("{}: exited ({s}) while booting again", c.name());
        }
        let now = st.status();
        if now != last && c.is_vm() {
            eprintln!(
                "[{:>4}s] {} booting again: {now}",
                t.elapsed().as_secs(),
                c.name()
            );
            last = now;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    bail!(
        "{}: not healthy {}s after booting again ({})",
        c.name(),
        timeout.as_secs(),
        st.status()
    )
}

/// Every node's last report of every check, on stdout: `ok`, `FAIL`, or `ignored` for a check
/// `--ignore` leaves unjudged (whatever it reported: an ignored check is never `ok`).
fn print_checks(nodes: &[&Plan], states: &BTreeMap<String, NodeState>, o: &UpOptions) {
    for p in nodes {
        if let Some(s) = states.get(&p.node.name) {
            for (c, chk) in &s.checks {
                let verdict = if o.ignore.contains(c) {
                    "ignored"
                } else if chk.ok {
                    "ok"
                } else {
                    "FAIL"
                };
                say(
                    o.json,
                    &format!(
                        "{:<8} {:<10} {:<7} {}",
                        p.node.name,
                        c,
                        verdict,
                        describe(&chk.fields)
                    ),
                );
            }
        }
    }
}

/// The last line of a judged run with nothing failed: never `ok` over a check that was not
/// judged (`--ignore`): it names those instead.
pub fn verdict(states: &BTreeMap<String, NodeState>, ignore: &[String], nodes: usize) -> String {
    let unjudged = not_judged(states, ignore);
    if unjudged.is_empty() {
        format!("cluster ok: {nodes} nodes healthy")
    } else {
        format!(
            "cluster judged on the other checks only, {nodes} nodes; not judged: {}",
            unjudged.join("; ")
        )
    }
}

/// The checks `--ignore` left unjudged, each with the nodes where it was not passing: for the
/// verdict's last line.
pub fn not_judged(states: &BTreeMap<String, NodeState>, ignore: &[String]) -> Vec<String> {
    ignore
        .iter()
        .map(|c| {
            let failing: Vec<&str> = states
                .iter()
                .filter(|(_, s)| s.checks.get(c).is_none_or(|k| !k.ok))
                .map(|(n, _)| n.as_str())
                .collect();
            if failing.is_empty() {
                format!("{c} (ignored; passing on every node)")
            } else {
                format!("{c} (ignored; not passing on {})", failing.join(", "))
            }
        })
        .collect()
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

    /// Issue 27: a slow node says which service is still starting and since when; an ignored
    /// check is named in the verdict, never counted as passed.
    #[test]
    fn a_slow_node_explains_itself_and_ignored_checks_are_named() {
        let mut s = NodeState::default();
        s.line("imgbuild-health node=node1 check=zookeeper ok=yes round=3 mode=follower");
        s.line("imgbuild-health node=node1 check=kafka ok=no round=3 voters=none leader=none max_lag=0 unheard=none unit=activating since=95s format=active format_since=120s");
        s.line("imgbuild-health node=node1 check=storm ok=no round=3 nimbuses=0 leader_latch=0 supervisors=2 supervisor=activating supervisor_since=40s");
        assert_eq!(
            s.status(),
            "checking 1/3 (kafka: activating 95s, storm: activating 40s)"
        );
        let states = BTreeMap::from([("node1".to_string(), s)]);
        let ignore = vec!["kafka".to_string(), "zookeeper".to_string()];
        assert_eq!(
            not_judged(&states, &ignore),
            [
                "kafka (ignored; not passing on node1)",
                "zookeeper (ignored; passing on every node)"
            ]
        );
    }

    /// CI once judged node3 healthy after its first three checks of a round (with kafka
    /// ignored): a round counts only once it has ended.
    #[test]
    fn ignored_checks_count_only_after_a_whole_round() {
        let ignore = vec!["kafka".to_string()];
        let mut s = NodeState::default();
        for l in [
            "imgbuild-health node=node3 check=disk ok=yes round=1 disk_mb=2816",
            "imgbuild-health node=node3 check=hostname ok=yes round=1 value=node3",
            "imgbuild-health node=node3 check=ip ok=yes round=1 value=192.168.200.153",
        ] {
            s.line(l);
        }
        let states = BTreeMap::from([("node3".to_string(), s.clone())]);
        assert_eq!(judged(&states, &ignore)["node3"].summary, None);
        s.line("imgbuild-health node=node3 check=zookeeper ok=no round=1 mode=down");
        s.line("imgbuild-health node=node3 check=kafka ok=no round=1 voters=none");
        s.line("imgbuild-health node=node3 round=1 failed=zookeeper,kafka");
        let states = BTreeMap::from([("node3".to_string(), s.clone())]);
        assert_eq!(judged(&states, &ignore)["node3"].summary, None);
        s.line("imgbuild-health node=node3 check=zookeeper ok=yes round=2 mode=leader");
        s.line("imgbuild-health node=node3 check=kafka ok=no round=2 voters=none");
        let states = BTreeMap::from([("node3".to_string(), s.clone())]);
        assert_eq!(
            judged(&states, &ignore)["node3"].summary,
            None,
            "round 2 not ended"
        );
        s.line("imgbuild-health node=node3 round=2 failed=kafka");
        let states = BTreeMap::from([("node3".to_string(), s.clone())]);
        assert_eq!(
            judged(&states, &ignore)["node3"].summary.as_deref(),
            Some("healthy")
        );
        assert_eq!(judged(&states, &[])["node3"].summary, None, "kafka judged");
    }
}
