#!/usr/bin/env bash
# index-scale.sh DIR MILLIONS — the index and the maintenance commands at scale (issue
# 19). Fills a plain repository in DIR with MILLIONS million simulated 64 KiB chunks
# (benches/src/bin/index_scale.rs: sparse packs with real TOCs, index rows, ten
# snapshots whose real manifests reference every chunk), then runs, each as the real
# `dedisk` command with the page cache dropped before it: verify (the structure pass
# and every snapshot's manifest against the index), forget one snapshot and prune (mark,
# tally, condemn and sweep a tenth of the packs), repair index (a rebuild from the TOCs,
# the old index deleted first), and a backup of 1 GiB of new data and its restore.
# Prints per step the wall time, the time per million chunks and the peak RSS, with
# the RSS per TiB of unique data. Needs root (drop_caches) and GNU time; disk: about
# 0.26 GB per million chunks (index 105 B, TOCs 56 B, manifests 41 B, prune's sorted
# ids 64 B at the peak), 10 million take about 10 minutes.
set -euo pipefail
D=${1:?usage: index-scale.sh DIR MILLIONS}
M=${2:?usage: index-scale.sh DIR MILLIONS}
HERE=$(cd "$(dirname "$0")" && pwd)
(cd "$HERE/.." && cargo build --release -q -p dedisk -p dedisk-benches --bin dedisk --bin index_scale)
BIN=$HERE/../target/release/dedisk
command -v /usr/bin/time >/dev/null || { echo "needs GNU time (apt-get install time)" >&2; exit 1; }
rm -rf "$D"; mkdir -p "$D"
R=$D/repo
export DEDISK_CACHE_DIR=$D/cache
"$BIN" -q init --encryption none "$R" >/dev/null
"$HERE/../target/release/index_scale" "$R" "$M"
. "$HERE/lib.sh"
tib=$(echo "$M * 65536 / 2^40 * 10^6" | bc -l)
printf '%-14s %9s %14s %10s %12s\n' step seconds "s/M chunks" "RSS MiB" "MiB per TiB"
step() {
  local name=$1; shift
  cold
  /usr/bin/time -o "$D/t" -f "%e %M" "$@" > "$D/out.log" 2>&1 || { cat "$D/out.log" >&2; exit 1; }
  read -r wall rss < "$D/t"
  printf '%-14s %9.1f %14.2f %10.0f %12.1f\n' "$name" "$wall" "$(echo "$wall / $M" | bc -l)" \
    "$(echo "$rss / 1024" | bc -l)" "$(echo "$rss / 1024 / $tib" | bc -l)"
}
step verify "$BIN" -q --repo "$R" verify
step forget "$BIN" -q --repo "$R" forget --name vm0 --keep-tag keep
step prune "$BIN" -q --repo "$R" prune
rm -f "$R"/index.sqlite*
step "repair index" "$BIN" -q --repo "$R" repair index
head -c 1G /dev/urandom > "$D/new.raw"
step "backup 1 GiB" "$BIN" -q --repo "$R" backup --name new "vda=$D/new.raw"
step "restore 1 GiB" sh -c "'$BIN' -q --repo '$R' restore new@latest '$D/out.raw' && sync"
cmp "$D/new.raw" "$D/out.raw"
echo "repository: $(du -sh "$R" | cut -f1) on disk (packs are sparse), $(ls "$R"/snapshots | wc -l) snapshots"
