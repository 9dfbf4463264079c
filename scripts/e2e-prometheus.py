#!/usr/bin/env python3
"""make e2e's real Prometheus: the generated configuration and alert rules (images/prometheus/)
watching the mixed cluster through its node loss, from inside `imgbuild up`'s network namespace
(where the host has an address in the recipe's metrics.clients, as a Prometheus on the cluster's
network would).

usage (inside up's network namespace: nsenter --net=/proc/UP_PID/ns/net):
  e2e-prometheus.py PROMETHEUS CONFIG_DIR DATA_DIR UP_PID UP_LOG STAYING LOST_NODE

Once up's log (UP_LOG, its stderr) says its round trip ended (every node healthy, every
endpoint scraped), starts PROMETHEUS on 127.0.0.1 with CONFIG_DIR's prometheus.yml (and its
rules.yml); notes from the log when the node-loss phase starts (the topology phase before it
ends) and ends; waits until the file STAYING says up's checks passed (or up exits: then there is
nothing to judge); waits up to RESOLVE_FOR for every alert to resolve; then reads from
Prometheus what it saw:
  - every target up at the end, N/N per job (the Storm workers' job: one slot's at least, the
    running example's worker; a free slot's endpoint is down by design);
  - the alerts that fired (Prometheus's own ALERTS series), each with when it started and ended;
  - LOST_NODE's endpoints' alerts (KafkaBrokerDown, ZooKeeperDown, StormDaemonDown for nimbus
    and supervisor) and the cluster-level ones a lost node must raise (KafkaBrokersMissing,
    KafkaUnderReplicatedPartitions, ZooKeeperQuorumIncomplete, StormSupervisorsMissing) among them, each firing first during the loss; none fired before
    it (the cluster was whole: that would be a false alarm); every alert resolved by the end;
  - the clocks: no node's clock is NTP-synchronised here (the container nodes share this host's
    kernel, whose clock the test machine does not synchronise; the VM reaches no NTP server), so
    NodeClockNotSynchronising must be active (pending or firing: it holds for 10 minutes) for
    exactly the nodes whose kernel says so: the VM, and the containers iff this host's adjtimex
    says unsynchronised. It is left out of "before the loss" and "resolved".
Prints the account; exits 1 naming what failed.
"""
import ctypes
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request

prom, config_dir, data_dir, up_pid, up_log, staying, lost = sys.argv[1:8]
PORT = 19090
API = f"http://127.0.0.1:{PORT}/api/v1"
# How long the alerts may take to resolve after up's checks passed: normally none is firing by
# then; measured once here, node1's (the VM's) Storm supervisor crashed after its return (a
# SIGSEGV in JIT-compiled code under software emulation, then a ZooKeeper connection timeout at
# its restart) and was back in the cluster only minutes later, which the alerts showed.
RESOLVE_FOR = int(os.environ.get("E2E_PROM_RESOLVE_FOR", "600"))
STEP = 5
# The Storm workers' job: one target per slot, up only where a worker runs.
WORKERS = "storm-worker"

# The alerts a lost node must raise: its own endpoints down, and the cluster counting one fewer.
REQUIRED = [
    ("KafkaBrokerDown", {"node": lost}),
    ("ZooKeeperDown", {"node": lost}),
    ("StormDaemonDown", {"node": lost, "job": "storm-nimbus"}),
    ("StormDaemonDown", {"node": lost, "job": "storm-supervisor"}),
    ("KafkaBrokersMissing", {}),
    ("KafkaUnderReplicatedPartitions", {}),
    ("ZooKeeperQuorumIncomplete", {}),
    ("StormSupervisorsMissing", {}),
]


# Active for as long as the clocks are not synchronised: judged against the kernels, not the loss.
CLOCK = "NodeClockNotSynchronising"


def host_clock_unsynchronised():
    """This host's kernel clock status (adjtimex(2)): STA_UNSYNC set, and the status word."""
    class Timex(ctypes.Structure):
        _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                    ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                    ("rest", ctypes.c_long * 40)]
    t = Timex()
    if ctypes.CDLL("libc.so.6", use_errno=True).adjtimex(ctypes.byref(t)) < 0:
        raise OSError(ctypes.get_errno(), "adjtimex")
    return bool(t.status & 0x40), t.status


def get(path, **params):
    url = f"{API}/{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{url}: {body}")
    return body["data"]


def alive(pid):
    try:
        os.kill(int(pid), 0)
        return True
    except OSError:
        return False


def hms(ts):
    return time.strftime("%H:%M:%S", time.gmtime(ts))


def logged(marker):
    """Whether up's log has a line starting with `marker` (`phase NAME:`, printed as it ends)."""
    try:
        with open(up_log, errors="replace") as f:
            return any(l.startswith(marker) for l in f)
    except OSError:
        return False


# From the end of the round trip, not before: its 1000 acks=all messages through the VM's broker
# are the heaviest load the VM takes before its loss, and scraping its five endpoints every 15 s
# during it slowed its followers (measured: 33 partitions under-replicated right after).
while not logged("phase kafka round trip:"):
    if not alive(up_pid):
        sys.exit("e2e-prometheus: up exited before its round trip ended: nothing to judge")
    time.sleep(5)
os.makedirs(data_dir, exist_ok=True)
log = open(os.path.join(data_dir, "prometheus.log"), "w")
p = subprocess.Popen(
    [prom, f"--config.file={config_dir}/prometheus.yml", f"--storage.tsdb.path={data_dir}",
     f"--web.listen-address=127.0.0.1:{PORT}", "--log.level=warn"],
    stdout=log, stderr=log)
start = time.time()
problems = []
try:
    for _ in range(60):
        try:
            get("status/buildinfo")
            break
        except Exception:
            time.sleep(1)
    else:
        sys.exit("e2e-prometheus: Prometheus did not answer on 127.0.0.1:%d (see %s/prometheus.log)" % (PORT, data_dir))
    print(f"prometheus {get('status/buildinfo')['version']} on 127.0.0.1:{PORT} from {hms(start)} UTC, "
          f"scraping with {config_dir}/prometheus.yml", flush=True)

    # up's checks (the node loss among them) run; then it stays, or it exits on a failure.
    loss_start = loss_end = None
    while not os.path.exists(staying):
        if not alive(up_pid):
            sys.exit("e2e-prometheus: up exited before its checks passed: nothing to judge")
        if loss_start is None and logged("phase storm topology:"):
            loss_start = time.time()
        if loss_end is None and logged("phase node loss and rejoin:"):
            loss_end = time.time()
        time.sleep(STEP)
    now = time.time()
    if loss_start is None and logged("phase storm topology:"):
        loss_start = now
    if loss_end is None and logged("phase node loss and rejoin:"):
        loss_end = now
    if loss_start is None or loss_end is None:
        sys.exit("e2e-prometheus: up's log shows no storm topology or node loss phase")
    print(f"node loss and rejoin: {hms(loss_start)}..{hms(loss_end)} UTC (from up's log, within {STEP}s)", flush=True)
    checks_done = time.time()
    print(f"up's checks passed at {hms(checks_done)} UTC; waiting up to {RESOLVE_FOR}s for every alert to resolve", flush=True)
    deadline = checks_done + RESOLVE_FOR
    while True:
        active = [a for a in get("alerts")["alerts"] if a["labels"]["alertname"] != CLOCK]
        if not active or time.time() > deadline:
            break
        time.sleep(STEP)
    end = time.time()

    # Targets: every one up now, per job.
    targets = get("targets", state="active")["activeTargets"]
    jobs = {}
    for t in targets:
        j = t["labels"]["job"]
        up, n = jobs.get(j, (0, 0))
        jobs[j] = (up + (t["health"] == "up"), n + 1)
    print("targets up: " + ", ".join(f"{j} {u}/{n}" for j, (u, n) in sorted(jobs.items())))
    for j, (u, n) in sorted(jobs.items()):
        if j == WORKERS:
            # A worker's endpoint answers only while its slot runs one: the example's one worker.
            if u < 1:
                problems.append(f"targets of job {j}: none up at the end: the running example's worker does not answer")
            continue
        if u != n:
            down = [t["labels"].get("node", "?") + ": " + t.get("lastError", "")
                    for t in targets if t["labels"]["job"] == j and t["health"] != "up"]
            problems.append(f"targets of job {j}: {u}/{n} up at the end ({'; '.join(down)})")
    if len(jobs) < 6:
        problems.append(f"only {len(jobs)} jobs scraped: {sorted(jobs)}")

    # What fired: Prometheus's ALERTS series, firing, over the whole run.
    series = get("query_range", query='ALERTS{alertstate="firing"}',
                 start=f"{start:.3f}", end=f"{end:.3f}", step=f"{STEP}s")["result"]
    fired = []
    for s in series:
        m = s["metric"]
        ts = [float(v[0]) for v in s["values"]]
        fired.append((m["alertname"], m, min(ts), max(ts)))
    fired.sort(key=lambda f: (f[2], f[0]))
    still = get("alerts")["alerts"]
    print(f"alerts that fired ({len(fired)}):")
    for name, m, first, last in fired:
        where = ", ".join(f"{k}={m[k]}" for k in ("node", "job") if k in m)
        resolved = not any(a["labels"]["alertname"] == name and all(
            a["labels"].get(k) == m.get(k) for k in ("node", "job")) for a in still)
        print(f"  {name}{' {' + where + '}' if where else ''}: firing {hms(first)}..{hms(last)} UTC"
              f", {'resolved' if resolved else 'still firing (the clocks: below)' if name == CLOCK else 'STILL FIRING'}")
    for name, labels in REQUIRED:
        if not any(f[0] == name and all(f[1].get(k) == v for k, v in labels.items())
                   and loss_start - STEP <= f[2] <= loss_end + STEP for f in fired):
            problems.append(f"{name} {labels or ''} did not fire while {lost} was lost")
    for name, m, first, _ in fired:
        if first < loss_start - STEP and name != CLOCK:
            problems.append(f"{name} {m} fired at {hms(first)}, before the node loss: the cluster was whole")
    # The clocks: which nodes' kernels are unsynchronised, against where the alert is active.
    unsynced, status = host_clock_unsynchronised()
    nodes = sorted({t["labels"].get("node") for t in targets if t["labels"]["job"] == "node"})
    expect = sorted(n for n in nodes if n == lost or unsynced)
    clock = {a["labels"].get("node"): a["state"] for a in still if a["labels"]["alertname"] == CLOCK}
    print(f"clocks: this host's kernel says {'un' if unsynced else ''}synchronised (adjtimex status "
          f"{status:#x}), {lost} (the VM) reaches no NTP server; {CLOCK} "
          + (", ".join(f"{n} {st}" for n, st in sorted(clock.items())) or "active nowhere"))
    if not nodes:
        problems.append("no node exporter targets: the clock alert cannot be judged")
    elif sorted(clock) != expect:
        problems.append(f"{CLOCK} is active for {sorted(clock) or 'no node'}; the kernels say "
                        f"{expect or 'no node'} (unsynchronised)")
    for a in still:
        if a["labels"]["alertname"] == CLOCK:
            continue
        problems.append(f"{a['labels']['alertname']} {a['labels']} still {a['state']} at the end "
                        f"({RESOLVE_FOR}s after the checks passed)")
    print(f"judged at {hms(end)} UTC ({end - checks_done:.0f}s after the checks passed)")
finally:
    p.terminate()
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()

if problems:
    for pr in problems:
        print("e2e-prometheus: " + pr, file=sys.stderr)
    sys.exit(1)
print("prometheus: ok")
