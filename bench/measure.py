#!/usr/bin/env python3
# usage: measure.py CMD...  -> prints "SECONDS PEAK_RSS_KIB" for CMD (its own peak, VmHWM, polled
# every 20 ms), with CMD's stdout/stderr discarded. Exits with CMD's status.
import subprocess, sys, time
t = time.monotonic()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
peak = 0
while p.poll() is None:
    try:
        for line in open(f"/proc/{p.pid}/status"):
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]))
    except OSError:
        pass
    time.sleep(0.02)
print(f"{time.monotonic() - t:.2f} {peak}")
sys.exit(p.returncode)
