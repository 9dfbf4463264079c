#!/usr/bin/env bash
# Install what imgbuild's build and tests need on a fresh Debian/Ubuntu machine.
# Idempotent: installs only what is missing, runs `apt-get update` at most once.
set -euo pipefail

# Debian packages the build and test suite use. Format: "command package".
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
    "mkfs.fat dosfstools"          # the EFI system partition and the FAT seed volume
    "mcopy mtools"                 # copying the boot chain and seed into FAT volumes in place
    "xorriso xorriso"              # the ISO9660 NoCloud seed
    "qemu-img qemu-utils"          # qcow2 images; `qemu-img check` in tests
    "qemu-system-x86_64 qemu-system-x86"  # booting images (tests, `imgbuild boot`/`up`)
    "ovmf.fd ovmf"                 # UEFI firmware for QEMU (checked as a file, see below)
    "ip iproute2"                  # imgbuild up: the private network namespace
    "systemd-nspawn systemd-container"  # imgbuild up --runtime container (make e2e)
    "script bsdutils"              # imgbuild up --runtime container: a terminal for each console
    "mvn maven"                    # test fixtures: ZooKeeper and Kafka jars from Maven Central
    "unzip unzip"                  # test fixtures: reading jar manifests
    "mkosi mkosi"                  # make bench: the mkosi comparison
    "debootstrap debootstrap"      # make bench: mkosi's Debian bootstrap
    "perf linux-perf"              # make bench: the profile of a marginal node (bench-profile)
)

if ! command -v cargo >/dev/null; then
    echo "deps: cargo not found: install the Rust toolchain (https://rustup.rs) first" >&2
    exit 1
fi

missing=()
for entry in "${NEEDED[@]}"; do
    cmd=${entry%% *} pkg=${entry#* }
    case $cmd in
        ovmf.fd) [ -e /usr/share/OVMF/OVMF_CODE.fd ] || [ -e /usr/share/OVMF/OVMF_CODE_4M.fd ] || missing+=("$pkg") ;;
        *) command -v "$cmd" >/dev/null || missing+=("$pkg") ;;
    esac
done
if ((${#missing[@]})); then
    echo "deps: installing ${missing[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    # A newer qemu-utils (e.g. from backports) blocks the distribution's qemu-system-x86, which
    # wants its own version: install both at the same version, downgrading qemu-utils if needed.
    extra=()
    if [[ " ${missing[*]} " == *" qemu-system-x86 "* ]]; then
        v=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
        have=$(dpkg-query -W -f '${Version}' qemu-utils 2>/dev/null || true)
        if [ -n "$have" ] && [ "$have" != "$v" ]; then
            missing=("${missing[@]/qemu-utils}")
            extra=(--allow-downgrades "qemu-utils=$v")
        fi
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${extra[@]}" ${missing[*]}
fi
echo "deps: ok"
