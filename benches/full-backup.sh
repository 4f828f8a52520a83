#!/usr/bin/env bash
# full-backup.sh [WORKDIR] [LEVELS] — full backups and nights against borg, restic and
# casync, in one run (issue 19). Each tool backs up day1.raw (full) and day2..day7.raw
# (nights) of the shared workload into its own fresh repository, with the page cache
# dropped before every step. dedisk runs once per zstd level in LEVELS (default "1 3"),
# encrypted as by default; borg 1.2 with repokey-blake2 and its default lz4; restic 0.14
# with its defaults (repository v2, zstd auto); casync with its defaults (a .caibx per
# night, zstd). Prints per tool: day-1 wall and CPU, the slowest and mean night, peak
# RSS, the repository after seven nights, and borg / tool for the full backup.
# Needs root (drop_caches), borg, restic, casync, GNU time. About 10 minutes.
set -euo pipefail
W=${1:-/var/tmp/vmwork}
LEVELS=${2:-"1 3"}
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${DEDISK:-$HERE/../target/release/dedisk}
B=${OUT:-$W/bench-full}
export RESTIC_PASSWORD=bench-password DEDISK_PASSWORD=bench-password BORG_PASSPHRASE=bench-password
export DEDISK_CACHE_DIR="$B/cache" BORG_CACHE_DIR="$B/borg-cache" BORG_BASE_DIR="$B/borg-base"
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
[ -x "$BIN" ] || (cd "$HERE/.." && cargo build --release -q)
for t in borg restic casync /usr/bin/time; do
  command -v "$t" >/dev/null || { echo "needs $t (apt-get install borgbackup restic casync time)" >&2; exit 1; }
done
rm -rf "$B"; mkdir -p "$B"
. "$HERE/lib.sh"

tools=()
for level in $LEVELS; do
  t="dedisk-zstd$level"; tools+=("$t")
  "$BIN" init -q --compression-level "$level" "$B/$t" >/dev/null
  rm -rf "$DEDISK_CACHE_DIR"
  for d in 1 2 3 4 5 6 7; do
    ln -f "$W/day$d.raw" "$B/disk.raw"
    measure "$t-$d" "$BIN" backup -q --repo "$B/$t" --name vm "vda=$B/disk.raw"
  done
  echo "$t $(size "$B/$t")" >> "$B/sizes"
done
tools+=(borg restic casync)
borg init --encryption repokey-blake2 "$B/borg" >/dev/null
restic init -q --repo "$B/restic" >/dev/null
mkdir -p "$B/casync-store"
for d in 1 2 3 4 5 6 7; do
  ln -f "$W/day$d.raw" "$B/disk.raw"
  measure "borg-$d" borg create "$B/borg::day$d" "$B/disk.raw"
  measure "restic-$d" restic backup -q --repo "$B/restic" "$B/disk.raw"
  measure "casync-$d" casync make --store="$B/casync-store" "$B/day$d.caibx" "$B/disk.raw"
done
rm -f "$B/disk.raw"
echo "borg $(size "$B/borg")" >> "$B/sizes"
echo "restic $(size "$B/restic")" >> "$B/sizes"
echo "casync $(( $(size "$B/casync-store") + $(cat "$B"/day*.caibx | wc -c) ))" >> "$B/sizes"

python3 - "$B" "${tools[@]}" <<'PY'
import sys
b, tools = sys.argv[1], sys.argv[2:]
t = {l.split()[0]: [float(x) for x in l.split()[1:]] for l in open(f"{b}/times")}
s = {l.split()[0]: int(l.split()[1]) for l in open(f"{b}/sizes")}
borg1 = t["borg-1"][0]
print(f"{'tool':<13} {'day 1 wall':>10} {'CPU':>7} {'borg/x':>7} {'nights mean':>11} {'slowest':>8} {'peak RSS':>9} {'repo, 7 nights':>15} {'/ casync':>9}")
for tool in tools:
    d1 = t[f"{tool}-1"]
    nights = [t[f"{tool}-{d}"][0] for d in range(2, 8)]
    rss = max(t[f"{tool}-{d}"][2] for d in range(1, 8)) / 1024
    print(f"{tool:<13} {d1[0]:>9.2f}s {d1[1]:>6.2f}s {borg1/d1[0]:>6.2f}x {sum(nights)/6:>10.2f}s {max(nights):>7.2f}s {rss:>6.0f} MiB {s[tool]/1e9:>12.3f} GB {s[tool]/s['casync']:>8.3f}")
PY
