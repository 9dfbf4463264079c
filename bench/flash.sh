#!/usr/bin/env bash
# Flash benchmark: node1's raw image onto a file target with `imgbuild flash` (bmap ranges, each
# read back), `bmaptool copy` (bmap ranges) and `dd conv=sparse` (reads everything, skips zero
# blocks). Same image, same target filesystem, target removed before each run, page cache warm
# for the image. Bytes written = the process's output block count (getrusage ru_oublock × 512).
# Writes the "flash" section of BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
runs=${RUNS:-3}
out=build/bench-flash
mkdir -p "$out"
[ -f images/node1/node1.raw ] || bash scripts/demo.sh --no-boot node1 >/dev/null
cargo build --release --locked --quiet --bin imgbuild
raw=images/node1/node1.raw
bmap=images/node1/node1.bmap
mapped=$(python3 -c "import re,sys; t=open('$bmap').read(); print(int(re.search(r'<MappedBlocksCount> (\d+)',t).group(1))*4096)")
size=$(stat -c %s "$raw")
report=$(python3 - "$runs" "$raw" "$bmap" "$out/target.raw" "$mapped" "$size" <<'PY'
import os, statistics, subprocess, sys, time
runs, raw, bmap, target, mapped, size = int(sys.argv[1]), *sys.argv[2:5], int(sys.argv[5]), int(sys.argv[6])
tools = {
    "imgbuild flash": ["target/release/imgbuild", "flash", "node1", target, "--image", raw, "--bmap", bmap, "--to-file", "--yes"],
    "bmaptool copy": ["bmaptool", "-q", "copy", "--bmap", bmap, raw, target],
    "dd conv=sparse": ["dd", f"if={raw}", f"of={target}", "bs=4M", "conv=sparse,fsync", "status=none"],
}
res = {}
for name, cmd in tools.items():
    times, written = [], []
    for _ in range(runs):
        if os.path.exists(target):
            os.remove(target)
        subprocess.run(["sync"], check=True)
        t = time.monotonic()
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, ru = os.wait4(p.pid, 0)
        if status != 0:
            sys.exit(f"{name} failed: {cmd}")
        subprocess.run(["sync"], check=True)  # count writeback inside the measured time for all
        times.append(time.monotonic() - t)
        written.append(ru.ru_oublock * 512)
        # The result must be the image (sparse copies read back as zeros in the holes).
        if name != "dd conv=sparse" or _ == 0:
            same = subprocess.run(["cmp", "-s", raw, target]).returncode == 0
            if not same:
                sys.exit(f"{name}: target differs from the image")
    res[name] = (statistics.median(times), statistics.median(written))
MiB = 1 << 20
print(f"| {size / (1 << 30):.1f} GiB image, {mapped / MiB:.0f} MiB mapped; {runs} runs, median | time | MB/s (mapped) | bytes written | vs mapped |")
print("|---|---|---|---|---|")
for name, (t, w) in res.items():
    print(f"| {name} | {t:.2f} s | {mapped / t / 1e6:.0f} | {w / MiB:.0f} MiB | {w / mapped:.2f} |")
ib, bt = res["imgbuild flash"], res["bmaptool copy"]
speed = "met" if ib[0] <= bt[0] * 1.1 else f"not met ({ib[0] / bt[0]:.2f}× bmaptool's time)"
exact = "met" if abs(ib[1] - mapped) <= 2 * MiB else f"not met ({ib[1] / MiB:.0f} MiB vs {mapped / MiB:.0f} MiB)"
print()
print(f"Goal: at most 1.1× bmaptool's time, read-back included — **{speed}** ({ib[0]:.2f} s vs {bt[0]:.2f} s; imgbuild also reads every range back from the target and writes the partition tables last); bytes written equal to the mapped bytes — **{exact}**.")
PY
)
echo "$report"
section=$(printf '<!-- flash:begin -->\n## Flashing: imgbuild flash vs bmaptool and dd\n\nMeasured %s on %s (%s cores) by `make bench-flash`: node1 image from `make demo`, file target on the same filesystem.\n\n%s\n<!-- flash:end -->' \
    "$(date -u +%Y-%m-%d)" "$(uname -m)" "$(nproc)" "$report")
write_section flash "$section"
rm -f "$out/target.raw"
