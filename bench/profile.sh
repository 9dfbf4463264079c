#!/usr/bin/env bash
# make bench-profile: where a marginal node's build spends its CPU. Builds node1 (shared tree,
# warm download cache), then records `imgbuild node2` with `perf record` (children included) and
# writes the CPU time per process and imgbuild's hottest symbols into the "profile" section of
# BENCHMARKS.md. Needs perf (Debian: linux-perf); says so and stops when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/fixtures.sh
. bench/lib.sh
command -v perf >/dev/null || { echo "bench-profile: perf not found (apt-get install linux-perf)" >&2; exit 1; }
fixtures_prepare
mirror_serve
R=$out/mirror/recipe.yaml
bp=build/bench-profile
rm -rf "$bp"
ibp() { ib -r "$R" --build-dir "$bp/build" --images "$bp/images" "$@"; }
ibp lock >/dev/null 2>&1
ibp node1 >/dev/null 2>&1
t=$(now)
perf record -q -F 999 -g -o "$bp/perf.data" -- target/release/imgbuild --cache-dir "$out/cache" \
    --mirror "https://=$url" -r "$R" --build-dir "$bp/build" --images "$bp/images" node2 \
    >/dev/null 2>"$bp/node2.log"
wall=$(since "$t")
# samples per process at 999 Hz ≈ CPU seconds
procs=$(perf script -i "$bp/perf.data" -F comm 2>/dev/null | sort | uniq -c | sort -rn |
    awk '{n = $1; $1 = ""; sub(/^ /, ""); printf "| %s | %.2f s |\n", $0, n / 999}')
syms=$(perf report -i "$bp/perf.data" --comm imgbuild --no-children --sort sym --stdio -g none 2>/dev/null |
    grep -E '^ +[0-9.]+%' | awk 'NR <= 6' | awk '{p = $1; $1 = ""; $2 = ""; sub(/^ +/, ""); printf "| %s | %s of all samples |\n", $0, p}')
stages=$(grep -E '^\[node2\]|^node ' "$bp/node2.log" | sed 's/^/    /')
rm -rf "$bp"
section=$(printf '<!-- profile:begin -->\n## Profile of a marginal node: `make bench-profile`\n\nMeasured %s on %s (%s cores): `perf record -F 999 -g` of `imgbuild node2` after node1 (shared tree and download cache warm), children included; wall time %s s.\n\nCPU time by process (samples / 999 Hz):\n\n| process | CPU |\n|---|---|\n%s\n\nHottest symbols in imgbuild itself:\n\n| symbol | share |\n|---|---|\n%s\n\nStages (imgbuild'"'"'s own progress lines):\n\n%s\n<!-- profile:end -->' \
    "$(date -u +%Y-%m-%d)" "$(uname -m)" "$(nproc)" "$wall" "$procs" "$syms" "$stages")
write_section profile "$section"
echo "$section"
