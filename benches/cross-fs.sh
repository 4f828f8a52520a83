#!/usr/bin/env bash
# cross-fs.sh [WORKDIR] [CONFIGS] — cross-VM dedup when the same files sit at other
# offsets (issue 19). Builds xfs.raw: day 1's root filesystem copied file by file
# (`cp -a`) into XFS in a GPT disk whose partition starts elsewhere, a second VM
# installed from the same files on another filesystem. For each chunker configuration
# in CONFIGS (default "16/64/256/256 16/64/256/0 8/32/128/0"; min/avg/max KiB and the
# file-start tail in bytes, 0 for no cuts at file starts; aligned-cdc, encrypted,
# zstd 3) it prints:
#   - alone: the repository holding only xfs.raw;
#   - adds: what xfs.raw adds to a repository holding day1.raw, and adds/alone;
#   - nights: the repository after day1..day7 of one VM (the nightly figure it must not
#     hurt), and its index.
# Then where the remainder lies in the files: the bytes of files smaller than 16, 64 and
# 256 KiB, and what XFS uses beyond the files' data. Needs root (loop mounts), xfsprogs.
set -euo pipefail
export DEDISK_PASSWORD=${DEDISK_PASSWORD:-bench-password}
W=${1:-/var/tmp/vmwork}
CONFIGS=${2:-"16/64/256/256 16/64/256/0 8/32/128/0"}
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${DEDISK:-$HERE/../target/release/dedisk}
OUT=${OUT:-/var/tmp/dedisk-cross-fs}
[ -x "$BIN" ] || (cd "$HERE/.." && cargo build --release -q)
command -v mkfs.xfs >/dev/null || { echo "needs mkfs.xfs (apt-get install xfsprogs)" >&2; exit 1; }
mkdir -p "$OUT"
export DEDISK_CACHE_DIR=$OUT/cache

src=$(mktemp -d); dst=$(mktemp -d)
cleanup() { umount "$src" 2>/dev/null || true; umount "$dst" 2>/dev/null || true; rmdir "$src" "$dst" 2>/dev/null || true; }
trap cleanup EXIT
mount -o ro,loop,offset=$((1 << 20)) "$W/day1.raw" "$src"
if [ ! -f "$OUT/xfs.raw" ]; then
  truncate -s 8G "$OUT/xfs.raw.tmp"
  # Another partition start and size: nothing lands where ext4 had it.
  printf 'label: gpt\nstart=6144, size=15000000, type=L\n' | sfdisk -q "$OUT/xfs.raw.tmp"
  truncate -s $((15000000 * 512)) "$OUT/p1.tmp"
  mkfs.xfs -q -f "$OUT/p1.tmp"
  mount -o loop "$OUT/p1.tmp" "$dst"
  cp -a "$src"/. "$dst"/
  umount "$dst"
  dd if="$OUT/p1.tmp" of="$OUT/xfs.raw.tmp" bs=1M seek=3 conv=notrunc,sparse status=none
  rm "$OUT/p1.tmp"; mv "$OUT/xfs.raw.tmp" "$OUT/xfs.raw"
fi

repo_bytes() { du -sb "$1" | cut -f1; }
printf '%-14s %14s %14s %8s %14s %10s\n' min/avg/max/tail alone adds adds/alone nights index
for c in $CONFIGS; do
  IFS=/ read -r mn av mx tail <<< "$c"
  init() { rm -rf "$1" "$DEDISK_CACHE_DIR"; "$BIN" init -q "$1" --chunk-min "$mn" --chunk-avg "$av" --chunk-max "$mx" --file-start-tail "${tail:-256}" >/dev/null; }
  R=$OUT/repo; init "$R"
  "$BIN" backup -q --repo "$R" --name b "vda=$OUT/xfs.raw" >/dev/null
  alone=$(repo_bytes "$R")
  init "$R"
  "$BIN" backup -q --repo "$R" --name a "vda=$W/day1.raw" >/dev/null
  base=$(repo_bytes "$R")
  "$BIN" backup -q --repo "$R" --name b "vda=$OUT/xfs.raw" >/dev/null
  adds=$(( $(repo_bytes "$R") - base ))
  init "$R"
  for d in 1 2 3 4 5 6 7; do "$BIN" backup -q --repo "$R" --name a "vda=$W/day$d.raw" >/dev/null; done
  nights=$(repo_bytes "$R")
  index=$(du -cb "$DEDISK_CACHE_DIR" | tail -1 | cut -f1)
  printf '%-14s %14s %14s %7.1f%% %14s %10s\n' "$c" "$alone" "$adds" "$(echo "100 * $adds / $alone" | bc -l)" "$nights" "$index"
  rm -rf "$R"
done

echo "files of day 1's root filesystem by size (apparent bytes):"
find "$src" -xdev -type f -printf '%s\n' | awk '
  { t += $1; if ($1 < 16384) a += $1; if ($1 < 65536) b += $1; if ($1 < 262144) c += $1; n++ }
  END { printf "  %d files, %.0f bytes; under 16 KiB %.0f (%.1f%%), under 64 KiB %.0f (%.1f%%), under 256 KiB %.0f (%.1f%%)\n",
        n, t, a, 100*a/t, b, 100*b/t, c, 100*c/t }'
mount -o ro,loop,offset=$((6144 * 512)) "$OUT/xfs.raw" "$dst"
echo "  XFS holds $(df -B1 --output=used "$dst" | tail -1) bytes used, ext4 $(df -B1 --output=used "$src" | tail -1)"
