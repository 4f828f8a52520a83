#!/usr/bin/env bash
# make-bootable-disk.sh OUT.raw [MARKER] — a 96 MiB BIOS-bootable disk for boot tests:
# an MBR partition with ext4, extlinux, Debian's kernel and a busybox initramfs whose
# /init prints MARKER (default DEDISK-BOOT-OK) on ttyS0 and powers off. With MARKER
# "hang", /init prints nothing and sleeps forever (a guest that never signals).
#
# Needs root (a loop mount for extlinux), sfdisk, mkfs.ext4, extlinux (/usr/lib/syslinux/
# mbr/mbr.bin), busybox-static, cpio, and a kernel: /boot/vmlinuz-*, or one extracted
# from Debian's linux-image package into $DEDISK_TEST_KERNEL_DIR (what .ci/run does).
set -euo pipefail
out=$1
marker=${2:-DEDISK-BOOT-OK}
kernel=""
for k in ${DEDISK_TEST_KERNEL_DIR:+$DEDISK_TEST_KERNEL_DIR/boot/vmlinuz-*} /boot/vmlinuz-*; do
  [ -f "$k" ] && { kernel=$k; break; }
done
[ -n "$kernel" ] || { echo "no kernel: install linux-image-amd64 or set DEDISK_TEST_KERNEL_DIR" >&2; exit 2; }
work=$(mktemp -d)
mnt="$work/mnt"
cleanup() { mountpoint -q "$mnt" && umount "$mnt"; rm -rf "$work"; }
trap cleanup EXIT

# The initramfs: busybox and an /init.
mkdir -p "$work/initrd/bin" "$work/initrd/dev" "$work/initrd/proc" "$mnt"
cp /bin/busybox "$work/initrd/bin/busybox"
if [ "$marker" = hang ]; then
  printf '#!/bin/busybox sh\nwhile :; do /bin/busybox sleep 3600; done\n' > "$work/initrd/init"
else
  printf '#!/bin/busybox sh\n/bin/busybox mount -t devtmpfs dev /dev\necho %s > /dev/ttyS0\n/bin/busybox poweroff -f\n' "$marker" > "$work/initrd/init"
fi
chmod 755 "$work/initrd/init"
(cd "$work/initrd" && find . | cpio -o -H newc --quiet | gzip -1) > "$work/initrd.gz"

# The disk: one bootable MBR partition from 1 MiB, ext4 that extlinux can read.
rm -f "$out"
truncate -s 96M "$out"
echo 'start=2048, type=83, bootable' | sfdisk -q "$out"
truncate -s 95M "$work/part.raw"
mkfs.ext4 -q -F -O ^64bit,^metadata_csum -L boot "$work/part.raw"
mount -o loop "$work/part.raw" "$mnt"
mkdir -p "$mnt/boot"
cp "$kernel" "$mnt/boot/vmlinuz"
cp "$work/initrd.gz" "$mnt/boot/initrd.gz"
cat > "$mnt/boot/extlinux.conf" <<CONF
DEFAULT linux
TIMEOUT 0
PROMPT 0
LABEL linux
  KERNEL /boot/vmlinuz
  INITRD /boot/initrd.gz
  APPEND console=ttyS0 quiet panic=-1
CONF
extlinux --install "$mnt/boot" 2>/dev/null
umount "$mnt"
dd if="$work/part.raw" of="$out" bs=1M seek=1 conv=notrunc,sparse status=none
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$out" bs=440 count=1 conv=notrunc status=none
