#!/usr/bin/env bash
# s3-vs-local.sh [WORKDIR] [ROUNDS] — a repository in a bucket against one in a local
# directory (issue 15), the same nights in one run, alternating which goes first.
#
# Input: the shared workload (../shared/workload/make-workload.sh, default /var/tmp/vmwork):
# day1.raw .. day7.raw. Per repository: day 1 full, days 2-7 incremental, day 7 again
# (an unchanged disk: what it uploads), restore of day 7 (checked against day7.raw, and
# fsynced by dedisk). The page cache is dropped before every step. The bucket is on the
# Garage cluster whose variables are in the environment (`. DIR/env` after
# `tests/garage/cluster.sh start DIR`); without AWS_ENDPOINT_URL the script starts one in
# WORKDIR/bench-s3/garage and stops it at the end. Both repositories are encrypted, and
# each has its own cache folder, emptied before each round (a host that never saw the
# repository). Prints wall seconds per step, the S3/local ratio, peak RSS, and the
# unchanged night's new bytes. Needs root (drop_caches), GNU time, python3.
set -euo pipefail
W=${1:-/var/tmp/vmwork}
ROUNDS=${2:-2}
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${DEDISK:-$HERE/../target/release/dedisk}
B=${OUT:-$W/bench-s3}
export DEDISK_PASSWORD=bench-password
[ -x "$BIN" ] || (cd "$HERE/.." && cargo build --release -q)
[ -x /usr/bin/time ] || { echo "needs GNU time (apt-get install time)" >&2; exit 1; }
rm -rf "$B/local" "$B/cache-local" "$B/cache-s3" "$B/times" "$B/news"; mkdir -p "$B"
if [ -z "${AWS_ENDPOINT_URL:-}" ]; then
  "$HERE/../tests/garage/cluster.sh" start "$B/garage" >/dev/null
  trap '"$HERE/../tests/garage/cluster.sh" stop "$B/garage" >/dev/null 2>&1 || true' EXIT
  . "$B/garage/env"
fi
BUCKET=${DEDISK_TEST_S3_BUCKET:?no bucket: DEDISK_TEST_S3_BUCKET}
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
# measure NAME CACHE ARGS...: wall, CPU and peak RSS of one dedisk command, cold.
measure() {
  local name=$1 cache=$2; shift 2
  cold
  DEDISK_CACHE_DIR="$cache" /usr/bin/time -o "$B/t" -f "%e %U %S %M" "$BIN" "$@" > "$B/out.log" 2>&1 \
    || { cat "$B/out.log" >&2; exit 1; }
  read -r wall user sys rss < "$B/t"
  echo "$name $wall $(echo "$user + $sys" | bc) $rss" >> "$B/times"
}
for round in $(seq 1 "$ROUNDS"); do
  order="s3 local"; [ $((round % 2)) -eq 0 ] && order="local s3"
  s3="s3://$BUCKET/bench-$(date +%s)-$round"
  rm -rf "$B/local" "$B/cache-local" "$B/cache-s3"
  "$BIN" init -q "$B/local" >/dev/null
  DEDISK_CACHE_DIR="$B/cache-s3" "$BIN" init -q "$s3" >/dev/null
  repo_of() { if [ "$1" = s3 ]; then echo "$s3"; else echo "$B/local"; fi; }
  for night in 1:backup-1 2:backup-2 3:backup-3 4:backup-4 5:backup-5 6:backup-6 7:backup-7 7:unchanged; do
    d=${night%%:*} step=${night#*:}
    ln -f "$W/day$d.raw" "$B/disk.raw"
    for r in $order; do
      measure "$r-$step" "$B/cache-$r" --json backup -q --repo "$(repo_of "$r")" --name vm "vda=$B/disk.raw"
      if [ "$step" = unchanged ]; then
        python3 -c 'import json,sys; print(sys.argv[1], json.loads(open(sys.argv[2]).read().splitlines()[-1])["disks"][0]["stats"]["new_stored_bytes"])' \
          "$r" "$B/out.log" >> "$B/news"
      fi
    done
  done
  rm -f "$B/disk.raw"
  rm -f "$B"/*-day7.raw
  for r in $order; do
    measure "$r-restore-7" "$B/cache-$r" restore -q --repo "$(repo_of "$r")" latest "$B/$r-day7.raw"
    cmp "$B/$r-day7.raw" "$W/day7.raw" || { echo "$r restore differs from day7.raw" >&2; exit 1; }
    rm -f "$B/$r-day7.raw"
  done
  # A new host (empty cache) restores: the index is rebuilt from the packs' TOCs first.
  rm -rf "$B/cache-s3-new"
  measure "s3-newhost-restore-7" "$B/cache-s3-new" restore -q --repo "$s3" latest "$B/new-day7.raw"
  cmp "$B/new-day7.raw" "$W/day7.raw" || { echo "new-host restore differs from day7.raw" >&2; exit 1; }
  rm -rf "$B/new-day7.raw" "$B/cache-s3-new"
done
python3 - "$B" "$ROUNDS" <<'PY'
import sys, collections
b, rounds = sys.argv[1], int(sys.argv[2])
t = collections.defaultdict(list)
for l in open(f"{b}/times"):
    k, wall, cpu, rss = l.split()
    t[k].append((float(wall), float(cpu), int(rss)))
groups = [("full (day 1)", ["backup-1"]),
          ("incrementals (days 2-7)", [f"backup-{d}" for d in range(2, 8)]),
          ("unchanged (day 7 again)", ["unchanged"]),
          ("restore day 7", ["restore-7"])]
print(f"{'step':<24} {'round':>5} {'local wall':>10} {'S3 wall':>9} {'S3/local':>8} {'local RSS':>10} {'S3 RSS':>8}")
for name, steps in groups:
    for i in range(rounds):
        lw = sum(t[f"local-{s}"][i][0] for s in steps)
        sw = sum(t[f"s3-{s}"][i][0] for s in steps)
        lr = max(t[f"local-{s}"][i][2] for s in steps) // 1024
        sr = max(t[f"s3-{s}"][i][2] for s in steps) // 1024
        print(f"{name:<24} {i+1:>5} {lw:>9.2f}s {sw:>8.2f}s {sw/lw:>8.3f} {lr:>7} MiB {sr:>4} MiB")
for i, (w, c, r) in enumerate(t["s3-newhost-restore-7"]):
    print(f"restore day 7 on a new host (empty cache), round {i+1}: {w:.2f}s, peak RSS {r // 1024} MiB")
for l in open(f"{b}/news"):
    r, n = l.split()
    print(f"unchanged night, {r}: {n} new bytes stored")
PY
