#!/usr/bin/env bash
# Build node images the way `imgbuild NODE` does against upstream, but from the local fixture
# mirror (this machine cannot reach Ubuntu, Apache, GitHub or Adoptium): a real Debian bookworm
# base made with mmdebstrap stands in for Ubuntu's cloud root tarball; the component tarballs are
# the fixture stand-ins. The mirror is served on 127.0.0.1 and the recipe's https:// URLs are
# rewritten there; the resulting images land in images/<node>/.
#
# usage: scripts/demo.sh [NODE...]     (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
out=build/demo
mkdir -p "$out"
cargo build --release --locked --quiet --bin imgbuild --example fixture_server
# The bootable base (kernel, systemd-boot, cloud-init), rebuilt only when its script changes.
hash=$(sha256sum tests/fixtures/make-base.sh | cut -c1-12)
base=$out/debian-base-full-$hash.tar.xz
if [ ! -f "$base" ]; then
    echo "demo: building the Debian base with mmdebstrap (about a minute, once)" >&2
    rm -f "$out"/debian-base-full-*.tar.xz
    bash tests/fixtures/make-base.sh "$base" full >&2
fi
BASE_TARBALL=$base bash tests/fixtures/make-mirror.sh "$out/mirror" >/dev/null
rm -f "$out/server.url"
target/release/examples/fixture_server "$out/mirror" >"$out/server.url" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do [ -s "$out/server.url" ] && break; sleep 0.1; done
url=$(cat "$out/server.url")
echo "demo: fixture mirror at $url (the recipe's https:// URLs are rewritten there)" >&2
run() { target/release/imgbuild -r "$out/mirror/recipe.yaml" --cache-dir "$out/cache" --mirror "https://=$url" "$@"; }
run lock
run "${@:-all}"
