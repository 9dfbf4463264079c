#!/usr/bin/env bash
# The shell floor: by hand, only the steps a build of node1..3 cannot avoid, on the same inputs as
# `imgbuild all` (the fixture mirror's base and component tarballs) — extract the base and the
# components once, then per node: hard-link copy, the node's files (taken from imgbuild's own
# node tree), mkfs.ext4 -d into the disk file, the ESP (mkfs.fat + mcopy of shim, GRUB and
# grub.cfg), sfdisk, qemu-img convert. No verification, no reproducibility passes, no seed, bmap or
# manifest, nothing atomic.
# usage: floor.sh MIRROR_DIR NODE_TREES_DIR WORK_DIR NODE...
set -euo pipefail
mirror=$1 trees=$2 work=$3; shift 3
MiB=$((1 << 20))
rm -rf "$work"; mkdir -p "$work/common/opt"
tar -xJf "$(find "$mirror/imgbuild-fixtures.invalid/debian" -name '*.tar.xz' | head -1)" \
    -C "$work/common" --numeric-owner --xattrs --xattrs-include='*'
comp() { mkdir -p "$work/common/opt/$1"; tar -xzf "$2" -C "$work/common/opt/$1" --strip-components=1 --no-same-owner; }
comp zookeeper "$mirror/downloads.apache.org/zookeeper/zookeeper-3.9.5/apache-zookeeper-3.9.5-bin.tar.gz"
comp kafka "$mirror/downloads.apache.org/kafka/4.3.1/kafka_2.13-4.3.1.tgz"
comp storm "$mirror/downloads.apache.org/storm/apache-storm-2.8.3/apache-storm-2.8.3.tar.gz"
comp java "$(find "$mirror/github.com/adoptium" -name '*.tar.gz' | head -1)"
comp python "$(find "$mirror/github.com/astral-sh" -name '*.tar.gz' | head -1)"
for node in "$@"; do
    n=$work/$node
    cp -a -l "$work/common" "$n"
    (cd "$trees/$node/rootfs" && tar -cf - etc/hostname etc/hosts etc/machine-id etc/fstab etc/zookeeper etc/kafka \
        etc/storm etc/default etc/imgbuild etc/systemd/system etc/cloud/cloud.cfg.d var/lib/cloud/seed var/lib/zookeeper) |
        tar -xf - -C "$n" --recursive-unlink
    size=$(($(du -sm --apparent-size "$n" | cut -f1) * 5 / 4 * MiB + 1536 * MiB)) esp=$((256 * MiB))
    root_off=$((MiB + esp)) root_len=$((size - MiB - esp - MiB))
    truncate -s "$size" "$work/$node.raw"
    mkfs.ext4 -q -F -d "$n" -E "offset=$root_off" "$work/$node.raw" "$((root_len / 1024))k"
    mkdir -p "$work/$node-esp/EFI/BOOT" "$work/$node-esp/EFI/debian"
    cp "$n/usr/lib/shim/shimx64.efi.signed" "$work/$node-esp/EFI/BOOT/BOOTX64.EFI"
    cp "$n/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed" "$work/$node-esp/EFI/BOOT/grubx64.efi"
    k=$(cd "$n/boot" && ls vmlinuz-* | head -1); k=${k#vmlinuz-}
    printf 'search --label --set=root root\nlinux /boot/vmlinuz-%s root=LABEL=root rw console=ttyS0\ninitrd /boot/initrd.img-%s\nboot\n' "$k" "$k" \
        >"$work/$node-esp/EFI/debian/grub.cfg"
    mkfs.fat -F 32 -S 512 -s 1 --mbr=n --offset=$((MiB / 512)) "$work/$node.raw" $((esp / 1024)) >/dev/null
    MTOOLS_SKIP_CHECK=1 mcopy -s -Q -i "$work/$node.raw@@$MiB" "$work/$node-esp"/* ::/
    printf 'label: gpt\nstart=2048, size=%d, type=U\nstart=%d, size=%d, type=L\n' \
        $((esp / 512)) $((root_off / 512)) $((root_len / 512)) | sfdisk -q --no-reread --no-tell-kernel "$work/$node.raw"
    qemu-img convert -f raw -O qcow2 "$work/$node.raw" "$work/$node.qcow2"
done
