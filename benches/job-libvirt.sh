#!/usr/bin/env bash
# job-libvirt.sh [RAW_IMAGE] — the libvirt provider's cost, against reading the same
# running domain's image without a snapshot, same run.
#
# Puts a qcow2 overlay on RAW_IMAGE (default: the shared workload's day1.raw, 8 GiB with
# 3 GB allocated) and runs a KVM domain on it (SeaBIOS, no guest OS: the disk only has to
# be attached). Then, into fresh repositories, page cache dropped before each step:
#   plain    `dedisk backup` of the domain's qcow2 as it is           (the baseline)
#   libvirt  `dedisk run` with snapshot = "libvirt": external snapshot, backup of the
#            frozen base, blockcommit --active --pivot, overlay deleted
# and the same again as a second (incremental) night. Prints seconds and the ratio
# libvirt / plain. Needs root, libvirtd running, qemu-img, /dev/kvm (else TCG).
set -euo pipefail
# Repositories are encrypted by default (format version 2): the password of these runs.
export DEDISK_PASSWORD=${DEDISK_PASSWORD:-bench-password}
RAW=${1:-/var/tmp/vmwork/day1.raw}
HERE=$(cd "$(dirname "$0")" && pwd)
W=${OUT:-$(dirname "$RAW")/job-libvirt}
DOM=dedisk-bench-$$
cd "$HERE/.." && cargo build --release -q -p dedisk
BIN=$HERE/../target/release/dedisk
rm -rf "$W"; mkdir -p "$W"; chmod 755 "$W"
cleanup() { virsh destroy "$DOM" >/dev/null 2>&1 || true; rm -rf "$W"; }
[ -n "${KEEP:-}" ] || trap cleanup EXIT
qemu-img create -q -f qcow2 -b "$RAW" -F raw "$W/vda.qcow2"
kind=qemu; [ -e /dev/kvm ] && kind=kvm
cat > "$W/dom.xml" <<EOF
<domain type='$kind'>
  <name>$DOM</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='network'/></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$W/vda.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>
EOF
virsh create "$W/dom.xml" >/dev/null
printf 'repository = "repo-libvirt"\n[[vm]]\nname = "%s"\nsnapshot = "libvirt"\n' "$DOM" > "$W/job.toml"
"$BIN" init -q "$W/repo-plain" >/dev/null
"$BIN" init -q "$W/repo-libvirt" >/dev/null
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
secs() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }
printf '%-8s %-8s %8s %8s\n' night path seconds "vs plain"
for night in 1 2; do
  cold; p=$(secs "$BIN" --repo "$W/repo-plain" backup -q --format qcow2 --name "$DOM" "vda=$W/vda.qcow2")
  cold; l=$(secs "$BIN" -q run "$W/job.toml") || { cat "$W/job.report.json"; exit 1; }
  printf '%-8s %-8s %8.2f %8.2f\n' "$night" plain "$p" 1
  printf '%-8s %-8s %8.2f %8.2f\n' "$night" libvirt "$l" "$(echo "$l / $p" | bc -l)"
done
# The chain is one file again.
virsh domblklist "$DOM" | grep -q "$W/vda.qcow2"
ls "$W" | grep -q dedisk- && { echo "overlay left behind" >&2; exit 1; }
exit 0
