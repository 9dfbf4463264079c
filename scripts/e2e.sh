#!/usr/bin/env bash
# make e2e: the whole product against the fixture mirror, judged. Builds the fixtures and node1..3,
# boots them together (`imgbuild up --check`: each node's hostname and IP, ZooKeeper one leader and
# followers, every Kafka node seeing all voters, a Storm nimbus leader and every supervisor,
# /opt/python/bin/python3 running), then proves the checker can fail: the same cluster with node3's
# ZooKeeper peers at wrong addresses must be reported as broken, naming node3 and the check.
# Prints the time of each phase and records them in BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/fixtures.sh
. bench/lib.sh
recipe=$out/mirror/recipe.yaml
t=$(now); fixtures_prepare; p_fix=$(since "$t"); echo "phase fixtures: $p_fix s" >&2
mirror_serve
t=$(now)
ib -r "$recipe" lock
ib -r "$recipe" all >/dev/null
p_build=$(since "$t"); echo "phase build (3 nodes): $p_build s" >&2

t=$(now)
target/release/imgbuild -r "$recipe" up --check --timeout "${E2E_TIMEOUT:-1500}" | tee "$out/e2e-health.txt"
p_boot=$(since "$t"); echo "phase boot to healthy: $p_boot s" >&2

# The checker must be able to fail: node3's zoo.cfg (as an overlay) names wrong addresses for
# its two peers, so node3's ZooKeeper can never join the ensemble.
broken=$out/mirror/recipe-broken.yaml
mkdir -p "$out/mirror/broken-overlays/node3/etc/zookeeper"
sed -e 's/^\(server\.1=\)[0-9.]*/\1192.168.200.98/' -e 's/^\(server\.2=\)[0-9.]*/\1192.168.200.99/' \
    build/nodes/node3/rootfs/etc/zookeeper/zoo.cfg >"$out/mirror/broken-overlays/node3/etc/zookeeper/zoo.cfg"
grep -q '^server.1=192.168.200.98' "$out/mirror/broken-overlays/node3/etc/zookeeper/zoo.cfg"
sed 's|^  dir: \.\./overlays|  dir: broken-overlays|' "$recipe" >"$broken"
grep -q 'dir: broken-overlays' "$broken"
t=$(now)
ib -r "$broken" lock 2>/dev/null
ib -r "$broken" --images "$out/images-broken" --build-dir build/broken all >/dev/null
set +e
target/release/imgbuild -r "$broken" --images "$out/images-broken" --build-dir build/broken \
    up --check --timeout "${E2E_BROKEN_TIMEOUT:-420}" >/dev/null 2>"$out/e2e-broken.err"
rc=$?
set -e
p_neg=$(since "$t")
if [ "$rc" -ne 1 ] || ! grep -q 'node3: zookeeper' "$out/e2e-broken.err"; then
    echo "e2e: the checker did not report the broken node3 (exit $rc):" >&2
    cat "$out/e2e-broken.err" >&2
    exit 1
fi
echo "e2e: broken wiring detected as expected:" >&2
grep -A20 'cluster check failed' "$out/e2e-broken.err" >&2
echo "phase broken cluster (build + boot + judge): $p_neg s" >&2

total=$((p_fix + p_build + p_boot + p_neg))
section=$(printf '<!-- e2e:begin -->\n## End to end: `make e2e`\n\nMeasured %s on %s (%s cores, no KVM: QEMU software emulation), 3 VMs on one private network.\n\n| phase | time |\n|---|---|\n| fixtures (Debian base, components, mirror; cached after the first run) | %s s |\n| build node1..3 | %s s |\n| boot to healthy (`imgbuild up --check`) | %s s |\n| broken cluster detected (build + boot + judge) | %s s |\n| total | %s s (limit 35 min) |\n\nHealth at the end of the good run:\n\n```\n%s\n```\n<!-- e2e:end -->' \
    "$(date -u +%Y-%m-%d)" "$(uname -m)" "$(nproc)" "$p_fix" "$p_build" "$p_boot" "$p_neg" "$total" "$(cat "$out/e2e-health.txt")")
write_section e2e "$section"
echo "e2e: ok (${total}s)" >&2
