#!/usr/bin/env bash
# make e2e: the whole product against the fixture mirror, judged. Builds the fixtures and node1..3,
# boots them together in QEMU (`imgbuild up --check`: each node's hostname, IP and disk, ZooKeeper
# one leader and followers, every Kafka node seeing all voters, a Storm nimbus leader and every
# supervisor, /opt/python/bin/python3 running), then in containers at native speed
# (`imgbuild up --runtime container --check`: the same, then the services' versions, a Kafka
# round trip, the Python Storm topology of examples/ with its word counts checked, and the loss
# and return of the node running the topology's worker, the topology still counting), then
# proves the checker can fail: the same cluster with node3's ZooKeeper peers at wrong addresses
# must be reported as broken, naming node3 and the check. Prints the time of each phase and records them in BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/fixtures.sh
. bench/lib.sh
recipe=$out/mirror/recipe.yaml
t=$(now); fixtures_prepare; p_fix=$(since "$t"); echo "phase fixtures: $p_fix s" >&2
mirror_serve
t=$(now)
ib -r "$recipe" lock
ib -r "$recipe" all >/dev/null 2>"$out/e2e-build.log"
p_build=$(since "$t"); echo "phase build (3 nodes): $p_build s" >&2
# The PKI (issue 16): a rebuild with the same secrets directory is bit-identical, and no private
# key is in any output but its own node's image. SHA256SUMS has every file's digest, so the first
# set is not kept beside the second (a node's images are gigabytes; the image tests cover a
# rebuild over existing images).
t=$(now)
for n in node1 node2 node3; do cp "images/$n/SHA256SUMS" "$out/e2e-sums-$n"; done
rm -rf images/node1 images/node2 images/node3
ib -r "$recipe" all >/dev/null 2>>"$out/e2e-build.log"
for n in node1 node2 node3; do
    cmp -s "images/$n/SHA256SUMS" "$out/e2e-sums-$n" || {
        echo "e2e: $n: the rebuild with the same secrets differs:" >&2
        diff "$out/e2e-sums-$n" "images/$n/SHA256SUMS" >&2
        exit 1
    }
done
echo "  rebuild with the same secrets: node1..3 bit-identical (SHA256SUMS)" >&2
for n in node1 node2 node3; do ib -r "$recipe" plan "$n" --json; ib -r "$recipe" plan "$n"; done >"$out/e2e-plans.txt" 2>&1
python3 scripts/pki-check.py "$out/mirror/recipe.secrets" images "$out/e2e-build.log" "$out/e2e-plans.txt" >&2
echo "phase PKI checks: $(since "$t") s" >&2

t=$(now)
# While a cluster runs: `imgbuild ssh node1 -- systemctl is-active kafka` as the demo user with the
# demo key, through up's namespace, until it says `active` (tried every 5 s; up ends the wait).
ssh_probe() { # outfile
    for _ in $(seq 200); do
        # In the same login: the OS tuning as the running node has it (kernel parameters, Kafka's
        # file limit), judged against the plan after a QEMU run.
        if target/release/imgbuild -r "$recipe" ssh node1 -- \
            'systemctl is-active kafka; /usr/sbin/sysctl -n vm.swappiness vm.max_map_count; systemctl show kafka -p LimitNOFILE --value' \
            >"$1.all" 2>"$1.err"; head -1 "$1.all" >"$1" && cat "$1.err" >>"$1" && grep -qx active "$1"; then
            tail -n +2 "$1.all" >"$1.tuning"
            return 0
        fi
        sleep 5
    done
}
ssh_judge() { # outfile phase
    kill "$probe" 2>/dev/null || true
    wait "$probe" 2>/dev/null || true
    if grep -qx active "$1"; then
        echo "  $2: imgbuild ssh node1 -- systemctl is-active kafka: active" >&2
    else
        echo "e2e: $2: imgbuild ssh node1 never answered 'active':" >&2
        cat "$1" >&2
        exit 1
    fi
}
if [ -z "${E2E_SKIP_GOOD:-}" ]; then # (E2E_SKIP_GOOD=1: only the broken cluster, for working on the checker)
    # Kafka's and Storm's checks are reported, not judged, in QEMU: under software emulation with
    # two host cores for three VMs the real broker took 550 s to reach quorum on two nodes and had
    # not started on the third after 1400 s, and with the real Storm daemons as well no nimbus had
    # registered in ZooKeeper 980 s after boot (health began at 780 s; measured 2026-12-02). The
    # container phase judges both, with the data path and the topology.
    ssh_probe "$out/e2e-ssh-qemu.txt" &
    probe=$!
    target/release/imgbuild -r "$recipe" up --check --ignore kafka --ignore storm --timeout "${E2E_TIMEOUT:-1200}" | tee "$out/e2e-health.txt"
    ssh_judge "$out/e2e-ssh-qemu.txt" QEMU
    # What the plan says node1's kernel and kafka.service must have, against what they have.
    want=$(target/release/imgbuild -r "$recipe" plan node1 --json 2>/dev/null | python3 -c '
import json, sys
os_ = json.load(sys.stdin)["os"]
sysctl = dict(os_["sysctl"])
print(sysctl["vm.swappiness"], sysctl["vm.max_map_count"], os_["limit_nofile"], sep="\n")')
    if [ "$(cat "$out/e2e-ssh-qemu.txt.tuning")" = "$want" ]; then
        echo "  QEMU: node1 has vm.swappiness, vm.max_map_count and kafka's LimitNOFILE as planned:" $want >&2
    else
        echo "e2e: QEMU: node1's tuning differs from the plan: want" $want "got:" >&2
        cat "$out/e2e-ssh-qemu.txt.tuning" "$out/e2e-ssh-qemu.txt.err" >&2
        exit 1
    fi
fi
p_boot=$(since "$t"); echo "phase boot to healthy (QEMU): $p_boot s" >&2

# The data path and a node's loss, in containers booting the same trees (real JVMs are far too
# slow for them under software emulation).
t=$(now)
if [ -z "${E2E_SKIP_GOOD:-}" ]; then
    ssh_probe "$out/e2e-ssh-containers.txt" &
    probe=$!
    target/release/imgbuild -r "$recipe" up --runtime container --check --timeout "${E2E_CT_TIMEOUT:-900}" |
        tee "$out/e2e-data.txt"
    ssh_judge "$out/e2e-ssh-containers.txt" containers
    # Issue 16, acceptance 1: with security on, the refusals were tried and seen (a skipped phase
    # would pass the judgement above silently).
    for want in 'client listener [0-9.:]*: a plaintext client refused' \
        'a TLS client without a certificate refused' 'another CA claiming CN=node1 refused' \
        'no ACL) refused on topic' 'the recipe.s [0-9]* ACLs added' \
        'zookeeper client port [0-9.:]*: a plaintext client refused' \
        'zookeeper client port .*another CA claiming CN=node[0-9] refused.*the node.s own certificate answered'; do
        grep -q "$want" "$out/e2e-data.txt" || { echo "e2e: no \"$want\" in the container check's report" >&2; exit 1; }
    done
fi
p_data=$(since "$t"); echo "phase containers: healthy, data path, topology, node loss and rejoin: $p_data s" >&2

# The checker must be able to fail: node3's zoo.cfg (as an overlay) has wrong addresses in its
# server list — its peers' and its own, so its ZooKeeper can neither reach the others nor bind its
# quorum ports, and never serves. (Wrong peer addresses alone are not reliably fatal: the other
# nodes, whose lists are right, may still connect to node3 and elect it.)
broken=$out/mirror/recipe-broken.yaml
mkdir -p "$out/mirror/broken-overlays/node3/etc/zookeeper"
sed -e 's/^\(server\.1=\)[0-9.]*/\1192.168.200.97/' -e 's/^\(server\.2=\)[0-9.]*/\1192.168.200.98/' \
    -e 's/^\(server\.3=\)[0-9.]*/\1192.168.200.99/' \
    build/nodes/node3/rootfs/etc/zookeeper/zoo.cfg >"$out/mirror/broken-overlays/node3/etc/zookeeper/zoo.cfg"
grep -q '^server.3=192.168.200.99' "$out/mirror/broken-overlays/node3/etc/zookeeper/zoo.cfg"
sed 's|^  dir: \.\./overlays|  dir: broken-overlays|' "$recipe" >"$broken"
grep -q 'dir: broken-overlays' "$broken"
t=$(now)
ib -r "$broken" lock 2>/dev/null
# The same PKI: node3 is broken only in its ZooKeeper server list.
rm -rf "$out/mirror/recipe-broken.secrets"
cp -a "$out/mirror/recipe.secrets" "$out/mirror/recipe-broken.secrets"
# Only node3 differs: build it alone (sharing build/'s common tree) and hard-link the good node1 and
# node2 images beside it — boots are snapshot=on, so nothing writes to them. This keeps the broken
# phase's disk use to one node's images (CI ran out of space with a second full set).
rm -rf build/broken "$out/images-broken"
mkdir -p "$out/images-broken"
cp -al images/node1 images/node2 "$out/images-broken/"
ib -r "$broken" --images "$out/images-broken" node3 >/dev/null
set +e
# In containers: the checker's judgement is the same, and it takes a minute instead of seven.
target/release/imgbuild -r "$broken" --images "$out/images-broken" \
    up --runtime container --check --timeout "${E2E_BROKEN_TIMEOUT:-180}" >/dev/null 2>"$out/e2e-broken.err"
rc=$?
set -e
# build/nodes/node3 is the broken tree now: put the good one back (its images made anew rather
# than beside the old ones: the same files, a node's worth of disk less at once).
rm -rf images/node3
ib -r "$recipe" build node3 >/dev/null
cmp -s images/node3/SHA256SUMS "$out/e2e-sums-node3" || { echo "e2e: node3 made again differs" >&2; exit 1; }
p_neg=$(since "$t")
if [ "$rc" -ne 1 ] || ! grep -q 'node3: zookeeper' "$out/e2e-broken.err" ||
    grep -q '^  node[12]: zookeeper' "$out/e2e-broken.err"; then
    echo "e2e: the checker did not report the broken node3 (exit $rc):" >&2
    cat "$out/e2e-broken.err" >&2
    exit 1
fi
echo "e2e: broken wiring detected as expected:" >&2
grep -A20 'cluster check failed' "$out/e2e-broken.err" >&2
echo "phase broken cluster (build + boot + judge): $p_neg s" >&2

rm -rf "$out/images-broken" build/broken

# Kafka's clients by SCRAM (issue 16): the same cluster with `clients: scram` in containers — the
# round trip, the refusals on the SCRAM client listener (plaintext, TLS without SCRAM credentials,
# a wrong password, a user without ACL) and the Python topology as User:storm by its password. The
# loss of a node is left out (the mTLS run proved it; the wiring is the same). Its own build
# directory (its node trees and `up` state), sharing build/'s shared trees (the shared tree has no
# security settings in it: the same key, not gigabytes again), and its images kept only while
# their secrets are searched (disk: one node's at once).
e2e_scram() {
    local scram=$out/mirror/recipe-scram.yaml
    sed 's/^    clients: mtls$/    clients: scram/' "$recipe" >"$scram"
    grep -q '^    clients: scram$' "$scram"
    ib -r "$scram" lock 2>/dev/null
    # The same CA and certificates; the users' passwords are made by the first build.
    rm -rf "$out/mirror/recipe-scram.secrets" build/scram "$out/images-scram"
    cp -a "$out/mirror/recipe.secrets" "$out/mirror/recipe-scram.secrets"
    mkdir -p build/scram
    ln -s ../common build/scram/common
    : >"$out/e2e-scram-build.log"
    for n in node1 node2 node3; do
        ib -r "$scram" --build-dir build/scram --images "$out/images-scram" "$n" >/dev/null 2>>"$out/e2e-scram-build.log"
        ib -r "$scram" --build-dir build/scram plan "$n" >"$out/e2e-scram-plan.txt" 2>&1
        ib -r "$scram" --build-dir build/scram plan "$n" --json >>"$out/e2e-scram-plan.txt" 2>&1
        python3 scripts/pki-check.py --scram "$out/mirror/recipe-scram.secrets" "$out/images-scram/$n" \
            "$out/e2e-scram-build.log" "$out/e2e-scram-plan.txt" >&2
        if [ "$n" = node1 ]; then # the salts derive from the secrets: a rebuild is bit-identical
            # (SHA256SUMS has every file's digest: the first set need not stay on disk beside it)
            cp "$out/images-scram/$n/SHA256SUMS" "$out/e2e-scram-sums"
            rm -rf "$out/images-scram/$n"
            ib -r "$scram" --build-dir build/scram --images "$out/images-scram" build --force "$n" >/dev/null 2>>"$out/e2e-scram-build.log"
            cmp -s "$out/images-scram/$n/SHA256SUMS" "$out/e2e-scram-sums" ||
                { echo "e2e: scram: node1's rebuild with the same secrets differs" >&2; exit 1; }
            echo "  scram: node1 rebuilt with the same secrets: bit-identical (SHA256SUMS)" >&2
        fi
        rm -rf "$out/images-scram/$n"
    done
    grep -q '^common   cached' "$out/e2e-scram-build.log" ||
        echo "e2e: scram: note: the shared tree was built again (its key has a security setting in it now): more disk" >&2
    target/release/imgbuild -r "$scram" --build-dir build/scram up --runtime container --check --no-node-loss \
        --timeout "${E2E_CT_TIMEOUT:-900}" | tee "$out/e2e-scram.txt"
    for want in 'client listener [0-9.:]*: a plaintext client refused' \
        'a TLS client without SCRAM credentials refused' 'a wrong SCRAM password for User:[a-z-]* refused' \
        'its SCRAM password, no ACL) refused on topic' 'inter-broker listener [0-9.:]*: .*another CA claiming CN=node1 refused' \
        'the recipe.s [0-9]* ACLs added' 'acknowledged messages consumed, 0 lost' 'words exactly'; do
        grep -q "$want" "$out/e2e-scram.txt" || { echo "e2e: scram: no \"$want\" in the container check's report" >&2; exit 1; }
    done
    rm -rf build/scram "$out/images-scram"
}
p_scram=0
if [ -z "${E2E_SKIP_GOOD:-}" ] && [ -z "${E2E_SKIP_SCRAM:-}" ]; then
    t=$(now)
    e2e_scram
    p_scram=$(since "$t")
    echo "phase SCRAM clients (build + containers + judge): $p_scram s" >&2
fi

total=$((p_fix + p_build + p_boot + p_data + p_neg + p_scram))
[ -z "${E2E_SKIP_GOOD:-}" ] || { echo "e2e: ok (broken cluster only; BENCHMARKS.md not updated)" >&2; exit 0; }
section=$(printf '<!-- e2e:begin -->\n## End to end: `make e2e`\n\nMeasured %s on %s (%s cores, no KVM: QEMU software emulation), 3 VMs on one private network.\n\n| phase | time |\n|---|---|\n| fixtures (Debian base, components, mirror; cached after the first run) | %s s |\n| build node1..3 | %s s |\n| boot to healthy in QEMU (`imgbuild up --check`) | %s s |\n| containers: healthy, versions, Kafka round trip, Storm topology, node loss and rejoin (`imgbuild up --runtime container --check`) | %s s |\n| broken cluster detected (build + containers + judge) | %s s |\n| Kafka clients by SCRAM: build, secrets searched, containers: round trip, refusals, topology (`clients: scram`) | %s s |\n| total | %s s (limit 35 min) |\n\nHealth at the end of the good run (QEMU):\n\n```\n%s\n```\n\nContainers: membership, then the data path and node loss:\n\n```\n%s\n```\n<!-- e2e:end -->' \
    "$(date -u +%Y-%m-%d)" "$(uname -m)" "$(nproc)" "$p_fix" "$p_build" "$p_boot" "$p_data" "$p_neg" "$p_scram" "$total" "$(cat "$out/e2e-health.txt")" "$(cat "$out/e2e-data.txt")")
write_section e2e "$section"
echo "e2e: ok (${total}s)" >&2
