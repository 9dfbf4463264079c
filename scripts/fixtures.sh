# Sourced by scripts/demo.sh and scripts/e2e.sh: the fixture mirror for machines that cannot reach
# upstream, served on 127.0.0.1.
#   fixtures_prepare  bootable Debian base (mmdebstrap) + runnable components + mirror (cached)
#   mirror_serve      serve it; sets $url; stopped on exit
#   ib ARGS...        imgbuild on the fixture recipe with the mirror rule and demo cache
out=build/demo

fixtures_prepare() {
    mkdir -p "$out"
    cargo build --release --locked --quiet --bin imgbuild --example fixture_server
    # The bootable base (kernel, systemd-boot, cloud-init), rebuilt only when its script changes.
    local hash base chash comps
    hash=$(sha256sum tests/fixtures/make-base.sh | cut -c1-12)
    base=$out/debian-base-full-$hash.tar.xz
    if [ ! -f "$base" ]; then
        echo "fixtures: building the Debian base with mmdebstrap (about a minute, once)" >&2
        rm -f "$out"/debian-base-full-*.tar.xz
        bash tests/fixtures/make-base.sh "$base" full >&2
    fi
    # Runnable components: a real JRE and ZooKeeper from Debian packages, stand-ins for the rest.
    chash=$(cat tests/fixtures/make-components.sh tests/fixtures/launchers/*.py | sha256sum | cut -c1-12)
    comps=$out/components-$chash
    if [ ! -f "$comps/jre.tar.gz" ]; then
        echo "fixtures: building the component tarballs from Debian packages (once)" >&2
        rm -rf "$out"/components-*
        bash tests/fixtures/make-components.sh "$comps.tmp" >/dev/null
        mv "$comps.tmp" "$comps"
    fi
    COMPONENTS=$comps BASE_TARBALL=$base bash tests/fixtures/make-mirror.sh "$out/mirror" >/dev/null 2>&1
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
