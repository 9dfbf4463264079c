#!/usr/bin/env python3
# usage: measure.py CMD...  -> prints "SECONDS PEAK_RSS_KIB" for CMD (its own peak, VmHWM, polled
# every 20 ms), with CMD's stdout discarded. Exits with CMD's status; when CMD fails, the end of
# its stderr is shown so a benchmark never reports the time of a failed run without saying why.
import subprocess, sys, tempfile, time
err = tempfile.TemporaryFile()
t = time.monotonic()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=err)
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
if p.returncode != 0:
    err.seek(0)
    tail = err.read().decode(errors="replace").splitlines()[-20:]
    sys.stderr.write(f"measure.py: {' '.join(sys.argv[1:])} exited {p.returncode}:\n" + "\n".join(tail) + "\n")
sys.exit(p.returncode)
