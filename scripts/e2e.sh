#!/usr/bin/env bash
# make e2e: the whole product against the fixture mirror, judged. Builds the fixtures and node1..3
# (a rebuild bit-identical, no private key where it must not be), then boots the mixed cluster:
# node1 from its image in QEMU among node2's and node3's containers (`imgbuild up --vm node1
# --check --json`: membership, firewall, versions, a Kafka round trip through the VM's broker with
# it in every ISR, the listeners' refusals, the Python Storm topology of examples/ with its word
# counts checked, the VM powered off and booted again from the same disk, rejoining), judged from
# the JSON by scripts/e2e-judge.py; then the cluster with
# SCRAM clients in containers, with a network partition, kept up for `imgbuild apply` of the
# cluster's topics and ACLs, the rolling-update rehearsal and `imgbuild submit`
# (scripts/e2e-roll.sh). Prints the time of each phase and records them in BENCHMARKS.md.
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
# rebuild over existing images). One node rebuilt proves it (every node's images come from the
# same code and the same secrets directory); the keys are searched in all three.
t=$(now)
cp images/node1/SHA256SUMS "$out/e2e-sums-node1"
rm -rf images/node1
ib -r "$recipe" build node1 >/dev/null 2>>"$out/e2e-build.log"
cmp -s images/node1/SHA256SUMS "$out/e2e-sums-node1" || {
    echo "e2e: node1: the rebuild with the same secrets differs:" >&2
    diff "$out/e2e-sums-node1" images/node1/SHA256SUMS >&2
    exit 1
}
echo "  rebuild with the same secrets: node1 bit-identical (SHA256SUMS)" >&2
for n in node1 node2 node3; do ib -r "$recipe" plan "$n" --json; ib -r "$recipe" plan "$n"; done >"$out/e2e-plans.txt" 2>&1
python3 scripts/pki-check.py "$out/mirror/recipe.secrets" images "$out/e2e-build.log" "$out/e2e-plans.txt" >&2
p_pki=$(since "$t"); echo "phase PKI checks: $p_pki s" >&2

# Day 2 (issue 29): node1's image in QEMU under Secure Boot, `imgbuild update` to a v2 through
# its other root slot (data kept), then to a broken v3 that the node refuses by itself.
p_update=0
if [ -z "${E2E_SKIP_GOOD:-}" ] && [ -z "${E2E_SKIP_UPDATE:-}" ]; then
    t=$(now)
    bash scripts/e2e-update.sh "$recipe" "$out" 2>"$out/e2e-update.txt" || { cat "$out/e2e-update.txt" >&2; exit 1; }
    cat "$out/e2e-update.txt" >&2
    rm -rf build/boot/node1
    p_update=$(since "$t"); echo "phase update (QEMU, Secure Boot): v1 -> v2 kept, broken v3 rolled back by the node: $p_update s" >&2
fi

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
if [ -z "${E2E_SKIP_GOOD:-}" ] && [ -z "${E2E_SKIP_MIXED:-}" ]; then # (E2E_SKIP_GOOD=1: only the builds and the PKI checks)
    # The booted image in the data path (issue 27): node1's raw image boots in QEMU (UEFI, shim,
    # GRUB, its own kernel) among node2's and node3's containers on one bridge, and every
    # data-path phase runs with it: the round trip through its broker (in every ISR), the
    # refusals on its listeners, the topology, its power-off (QEMU killed) and its return from
    # the same disk. Three VMs on two cores cannot start Kafka and Storm in time; one can. The
    # run is judged from `up --json`'s fields (scripts/e2e-judge.py), its report kept as a log.
    #
    # A real Prometheus (Debian's, extracted) watches it with the configuration and alert rules
    # the build generated (images/prometheus/), from inside up's network namespace (an address in
    # metrics.clients): from the end of up's round trip through node1's loss and return, and
    # after the checks (up --stay) until every alert resolved (issue 31).
    ssh_probe "$out/e2e-ssh-qemu.txt" &
    probe=$!
    rm -f build/up/staying build/up/up.pid
    set +e
    target/release/imgbuild -r "$recipe" up --vm node1 --check --stay --json --timeout "${E2E_MIXED_TIMEOUT:-1800}" \
        >"$out/e2e-mixed.json" 2>"$out/e2e-health.txt" &
    up=$!
    for _ in $(seq 120); do [ -s build/up/up.pid ] || ! kill -0 "$up" 2>/dev/null && break; sleep 1; done
    rm -rf "$out/prometheus-data"
    nsenter --net="/proc/$(cat build/up/up.pid 2>/dev/null || echo "$up")/ns/net" python3 scripts/e2e-prometheus.py \
        "$prom/prometheus" images/prometheus "$out/prometheus-data" "$up" "$out/e2e-health.txt" \
        build/up/staying node1 >"$out/e2e-prometheus.txt" 2>&1
    prom_rc=$?
    kill -INT "$up" 2>/dev/null
    wait "$up"
    rc=$?
    set -e
    ssh_judge "$out/e2e-ssh-qemu.txt" "mixed (node1 in QEMU)"
    if [ "$rc" -ne 0 ]; then
        echo "e2e: the mixed cluster's check failed (exit $rc):" >&2
        grep -v '^\[ *[0-9]*s\]' "$out/e2e-health.txt" | tail -60 >&2
        exit 1
    fi
    python3 scripts/e2e-judge.py mixed "$out/e2e-mixed.json"
    sed 's/^/  /' "$out/e2e-prometheus.txt" >&2
    if [ "$prom_rc" -ne 0 ]; then
        echo "e2e: the real Prometheus's account of the node loss failed (above: its reason)" >&2
        exit 1
    fi
    # What the plan says node1's kernel and kafka.service must have, against what the booted
    # image has (read over SSH while the cluster ran).
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
p_boot=$(since "$t"); echo "phase mixed cluster (node1 in QEMU, node2..3 containers): data path, topology, VM loss and return: $p_boot s" >&2

# The checker must be able to fail. It is proven without a cluster boot of its own (issue 28: fold
# phases that boot a whole cluster to prove one thing): `up`'s judgement on recorded health lines
# of broken nodes by the unit tests (vm::cluster: a ZooKeeper that never joins, two leaders, a
# missing voter or supervisor), and a live broken node by the rolling-update rehearsal below,
# whose v3 keeps node2's broker from starting: node2's own health round and the gates after it
# must fail, naming node2, and the roll stop there.
p_neg=0

# Kafka's clients by SCRAM (issue 16): the same cluster with `clients: scram` in containers — the
# round trip, the refusals on the SCRAM client listener (plaintext, TLS without SCRAM credentials,
# a wrong password, a user without ACL) and the Python topology as User:storm by its password. The
# loss of a node is left out (the mTLS run proved it; the wiring is the same). Its own build
# directory (its node trees and `up` state), sharing build/'s shared trees (the shared tree has no
# security settings in it: the same key, not gigabytes again), and its images kept only while
# their secrets are searched (disk: one node's at once).
e2e_scram() {
    local scram=$out/mirror/recipe-scram.yaml
    # SCRAM clients, and user rehearsal for the rolling-update rehearsal's own producer.
    python3 - "$recipe" "$scram" <<'EOF'
import sys
s = open(sys.argv[1]).read()
for old in ("    clients: mtls\n", "          - {group: python-wordcount, ops: [read]}\n"):
    assert old in s, old
s = s.replace("    clients: mtls\n", "    clients: scram\n", 1)
s = s.replace("          - {group: python-wordcount, ops: [read]}\n",
              "          - {group: python-wordcount, ops: [read]}\n"
              "      - name: rehearsal\n        allow:\n          - {topic: rehearsal, ops: [write, read, describe]}\n", 1)
open(sys.argv[2], "w").write(s)
EOF
    grep -q '^    clients: scram$' "$scram"
    ib -r "$scram" lock 2>/dev/null
    # The same CA and certificates; the users' passwords are made by the first build.
    rm -rf "$out/mirror/recipe-scram.secrets" build/scram "$out/images-scram"
    cp -a "$out/mirror/recipe.secrets" "$out/mirror/recipe-scram.secrets"
    mkdir -p build/scram
    ln -s ../common build/scram/common
    ln -s ../ssh build/scram/ssh # the demo user's key (`imgbuild ssh`, `roll`)
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
    # And the network partition (issue 27): node3's bridge port removed while a producer writes
    # with acks=all through node1, then put back; judged by `up` and by e2e-judge.py's fields.
    # Then the cluster stays up (--stay) for the rolling-update rehearsal (issue 30,
    # scripts/e2e-roll.sh), after which `up` checks every node's health and the topology again.
    rm -f build/scram/up/staying
    target/release/imgbuild -r "$scram" --build-dir build/scram up --runtime container --check --no-node-loss --partition \
        --stay --json --timeout "${E2E_CT_TIMEOUT:-900}" >"$out/e2e-scram.json" 2>"$out/e2e-scram.txt" &
    local up=$!
    set +e
    bash scripts/e2e-roll.sh "$scram" "$out" "$up" "$comps" 2>"$out/e2e-roll.txt"
    local roll_rc=$?
    kill -INT "$up" 2>/dev/null
    wait "$up"
    rc=$?
    set -e
    if [ "$roll_rc" -ne 0 ]; then
        # up's report first, the rehearsal's own account (ending with its reason) last: CI keeps
        # only the end of what a run printed.
        echo "e2e: scram: up's report:" >&2
        grep -v '^\[ *[0-9]*s\]' "$out/e2e-scram.txt" | tail -40 >&2
        echo "e2e: scram: the rolling-update rehearsal:" >&2
        cat "$out/e2e-roll.txt" >&2
        echo "e2e: scram: the rolling-update rehearsal failed (above: its reason)" >&2
        exit 1
    fi
    cat "$out/e2e-roll.txt" >&2
    if [ "$rc" -ne 0 ]; then
        echo "e2e: scram: the container check failed (exit $rc):" >&2
        grep -v '^\[ *[0-9]*s\]' "$out/e2e-scram.txt" | tail -60 >&2
        exit 1
    fi
    python3 scripts/e2e-judge.py scram "$out/e2e-scram.json"
    # With the cluster stopped, `apply` says so in one line (run in a network namespace of its
    # own: nothing leaves this machine).
    if unshare -n target/release/imgbuild -r "$scram" --build-dir build/scram apply >"$out/e2e-apply-down.out" 2>&1; then
        echo "e2e: scram: apply succeeded with the cluster stopped" >&2
        exit 1
    fi
    [ "$(wc -l <"$out/e2e-apply-down.out")" -eq 1 ] &&
        grep -Eq '^error: apply: the cluster is not running, or no Kafka node answered \(node1 |is not running any more' "$out/e2e-apply-down.out" || {
        echo "e2e: scram: apply with the cluster stopped did not say so in one line: $(cat "$out/e2e-apply-down.out")" >&2
        exit 1
    }
    echo "  apply with the cluster stopped: $(cut -c1-160 "$out/e2e-apply-down.out")..." >&2
    rm -rf build/scram "$out/images-scram"
}
p_scram=0
if [ -z "${E2E_SKIP_GOOD:-}" ] && [ -z "${E2E_SKIP_SCRAM:-}" ]; then
    t=$(now)
    e2e_scram
    p_scram=$(since "$t")
    echo "phase SCRAM clients and the partition (build + containers + judge): $p_scram s" >&2
fi

total=$((p_fix + p_build + p_pki + p_update + p_boot + p_neg + p_scram))
[ -z "${E2E_SKIP_GOOD:-}" ] || { echo "e2e: not a whole run (E2E_SKIP_GOOD: the builds and the PKI checks only, which passed); BENCHMARKS.md not updated" >&2; exit 0; }
# (E2E_SKIP_UPDATE, E2E_SKIP_MIXED, E2E_SKIP_SCRAM: one phase or another left out, for a developer)
skipped=$(for v in E2E_SKIP_UPDATE E2E_SKIP_MIXED E2E_SKIP_SCRAM; do [ -z "${!v:-}" ] || printf ' %s' "$v"; done)
[ -z "$skipped" ] || { echo "e2e: not a whole run (skipped:$skipped; the phases that ran passed, ${total}s); BENCHMARKS.md not updated" >&2; exit 0; }
# The reports without the watch's progress lines.
report() { grep -v '^\[ *[0-9]*s\]' "$1" | grep -v '^started \|^host: \|^stopped \|^note: KVM'; }
section=$(printf '<!-- e2e:begin -->\n## End to end: `make e2e`\n\nMeasured %s on %s (%s cores, no KVM: QEMU software emulation).\n\n| phase | time |\n|---|---|\n| fixtures (Debian base, components, mirror; cached after the first run) | %s s |\n| build node1..3 | %s s |\n| PKI: rebuild bit-identical, keys searched in every output | %s s |\n| update: node1 in QEMU under Secure Boot, `imgbuild update` to v2 (data kept), to a broken v3 (back on v2 by itself), refusals | %s s |\n| mixed cluster: node1 booted from its image in QEMU among node2..3 containers; round trip through its broker, refusals, topology, its power-off and return (`imgbuild up --vm node1 --check`) | %s s |\n| Kafka clients by SCRAM in containers: build, secrets searched, round trip, refusals, topology, network partition (`clients: scram`, `--partition`); then on the same cluster (`--stay`, `scripts/e2e-roll.sh`) `imgbuild apply` of topics and ACLs, the rolling-update rehearsal, `submit`/`topologies` | %s s |\n| total | %s s |\n\nThe mixed cluster (`up --vm node1 --check`; checks, then phases):\n\n```\n%s\n```\n\nThe SCRAM cluster'"'"'s phases:\n\n```\n%s\n```\n\nThe rolling-update rehearsal (v1 Kafka 4.3.1 → v2 Kafka 4.4.0 + broker heap, under a producer; then a broken v3):\n\n```\n%s\n```\n\nThe update phase:\n\n```\n%s\n```\n<!-- e2e:end -->' \
    "$(date -u +%Y-%m-%d)" "$(uname -m)" "$(nproc)" "$p_fix" "$p_build" "$p_pki" "$p_update" "$p_boot" "$p_scram" "$total" "$(report "$out/e2e-health.txt")" "$(python3 -c '
import json, sys
up = json.load(open(sys.argv[1]))
for p in up["phases"]:
    print("phase %s: %.0f s" % (p["name"], p["seconds"]))' "$out/e2e-scram.json")" "$(cat "$out/e2e-roll.txt")" "$(cat "$out/e2e-update.txt")")
write_section e2e "$section"
echo "e2e: ok (${total}s)" >&2
