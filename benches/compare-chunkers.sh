#!/usr/bin/env bash
# compare-chunkers.sh [WORKDIR] — measure aligned-cdc, fastcdc and fixed chunking side by
# side on the shared workload (../shared/workload/make-workload.sh output, default
# /var/tmp/vmwork). For each algorithm (min/avg/max 16/64/256 KiB, zstd 3) it prints:
#   - repository bytes after backing up day1..day7 of one VM (dedup across nights),
#   - bytes a second VM adds: "clone" = day7 (day1's image diverged by 6 nights),
#     "relayout" = the same files as day1 copied into a fresh ext4 (files at other blocks),
#   - data chunks, index size, and wall time of the seven backups.
# Needs root (loop-mounts day1's root partition read-only to build the relayout image).
set -euo pipefail
# Repositories are encrypted by default (format version 2): the password of these runs.
export DEDISK_PASSWORD=${DEDISK_PASSWORD:-bench-password}
W=${1:-/var/tmp/vmwork}
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${DEDISK:-$HERE/../target/release/dedisk}
OUT=${OUT:-/var/tmp/dedisk-chunkers}
[ -x "$BIN" ] || (cd "$HERE/.." && cargo build --release -q)
mkdir -p "$OUT"

if [ ! -f "$OUT/relayout.raw" ]; then
  mnt=$(mktemp -d)
  mount -o ro,loop,offset=$((1 << 20)) "$W/day1.raw" "$mnt"
  truncate -s 8G "$OUT/relayout.raw.tmp"
  # A different partition start and size: every file lands at other disk offsets.
  printf 'label: gpt\nstart=4096, size=15000000, type=L\n' | sfdisk -q "$OUT/relayout.raw.tmp"
  truncate -s 7000M "$OUT/p1.tmp"
  mkfs.ext4 -q -F -d "$mnt" "$OUT/p1.tmp"
  umount "$mnt"; rmdir "$mnt"
  dd if="$OUT/p1.tmp" of="$OUT/relayout.raw.tmp" bs=1M seek=2 conv=notrunc,sparse status=none
  rm "$OUT/p1.tmp"; mv "$OUT/relayout.raw.tmp" "$OUT/relayout.raw"
fi

repo_bytes() { du -sb --exclude='index.sqlite*' "$1" | cut -f1; }
printf '%-12s %14s %14s %14s %10s %12s %9s\n' algorithm repo_7_nights clone_adds relayout_adds chunks index_bytes seconds
for alg in aligned-cdc fastcdc fixed; do
  R=$OUT/repo-$alg; rm -rf "$R"
  "$BIN" init -q "$R" --chunker "$alg" >/dev/null
  start=$(date +%s.%N)
  for d in 1 2 3 4 5 6 7; do "$BIN" backup -q --repo "$R" --name vm-a "vda=$W/day$d.raw" >/dev/null; done
  secs=$(echo "$(date +%s.%N) - $start" | bc)
  nights=$(repo_bytes "$R")
  chunks=$("$BIN" --json stats --repo "$R" | python3 -c 'import json,sys; print(json.load(sys.stdin)["chunks"])')
  index=$(du -cb "$R"/index.sqlite* | tail -1 | cut -f1)
  # A clone: start from a repository holding only day1, add day7 as another VM.
  C=$OUT/clone-$alg; rm -rf "$C"; "$BIN" init -q "$C" --chunker "$alg" >/dev/null
  "$BIN" backup -q --repo "$C" --name vm-a "vda=$W/day1.raw" >/dev/null
  base=$(repo_bytes "$C")
  "$BIN" backup -q --repo "$C" --name vm-b "vda=$W/day7.raw" >/dev/null
  clone=$(( $(repo_bytes "$C") - base ))
  base=$(repo_bytes "$C")
  "$BIN" backup -q --repo "$C" --name vm-c "vda=$OUT/relayout.raw" >/dev/null
  relayout=$(( $(repo_bytes "$C") - base ))
  printf '%-12s %14s %14s %14s %10s %12s %9.1f\n' "$alg" "$nights" "$clone" "$relayout" "$chunks" "$index" "$secs"
  rm -rf "$C"
done
