#!/usr/bin/env bash
# Benchmark: fetch+verify of a large artifact from a loopback server, against plain curl from the
# same server. Writes the "fetch" section of BENCHMARKS.md. Not a test: numbers, not pass/fail.
#
# usage: bench/fetch.sh [SIZE_MIB] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
size_mib=${1:-600}
runs=${2:-5}
out=target/bench/fetch
mkdir -p "$out/mirror/bench.example"
cargo build --release --locked --quiet --bin imgbuild --example fixture_server

big="$out/mirror/bench.example/big.tar.gz"
if [ ! -f "$big" ] || [ "$(stat -c %s "$big")" -ne $((size_mib << 20)) ]; then
    echo "bench: making a ${size_mib} MiB artifact" >&2
    head -c $((size_mib << 20)) /dev/urandom >"$big.tmp" && mv "$big.tmp" "$big"
    (cd "$(dirname "$big")" && sha512sum big.tar.gz >big.tar.gz.sha512)
fi
cat >"$out/recipe.yaml" <<'YAML'
cluster: {name: bench}
base:
  kind: tarball
  urls: https://bench.example/big.tar.gz
  digest: {sha512_url: "{url}.sha512"}
components: {}
network: {cidr: 10.0.0.0/24, gateway: 10.0.0.1}
nodes:
  n1: {ip: 10.0.0.2, roles: []}
YAML

target/release/examples/fixture_server "$out/mirror" >"$out/server.url" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do [ -s "$out/server.url" ] && break; sleep 0.1; done
url=$(cat "$out/server.url")
cat "$big" >/dev/null # page cache warm for both contenders

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
curl_times=() ours_times=() ours_rss=() sum_times=()
for i in $(seq "$runs"); do
    s0=$(date +%s.%N); sha512sum "$big" >/dev/null; s1=$(date +%s.%N)
    sum_times+=("$(awk -v a="$s0" -v b="$s1" 'BEGIN {print b - a}')")
    curl_times+=("$(curl -s -o /dev/null -w '%{time_total}' "${url}bench.example/big.tar.gz")")
    rm -rf "$out/cache"
    /usr/bin/time -f '%e %M' -o "$out/time" target/release/imgbuild -r "$out/recipe.yaml" --cache-dir "$out/cache" \
        --mirror "https://bench.example/=${url}bench.example/" fetch 2>"$out/fetch.log" >/dev/null
    read -r secs rss <"$out/time"
    ours_times+=("$secs")
    ours_rss+=("$rss")
done
c=$(printf '%s\n' "${curl_times[@]}" | median)
h=$(printf '%s\n' "${sum_times[@]}" | median)
o=$(printf '%s\n' "${ours_times[@]}" | median)
rss=$(printf '%s\n' "${ours_rss[@]}" | sort -n | tail -1)
mb=$((size_mib * 1048576))
report=$(awk -v h="$h" -v c="$c" -v o="$o" -v b="$mb" -v rss="$rss" -v n="$runs" -v s="$size_mib" 'BEGIN {
    ct = b / c / 1e6; ot = b / o / 1e6;
    printf "| %d MiB artifact, %d runs, median | time | throughput |\n|---|---|---|\n", s, n;
    printf "| `curl -o /dev/null` | %.2f s | %.0f MB/s |\n", c, ct;
    printf "| `sha512sum` of the same file from page cache (no network, no write) | %.2f s | %.0f MB/s |\n", h, b / h / 1e6;
    printf "| `imgbuild fetch` (download, sha256+sha512 while streaming, write+fsync to cache, verify) | %.2f s | %.0f MB/s |\n", o, ot;
    verdict = (ot / ct >= 0.5) ? "met" : "not met, see \"Reading the fetch numbers\"";
    printf "\nRatio imgbuild/curl throughput: **%.2f×** (goal ≥ 0.50×: %s). ", ot / ct, verdict;
    printf "Ratio imgbuild/sha512sum: **%.2f×**. Peak RSS of imgbuild: **%.1f MiB** (max of runs).\n", ot / (b / h / 1e6), rss / 1024;
}')
echo "$report"
section=$(printf '<!-- fetch:begin -->\n## Fetch + verify vs curl (loopback)\n\nMeasured %s on %s (%s cores) by `make bench-fetch`.\n\n%s\n<!-- fetch:end -->' \
    "$(date -u +%Y-%m-%d)" "$(uname -m)" "$(nproc)" "$report")
touch BENCHMARKS.md
write_section fetch "$section"
