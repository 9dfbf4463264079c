#!/usr/bin/env python3
"""make e2e: the cluster's secrets stay where they belong (issue 16).

usage: pki-check.py SECRETS_DIR IMAGES_DIR [FILE...]
       pki-check.py --scram SECRETS_DIR NODE_IMAGES_DIR [FILE...]

- The secrets directory is 0700 and ignores itself for git; every key in it is 0600.
- No private key is found in any output (every file under IMAGES_DIR, and each FILE: build
  logs, plan output) except a node's own keys (NODE.key, storm/NODE.key, its SSH host key
  ssh/NODE_ed25519) in that node's raw image, where they must be found (the proof that the search can see a key at all). The CA key
  and the Kafka users' keys (users/NAME.key) are found nowhere.
Searches for each key's PEM body lines, the text a leak would carry.

--scram (clients: scram), one node's images at a time (NODE_IMAGES_DIR is images/NODE): every
user's password (users/NAME.password, 0600) is in no output but, for user storm, the node's
image (its Storm client settings); each user's salted SCRAM credential (recomputed here as
imgbuild derives it: PBKDF2-HMAC-SHA512, the salt from name and password) is in no output but
the node's image, where both must be found: every node of the e2e cluster is a KRaft
controller and runs Storm.
"""
import os
import stat
import subprocess
import sys


def fail(msg):
    sys.exit(f"pki-check: {msg}")


def body_lines(path):
    lines = [l.strip() for l in open(path) if l.strip() and not l.startswith("-----")]
    return [l.encode() for l in lines if len(l) >= 40]


def search(outputs, needles):
    """{output: the needles found in it}. One pass over each output for all the needles (grep's
    multi-string search) rather than one scan per needle: the raw images are gigabytes each.
    grep -o reports matches that do not overlap; no needle here contains another (PEM body
    lines, passwords, salted credentials), so none can hide inside another's match."""
    for a in needles:
        for b in needles:
            if a != b and a in b:
                fail("a needle contains another: the search could miss it")
    pattern = b"\n".join(sorted(set(needles))) + b"\n"
    hits = {}
    for path in outputs:
        if os.path.getsize(path) == 0:
            hits[path] = set()
            continue
        r = subprocess.run(["grep", "-aozF", "-f", "-", "--", path], input=pattern, capture_output=True)
        if r.returncode > 1:
            fail(f"grep {path}: {r.stderr.decode(errors='replace').strip()}")
        hits[path] = set(r.stdout.split(b"\0")) - {b""}
    return hits


def confined(what, needles, hits, allowed, required):
    """Fail unless `needles` are found in no output but `allowed`, and in `required` if given
    (hits: search()'s answer)."""
    where = [o for o, found in hits.items() if found.intersection(needles)]
    if required and required not in where:
        fail(f"{what} not found in {required}: the search cannot see it, or the image lacks it")
    leaks = [w for w in where if w not in allowed]
    if leaks:
        fail(f"{what} found in {', '.join(leaks)}")
    print(f"  {what}: only in {', '.join(where) or 'no output'}")


def scram_check(secrets, node_dir, extra):
    import base64
    import hashlib
    node = os.path.basename(os.path.normpath(node_dir))
    own = [os.path.join(node_dir, f"{node}.raw"), os.path.join(node_dir, f"{node}.qcow2")]
    outputs = [os.path.join(d, f) for d, _, fs in os.walk(node_dir) for f in fs] + extra
    users = os.path.join(secrets, "users")
    if stat.S_IMODE(os.stat(users).st_mode) != 0o700:
        fail(f"{users} is not 0700")
    names = sorted(f[: -len(".password")] for f in os.listdir(users) if f.endswith(".password"))
    if "storm" not in names:
        fail(f"{users}: no storm.password")
    checks = []
    for name in names:
        path = os.path.join(users, f"{name}.password")
        if stat.S_IMODE(os.stat(path).st_mode) != 0o600:
            fail(f"{path} is not 0600")
        pw = open(path).read().splitlines()[0]
        salt = hashlib.sha256(f"imgbuild scram salt\0{name}\0{pw}".encode()).digest()[:16]
        salted = base64.b64encode(hashlib.pbkdf2_hmac("sha512", pw.encode(), salt, 8192))
        storm = name == "storm"
        checks.append((f"user {name}'s password", [pw.encode()], own if storm else [],
                       own[0] if storm else None))
        checks.append((f"user {name}'s salted credential", [salted], own, own[0]))
    hits = search(outputs, [n for c in checks for n in c[1]])
    for what, needles, allowed, required in checks:
        confined(what, needles, hits, allowed, required)
    print(f"pki-check: {node}: {len(names)} SCRAM users, {len(outputs)} outputs searched")


if sys.argv[1] == "--scram":
    scram_check(sys.argv[2], sys.argv[3], sys.argv[4:])
    sys.exit(0)
secrets, images, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
st = os.stat(secrets)
if stat.S_IMODE(st.st_mode) != 0o700:
    fail(f"{secrets} is {oct(stat.S_IMODE(st.st_mode))}, not 0700")
if "*" not in open(os.path.join(secrets, ".gitignore")).read().split():
    fail(f"{secrets}/.gitignore does not ignore everything")
# (path relative to the secrets directory, owning node or None)
keys = [(f, f[: -len(".key")]) for f in os.listdir(secrets) if f.endswith(".key")]
for sub, owned in (("storm", True), ("users", False)):
    d = os.path.join(secrets, sub)
    if os.path.isdir(d):
        if stat.S_IMODE(os.stat(d).st_mode) != 0o700:
            fail(f"{d} is not 0700")
        keys += [(os.path.join(sub, f), f[: -len(".key")] if owned else None)
                 for f in os.listdir(d) if f.endswith(".key")]
# Every node's SSH host key (ssh/NODE_ed25519, OpenSSH's format): only in its own node's image.
sshd = os.path.join(secrets, "ssh")
if os.path.isdir(sshd):
    if stat.S_IMODE(os.stat(sshd).st_mode) != 0o700:
        fail(f"{sshd} is not 0700")
    keys += [(os.path.join("ssh", f), f[: -len("_ed25519")])
             for f in os.listdir(sshd) if f.endswith("_ed25519")]
keys = sorted((k, None if n == "ca" else n) for k, n in keys)
if "ca.key" not in [k for k, _ in keys] or len(keys) < 2:
    fail(f"{secrets} has keys {keys}: want ca.key and one per node")
outputs = [os.path.join(d, f) for d, _, fs in os.walk(images) for f in fs] + extra
checks = []
for k, node in keys:
    path = os.path.join(secrets, k)
    if stat.S_IMODE(os.stat(path).st_mode) != 0o600:
        fail(f"{path} is not 0600")
    needles = body_lines(path)
    if k.startswith("ssh/"):
        # The first line of an unencrypted ed25519 key in OpenSSH's format is the same for every
        # such key (the format's magic, cipher and kdf "none", one key of type ssh-ed25519): a
        # needle only in the lines that carry this key's bytes.
        needles = needles[1:]
    if not needles:
        fail(f"{path}: no PEM body")
    own = os.path.join(images, node, f"{node}.raw") if node else None
    # The node's qcow2 holds the same filesystem (its clusters may be stored uncompressed).
    allowed = [own, os.path.join(images, node, f"{node}.qcow2")] if node else []
    checks.append((k, needles, allowed, own))
hits = search(outputs, [n for c in checks for n in c[1]])
for what, needles, allowed, required in checks:
    confined(what, needles, hits, allowed, required)
print(f"pki-check: {len(keys)} keys, {len(outputs)} outputs searched")
