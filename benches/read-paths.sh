#!/usr/bin/env bash
# read-paths.sh [RAW_IMAGE] — using a snapshot in place, against restoring it, same run.
#
# Backs RAW_IMAGE (default: the shared workload's day1.raw, 8 GiB with 3 GB allocated) up
# into a fresh repository, then, page cache dropped before each step:
#   restore  `dedisk restore` to a file                       (the baseline)
#   nbd      `qemu-img convert` from `dedisk serve-nbd` to a file (skips holes by block status)
#   mount    `cp --sparse=always` of VM/latest/disk.raw from `dedisk mount` to a file
# and prints seconds and throughput relative to restore. Then builds a 100 GiB sparse disk
# with 64 scattered 1 MiB extents and measures cold first-byte latency of random 4 KiB
# reads through the reader (`random_read`). Needs root, qemu-img, fuse3.
set -euo pipefail
# Repositories are encrypted by default (format version 2): the password of these runs.
export DEDISK_PASSWORD=${DEDISK_PASSWORD:-bench-password}
RAW=${1:-/var/tmp/vmwork/day1.raw}
HERE=$(cd "$(dirname "$0")" && pwd)
W=${OUT:-$(dirname "$RAW")/read-paths}
cd "$HERE/.." && cargo build --release -q -p dedisk -p dedisk-benches
BIN=$HERE/../target/release/dedisk
rm -rf "$W"; mkdir -p "$W/mnt"
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
secs() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }
"$BIN" init -q "$W/repo" >/dev/null
"$BIN" --repo "$W/repo" backup -q --name bench "disk=$RAW" >/dev/null
cold; r=$(secs "$BIN" --repo "$W/repo" restore -q latest "$W/restored.raw"); rm -f "$W/restored.raw"
"$BIN" --repo "$W/repo" serve-nbd --all --listen 127.0.0.1:10977 >/dev/null 2>&1 & srv=$!
sleep 1
cold; n=$(secs qemu-img convert -f raw -O raw nbd://127.0.0.1:10977/bench@latest:disk "$W/nbd.raw"); rm -f "$W/nbd.raw"
kill -INT $srv; wait $srv || true
"$BIN" --repo "$W/repo" mount "$W/mnt" >/dev/null 2>&1 & mnt=$!
sleep 1
cold; m=$(secs cp --sparse=always "$W/mnt/bench/latest/disk.raw" "$W/mount.raw"); rm -f "$W/mount.raw"
kill -INT $mnt; wait $mnt || true
printf '%-8s %8s %8s\n' path seconds "vs restore"
printf '%-8s %8.2f %8.2f\n' restore "$r" 1
printf '%-8s %8.2f %8.2f\n' nbd "$n" "$(echo "$r / $n" | bc -l)"
printf '%-8s %8.2f %8.2f\n' mount "$m" "$(echo "$r / $m" | bc -l)"
# Random reads in a 100 GiB disk.
truncate -s 100G "$W/big.raw"
for i in $(seq 0 63); do head -c 1M /dev/urandom | dd of="$W/big.raw" bs=1M seek=$((i * 1600 + 7)) conv=notrunc status=none; done
"$BIN" --repo "$W/repo" backup -q --name big "disk=$W/big.raw" >/dev/null
rm -f "$W/big.raw"
"$HERE/../target/release/random_read" "$W/repo" big@latest:disk 20 | tail -1
