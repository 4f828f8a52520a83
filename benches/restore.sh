#!/usr/bin/env bash
# restore.sh [WORKDIR] — restore benchmark: dedisk's full, differential and --since
# restores of the shared workload's day 7 against restic and borg (Debian packages,
# default settings) restoring the same disk, in one run.
#
# Input: the shared workload (../shared/workload/make-workload.sh, default /var/tmp/vmwork):
# day6.raw and day7.raw, 8 GiB GPT disks with 3.3-3.4 GB allocated. Each tool backs up
# day 6 then day 7 (from one path, as a nightly snapshot would be). Then, every step with
# the page cache dropped first and ending durable (dedisk fsyncs; the peers are followed
# by `sync`):
#   full          dedisk restore of day 7 into a new file; restic restore; borg extract
#   differential  dedisk restore --differential of day 7 over a copy of day 6
#   since         the same with --since (day 6's snapshot): manifests compared, no reads
# Every result is compared with day7.raw. Prints wall seconds, CPU seconds, peak RSS and
# each ratio against dedisk's full restore and the fastest peer.
# Needs root (drop_caches), restic, borg (borgbackup), GNU time. Disk: ~30 GB free.
set -euo pipefail
W=${1:-/var/tmp/vmwork}
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${DEDISK:-$HERE/../target/release/dedisk}
B=${OUT:-$W/bench-restore}
export RESTIC_PASSWORD=bench-password DEDISK_PASSWORD=bench-password DEDISK_CACHE_DIR="$B/cache"
export BORG_PASSPHRASE=bench-password BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
[ -x "$BIN" ] || (cd "$HERE/.." && cargo build --release -q)
for t in restic borg /usr/bin/time; do
  command -v "$t" >/dev/null || { echo "needs $t" >&2; exit 1; }
done
rm -rf "$B"; mkdir -p "$B"
. "$HERE/lib.sh"
same() { cmp "$1" "$W/day7.raw" || { echo "$2 differs from day7.raw" >&2; exit 1; }; }

"$BIN" init -q "$B/dedisk-repo" >/dev/null
restic init -q --repo "$B/restic-repo" >/dev/null
borg init --encryption repokey-blake2 "$B/borg-repo"
for d in 6 7; do
  ln -f "$W/day$d.raw" "$B/disk.raw"
  "$BIN" backup -q --repo "$B/dedisk-repo" --name vm "vda=$B/disk.raw" >/dev/null
  restic backup -q --repo "$B/restic-repo" "$B/disk.raw" >/dev/null
  borg create "$B/borg-repo::day$d" "$B/disk.raw"
done
rm -f "$B/disk.raw"
day6=$("$BIN" --json snapshots --repo "$B/dedisk-repo" | python3 -c 'import json,sys; print(json.load(sys.stdin)["snapshots"][0]["id"][:8])')

measure dedisk-full "$BIN" restore -q --repo "$B/dedisk-repo" vm@latest "$B/full.raw"
same "$B/full.raw" "dedisk's restore"; rm -f "$B/full.raw"
measure restic-full sh -c "restic restore -q --repo '$B/restic-repo' latest --target '$B/restic' && sync"
same "$B/restic$B/disk.raw" "restic's restore"; rm -rf "$B/restic"
mkdir -p "$B/borg"
measure borg-full sh -c "cd '$B/borg' && borg extract --sparse '$B/borg-repo::day7' && sync"
same "$B/borg$B/disk.raw" "borg's extract"; rm -rf "$B/borg"

for mode in differential since; do
  cp --sparse=always "$W/day6.raw" "$B/target.raw"
  extra=(); [ $mode = since ] && extra=(--since "$day6")
  measure "dedisk-$mode" "$BIN" restore -q --repo "$B/dedisk-repo" vm@latest "$B/target.raw" --differential "${extra[@]}"
  same "$B/target.raw" "dedisk's $mode restore"
  rm -f "$B/target.raw"
done
echo "differing bytes day6 -> day7 (cmp -l): $(cmp -l "$W/day6.raw" "$W/day7.raw" | wc -l)" > "$B/differ"

python3 - "$B" <<'PY'
import sys
b = sys.argv[1]
t = {l.split()[0]: [float(x) for x in l.split()[1:]] for l in open(f"{b}/times")}
full = t["dedisk-full"][0]
peer = min(t["restic-full"][0], t["borg-full"][0])
print(f"{'step':<20} {'wall':>8} {'cpu':>8} {'rss MiB':>8} {'vs dedisk full':>15} {'vs fastest peer':>16}")
for k in ["dedisk-full", "restic-full", "borg-full", "dedisk-differential", "dedisk-since"]:
    w, c, r = t[k]
    print(f"{k:<20} {w:>7.2f}s {c:>7.2f}s {r/1024:>8.0f} {full/w:>14.1f}x {peer/w:>15.1f}x")
print(open(f"{b}/differ").read().strip())
PY
rm -rf "$B"
