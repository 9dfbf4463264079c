#!/usr/bin/python3
# imgbuild-health: checks this node from the inside and reports on the console, one parseable
# line per check, until every check passes (or the time is up):
#   imgbuild-health node=NODE check=NAME ok=yes|no key=value ...
#   imgbuild-health node=NODE round=N failed=NAME,...|none     (at the end of every round)
#   imgbuild-health node=NODE summary=healthy|unhealthy round=N
# With --local [--timeout S] (imgbuild-slot, deciding whether a root slot being tried stays):
# only what this node is on its own — its disk and data partition, name, address, and each of its
# units started and none failed, twice in a row a minute apart — not the cluster's quorums.
# Reads /etc/imgbuild/health.json (written by imgbuild). Standard library only. No SSH needed:
# `imgbuild up` reads these lines from each VM's serial console.
import json
import os
import re
import socket
import ssl
import struct
import subprocess
import sys
import time

CONF = "/etc/imgbuild/health.json"


def say(node, **kv):
    fields = " ".join(f"{k}={v}" for k, v in kv.items())
    line = f"imgbuild-health node={node} {fields}"
    print(line, flush=True)  # the unit sends stdout to the journal and the console


# ZooKeeper's client TLS (health.json's zookeeper_tls: the cluster CA and this node's keystore),
# or None where ZooKeeper takes plaintext clients.
ZK_TLS = None


def zk_connect(host, port, timeout):
    """A connection to a ZooKeeper server's client port: TLS as this node when ZK_TLS is set."""
    raw = socket.create_connection((host, port), timeout=timeout)
    if not ZK_TLS:
        return raw
    try:
        return tls_context(ZK_TLS).wrap_socket(raw, server_hostname=host)
    except BaseException:
        raw.close()
        raise


def four_letter(host, port, cmd, timeout=5):
    with zk_connect(host, port, timeout) as s:
        s.sendall(cmd.encode())
        out = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                return out.decode(errors="replace")
            out += chunk


def zk_children(servers, path, timeout=5):
    """getChildren over ZooKeeper's own protocol (a read-only session, no watches)."""
    last = None
    for server in servers:
        host, _, port = server.partition(":")
        try:
            with zk_connect(host, int(port or 2181), timeout) as s:
                def send(payload):
                    s.sendall(struct.pack(">i", len(payload)) + payload)

                def recv():
                    n = struct.unpack(">i", read_exact(s, 4))[0]
                    return read_exact(s, n)

                send(struct.pack(">iqiqi", 0, 0, 10000, 0, 16) + b"\0" * 16 + b"\0")
                recv()
                p = path.encode()
                send(struct.pack(">ii", 1, 8) + struct.pack(">i", len(p)) + p + b"\0")
                r = recv()
                _xid, _zxid, err = struct.unpack(">iqi", r[:16])
                if err == -101:
                    return []
                if err != 0:
                    raise OSError(f"zookeeper error {err}")
                count = struct.unpack(">i", r[16:20])[0]
                out, at = [], 20
                for _ in range(max(count, 0)):
                    n = struct.unpack(">i", r[at:at + 4])[0]
                    out.append(r[at + 4:at + 4 + n].decode())
                    at += 4 + n
                send(struct.pack(">ii", 2, -11))  # close the session
                return sorted(out)
        except (OSError, struct.error) as e:
            last = e
    raise OSError(f"no ZooKeeper server answered: {last}")


def read_exact(s, n):
    b = b""
    while len(b) < n:
        chunk = s.recv(n - len(b))
        if not chunk:
            raise OSError("connection closed")
        b += chunk
    return b


DATA_MOUNT = "/var/lib/imgbuild"


def block_mb(name):
    with open(f"/sys/class/block/{name}/size") as f:
        return int(f.read()) * 512 >> 20


def partition(label):
    """The kernel name of the partition with GPT name `label` (udev's by-partlabel link), or None."""
    link = f"/dev/disk/by-partlabel/{label}"
    return os.path.basename(os.path.realpath(link)) if os.path.exists(link) else None


def disk_layout_mb():
    """The running root slot, the other slot, the data partition and the whole disk, in MiB
    (0: absent)."""
    dev = os.stat("/").st_dev
    block = os.path.realpath(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    me = os.path.basename(block)
    if os.path.exists(os.path.join(block, "partition")):
        block = os.path.dirname(block)
    slots = [partition(p) for p in ("imgbuild-root-a", "imgbuild-root-b")]
    other = next((p for p in slots if p and p != me), None)
    data = partition("imgbuild-data")
    return (block_mb(me), block_mb(other) if other else 0, block_mb(data) if data else 0,
            block_mb(os.path.basename(block)))


def data_state():
    """(ok, fields) of the data partition: mounted (not the root), its identity this image's."""
    try:
        mounted = os.stat(DATA_MOUNT).st_dev != os.stat("/").st_dev
        with open("/usr/lib/imgbuild/identity") as f:
            want = f.read()
        try:
            with open(os.path.join(DATA_MOUNT, "identity")) as f:
                have = f.read()
        except FileNotFoundError:
            have = ""
        fields = {"mounted": "yes" if mounted else "no",
                  "identity": "this-node" if have == want else ("none" if not have else "other")}
        return mounted and have == want, fields
    except OSError as e:
        return False, {"error": type(e).__name__}


def varint(n):
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        if not n:
            return out + bytes([b])
        out += bytes([b | 0x80])


class Reader:
    """Kafka's wire types, read from one response."""

    def __init__(self, b):
        self.b, self.i = b, 0

    def take(self, n):
        v = self.b[self.i:self.i + n]
        if len(v) < n:
            raise ValueError("short response")
        self.i += n
        return v

    def i16(self):
        return struct.unpack(">h", self.take(2))[0]

    def i32(self):
        return struct.unpack(">i", self.take(4))[0]

    def i64(self):
        return struct.unpack(">q", self.take(8))[0]

    def uvarint(self):
        shift = n = 0
        while True:
            b = self.take(1)[0]
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return n

    def compact_string(self):
        n = self.uvarint() - 1
        return None if n < 0 else self.take(n).decode()

    def tagged_fields(self):
        for _ in range(self.uvarint()):
            self.uvarint()
            self.take(self.uvarint())


def tls_context(tls):
    """A client context for the cluster's TLS listeners: the cluster CA, the node's own
    certificate (the controllers require one), the peer's IP checked against its SANs."""
    ctx = ssl.create_default_context(cafile=tls["ca"])
    ctx.load_cert_chain(tls["keystore"])
    return ctx


def describe_quorum(address, timeout=10, tls=None):
    """KRaft's DescribeQuorum (API key 55, version 0: KIP-595, answered by every KRaft controller
    since Kafka 3.3) for __cluster_metadata-0, straight over the wire: no JVM, which under
    software emulation takes minutes per run. Returns (leader id, {voter id: log end offset})."""
    host, _, port = address.rpartition(":")
    topic = b"__cluster_metadata"
    # Flexible request: header v2 (key, version, correlation id, client id, no tags), then
    # topics[{name, partitions[{index, no tags}], no tags}], no tags. Compact arrays: length + 1.
    body = varint(2) + varint(len(topic) + 1) + topic + varint(2) + struct.pack(">i", 0) + b"\0\0\0"
    client = b"imgbuild-health"
    req = struct.pack(">hhih", 55, 0, 1, len(client)) + client + b"\0" + body
    with socket.create_connection((host, int(port)), timeout=timeout) as raw:
        s = tls_context(tls).wrap_socket(raw, server_hostname=host) if tls else raw
        s.sendall(struct.pack(">i", len(req)) + req)
        r = Reader(read_exact(s, struct.unpack(">i", read_exact(s, 4))[0]))
    r.i32()  # correlation id
    r.tagged_fields()
    if (err := r.i16()) != 0:
        raise OSError(f"kafka error {err}")
    leader, voters = None, {}
    for _ in range(r.uvarint() - 1):
        r.compact_string()
        for _ in range(r.uvarint() - 1):
            r.i32()
            if (err := r.i16()) != 0:
                raise OSError(f"kafka error {err}")
            leader = r.i32()
            r.i32()  # leader epoch
            r.i64()  # high watermark
            for _ in range(r.uvarint() - 1):
                vid = r.i32()
                voters[vid] = r.i64()
                r.tagged_fields()
            for _ in range(r.uvarint() - 1):  # observers
                r.i32()
                r.i64()
                r.tagged_fields()
            r.tagged_fields()
        r.tagged_fields()
    return leader, voters


def unit_state(unit):
    """systemd's word for a unit (active, activating, failed, ...), to say why a check fails."""
    try:
        return subprocess.run(["systemctl", "is-active", unit], capture_output=True, text=True,
                              timeout=20).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def unit_fields(unit, key="unit"):
    """Why a service's check fails, for a slow node's watcher: the unit's state and for how many
    seconds it has been in it (`since`), e.g. unit=activating since=95s."""
    fields = {key: unit_state(unit)}
    try:
        out = subprocess.run(["systemctl", "show", unit, "-p", "StateChangeTimestampMonotonic"],
                             capture_output=True, text=True, timeout=20).stdout
        changed = int(out.strip().split("=", 1)[1]) / 1e6
        with open("/proc/uptime") as f:
            now = float(f.read().split()[0])
        if changed > 0:
            fields[key + "_since" if key != "unit" else "since"] = "%ds" % (now - changed)
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        pass
    return fields


def units_state(units):
    """(ok, fields): every unit started this boot (it has been active) and none failed.

    Restarts are reported, not judged: a node alone (its peers down or being rolled) sees Storm's
    daemons and even the broker restart while they look for a quorum; whether the node serves
    with its peers is the cluster's health (`imgbuild up --check`, the roll's gates)."""
    bad, restarts, final = {}, {}, False
    for unit in units:
        try:
            out = subprocess.run(["systemctl", "show", unit, "-p", "ActiveState", "-p", "SubState",
                                  "-p", "NRestarts", "-p", "ActiveEnterTimestampMonotonic",
                                  "-p", "ConditionResult", "-p", "ConditionTimestampMonotonic"],
                                 capture_output=True, text=True, timeout=20).stdout
            p = dict(l.split("=", 1) for l in out.splitlines() if "=" in l)
        except (OSError, subprocess.SubprocessError):
            p = {}
        name = unit.removesuffix(".service")
        state = p.get("ActiveState", "unknown")
        started = int(p.get("ActiveEnterTimestampMonotonic", "0") or 0) > 0
        # Checked and skipped by its condition (kafka-format.service on formatted storage).
        skipped = (p.get("ConditionResult") == "no"
                   and int(p.get("ConditionTimestampMonotonic", "0") or 0) > 0 and state == "inactive")
        if skipped:
            continue
        if int(p.get("NRestarts", "0") or 0):
            restarts[name] = p["NRestarts"]
        if state == "failed":
            final = True
        if state == "failed" or not started or state not in ("active", "activating", "reloading"):
            bad[name] = f"{state}/{p.get('SubState', '?')}" + ("" if started else "/never-started")
    fields = {"units": len(units)}
    if bad:
        fields["not_running"] = ",".join(f"{k}:{v}" for k, v in sorted(bad.items()))
    if restarts:
        fields["restarts"] = ",".join(f"{k}:{v}" for k, v in sorted(restarts.items()))
    if final:
        # systemd gave up on a unit: no waiting makes this boot a good one.
        fields["final"] = "yes"
    return not bad, fields


def node_checks(c):
    """Yield (check, ok, fields) for what needs no service: the disk, the data partition, the
    name and the address."""
    # A container (imgbuild up --runtime container) has no disk of its own.
    if not os.path.exists("/run/systemd/container"):
        try:
            root, slot_b, data, disk = disk_layout_mb()
            # Two root slots of one size and the data partition on the rest of the disk
            # (systemd-repart at first boot).
            yield "disk", slot_b >= root > 0 and data > 0, {
                "root_mb": root, "slot_b_mb": slot_b, "data_mb": data, "disk_mb": disk}
        except (OSError, ValueError) as e:
            yield "disk", False, {"error": type(e).__name__}
    # The services' state on the data partition (a kept directory in a container).
    ok, fields = data_state()
    if not ok:
        fields.update(unit_fields("imgbuild-data.service"))
    yield "data", ok, fields
    host = socket.gethostname()
    yield "hostname", host == c["hostname"], {"value": host}
    try:
        addrs = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True,
                               text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        addrs = ""
    has_ip = any(f" {c['ip']}/" in line for line in addrs.splitlines())
    yield "ip", has_ip, {"value": c["ip"] if has_ip else "missing"}


def check_local(c):
    """Yield (check, ok, fields) for what this node is on its own (imgbuild-slot's verdict)."""
    yield from node_checks(c)
    ok, fields = units_state(c.get("units", []))
    yield "units", ok, fields


def check_all(c):
    """Yield (check, ok, fields) for every check this node's roles call for."""
    # First: the checks that need no service, so they are on the console early.
    yield from node_checks(c)
    if c.get("zookeeper"):
        try:
            srvr = four_letter(c["ip"], c["zookeeper"]["client_port"], "srvr")
            mode = next((l.split(":", 1)[1].strip() for l in srvr.splitlines()
                         if l.startswith("Mode:")), "unknown")
        except OSError:
            mode = "down"
        ok = mode in ("leader", "follower", "standalone")
        fields = {"mode": mode}
        if not ok:
            fields.update(unit_fields("zookeeper.service"))
        yield "zookeeper", ok, fields
    if c.get("kafka") and c["kafka"].get("mode") == "zookeeper":
        k = c["kafka"]
        try:
            ids = zk_children(k["zookeeper"], k["brokers_path"])
            yield "kafka", len(ids) >= k["brokers"] and str(k["broker_id"]) in ids, {
                "brokers": ",".join(sorted(ids, key=int)) or "none"}
        except (OSError, ValueError):
            yield "kafka", False, {"zookeeper": "unreachable"}
    elif c.get("kafka"):
        k = c["kafka"]
        try:
            leader, voters, last = None, {}, None
            for address in k.get("controllers") or [k["controller"]]:
                try:
                    leader, voters = describe_quorum(address, tls=k.get("tls"))
                    break
                except (OSError, ValueError, struct.error) as e:
                    last = e  # not the leader, or not up: ask the next voter
            else:
                raise OSError(f"no controller answered: {last}")
            ids = sorted(voters)
            end = voters.get(leader, 0)
            # A voter the leader has never heard from has end offset -1: not caught up.
            behind = [v for v, o in voters.items() if o < 0]
            lag = max((end - o for o in voters.values() if o >= 0), default=0)
        except (OSError, ValueError, struct.error):
            ids, leader, lag, behind = [], None, 0, []
        want = sorted(k["voters"])
        # Every configured voter listed (static voters are listed even when down), a leader, and
        # every voter's log known and within 1000 of the leader's.
        ok = (ids == want and leader is not None and leader >= 0 and not behind
              and lag <= 1000)
        fields = {"voters": ",".join(map(str, ids)) or "none",
                  "leader": leader if leader is not None and leader >= 0 else "none",
                  "max_lag": lag, "unheard": ",".join(map(str, behind)) or "none"}
        if not ok:
            fields.update(unit_fields("kafka.service"))
            fields.update(unit_fields("kafka-format.service", "format"))
        yield "kafka", ok, fields
    if c.get("storm"):
        s = c["storm"]
        try:
            root = s["root"]
            nimbuses = zk_children(s["zookeeper"], f"{root}/nimbuses")
            supervisors = zk_children(s["zookeeper"], f"{root}/supervisors")
            latch = zk_children(s["zookeeper"], f"{root}/leader-lock")
            ok = bool(nimbuses) and bool(latch) and len(supervisors) >= s["supervisors"]
            fields = {"nimbuses": len(nimbuses), "leader_latch": len(latch),
                      "supervisors": len(supervisors)}
            if not ok:
                fields.update(unit_fields("storm-supervisor.service", "supervisor"))
            yield "storm", ok, fields
        except OSError:
            yield "storm", False, {"zookeeper": "unreachable"}
    if c.get("python"):
        try:
            v = subprocess.run([c["python"], "-c",
                                "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                               capture_output=True, text=True, timeout=60)
            version = v.stdout.strip()
            yield "python", v.returncode == 0 and bool(version), {"version": version or "none"}
        except (OSError, subprocess.SubprocessError):
            yield "python", False, {"version": "none"}


def main(argv):
    global ZK_TLS
    with open(CONF) as f:
        c = json.load(f)
    ZK_TLS = c.get("zookeeper_tls")
    node = c["node"]
    local = "--local" in argv
    timeout = c.get("timeout_seconds", 1800)
    if "--timeout" in argv:
        timeout = int(argv[argv.index("--timeout") + 1])
    checks = check_local if local else check_all
    # --local: healthy only when every round for a minute passes.
    settle = 60 if local else 0
    deadline = time.monotonic() + timeout
    rnd, passed_at = 0, None
    while True:
        rnd += 1
        results = []
        for name, ok, fields in checks(c):  # each line as soon as its check is done
            say(node, check=name, ok="yes" if ok else "no", round=rnd, **fields)
            results.append((name, ok, fields))
        failed = [name for name, ok, _ in results if not ok]
        say(node, round=rnd, failed=",".join(failed) or "none")
        if not failed:
            passed_at = passed_at if passed_at is not None else time.monotonic()
            if time.monotonic() - passed_at >= settle:
                say(node, summary="healthy", round=rnd)
                return 0
        else:
            passed_at = None
        if time.monotonic() > deadline or any(f.get("final") for _, _, f in results):
            say(node, summary="unhealthy", round=rnd)
            return 1
        time.sleep(c.get("interval_seconds", 10) if not passed_at else max(1, settle / 2))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
