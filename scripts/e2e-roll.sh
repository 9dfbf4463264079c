#!/usr/bin/env bash
# make e2e's rolling-update rehearsal (issue 30), on the SCRAM phase's container cluster while
# `imgbuild up --check --stay` keeps it up (the Python topology running):
#
#   v1  the cluster as built: Kafka 4.3.1.
#   v2  Kafka 4.4.0 (the fixture mirror's, from Maven Central like 4.3.1) and one config change
#       (every broker's heap 960 MiB): `imgbuild roll` must take every node, gated, while a
#       producer of this test's own (scripts/rehearsal/Rehearsal.java: Kafka's Java client,
#       acks=all, idempotent, 20 messages/s) writes numbered messages; then `roll --finalize`.
#       Judged: every acknowledged message read back (0 lost; duplicates counted), the
#       producer's longest stall and p99 acknowledgement latency during the roll next to before
#       it, every broker on 4.4.0 and metadata.version raised, each node's Kafka segment files
#       the same files after the roll (inode and birth time: kept, not re-replicated).
#   v3  v2 with node2's broker unable to start (an overlay server.properties with
#       num.network.threads=none): `roll node2` must stop at node2's gates after it, naming the gate; node3 untouched; the
#       cluster still serves (a round trip with acks=all); rolling node2 back to v2 (its tree
#       built again from v2, `roll node2`) must pass its gates again.
#   Then `roll --resubmit-example`: the example topology killed and submitted again (Storm's
#   upgrade across majors); up's check after the stay requires its counts exact again.
#
# usage: scripts/e2e-roll.sh SCRAM_RECIPE OUT UP_PID COMPONENTS  (the cluster of `up` on build/scram)
set -eEuo pipefail
recipe=$1
out=$2
up_pid=$3
comps=$4
dir=$(dirname "$recipe")
bd=build/scram
bin=target/release/imgbuild
log=$out/e2e-roll.log
: >"$log"
# The log's tail first and the reason last: CI keeps only the end of what a run printed.
fail() { echo "--- $log (tail)" >&2; tail -40 "$log" >&2; echo "e2e roll: $*" >&2; exit 1; }
# A command that fails outside fail()'s checks still says where (set -e would end silently).
trap 'echo "e2e roll: line $LINENO: a command failed (exit $?); the log: $log" >&2' ERR
producer=
trap '[ -z "$producer" ] || kill "$producer" 2>/dev/null || true' EXIT
ib() { "$bin" --cache-dir "$out/cache" --mirror "https://=$(cat "$out/server.url")" "$@"; }
now_ms() { date +%s%3N; }
t0=$(date +%s)

# Wait for the checks to pass and the stay to begin (or for up to end, which is a failure).
for _ in $(seq 900); do
    [ -f "$bd/up/staying" ] && break
    kill -0 "$up_pid" 2>/dev/null || fail "imgbuild up ended before its checks passed"
    sleep 2
done
[ -f "$bd/up/staying" ] || fail "up's checks did not pass within 30 min"
echo "  roll: the cluster is up and checked (v1, Kafka 4.3.1), the topology running: $(($(date +%s) - t0)) s" >&2

# The client of this test: the fixture Kafka's own jars, user rehearsal by its SCRAM password,
# the cluster CA as trust; run inside up's network namespace (its host address on the bridge).
libs=$out/rehearsal-libs
if [ ! -f "$libs/.done" ]; then
    rm -rf "$libs" && mkdir -p "$libs"
    tar -xzf "$comps/kafka.tgz" -C "$libs" --strip-components=2 --wildcards '*/libs/*.jar'
    touch "$libs/.done"
fi
secrets=${recipe%.yaml}.secrets
cat >"$out/rehearsal.properties" <<EOF
bootstrap.servers=192.168.200.151:9092,192.168.200.152:9092,192.168.200.153:9092
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="rehearsal" password="$(head -1 "$secrets/users/rehearsal.password")";
ssl.truststore.type=PEM
ssl.truststore.location=$PWD/$secrets/ca.crt
EOF
# Compiled once (java's single-file launch compiles at every start: 10-20 s each on this
# machine, and the rehearsal starts it about ten times).
classes=$out/rehearsal-classes
rm -rf "$classes" && mkdir -p "$classes"
javac -nowarn -d "$classes" -cp "$libs/*" scripts/rehearsal/Rehearsal.java || fail "compiling scripts/rehearsal/Rehearsal.java"
client() { # mode topic out|count
    local mode=$1
    shift
    nsenter --net="/proc/$(cat "$bd/up/up.pid")/ns/net" -- \
        java -Xmx256m -cp "$classes:$libs/*" Rehearsal "$mode" "$out/rehearsal.properties" "$@"
}
# The cluster's content as code (issue 32): `imgbuild apply` against this running cluster, with
# the recipe's topics (sentences and word-counts, which the topology check made the same way)
# and users' ACLs (added at first boot), then recipes that differ from it step by step:
#   a  one more topic `events` (3 partitions, retention.ms 7 days): the plan creates it, nothing
#      else; applied and read back;
#   b  events with 6 partitions and retention.ms 1 day, one more ACL (storm may read it) and one
#      more user, auditor, who may read it (clients: scram, so a SCRAM credential, from the
#      password this test puts in the secrets directory first): the plan names exactly those five
#      changes; auditor cannot log in before the apply and reads events after it; a second apply
#      has nothing to do;
#   c  events left out of the recipe: kept, not deleted (--allow-delete would name it);
#   d  events with 2 partitions: refused (Kafka cannot take partitions away), nothing changed.
t=$(date +%s)
python3 - "$recipe" <<'PY'
import sys
recipe = sys.argv[1]
s = open(recipe).read()
base = recipe[: -len(".yaml")]
topics = "    topics:\n"
acl = "          - {group: python-wordcount, ops: [read]}\n"
assert topics in s and acl in s
def events(partitions, retention):
    return (topics + f"      - {{name: events, partitions: {partitions}, replication_factor: 3, "
            f"configs: {{min.insync.replicas: 2, retention.ms: {retention}}}}}\n")
a = s.replace(topics, events(3, 604800000), 1)
rehearsal = "          - {topic: rehearsal, ops: [write, read, describe]}\n"
assert rehearsal in s
b = s.replace(topics, events(6, 86400000), 1).replace(acl, acl + "          - {topic: events, ops: [read]}\n", 1)
b = b.replace(rehearsal, rehearsal + "      - name: auditor\n        allow:\n          - {topic: events, ops: [read]}\n", 1)
d = s.replace(topics, events(2, 86400000), 1)
for name, text in (("a", a), ("b", b), ("c", s), ("d", d)):
    open(f"{base}-apply-{name}.yaml", "w").write(text)
PY
apply() { # which [args...]: imgbuild apply with recipe-scram-apply-WHICH.yaml (its secrets: the recipe's)
    local w=$1
    shift
    rm -rf "${recipe%.yaml}-apply-$w.secrets"
    ln -s "$(basename "${recipe%.yaml}").secrets" "${recipe%.yaml}-apply-$w.secrets"
    "$bin" -r "${recipe%.yaml}-apply-$w.yaml" --build-dir "$bd" apply "$@" >"$out/e2e-apply-$w.out" 2>&1
}
changes() { grep -E '^  [-+~] ' "$1" || true; }
apply a || fail "apply (a): $(tail -5 "$out/e2e-apply-a.out")"
[ "$(changes "$out/e2e-apply-a.out")" = "  + create topic events: 3 partitions, replication factor 3, min.insync.replicas=2, retention.ms=604800000" ] ||
    fail "apply (a): the plan is not exactly the new topic: $(cat "$out/e2e-apply-a.out")"
grep -q '^apply: 1 change made; read back: the cluster holds' "$out/e2e-apply-a.out" || fail "apply (a): $(tail -3 "$out/e2e-apply-a.out")"
# User auditor's password, as an operator may give one (apply makes one when there is none).
( umask 077 && head -c 24 /dev/urandom | base64 | tr '+/' '-_' >"$secrets/users/auditor.password" )
sed -e "s/username=\"rehearsal\" password=\"[^\"]*\"/username=\"auditor\" password=\"$(head -1 "$secrets/users/auditor.password")\"/" \
    "$out/rehearsal.properties" >"$out/auditor.properties"
grep -q 'username="auditor"' "$out/auditor.properties" || fail "auditor's client properties"
auditor_read() { # out: auditor reads topic events
    nsenter --net="/proc/$(cat "$bd/up/up.pid")/ns/net" -- \
        java -Xmx256m -cp "$classes:$libs/*" Rehearsal read "$out/auditor.properties" events "$1"
}
apply b --dry-run || fail "apply --dry-run (b): $(tail -5 "$out/e2e-apply-b.out")"
want_b='  + acl User:auditor READ on topic events
  + acl User:storm READ on topic events
  + user auditor: SCRAM-SHA-512 credential (its password: the secrets directory'"'"'s users/auditor.password)
  ~ topic events: partitions 3 -> 6
  ~ topic events: retention.ms 604800000 -> 86400000'
[ "$(changes "$out/e2e-apply-b.out" | LC_ALL=C sort)" = "$want_b" ] ||
    fail "apply --dry-run (b): the plan is not exactly the five changes: $(cat "$out/e2e-apply-b.out")"
grep -q 'dry run: nothing changed' "$out/e2e-apply-b.out" || fail "apply --dry-run (b): $(tail -2 "$out/e2e-apply-b.out")"
cp "$out/e2e-apply-b.out" "$out/e2e-apply-b-plan.out"
if auditor_read "$out/e2e-auditor-before.txt" >"$out/e2e-auditor-before.log" 2>&1; then
    fail "user auditor read topic events before apply gave it a credential"
fi
grep -q 'failed authentication due to: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512' \
    "$out/e2e-auditor-before.log" ||
    fail "auditor before apply: not refused for its credential: $(grep -v '^[[:space:]]*at ' "$out/e2e-auditor-before.log" | tail -3)"
apply b || fail "apply (b): $(tail -5 "$out/e2e-apply-b.out")"
grep -q '^apply: 5 changes made; read back: the cluster holds' "$out/e2e-apply-b.out" || fail "apply (b): $(tail -3 "$out/e2e-apply-b.out")"
auditor_read "$out/e2e-auditor-after.txt" >"$out/e2e-auditor-after.log" 2>&1 ||
    fail "user auditor could not read topic events after apply: $(grep -v '^[[:space:]]*at ' "$out/e2e-auditor-after.log" | tail -3)"
grep -qx 'end 0' "$out/e2e-auditor-after.txt" || fail "auditor read: $(tail -2 "$out/e2e-auditor-after.txt")"
apply b || fail "apply (b) again: $(tail -5 "$out/e2e-apply-b.out")"
grep -q '^apply: nothing to do' "$out/e2e-apply-b.out" || fail "apply (b) again was not a no-op: $(cat "$out/e2e-apply-b.out")"
apply c || fail "apply (c): $(tail -5 "$out/e2e-apply-c.out")"
grep -q '^  = topic events: not in the recipe, kept (--allow-delete deletes it)$' "$out/e2e-apply-c.out" ||
    fail "apply (c): events not kept: $(cat "$out/e2e-apply-c.out")"
[ -z "$(changes "$out/e2e-apply-c.out")" ] || fail "apply (c) changed something: $(cat "$out/e2e-apply-c.out")"
apply c --dry-run --allow-delete || fail "apply --dry-run --allow-delete (c): $(tail -5 "$out/e2e-apply-c.out")"
grep -q '^  - delete topic events (--allow-delete)$' "$out/e2e-apply-c.out" ||
    fail "apply --allow-delete (c) does not name events: $(cat "$out/e2e-apply-c.out")"
rc=0
apply d || rc=$?
[ "$rc" -ne 0 ] && grep -q '^  ! topic events: partitions 6 -> 2 refused' "$out/e2e-apply-d.out" &&
    grep -q 'refused: nothing changed' "$out/e2e-apply-d.out" ||
    fail "apply (d): fewer partitions not refused (exit $rc): $(cat "$out/e2e-apply-d.out")"
echo "  apply: (a) topic events created, read back; (b) exactly 5 changes planned (partitions 3 -> 6, retention.ms, two ACLs, user auditor's SCRAM credential) and made, auditor refused before (invalid credentials) and reading events after, a second apply had nothing to do; (c) events out of the recipe kept (--allow-delete --dry-run names it); (d) 6 -> 2 partitions refused: $(($(date +%s) - t)) s" >&2
sed 's/^/    /' "$out/e2e-apply-b-plan.out" >&2

# v2 and v3, beside the recipe, with its secrets (the same PKI and passwords).
for v in v2 v3; do
    rm -rf "${recipe%.yaml}-$v.secrets"
    cp -a "${recipe%.yaml}.secrets" "${recipe%.yaml}-$v.secrets"
done
python3 - "$recipe" <<'EOF'
import sys
recipe = sys.argv[1]
s = open(recipe).read()
base = recipe[: -len(".yaml")]
for old in ("  kafka:\n    version: 4.3.1\n", "    controller_port: 9093\n    heap_mb: 1024\n",
            "  formats: [raw, qcow2, seed-iso]", "overlays:\n  dir: ../overlays"):
    assert old in s, old
s = s.replace("  formats: [raw, qcow2, seed-iso]", "  formats: [raw]")
v2 = s.replace("  kafka:\n    version: 4.3.1\n", "  kafka:\n    version: 4.4.0\n", 1)
v2 = v2.replace("    controller_port: 9093\n    heap_mb: 1024\n", "    controller_port: 9093\n    heap_mb: 960\n", 1)
open(base + "-v2.yaml", "w").write(v2)
open(base + "-v3.yaml", "w").write(v2.replace("overlays:\n  dir: ../overlays", "overlays:\n  dir: roll-v3-overlays"))
EOF
v2=${recipe%.yaml}-v2.yaml
v3=${recipe%.yaml}-v3.yaml
rm -rf "$dir/roll-v3-overlays"
mkdir -p "$dir/roll-v3-overlays/node2/etc/kafka"
cp "$bd/nodes/node2/rootfs/etc/kafka/server.properties" "$dir/roll-v3-overlays/node2/etc/kafka/server.properties"
echo "num.network.threads=none" >>"$dir/roll-v3-overlays/node2/etc/kafka/server.properties"
# The trees only matter here (containers boot them); their raw images are removed once built.
build() { # recipe nodes...
    local r=$1; shift
    ib -r "$r" lock >>"$log" 2>&1 || fail "locking $r"
    ib -r "$r" --build-dir "$bd" --images "$out/images-roll" build "$@" >>"$log" 2>&1 || fail "building $* of $r"
    rm -rf "$out/images-roll"
}
t=$(date +%s)
build "$v2" node1 node2 node3
echo "  roll: v2 (Kafka 4.4.0, broker heap 960 MiB) built while v1 serves: $(($(date +%s) - t)) s" >&2

# The topic: 3 partitions, every one on every broker, min.insync.replicas 2 (made on node3 as its
# broker's own identity, a super user, on the listener its own tools use: the inter-broker one
# when clients are SCRAM).
"$bin" -r "$recipe" --build-dir "$bd" ssh node3 -- "sudo /usr/bin/env JAVA_HOME=/opt/java PATH=/opt/java/bin:/usr/bin:/bin \
    /opt/kafka/bin/kafka-topics.sh --bootstrap-server 192.168.200.153:9094 --command-config /etc/kafka/tls/client.properties \
    --create --topic rehearsal --partitions 3 --replication-factor 3 --config min.insync.replicas=2" >>"$log" 2>&1 ||
    fail "creating topic rehearsal"

# Segment files before: the round trip's topic (every broker holds each of its partitions). Kafka
# deletes files while find walks (another topic's, an index): a vanished name is no error.
segments() {
    for n in node1 node2 node3; do
        find "$bd/up/$n/data/kafka/data" -ignore_readdir_race -path '*imgbuild-check-*' -name '*.log' -printf "$n %P %i %T@\n" | sort
    done
}
segments >"$out/e2e-roll-segments-before.txt"
[ -s "$out/e2e-roll-segments-before.txt" ] || fail "no Kafka segment files of imgbuild-check in the nodes' data directories"

# Started directly (not through the function's subshell), so that $! is the JVM itself (nsenter
# execs it) and SIGTERM reaches the producer, which then flushes and closes.
nsenter --net="/proc/$(cat "$bd/up/up.pid")/ns/net" -- java -Xmx256m -cp "$classes:$libs/*" Rehearsal \
    produce "$out/rehearsal.properties" rehearsal "$out/e2e-roll-produced.txt" >>"$log" 2>&1 &
producer=$!
sleep 20
kill -0 "$producer" 2>/dev/null || fail "the producer ended by itself"
roll_start=$(now_ms)
t=$(date +%s)
"$bin" -r "$v2" --build-dir "$bd" roll --gate-timeout 300 --timeout 600 >"$out/e2e-roll-v2.out" 2>"$out/e2e-roll-v2.err" ||
    { cat "$out/e2e-roll-v2.out" "$out/e2e-roll-v2.err" >>"$log"; kill "$producer"; fail "roll to v2 failed"; }
roll_end=$(now_ms)
p_roll=$(($(date +%s) - t))
t=$(date +%s)
"$bin" -r "$v2" --build-dir "$bd" roll --finalize >"$out/e2e-roll-finalize.out" 2>>"$log" ||
    { cat "$out/e2e-roll-finalize.out" >>"$log"; kill "$producer"; fail "roll --finalize failed"; }
p_fin=$(($(date +%s) - t))
sleep 5
kill -TERM "$producer"
wait "$producer" || true
kill -0 "$producer" 2>/dev/null && fail "the producer did not end on SIGTERM"
client read rehearsal "$out/e2e-roll-read.txt" >>"$log" 2>&1 || fail "reading topic rehearsal back"
segments >"$out/e2e-roll-segments-after.txt"
grep -h '^roll: ' "$out/e2e-roll-v2.out" "$out/e2e-roll-v2.err" | grep -v '^roll: now:' >&2
grep -h '^finalize: ' "$out/e2e-roll-finalize.out" | grep -v 'can be\|to raise' >&2
python3 - "$out" "$roll_start" "$roll_end" "$p_roll" "$p_fin" <<'EOF' >&2 || fail "the rehearsal's judgement"
import re, sys
out, start, end, p_roll, p_fin = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
problems = []
acks, errs = {}, []
for l in open(f"{out}/e2e-roll-produced.txt"):
    f = l.split()
    if f and f[0] == "ack":
        acks[f[1]] = (int(f[2]), int(f[3]))
    elif f and f[0] == "err":
        errs.append(l.strip())
read = [l.strip() for l in open(f"{out}/e2e-roll-read.txt")]
assert read and read[-1].startswith("end "), "the reader did not finish"
read = read[:-1]
counts = {}
for v in read:
    counts[v] = counts.get(v, 0) + 1
lost = [n for n in acks if n not in counts]
dups = sum(c - 1 for c in counts.values() if c > 1)
print(f"  roll: producer (acks=all, idempotent, its own JVM): {len(acks)} acknowledged, {len(errs)} refused; "
      f"read back {len(read)}: {len(lost)} lost, {dups} duplicates")
if lost:
    problems.append(f"{len(lost)} acknowledged messages not read back, e.g. {sorted(lost, key=int)[:10]}")
if len(acks) < 1000:
    problems.append(f"only {len(acks)} messages acknowledged: the producer did not run through the roll")

def figures(lo, hi):
    w = sorted((s, a) for s, a in acks.values() if lo <= s < hi)
    if len(w) < 2:
        return None
    lat = sorted(a - s for s, a in w)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    ackt = sorted(a for _, a in w)
    stall = max(b - a for a, b in zip(ackt, ackt[1:]))
    return len(w), stall, p99, lat[-1]
before = figures(0, start)
during = figures(start, end)
for name, f in (("before the roll", before), ("during the roll", during)):
    if f is None:
        problems.append(f"no acknowledged messages {name}")
    else:
        print(f"  roll: {name}: {f[0]} messages, longest stall between acknowledgements {f[1]} ms, p99 acknowledgement latency {f[2]} ms (max {f[3]} ms)")
print(f"  roll: roll to v2 {p_roll} s, finalize {p_fin} s")
fin = open(f"{out}/e2e-roll-finalize.out").read()
brokers = re.findall(r"^finalize: (node\d): broker runs Kafka (\S+)", fin, re.M)
if sorted(brokers) != [("node1", "4.4.0"), ("node2", "4.4.0"), ("node3", "4.4.0")]:
    problems.append(f"brokers' versions after the roll: {brokers}")
m = re.search(r"^finalize: done: metadata.version (\S+) → (\S+)", fin, re.M)
if not m or not m.group(1).startswith("4.3") or not m.group(2).startswith("4.4"):
    problems.append(f"metadata.version not raised from 4.3 to 4.4: {m.group(0) if m else 'no done line'}")
else:
    print(f"  roll: metadata.version before {m.group(1)}, after finalize {m.group(2)}")
b = open(f"{out}/e2e-roll-segments-before.txt").read().split("\n")
a = set(open(f"{out}/e2e-roll-segments-after.txt").read().split("\n"))
kept = [l for l in b if l and l in a]
gone = [l for l in b if l and l not in a]
print(f"  roll: data kept: {len(kept)} of {len([l for l in b if l])} Kafka segment files of imgbuild-check the same files after the roll (node, path, inode, mtime)")
if gone:
    problems.append(f"segment files replaced or gone after the roll (re-replicated?): {gone[:5]}")
for p in problems:
    print(f"e2e roll: FAIL {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
EOF

# v3: node2's broker broken (a harmless roll passed on every node to v2). Its gates after it
# never pass, so they fail when the timeout ends: 45 s, the time they wait, is only how long
# the broken state is watched before the roll stops.
t=$(date +%s)
build "$v3" node2
rc=0
"$bin" -r "$v3" --build-dir "$bd" roll node2 --gate-timeout 45 >"$out/e2e-roll-v3b.out" 2>&1 || rc=$?
line=$(grep -m1 'roll stopped' "$out/e2e-roll-v3b.out" || true)
[ "$rc" -ne 0 ] && echo "$line" | grep -q '^error: roll stopped after node2: gate ' ||
    fail "roll node2 to the broken v3 did not stop at node2's gates after it (exit $rc): $(tail -5 "$out/e2e-roll-v3b.out")"
echo "  roll: v3: node2 refused: ${line#error: }" >&2
swaps=$(grep -c '^node3: swapping' "$out/e2e-scram.txt" || true)
[ "$swaps" = 1 ] || fail "node3 was swapped $swaps times (once expected: the roll to v2)"
client probe rehearsal 20 >>"$log" 2>&1 || fail "the cluster did not serve with node2 down (round trip)"
echo "  roll: with node2 down the cluster serves: 20 messages acks=all produced and read back; node3 untouched (on v2)" >&2
build "$v2" node2
"$bin" -r "$v2" --build-dir "$bd" roll node2 --gate-timeout 300 >"$out/e2e-roll-back.out" 2>&1 ||
    fail "rolling node2 back to v2 failed: $(tail -5 "$out/e2e-roll-back.out")"
grep -q 'gates before skipped: the last roll stopped at this node' "$out/e2e-roll-back.out" || fail "roll back: node2 not taken as the node the last roll stopped at"
echo "  roll: node2 rolled back to v2: $(grep -m1 '^roll: node2: gates after passed' "$out/e2e-roll-back.out")" >&2
echo "  roll: failing roll and its repair: $(($(date +%s) - t)) s" >&2

# Storm has no upgrade tool: after a roll across its major releases the topologies are submitted
# again. `roll --resubmit-example` does it for the image's example (nothing left to roll here):
# killed, built from the new image, submitted, ACTIVE; up's check after the stay then requires
# the counts of every sentence exact again (the resubmitted topology rebuilds them from the input).
t=$(date +%s)
"$bin" -r "$v2" --build-dir "$bd" roll --resubmit-example >"$out/e2e-roll-resubmit.out" 2>&1 ||
    fail "roll --resubmit-example failed: $(tail -5 "$out/e2e-roll-resubmit.out")"
grep -q '^roll: order: nothing to roll' "$out/e2e-roll-resubmit.out" || fail "resubmit: the nodes were not all current"
grep -q '^roll: resubmit: the example topology killed on node' "$out/e2e-roll-resubmit.out" ||
    fail "resubmit: the running example was not killed: $(grep '^roll: resubmit' "$out/e2e-roll-resubmit.out")"
active=$(grep -m1 '^roll: resubmit: python-wordcount ACTIVE ' "$out/e2e-roll-resubmit.out") ||
    fail "resubmit: no ACTIVE line: $(tail -5 "$out/e2e-roll-resubmit.out")"
echo "  roll: --resubmit-example: killed, then ${active#roll: resubmit: } ($(($(date +%s) - t)) s in all)" >&2

# Topologies from the operator's machine (issue 32): the one running listed, killed, and the
# example submitted again from this checkout's examples/python-wordcount (its jar built on a
# node with what the image holds); up's check after the stay then requires its counts exact.
t=$(date +%s)
"$bin" -r "$v2" --build-dir "$bd" topologies >"$out/e2e-topologies.out" 2>&1 || fail "topologies: $(tail -5 "$out/e2e-topologies.out")"
grep -Eq '^python-wordcount +ACTIVE ' "$out/e2e-topologies.out" || fail "topologies does not list python-wordcount ACTIVE: $(cat "$out/e2e-topologies.out")"
"$bin" -r "$v2" --build-dir "$bd" submit --kill python-wordcount >"$out/e2e-submit-kill.out" 2>&1 || fail "submit --kill: $(tail -5 "$out/e2e-submit-kill.out")"
"$bin" -r "$v2" --build-dir "$bd" topologies >"$out/e2e-topologies-2.out" 2>&1 || fail "topologies: $(tail -5 "$out/e2e-topologies-2.out")"
! grep -q '^python-wordcount ' "$out/e2e-topologies-2.out" || fail "python-wordcount still listed after submit --kill: $(cat "$out/e2e-topologies-2.out")"
"$bin" -r "$v2" --build-dir "$bd" submit examples/python-wordcount >"$out/e2e-submit.out" 2>"$out/e2e-submit.err" || fail "submit: $(tail -5 "$out/e2e-submit.err")"
[ "$(cat "$out/e2e-submit.out")" = python-wordcount ] || fail "submit printed $(cat "$out/e2e-submit.out"), not the topology's name"
active=$(grep -m1 '^submit: python-wordcount ACTIVE' "$out/e2e-submit.err") || fail "submit: no ACTIVE line: $(tail -5 "$out/e2e-submit.err")"
echo "  submit: topologies listed python-wordcount ACTIVE; --kill removed it ($(grep -m1 '^submit: python-wordcount killed' "$out/e2e-submit-kill.out" | sed 's/^submit: //')); submitted from the host: ${active#submit: } ($(($(date +%s) - t)) s in all)" >&2
