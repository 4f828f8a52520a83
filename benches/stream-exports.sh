#!/usr/bin/env bash
# stream-exports.sh [RAW_IMAGE] — backing up a disk that arrives through a pipe, as
# `xe vdi-export` sends it: format=raw (every byte, zeros too) against format=vhd (only
# allocated blocks), same run.
#
# Converts RAW_IMAGE (default: the shared workload's day1.raw, 8 GiB with 3 GB allocated)
# to a dynamic VHD with an exact size (qemu-img -o force_size=on, as XenServer writes
# them), then, into fresh repositories, page cache dropped before each step:
#   raw   `cat RAW | dedisk backup vda=-`                 (the baseline)
#   vhd   `cat VHD | dedisk backup --format vhd vda=-`
# and prints seconds, bytes through the pipe and the speed-up over raw. Checks both
# snapshots restore to the same bytes. Needs root (drop_caches) and qemu-img.
set -euo pipefail
# Repositories are encrypted by default (format version 2): the password of these runs.
export DEDISK_PASSWORD=${DEDISK_PASSWORD:-bench-password}
RAW=${1:-/var/tmp/vmwork/day1.raw}
HERE=$(cd "$(dirname "$0")" && pwd)
W=${OUT:-$(dirname "$RAW")/stream-exports}
cd "$HERE/.." && cargo build --release -q -p dedisk
BIN=$HERE/../target/release/dedisk
rm -rf "$W"; mkdir -p "$W"
trap 'rm -rf "$W"' EXIT
qemu-img convert -f raw -O vpc -o subformat=dynamic,force_size=on "$RAW" "$W/disk.vhd"
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
secs() { local t0 t1; t0=$(date +%s.%N); sh -c "$1" >/dev/null; t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }
"$BIN" init -q "$W/repo-raw" >/dev/null
"$BIN" init -q "$W/repo-vhd" >/dev/null
cold; r=$(secs "cat '$RAW' | '$BIN' --repo '$W/repo-raw' backup -q --name s vda=-")
cold; v=$(secs "cat '$W/disk.vhd' | '$BIN' --repo '$W/repo-vhd' backup -q --name s --format vhd vda=-")
printf '%-6s %8s %12s %8s\n' export seconds "pipe bytes" "vs raw"
printf '%-6s %8.2f %12d %8.2f\n' raw "$r" "$(stat -c %s "$RAW")" 1
printf '%-6s %8.2f %12d %8.2f\n' vhd "$v" "$(stat -c %s "$W/disk.vhd")" "$(echo "$r / $v" | bc -l)"
"$BIN" --repo "$W/repo-raw" restore -q latest:vda "$W/a.raw" >/dev/null
"$BIN" --repo "$W/repo-vhd" restore -q latest:vda "$W/b.raw" >/dev/null
cmp "$W/a.raw" "$W/b.raw" || { echo "the two snapshots differ" >&2; exit 1; }
