#!/usr/bin/env bash
# The same content built by mkosi (Debian's mkosi 14): Debian bookworm with the test base's
# packages, plus an extra tree per node holding what imgbuild adds (the components under /opt and
# the node's files, taken from imgbuild's node trees), as a GPT ext4 image converted to qcow2.
# Not bootable: mkosi 14 mounts the ESP to install a boot loader, and this machine's kernel
# cannot mount vfat — so mkosi does less work than imgbuild here.
# usage: mkosi.sh NODE_TREES_DIR WORK_DIR NODE...
set -euo pipefail
trees=$1 work=$2; shift 2
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
pkgs=systemd,systemd-sysv,udev,dbus,cloud-init,openssh-server,iproute2,netbase,ca-certificates,python3,procps
pkgs=$pkgs,linux-image-amd64,initramfs-tools,shim-signed,grub-efi-amd64-signed,netplan.io,cloud-guest-utils,fdisk
mkdir -p "$work/cache"
for node in "$@"; do
    extra=$work/extra-$node
    rm -rf "$extra"; mkdir -p "$extra"
    paths=()
    for p in opt etc/hostname etc/hosts etc/fstab etc/zookeeper etc/kafka etc/storm etc/default etc/imgbuild \
        etc/systemd/system etc/cloud/cloud.cfg.d usr/lib/sysusers.d usr/lib/tmpfiles.d usr/lib/imgbuild \
        var/lib/cloud/seed var/lib/zookeeper; do
        [ -e "$trees/$node/rootfs/$p" ] && paths+=("$p")
    done
    (cd "$trees/$node/rootfs" && tar -cf - "${paths[@]}") | tar -xf - -C "$extra"
    mkosi -d debian -r bookworm ${mirror:+-m "$mirror"} -t gpt_ext4 --qcow2 --with-docs --cache "$work/cache" \
        -p "$pkgs" --extra-tree "$extra" --root-size 3700M --hostname "$node" -o "$work/$node.qcow2" -f build >"$work/$node.log" 2>&1 ||
        { tail -20 "$work/$node.log" >&2; exit 1; }
done
