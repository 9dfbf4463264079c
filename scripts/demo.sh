#!/usr/bin/env bash
# make demo: what `imgbuild all` + `imgbuild up` do against upstream, on a machine that cannot
# reach it. Builds the fixture mirror (a real Debian bookworm base made with mmdebstrap with the
# reference recipe's package roles — generic kernel, shim + signed GRUB — in place of its mmdebstrap
# of Ubuntu noble; a real JRE and CPython from Debian's packages, real ZooKeeper, Kafka and Storm
# from Maven Central), serves it on 127.0.0.1, builds images/<node>/ for every node, then boots
# the cluster on a private virtual network in QEMU and prints each node's health, then in
# containers (native speed) with the data path: Kafka round trip, the Python Storm topology, the
# loss and return of a node.
#
# usage: scripts/demo.sh [--no-boot] [NODE...]     (default: all nodes)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/fixtures.sh
boot=1
if [ "${1:-}" = --no-boot ]; then boot=0; shift; fi
t=$(now); fixtures_prepare; echo "phase fixtures: $(since "$t") s" >&2
mirror_serve
t=$(now)
ib -r "$out/mirror/recipe.yaml" lock
ib -r "$out/mirror/recipe.yaml" "${@:-all}"
echo "phase build: $(since "$t") s" >&2
if [ "$boot" = 1 ]; then
    t=$(now)
    target/release/imgbuild -r "$out/mirror/recipe.yaml" up --check --ignore kafka --ignore storm "$@"
    echo "phase boot to healthy (QEMU): $(since "$t") s" >&2
    t=$(now)
    target/release/imgbuild -r "$out/mirror/recipe.yaml" up --runtime container --check "$@"
    echo "phase containers: $(since "$t") s" >&2
fi
