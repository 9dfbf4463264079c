#!/usr/bin/env python3
"""Build the topology jar for `storm jar`, offline, from what an imgbuild node holds:
Flux, flux-wrappers and storm-kafka-client (with its dependencies) from $STORM_HOME/external,
kafka-clients from $KAFKA_HOME/libs, Storm's Python multilang adapter (storm.py, in
external/multilang-python's jar), this directory's multilang/resources/*.py and topology.yaml. No JDK needed (a jar is a zip).

usage: build-jar.py OUT.jar [--storm-home /opt/storm] [--kafka-home /opt/kafka]
"""
import argparse
import glob
import os
import sys
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))


def one(pattern):
    found = sorted(glob.glob(pattern))
    if not found:
        sys.exit("build-jar: nothing matches %s" % pattern)
    return found[-1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--storm-home", default=os.environ.get("STORM_HOME", "/opt/storm"))
    ap.add_argument("--kafka-home", default=os.environ.get("KAFKA_HOME", "/opt/kafka"))
    a = ap.parse_args()
    ext = os.path.join(a.storm_home, "external")
    one(os.path.join(ext, "storm-kafka-client", "storm-kafka-client-*.jar"))
    jars = [one(os.path.join(ext, "flux", "flux-core-*.jar")),
            one(os.path.join(ext, "flux", "flux-wrappers-*.jar"))]
    # storm-kafka-client and what it needs beyond Storm's worker classpath (Jackson, Guava...)
    jars += sorted(glob.glob(os.path.join(ext, "storm-kafka-client", "*.jar")))
    jars.append(one(os.path.join(a.kafka_home, "libs", "kafka-clients-*.jar")))
    multilang = one(os.path.join(ext, "multilang-python", "multilang-python-*.jar"))
    tmp = a.out + ".tmp"
    seen = set()
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\nCreated-By: imgbuild examples/build-jar.py\n\n")
        seen.add("META-INF/MANIFEST.MF")

        def add(name, data):
            if name not in seen:
                seen.add(name)
                z.writestr(name, data)

        add("topology.yaml", open(os.path.join(HERE, "topology.yaml"), "rb").read())
        for py in sorted(glob.glob(os.path.join(HERE, "multilang", "resources", "*.py"))):
            add("resources/" + os.path.basename(py), open(py, "rb").read())
        with zipfile.ZipFile(multilang) as m:
            add("resources/storm.py", m.read("resources/storm.py"))
        for jar in jars:  # merged into one jar; the first of two same-named entries wins
            with zipfile.ZipFile(jar) as j:
                for info in j.infolist():
                    n = info.filename
                    if info.is_dir() or n == "META-INF/MANIFEST.MF" or (
                            n.startswith("META-INF/") and n.rsplit(".", 1)[-1] in ("SF", "RSA", "DSA", "EC")):
                        continue
                    add(n, j.read(info))
    os.replace(tmp, a.out)
    print("%s: %d entries from %s" % (a.out, len(seen), ", ".join(os.path.basename(j) for j in jars)))


if __name__ == "__main__":
    main()
