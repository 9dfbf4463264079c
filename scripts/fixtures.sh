# Sourced by scripts/demo.sh and scripts/e2e.sh: the fixture mirror for machines that cannot reach
# upstream, served on 127.0.0.1.
#   fixtures_prepare  bootable Debian base (mmdebstrap) + runnable components + mirror (cached)
#   mirror_serve      serve it; sets $url; stopped on exit
#   ib ARGS...        imgbuild on the fixture recipe with the mirror rule and demo cache
out=build/demo

# The bootable base (generic kernel, shim + signed GRUB, cloud-init), rebuilt only when its script
# changes. `make test` builds the same one (same script, same set, same content hash) under
# target/tmp: it is taken from there when present instead of running mmdebstrap a second time.
fixtures_base() {
    local hash
    hash=$(sha256sum tests/fixtures/make-base.sh | cut -c1-12)
    base=$out/debian-base-full-$hash.tar.xz
    if [ ! -f "$base" ]; then
        mkdir -p "$out"
        rm -f "$out"/debian-base-full-*.tar.xz
        if [ -f "target/tmp/debian-base-full-$hash.tar.xz" ]; then
            echo "fixtures: the Debian base from make test's (target/tmp/debian-base-full-$hash.tar.xz)" >&2
            ln -f "target/tmp/debian-base-full-$hash.tar.xz" "$base.tmp" 2>/dev/null ||
                cp "target/tmp/debian-base-full-$hash.tar.xz" "$base.tmp"
        else
            echo "fixtures: building the Debian base with mmdebstrap (a few minutes, once)" >&2
            bash tests/fixtures/make-base.sh "$base.tmp" full >&2
        fi
        mv "$base.tmp" "$base"
    fi
}

# Runnable components: a real JRE and CPython from Debian's packages, real ZooKeeper, Kafka and
# Storm from Maven Central, in the upstream tarball layouts (tests/fixtures/make-components.sh).
fixtures_components() {
    local chash
    chash=$(cat tests/fixtures/make-components.sh tests/fixtures/launchers/*.py | sha256sum | cut -c1-12)
    comps=$out/components-$chash
    if [ ! -f "$comps/jre.tar.gz" ]; then
        echo "fixtures: building the component tarballs from Debian packages and Maven Central (once)" >&2
        mkdir -p "$out"
        rm -rf "$out"/components-*
        bash tests/fixtures/make-components.sh "$comps.tmp" >/dev/null
        mv "$comps.tmp" "$comps"
    fi
}

# Prometheus and promtool from Debian's package, extracted (tests/fixtures/prometheus.sh): make
# e2e's real Prometheus. Sets $prom.
fixtures_prometheus() {
    local phash
    phash=$(sha256sum tests/fixtures/prometheus.sh | cut -c1-12)
    prom=$out/prometheus-$phash
    if [ ! -x "$prom/prometheus" ]; then
        rm -rf "$out"/prometheus-*
        bash tests/fixtures/prometheus.sh "$prom" >&2
    fi
}

fixtures_prepare() {
    mkdir -p "$out"
    # The base and the components are mostly waiting on Debian's and Maven Central's servers
    # (about seven minutes the first time): made while the code compiles, as .ci/run does.
    local bp cpid
    (fixtures_base) >"$out/fixtures-base.log" 2>&1 &
    bp=$!
    (fixtures_components) >"$out/fixtures-components.log" 2>&1 &
    cpid=$!
    if ! cargo build --release --locked --quiet --bin imgbuild --example fixture_server; then
        kill "$bp" "$cpid" 2>/dev/null || true
        wait "$bp" "$cpid" 2>/dev/null || true
        return 1
    fi
    wait "$bp" || { echo "fixtures: the Debian base failed:" >&2; tail -30 "$out/fixtures-base.log" >&2; return 1; }
    wait "$cpid" || { echo "fixtures: the component tarballs failed:" >&2; tail -30 "$out/fixtures-components.log" >&2; return 1; }
    grep -h '^fixtures:' "$out/fixtures-base.log" "$out/fixtures-components.log" >&2 || true
    # Made now: these only set $base and $comps.
    fixtures_base
    fixtures_components
    fixtures_prometheus
    # A throwaway key for the demo user (`imgbuild ssh NODE` finds it in build/ssh/).
    if [ ! -f build/ssh/id_ed25519 ]; then
        mkdir -p build/ssh
        ssh-keygen -q -t ed25519 -N "" -C imgbuild-demo -f build/ssh/id_ed25519
    fi
    COMPONENTS=$comps BASE_TARBALL=$base SSH_PUBKEY=build/ssh/id_ed25519.pub \
        bash tests/fixtures/make-mirror.sh "$out/mirror" >/dev/null 2>&1
}

mirror_serve() {
    rm -f "$out/server.url"
    target/release/examples/fixture_server "$out/mirror" >"$out/server.url" &
    server_pid=$!
    trap 'kill $server_pid 2>/dev/null || true' EXIT
    for _ in $(seq 50); do [ -s "$out/server.url" ] && break; sleep 0.1; done
    url=$(cat "$out/server.url")
    echo "fixtures: mirror at $url (the recipe's https:// URLs are rewritten there)" >&2
}

ib() {
    target/release/imgbuild --cache-dir "$out/cache" --mirror "https://=$url" "$@"
}

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.0f", b - a}'; }

# The Debian bases `make test` uses (tests/common/mod.rs: target/tmp/debian-base[-SET]-HASH.tar.xz,
# the same script and hash), made ahead under the tests' own lock file: .ci/run builds them while
# the code compiles (most of an mmdebstrap run is waiting on the Debian mirror), and a test that
# needs one before it is ready waits on the lock instead of building it again. Image tests first.
fixtures_test_bases() {
    local hash dir=target/tmp set name
    hash=$(sha256sum tests/fixtures/make-base.sh | cut -c1-12)
    mkdir -p "$dir"
    for set in full sdboot minimal; do
        name=debian-base-$set-$hash.tar.xz
        [ "$set" = minimal ] && name=debian-base-$hash.tar.xz
        flock "$dir/debian-base.lock" bash -c '[ -f "$1" ] || bash tests/fixtures/make-base.sh "$1" "$2"' \
            _ "$dir/$name" "$set"
    done
}
