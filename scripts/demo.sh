#!/usr/bin/env bash
# make demo: what `imgbuild all` + `imgbuild up` do against upstream, on a machine that cannot
# reach it. Builds the fixture mirror (a real Debian bookworm base made with mmdebstrap with the
# reference recipe's package roles — generic kernel, shim + signed GRUB — in place of its mmdebstrap
# of Ubuntu noble; a real JRE and CPython from Debian's packages, real ZooKeeper, Kafka and Storm
# from Maven Central), serves it on 127.0.0.1, builds images/<node>/ for every node, then boots
# the cluster on a private virtual network: the first node from its image in QEMU, the others as
# containers of their trees (three VMs on two cores without KVM cannot start Kafka and Storm in
# time), and checks the data path through the VM: Kafka round trip, refusals, the Python Storm
# topology, the VM's loss and return. `imgbuild up` alone still boots every node in QEMU.
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
    # The booted image in the data path: the first node's image in QEMU (UEFI, shim, GRUB, its
    # own kernel) among the other nodes' containers; the check runs the Kafka round trip through
    # its broker, the refusals, the Python topology, and its power-off and return.
    first=${1:-node1}
    t=$(now)
    target/release/imgbuild -r "$out/mirror/recipe.yaml" up --vm "$first" --check "$@"
    echo "phase mixed cluster ($first in QEMU among containers): $(since "$t") s" >&2
fi
