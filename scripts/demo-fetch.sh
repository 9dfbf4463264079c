#!/usr/bin/env bash
# Fetch the reference recipe's artifacts from the fixture mirror (this machine cannot reach
# upstream): builds the mirror, serves it on 127.0.0.1, runs `imgbuild lock` and `imgbuild fetch`.
set -euo pipefail
cd "$(dirname "$0")/.."
out=build/demo
cargo build --release --locked --quiet --bin imgbuild --example fixture_server
bash tests/fixtures/make-mirror.sh "$out/mirror" >/dev/null
target/release/examples/fixture_server "$out/mirror" >"$out/server.url" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do [ -s "$out/server.url" ] && break; sleep 0.1; done
url=$(cat "$out/server.url")
echo "fixture mirror at $url (the recipe's https:// URLs are rewritten there)" >&2
run() { target/release/imgbuild -r "$out/mirror/recipe.yaml" --cache-dir "$out/cache" --mirror "https://=$url" "$@"; }
run lock
run fetch
run cache list
