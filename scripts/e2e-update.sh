#!/usr/bin/env bash
# make e2e's update phase (issue 29): one node's image in QEMU under Secure Boot, updated in place
# through its other root slot, its data kept; then a deliberately broken image, which the node
# must refuse by itself (boot counter), going back to the good one.
#
#   v1: images/node1 as `make e2e` built it, booted with `imgbuild boot --secure-boot` on a disk
#       with room for slot B and the data partition; a marker written into Kafka's data
#       directory as user kafka.
#   v2: one recipe change (node1's broker heap 896 MiB): `imgbuild update node1` must exit 0;
#       then the node runs slot b with the new /etc/default/kafka, the marker is there, and a
#       second update is a no-op.
#   v3: v2 plus an overlay that makes zookeeper.service fail: update must exit 1 naming the
#       failure, and the node must be back on v2 (slot b, the default) with the marker.
# Before any of that, the refusals that need no VM: another node's image, an image that does not
# match its manifest, a node that does not answer; with the VM, a host key that is not node1's.
#
# The first boot also proves what the image tests used to boot for (one boot costs minutes): the
# Secure Boot chain, the disk layout made at first boot on a bigger disk, the data partition with
# node1's identity, and the NIC name glob on an e1000e NIC.
#
# usage: scripts/e2e-update.sh RECIPE OUT      (OUT: make e2e's, with its cache and server.url)
set -euo pipefail
recipe=$1
out=$2
dir=$(dirname "$recipe")
bin=target/release/imgbuild
log=$out/e2e-update.log
: > "$log"
fail() { echo "e2e update: $*" >&2; echo "--- $log (tail)" >&2; tail -30 "$log" >&2; exit 1; }
# One command line, run by the node's shell as the recipe's user.
node() { timeout 120 "$bin" -r "$recipe" ssh node1 -- "$1" 2>>"$log"; }
ib() { "$bin" --cache-dir "$out/cache" --mirror "https://=$(cat "$out/server.url")" "$@"; }
status() { node "sudo /usr/lib/imgbuild/slot status"; }
field() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {}, d))' "$1"; }

# The two new versions: beside the recipe (its secrets copied: the same PKI, so only the one
# change differs), raw images only.
for v in v2 v3; do
    rm -rf "$dir/recipe-$v.secrets" "$out/images-$v"
    cp -a "$dir/recipe.secrets" "$dir/recipe-$v.secrets"
done
python3 - "$recipe" "$dir" <<'EOF'
import sys
recipe, d = sys.argv[1], sys.argv[2]
s = open(recipe).read()
node1 = "  node1:\n    ip: 192.168.200.151\n"
assert node1 in s and "  formats: [raw, qcow2, seed-iso]" in s and "overlays:\n  dir: ../overlays" in s
s = s.replace("  formats: [raw, qcow2, seed-iso]", "  formats: [raw]")
v2 = s.replace(node1, node1 + "    services:\n      kafka: {heap_mb: 896}\n", 1)
open(f"{d}/recipe-v2.yaml", "w").write(v2)
v3 = v2.replace("overlays:\n  dir: ../overlays", "overlays:\n  dir: update-v3-overlays")
open(f"{d}/recipe-v3.yaml", "w").write(v3)
EOF
rm -rf "$dir/update-v3-overlays"
mkdir -p "$dir/update-v3-overlays/node1/etc/systemd/system/zookeeper.service.d"
printf '# e2e: a deliberately broken image\n[Service]\nExecStartPre=/bin/false\nRestart=no\n' \
    > "$dir/update-v3-overlays/node1/etc/systemd/system/zookeeper.service.d/broken.conf"
# Their trees in a build directory of their own: build/nodes/node1 stays the tree of the recipe
# (the later phases boot it as a container). The shared tree is build/'s (the same key: not
# built again, 13 s each).
rm -rf build/update
mkdir -p build/update
ln -s ../common build/update/common
ib -r "$dir/recipe-v2.yaml" --build-dir build/update --images "$out/images-v2" node1 >>"$log" 2>&1
ib -r "$dir/recipe-v3.yaml" --build-dir build/update --images "$out/images-v3" node1 >>"$log" 2>&1
rm -rf build/update

# Refusals before anything is sent.
rm -rf "$out/images-other"; mkdir -p "$out/images-other"
cp -al images/node2 "$out/images-other/node1"
if "$bin" -r "$recipe" --images "$out/images-other" update node1 --host 127.0.0.9 2>"$out/e2e-update.err"; then
    fail "node2's image taken for node1"
fi
grep -q "is the image of node node2, not node1" "$out/e2e-update.err" || fail "other node: $(cat "$out/e2e-update.err")"
rm -rf "$out/images-other"; mkdir -p "$out/images-other/node1"
for f in "$out"/images-v2/node1/*; do ln "$f" "$out/images-other/node1/"; done
rm "$out/images-other/node1/node1.raw"
cp --sparse=always "$out/images-v2/node1/node1.raw" "$out/images-other/node1/node1.raw"
printf 'x' | dd of="$out/images-other/node1/node1.raw" bs=1 seek=$((5 << 20)) conv=notrunc status=none
if "$bin" -r "$dir/recipe-v2.yaml" --images "$out/images-other" update node1 --host 127.0.0.9 2>"$out/e2e-update.err"; then
    fail "an image that does not match its manifest taken"
fi
grep -q "does not match its manifest" "$out/e2e-update.err" || fail "corrupt image: $(cat "$out/e2e-update.err")"
rm -rf "$out/images-other"
if "$bin" -r "$dir/recipe-v2.yaml" --images "$out/images-v2" update node1 --host 127.0.0.9 2>"$out/e2e-update.err"; then
    fail "update of a node that does not answer succeeded"
fi
grep -q "node1 (127.0.0.9): unreachable over SSH" "$out/e2e-update.err" || fail "unreachable: $(cat "$out/e2e-update.err")"

# v1 in QEMU, Secure Boot enforced, on a disk with room for slot B and the data partition.
size=$(stat -c %s images/node1/node1.raw)
t0=$(date +%s)
disk=$((2 * size + (3 << 30)))
setsid "$bin" -r "$recipe" boot node1 --secure-boot --disk-size $disk --nic e1000e \
    </dev/null >"$out/e2e-update-boot.log" 2>&1 &
boot=$!
trap 'kill $boot 2>/dev/null || true; wait $boot 2>/dev/null || true' EXIT
serial=build/boot/node1/serial.log
until status >"$out/e2e-update-status.json" 2>/dev/null; do
    kill -0 $boot 2>/dev/null || fail "the VM stopped before it answered"
    [ $(( $(date +%s) - t0 )) -lt 900 ] || fail "node1 did not answer over SSH in 900 s"
    sleep 5
done
t_v1=$(( $(date +%s) - t0 ))
# From the guest itself: shim verified GRUB and GRUB the kernel (the kernel reports Secure Boot
# on); systemd-repart made slot B as big as slot A and gave the data partition the rest of the
# bigger disk, imgbuild-data formatted it with node1's identity; the network config's name glob
# matched a NIC named as on real hardware (e1000e: enp0sN, not eth0).
grep -aq "secureboot: Secure boot enabled" "$serial" || fail "the kernel does not report Secure Boot"
for _ in $(seq 60); do grep -aq "imgbuild-health node=node1 check=data " "$serial" && break; sleep 5; done
python3 - "$serial" "$disk" "$size" <<'EOF2' || fail "disk layout or data partition: see $serial"
import re, sys
log = open(sys.argv[1], errors="replace").read()
disk, size = int(sys.argv[2]), int(sys.argv[3])
d = dict(re.findall(r"(\w+_mb)=(\d+)", next(l for l in log.splitlines() if "imgbuild-health" in l and " check=disk " in l)))
root, b, data, whole = (int(d[k]) for k in ("root_mb", "slot_b_mb", "data_mb", "disk_mb"))
assert whole == disk >> 20 and 0 < root < size >> 20 and b == root, d
assert data + 2 * root + 600 >= whole and data >= 3 << 10, d
assert re.search(r"check=data ok=yes .*identity=this-node", log), "data partition"
assert "imgbuild-data: first start: cluster=" in log
nic = [l for l in log.splitlines() if "ci-info:" in l and "| True |" in l and "192.168.200.151" in l]
assert nic and "| enp" in nic[0], nic
EOF2
[ "$(field running <"$out/e2e-update-status.json")" = a ] || fail "v1 is not in slot a: $(cat "$out/e2e-update-status.json")"
node "sudo -u kafka sh -c 'echo kept-across-updates > /var/lib/kafka/imgbuild-e2e-marker'" || fail "writing the marker as kafka"

# The node is alone (its peers are not running here): its broker and Storm's daemons loop looking
# for a quorum and take most of the emulated CPU, which the node's SHA-256 of the new root then
# waits for. They are stopped while the slot is written (update itself runs beside serving
# services, as on a real cluster; ZooKeeper stays up); the reboot starts them again.
quiet() { node "sudo systemctl stop kafka storm-nimbus storm-supervisor" || fail "stopping Kafka and Storm"; }

# v2: updated, kept.
quiet
t=$(date +%s)
"$bin" -r "$dir/recipe-v2.yaml" --images "$out/images-v2" update node1 --dry-run >>"$log" 2>&1 || fail "update --dry-run"
"$bin" -r "$dir/recipe-v2.yaml" --images "$out/images-v2" update node1 >>"$log" 2>&1 || fail "update to v2 failed"
t_v2=$(( $(date +%s) - t ))
status >"$out/e2e-update-status.json" || fail "no status after the update"
[ "$(field '(running, default, trial["state"])' <"$out/e2e-update-status.json")" = "('b', 'b', 'committed')" ] ||
    fail "after v2: $(cat "$out/e2e-update-status.json")"
v2key=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["build_key"])' "$out/images-v2/node1/manifest.json")
[ "$(field 'records["b"]["build_key"]' <"$out/e2e-update-status.json")" = "$v2key" ] || fail "slot b does not hold v2"
node "grep -q -- -Xmx896m /etc/default/kafka" || fail "v2's /etc/default/kafka is not the running one"
[ "$(node "sudo cat /var/lib/kafka/imgbuild-e2e-marker")" = kept-across-updates ] || fail "the marker is gone after v2"
"$bin" -r "$dir/recipe-v2.yaml" --images "$out/images-v2" update node1 >"$out/e2e-update.out" 2>>"$log" || fail "a second update to v2"
grep -q "already runs this image" "$out/e2e-update.out" || fail "the second update was no no-op: $(cat "$out/e2e-update.out")"

# A machine at the node's address without the node's host key (known_hosts pinning another key
# under node1's name, as if another machine had answered there): refused before anything is sent,
# the node as it was.
kh=$dir/recipe-v2.secrets/ssh/known_hosts
cp "$kh" "$kh.good"
rm -f "$out/e2e-other-key" "$out/e2e-other-key.pub"
ssh-keygen -q -t ed25519 -N "" -C other-machine -f "$out/e2e-other-key"
grep -v '^node1 ' "$kh.good" >"$kh"
echo "node1 $(cut -d' ' -f1,2 "$out/e2e-other-key.pub")" >>"$kh"
if "$bin" -r "$dir/recipe-v2.yaml" --images "$out/images-v2" update node1 >>"$log" 2>"$out/e2e-update.err"; then
    fail "update to a node whose host key is not the pinned one succeeded"
fi
mv "$kh.good" "$kh"
rm -f "$out/e2e-other-key" "$out/e2e-other-key.pub"
grep -q "node1 (192.168.200.151): the machine that answers does not hold node1's SSH host key" "$out/e2e-update.err" ||
    fail "host key: $(cat "$out/e2e-update.err")"
status >"$out/e2e-update-status.json" || fail "no status after the host-key refusal"
[ "$(field '(running, default, trial["state"])' <"$out/e2e-update-status.json")" = "('b', 'b', 'committed')" ] ||
    fail "after the host-key refusal: $(cat "$out/e2e-update-status.json")"

# v3: broken; the node goes back to v2 by itself.
quiet
t=$(date +%s)
if "$bin" -r "$dir/recipe-v3.yaml" --images "$out/images-v3" update node1 >>"$log" 2>"$out/e2e-update.err"; then
    fail "update to the broken v3 exited 0"
fi
t_v3=$(( $(date +%s) - t ))
cat "$out/e2e-update.err" >>"$log"
grep -q "was not kept (unhealthy: units).*back to root slot b by itself and runs it" "$out/e2e-update.err" ||
    fail "v3's failure: $(tail -1 "$out/e2e-update.err")"
grep -aq "zookeeper:failed" "$serial" || fail "the console does not name the failed unit"
status >"$out/e2e-update-status.json" || fail "no status after v3"
[ "$(field '(running, default, trial["state"])' <"$out/e2e-update-status.json")" = "('b', 'b', 'failed')" ] ||
    fail "after v3: $(cat "$out/e2e-update-status.json")"
[ "$(field 'records["b"]["build_key"]' <"$out/e2e-update-status.json")" = "$v2key" ] || fail "slot b no longer holds v2"
[ "$(node "sudo cat /var/lib/kafka/imgbuild-e2e-marker")" = kept-across-updates ] || fail "the marker is gone after v3"
echo "update: v1 answered in ${t_v1}s; update to v2 ${t_v2}s (exit 0, slot b, marker kept); broken v3 ${t_v3}s (exit 1, back on v2 in slot b by itself)" >&2
grep -E "^node1: (imgbuild-slot: slot|up in|updated)" "$log" >&2 || true
rm -rf "$out/images-v2" "$out/images-v3" "$dir"/recipe-v[23].* "$dir/update-v3-overlays"
