#!/usr/bin/env bash
# Install what imgbuild's build and tests need on a fresh Debian/Ubuntu machine (`deps.sh bench`:
# also what `make bench` needs). Idempotent: installs only what is missing, runs `apt-get update`
# at most once. The host is left booting and running as before: every unit that a package
# installed here enabled (cloud-init's, systemd-container's machines.target) is disabled again,
# cloud-init is also switched off by /etc/cloud/cloud-init.disabled, and a downgrade is
# announced before it happens.
set -euo pipefail

# Debian packages the build and test suite use. Format: "command package".
NEEDED=(
    "gpg gnupg"          # test fixtures: throwaway signing keys, KEYS, .asc
    "xz xz-utils"        # test fixtures: the .tar.xz base stand-in
    "curl curl"          # benchmarks: the plain-download baseline
    "python3 python3"    # benchmarks: rewriting BENCHMARKS.md sections
    "ensurepip python3-venv"       # tests: a virtualenv for the SPDX validator (spdx-tools from PyPI)
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
    "ssh openssh-client"           # imgbuild ssh; make demo/e2e: ssh-keygen for the demo key
    "openssl openssl"              # imgbuild: the cluster CA and node certificates
    "mvn maven"                    # test fixtures: ZooKeeper and Kafka jars from Maven Central
    "unzip unzip"                  # test fixtures: reading jar manifests
)
if [ "${1:-}" = bench ]; then
    NEEDED+=(
        "mkosi mkosi"                  # make bench: the mkosi comparison
        "debootstrap debootstrap"      # make bench: mkosi's Debian bootstrap
        "perf linux-perf"              # make bench: the profile of a marginal node (bench-profile)
    )
fi

if ! command -v cargo >/dev/null; then
    echo "deps: cargo not found: install the Rust toolchain (https://rustup.rs) first" >&2
    exit 1
fi

missing=()
for entry in "${NEEDED[@]}"; do
    cmd=${entry%% *} pkg=${entry#* }
    case $cmd in
        ensurepip) python3 -c 'import ensurepip' 2>/dev/null || missing+=("$pkg") ;;
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
            echo "deps: DOWNGRADING qemu-utils $have -> $v (qemu-system-x86 $v needs its own qemu-utils)" >&2
        fi
    fi
    installed() { dpkg-query -W -f '${Package} ${db:Status-Status}\n' 2>/dev/null | awk '$2 == "installed" {print $1}' | sort; }
    before=$(installed)
    if [[ " ${missing[*]} " == *" cloud-init "* ]] && [ ! -e /etc/cloud/cloud-init.disabled ]; then
        # Only its validators are wanted (`cloud-init schema`): it must never run on this host.
        $SUDO mkdir -p /etc/cloud
        echo "deps: cloud-init is installed for its validators only: /etc/cloud/cloud-init.disabled keeps it off this host" |
            $SUDO tee /etc/cloud/cloud-init.disabled >&2
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${extra[@]}" ${missing[*]}
    # Units the new packages enabled (cloud-init's, machines.target) are disabled again.
    for pkg in $(comm -13 <(echo "$before") <(installed)); do
        for unit in $(dpkg -L "$pkg" | grep -E '^/(usr/)?lib/systemd/system/[^/]+\.(service|socket|timer|target|path)$'); do
            unit=$(basename "$unit")
            if [ "$(systemctl is-enabled "$unit" 2>/dev/null)" = enabled ]; then
                $SUDO systemctl disable --quiet "$unit" 2>/dev/null || true
                echo "deps: disabled $unit (enabled by $pkg; not wanted on the build host)" >&2
            fi
        done
    done
fi
echo "deps: ok"
