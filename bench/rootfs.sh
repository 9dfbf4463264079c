#!/usr/bin/env bash
# Benchmark: composing node1..3 root filesystems from the fixture mirror with the real Debian base
# (downloads warm in the cache). Shows the shared tree built once and each node's marginal cost.
# Writes the "rootfs" section of BENCHMARKS.md.
#
# usage: bench/rootfs.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
runs=${1:-3}
out=target/bench/rootfs
mkdir -p "$out"
cargo build --release --locked --quiet --bin imgbuild --example fixture_server
base=target/fixtures/debian-base-$(sha256sum tests/fixtures/make-base.sh | cut -c1-12).tar.xz
[ -f "$base" ] || bash tests/fixtures/make-base.sh "$base" minimal
BASE_TARBALL=$base bash tests/fixtures/make-mirror.sh "$out/mirror" >/dev/null
target/release/examples/fixture_server "$out/mirror" >"$out/server.url" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do [ -s "$out/server.url" ] && break; sleep 0.1; done
url=$(cat "$out/server.url")
ib() { target/release/imgbuild -r "$out/mirror/recipe.yaml" --cache-dir "$out/cache" --build-dir "$out/build" --mirror "https://=$url" "$@"; }
ib fetch >/dev/null 2>&1 # warm download cache: not part of the measurement
now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
n1=() n2=() n3=() common=()
for _ in $(seq "$runs"); do
    rm -rf "$out/build"
    t0=$(now); ib rootfs node1 -o "$out/node1.tar" 2>"$out/node1.log"; t1=$(now)
    ib rootfs node2 -o "$out/node2.tar" 2>"$out/node2.log"; t2=$(now)
    ib rootfs node3 -o "$out/node3.tar" 2>"$out/node3.log"; t3=$(now)
    n1+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')")
    n2+=("$(awk -v a="$t1" -v b="$t2" 'BEGIN {print b - a}')")
    n3+=("$(awk -v a="$t2" -v b="$t3" 'BEGIN {print b - a}')")
    common+=("$(sed -n 's/^common   built .*(\([0-9.]*\)s)$/\1/p' "$out/node1.log")")
done
grep -q "common   cached" "$out/node2.log" && grep -q "common   cached" "$out/node3.log"
m1=$(printf '%s\n' "${n1[@]}" | median); m2=$(printf '%s\n' "${n2[@]}" | median)
m3=$(printf '%s\n' "${n3[@]}" | median); mc=$(printf '%s\n' "${common[@]}" | median)
entries=$(tar tf "$out/node1.tar" | wc -l)
report=$(awk -v a="$m1" -v b="$m2" -v c="$m3" -v s="$mc" -v n="$runs" -v e="$entries" 'BEGIN {
    printf "| `imgbuild rootfs`, %d runs, median (downloads cached; %d entries per tree) | time | vs node1 |\n|---|---|---|\n", n, e;
    printf "| node1 (builds the shared tree: base + components + users + units, %.2f s of it) | %.2f s | 1.00 |\n", s, a;
    printf "| node2 (shared tree cached: hard-link copy, node files, tar) | %.2f s | %.2f |\n", b, b / a;
    printf "| node3 | %.2f s | %.2f |\n", c, c / a;
    verdict = (b / a <= 0.10 && c / a <= 0.10) ? "met" : "not met: most of a node is writing its tarball";
    printf "\nMarginal cost of a node: **%.0f%%** and **%.0f%%** of node1 (goal ≤ 10%%: %s).\n", 100 * b / a, 100 * c / a, verdict;
}')
echo "$report"
section=$(printf '<!-- rootfs:begin -->\n## Root filesystems: shared tree built once\n\nMeasured %s on %s (%s cores) by `make bench-rootfs`, Debian bookworm base made by mmdebstrap.\n\n%s\n<!-- rootfs:end -->' \
    "$(date -u +%Y-%m-%d)" "$(uname -m)" "$(nproc)" "$report")
write_section rootfs "$section"
