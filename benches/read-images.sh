#!/usr/bin/env bash
# read-images.sh [RAW_IMAGE] — how fast dedisk reads each image format, as a ratio to
# reading the raw image the others were converted from, in the same run.
#
# Converts RAW_IMAGE (default: the shared workload's day1.raw, an 8 GiB disk with 3 GB
# allocated) to qcow2, qcow2 with zstd compression, VHD (dynamic), VHDX, VMDK and VDI with
# qemu-img, then for each (page cache dropped first, best of 2):
#   read   the read_source bench binary: every allocated byte through dedisk's reader;
#   backup `dedisk backup` into a fresh repository (read + chunk + hash + compress).
# Prints seconds and format/raw ratios. Needs root (drop_caches) and qemu-img.
set -euo pipefail
# Repositories are encrypted by default (format version 2): the password of these runs.
export DEDISK_PASSWORD=${DEDISK_PASSWORD:-bench-password}
RAW=${1:-/var/tmp/vmwork/day1.raw}
HERE=$(cd "$(dirname "$0")" && pwd)
W=${OUT:-$(dirname "$RAW")/read-images}
cd "$HERE/.." && cargo build --release -q -p dedisk -p dedisk-benches
BIN=$HERE/../target/release/dedisk
READ=$HERE/../target/release/read_source
mkdir -p "$W"
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
make() { [ -e "$W/$1" ] || qemu-img convert -q "${@:2}" "$RAW" "$W/$1"; }
make img.qcow2 -O qcow2
make img-zstd.qcow2 -c -O qcow2 -o compression_type=zstd
make img.vhd -O vpc
make img.vhdx -O vhdx
make img.vmdk -O vmdk
make img.vdi -O vdi
best() { # best of two cold runs of "$@", in seconds
  local b=
  for _ in 1 2; do
    cold
    local s; s=$( { /usr/bin/time -f %e "$@" >/dev/null; } 2>&1 | tail -1)
    if [ -z "$b" ] || [ "$(echo "$s < $b" | bc)" = 1 ]; then b=$s; fi
  done
  echo "$b"
}
printf '%-16s %10s %8s %10s %8s\n' image read_s ratio backup_s ratio
raw_read= ; raw_backup=
for img in "$RAW" "$W/img.qcow2" "$W/img.vhd" "$W/img.vhdx" "$W/img.vmdk" "$W/img.vdi" "$W/img-zstd.qcow2"; do
  r=$(best "$READ" "$img")
  rm -rf "$W/repo"; "$BIN" init -q "$W/repo" >/dev/null
  b=$(best sh -c "rm -rf '$W/repo' && '$BIN' init -q '$W/repo' >/dev/null && '$BIN' --repo '$W/repo' backup -q --name bench '$img'")
  raw_read=${raw_read:-$r}; raw_backup=${raw_backup:-$b}
  printf '%-16s %10s %8.2f %10s %8.2f\n' "$(basename "$img")" "$r" "$(echo "$r / $raw_read" | bc -l)" "$b" "$(echo "$b / $raw_backup" | bc -l)"
done
