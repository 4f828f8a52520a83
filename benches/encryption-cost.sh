#!/usr/bin/env bash
# encryption-cost.sh [WORKDIR] [ROUNDS] — what encryption costs (issue 14): the same
# nights into an encrypted repository (the default) and an `--encryption none` one, in
# one run, alternating which goes first each round.
#
# Input: the shared workload (../shared/workload/make-workload.sh, default /var/tmp/vmwork):
# day1.raw .. day7.raw. Per repository: day 1 full, days 2-7 incremental, restore of
# day 7 (checked against day7.raw). The page cache is dropped before every step; dedisk
# fsyncs its restored disk. Prints wall seconds per step, the encrypted/plain ratio, and
# the repository sizes (what padding and sealing add). Needs root (drop_caches), GNU time.
set -euo pipefail
W=${1:-/var/tmp/vmwork}
ROUNDS=${2:-2}
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${DEDISK:-$HERE/../target/release/dedisk}
B=${OUT:-$W/bench-enc}
export DEDISK_PASSWORD=bench-password DEDISK_CACHE_DIR="$B/cache"
[ -x "$BIN" ] || (cd "$HERE/.." && cargo build --release -q)
[ -x /usr/bin/time ] || { echo "needs GNU time (apt-get install time)" >&2; exit 1; }
rm -rf "$B"; mkdir -p "$B"
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
measure() {
  local name=$1; shift
  cold
  /usr/bin/time -o "$B/t" -f "%e %U %S" "$@" > "$B/out.log" 2>&1 || { cat "$B/out.log" >&2; exit 1; }
  read -r wall user sys < "$B/t"
  echo "$name $wall $(echo "$user + $sys" | bc)" >> "$B/times"
}
for round in $(seq 1 "$ROUNDS"); do
  order="sealed plain"; [ $((round % 2)) -eq 0 ] && order="plain sealed"
  rm -rf "$B/sealed" "$B/plain" "$B/cache"
  "$BIN" init -q "$B/sealed" >/dev/null
  "$BIN" init -q --encryption none "$B/plain" >/dev/null
  for d in 1 2 3 4 5 6 7; do
    ln -f "$W/day$d.raw" "$B/disk.raw"
    for r in $order; do
      measure "$r-backup-$d" "$BIN" backup -q --repo "$B/$r" --name vm "vda=$B/disk.raw"
    done
  done
  rm -f "$B/disk.raw"
  for r in $order; do
    measure "$r-restore-7" "$BIN" restore -q --repo "$B/$r" latest "$B/$r-day7.raw"
    cmp "$B/$r-day7.raw" "$W/day7.raw" || { echo "$r restore differs from day7.raw" >&2; exit 1; }
    rm -f "$B/$r-day7.raw"
  done
  for r in sealed plain; do
    echo "$r $(du -sb "$B/$r" | cut -f1) $(find "$B/$r/packs" -name '*.pack' | wc -l)" >> "$B/sizes"
  done
done
python3 - "$B" <<'PY'
import sys, collections
b = sys.argv[1]
t = collections.defaultdict(list)
for l in open(f"{b}/times"):
    k, wall, cpu = l.split()
    t[k].append((float(wall), float(cpu)))
sizes = collections.defaultdict(list)
for l in open(f"{b}/sizes"):
    k, n, packs = l.split()
    sizes[k].append((int(n), int(packs)))
def total(prefix, steps, i):
    return sum(t[f"{prefix}-{s}"][i][i2] for s in steps for i2 in [0]), sum(t[f"{prefix}-{s}"][i][1] for s in steps)
groups = [("full (day 1)", ["backup-1"]), ("incrementals (days 2-7)", [f"backup-{d}" for d in range(2, 8)]), ("restore day 7", ["restore-7"])]
rounds = len(sizes["sealed"])
print(f"{'step':<24} {'round':>5} {'plain wall':>10} {'sealed wall':>11} {'ratio':>6} {'plain cpu':>9} {'sealed cpu':>10} {'ratio':>6}")
for name, steps in groups:
    for i in range(rounds):
        pw, pc = total("plain", steps, i)
        sw, sc = total("sealed", steps, i)
        print(f"{name:<24} {i+1:>5} {pw:>9.2f}s {sw:>10.2f}s {sw/pw:>6.3f} {pc:>8.2f}s {sc:>9.2f}s {sc/pc:>6.3f}")
for i in range(rounds):
    (sn, sp), (pn, pp) = sizes["sealed"][i], sizes["plain"][i]
    print(f"repository after 7 nights, round {i+1}: plain {pn:,} B in {pp} packs, sealed {sn:,} B in {sp} packs ({100*(sn-pn)/pn:+.2f} %)")
PY
