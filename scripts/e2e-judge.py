#!/usr/bin/env python3
"""make e2e's judge of `imgbuild up --check --json`: the fields, not English grepped from a log.

usage: e2e-judge.py KIND up.json
  KIND  mixed   node1's image in QEMU among containers: every data-path phase, with the VM in it
        scram   containers with SCRAM clients, and a network partition (`up --partition`)

`up` already exits 1 when a check fails; this proves that each phase the run must have was run
(a skipped phase would pass silently) and that its figures say what they must. Prints the
figures it judged; exits 1 naming every requirement that failed.
"""
import json
import re
import sys

kind, path = sys.argv[1], sys.argv[2]
with open(path) as f:
    up = json.load(f)
phases = {p["name"]: p for p in up["phases"]}
problems = []


def need(cond, what):
    if not cond:
        problems.append(what)


def lines(name):
    return phases.get(name, {}).get("lines", [])


def has(name, pattern):
    """A line of phase `name` matching `pattern` (a regular expression)."""
    found = next((l for l in lines(name) if re.search(pattern, l)), None)
    need(found is not None, f"{name}: no line matching {pattern!r}")
    return found


need(up["check"] and up["ok"], f"up judged the cluster not ok: {up['failures']}")
for p in up["phases"]:
    need(not p["failures"], f"phase {p['name']}: {p['failures']}")

common = ["firewall", "versions", "metrics", "kafka round trip", "kafka refusals", "zookeeper refusals",
          "storm topology", "topology killed"]
if kind == "mixed":
    want = ["the VM among containers"] + common + ["node loss and rejoin"]
    need(up["runtime"] == "mixed" and up["vms"] == ["node1"],
         f"runtime {up['runtime']} with VMs {up['vms']}, expected mixed with node1")
else:
    want = common + ["network partition", "after the stay"]
for name in want:
    need(name in phases, f"phase {name!r} was not run")

figures = []
# The topology phase as operators do it (issue 32): the recipe's topics created the way `imgbuild
# apply` creates them (the cluster is new: both are created), the example submitted the way
# `imgbuild submit` submits a directory.
for topic in ("sentences", "word-counts"):
    has("storm topology", r"^the recipe's topic created as `imgbuild apply` does: create topic " + topic
        + r": 3 partitions, replication factor 3, min.insync.replicas=2$")
figures.append(has("storm topology", r"^submit: python-wordcount ACTIVE \d+s after `storm jar` on node\d$"))
# The example's worker's own Prometheus endpoint (issue 31): its tuples counted, none failed,
# its spout awake while Storm says ACTIVE.
figures.append(has("storm topology", r"^storm workers: python-wordcount on [1-9]\d* of 6 slot endpoints \(.*\): [1-9]\d* tuples emitted \(sampled\), 0 failed; its spout asleep for an inactive topology \d+ ms of 10 s$"))
# ZooKeeper's Prometheus endpoint on every member (the VM's too), the leader's gauge on one.
figures.append(has("metrics", r"^zookeeper: 3/3 endpoints scraped; the leader's gauges on node\d$"))
# The JMX exporter's agent in every broker, nimbus and supervisor: one active controller that
# counts every broker; the leader nimbus's summary counts every nimbus and supervisor.
figures.append(has("metrics", r"^kafka: 3/3 endpoints scraped; the active controller on node\d counts 3 brokers$"))
figures.append(has("metrics", r"^storm: 3/3 nimbus and 3/3 supervisor endpoints scraped; "
                              r"the leader's summary \(node\d\): 1 leader, 3 nimbuses, 3 supervisors$"))
# The distribution's node exporter on every node, answering as its own host (the VM's too).
figures.append(has("metrics", r"^node: 3/3 node exporter endpoints scraped; each answers as its own host$"))
for port in (7000, 7071, 7072, 7073, 9100):
    has("firewall", rf" {port} open")
if kind == "mixed":
    figures.append(has("the VM among containers", r"^node1 \(VM, its image in QEMU\): each check first passed"))
    has("the VM among containers", r"logs in over SSH")
    figures.append(has("kafka round trip", r"produced through node1 \(VM\)'s broker"))
    figures.append(has("kafka round trip", r"1000/1000 acknowledged messages consumed, 0 lost"))
    figures.append(has("kafka round trip", r"^node1 \(VM\)'s broker 1 in the ISR of (\d+)/\1 partitions"))
    figures.append(has("node loss and rejoin", r"^node1 powered off \(QEMU killed"))
    figures.append(has("node loss and rejoin", r"^node1 booted again from the same image and disk, healthy after"))
    figures.append(has("node loss and rejoin", r"both rounds\): 2000/2000 acknowledged messages consumed, 0 lost"))
    figures.append(has("node loss and rejoin", r"after the rejoin: zookeeper .*node1=(leader|follower).*ISR sizes \[3, 3, 3\]"))
    figures.append(has("storm topology", r"words exactly"))
    for pattern in [r"client listener [0-9.:]*: a plaintext client refused",
                    r"a TLS client without a certificate refused",
                    r"another CA claiming CN=node1 refused", r"no ACL\) refused on topic"]:
        has("kafka refusals", pattern)
    has("storm topology", r"the recipe.s [0-9]* ACLs added")
    has("zookeeper refusals", r"zookeeper client port [0-9.:]*: a plaintext client refused")
    has("zookeeper refusals", r"another CA claiming CN=node[0-9] refused.*own certificate( \(a cluster node's\))? answered")
else:
    for pattern in [r"client listener [0-9.:]*: a plaintext client refused",
                    r"a TLS client without SCRAM credentials refused",
                    r"a wrong SCRAM password for User:[a-z-]* refused",
                    r"its SCRAM password, no ACL\) refused on topic",
                    r"inter-broker listener [0-9.:]*: .*another CA claiming CN=node1 refused"]:
        has("kafka refusals", pattern)
    has("storm topology", r"the recipe.s [0-9]* ACLs added")
    has("storm topology", r"words exactly")
    figures.append(has("kafka round trip", r"acknowledged messages consumed, 0 lost"))
    # The partition: the cut-off member named, out of every ISR, back in every ISR and a ZooKeeper
    # follower after the heal, nothing acknowledged lost, the majority serving through the cut.
    cut = has("network partition", r"^(node\d) cut off from .* with acks=all")
    figures.append(cut)
    victim = re.match(r"^(node\d)", cut).group(1) if cut else "node?"
    figures.append(has("network partition", r"^broker \d+ \(" + victim + r"\) left the ISR of every partition"))
    figures.append(has("network partition", r"^after the heal \(\d+s\): broker \d+ in every ISR again; zookeeper .*\b"
                       + victim + r"=follower"))
    figures.append(has("network partition", r"^through the partition: (\d+)/\1 acknowledged messages consumed, 0 lost, 0 corrupted"))
    served = has("network partition", r"sends acknowledged .*, (\d+) of them sent while the node was cut off")
    figures.append(served)
    need(served is None or int(re.search(r"(\d+) of them sent while", served).group(1)) > 0,
         "network partition: nothing sent while the node was cut off was acknowledged")
    figures.append(has("network partition", r"^KRaft leaders seen \(\d+ looks\)"))
    # The stay: the rehearsal's roll swapped every node's tree (node2 thrice: v2, broken v3, v2
    # again; the others once), and afterwards every node's health is whole and the topology's counts exact.
    swapped = has("after the stay", r"^stayed up \d+s; trees swapped: ")
    figures.append(swapped)
    if swapped:
        names = swapped.split("trees swapped: ")[1].split(", ")
        need(sorted(names) == ["node1", "node2", "node2", "node2", "node3"],
             f"after the stay: trees swapped {names}, expected node1 once, node2 three times, node3 once")
    for n in ("node1", "node2", "node3"):
        has("after the stay", "^" + n + r": health round ok")
    # Sentences fed while the roll swapped the nodes (every node's tree, so the topology's worker
    # moved at least once), counted exactly with all the others in the line after.
    during = has("after the stay", r"^topology during the stay: \d+ sentences fed with acks=all")
    figures.append(during)
    need(during is None or int(re.search(r"stay: (\d+) sentences", during).group(1)) >= 100,
         f"after the stay: fewer than 100 sentences fed during the roll: {during}")
    figures.append(has("after the stay", r"^topology after the stay: .*words exactly"))

for f in figures:
    if f:
        print(f"  {kind}: {f}", file=sys.stderr)
print(f"  {kind}: healthy after {up['healthy_after']:.0f} s; phases: " + ", ".join(
    f"{p['name']} {p['seconds']:.0f} s" for p in up["phases"]) if up["healthy_after"] else
      f"  {kind}: never healthy", file=sys.stderr)
if problems:
    print(f"e2e: {kind}: {len(problems)} requirement(s) not met:", file=sys.stderr)
    for p in problems:
        print(f"  {p}", file=sys.stderr)
    sys.exit(1)
