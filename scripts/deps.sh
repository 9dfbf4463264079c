#!/usr/bin/env bash
# Install what imgbuild's build and tests need on a fresh Debian/Ubuntu machine.
# Idempotent: installs only what is missing, runs `apt-get update` at most once.
set -euo pipefail

# Debian packages the build and test suite use (none yet beyond the Rust toolchain; later stages
# add mmdebstrap, e2fsprogs, qemu, ...). Format: "command package".
NEEDED=(
    "gpg gnupg"          # test fixtures: throwaway signing keys, KEYS, .asc
    "xz xz-utils"        # test fixtures: the .tar.xz base stand-in
    "curl curl"          # benchmarks: the plain-download baseline
    "python3 python3"    # benchmarks: rewriting BENCHMARKS.md sections
    "mmdebstrap mmdebstrap"        # test base OS: Debian bookworm from the Debian mirror
    "cloud-init cloud-init"        # tests: `cloud-init schema` and its network-config parser
    "systemd-analyze systemd"      # tests: `systemd-analyze verify` of the generated units
    "sfdisk fdisk"                 # tests: the GPT writer is checked with `sfdisk --verify`
    "bmaptool bmap-tools"          # tests: bmaps are checked with `bmaptool copy`
    "debugfs e2fsprogs"            # root filesystems (mkfs.ext4 -d), checked with e2fsck and debugfs
)

if ! command -v cargo >/dev/null; then
    echo "deps: cargo not found: install the Rust toolchain (https://rustup.rs) first" >&2
    exit 1
fi

missing=()
for entry in "${NEEDED[@]}"; do
    cmd=${entry%% *} pkg=${entry#* }
    command -v "$cmd" >/dev/null || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "deps: installing ${missing[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
echo "deps: ok"
