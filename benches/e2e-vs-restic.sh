#!/usr/bin/env bash
# e2e-vs-restic.sh [WORKDIR] — the end-to-end benchmark: dedisk against restic (Debian
# package, default settings, fixed RESTIC_PASSWORD) on the same images, in one run.
#
# Input: the shared workload (../shared/workload/make-workload.sh, default /var/tmp/vmwork):
# day1.raw .. day7.raw, an 8 GiB GPT disk with 3.0-3.3 GB allocated.
# Both tools back up the disk at one path (a hard link to dayN.raw, as a nightly LVM
# snapshot path would be), day 1 full then six incrementals, then restore day 7.
# The page cache is dropped before every step (a nightly backup reads cold data).
# restic's restore is followed by `sync` (dedisk fsyncs its restored disk itself).
# Prints, per step and tool: wall s, CPU s (user+sys), peak RSS, repository bytes, and
# restic/dedisk ratios. Needs root (drop_caches), restic, GNU time.
set -euo pipefail
W=${1:-/var/tmp/vmwork}
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${DEDISK:-$HERE/../target/release/dedisk}
B=${OUT:-$W/bench}
export RESTIC_PASSWORD=bench-password DEDISK_PASSWORD=bench-password DEDISK_CACHE_DIR="$B/cache"
[ -x "$BIN" ] || (cd "$HERE/.." && cargo build --release -q)
command -v restic >/dev/null || { echo "needs restic (apt-get install restic)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "needs GNU time (apt-get install time)" >&2; exit 1; }
rm -rf "$B"; mkdir -p "$B"
. "$HERE/lib.sh"

"$BIN" init -q "$B/dedisk-repo" >/dev/null
restic init -q --repo "$B/restic-repo" >/dev/null
for d in 1 2 3 4 5 6 7; do
  ln -f "$W/day$d.raw" "$B/disk.raw"
  measure "dedisk-backup-$d" "$BIN" backup -q --repo "$B/dedisk-repo" --name vm "vda=$B/disk.raw"
  echo "dedisk-repo-$d $(size "$B/dedisk-repo")" >> "$B/sizes"
  measure "restic-backup-$d" restic backup -q --repo "$B/restic-repo" "$B/disk.raw"
  echo "restic-repo-$d $(size "$B/restic-repo")" >> "$B/sizes"
done
rm -f "$B/disk.raw"
measure dedisk-restore-7 "$BIN" restore -q --repo "$B/dedisk-repo" latest "$B/dedisk-day7.raw"
cmp "$B/dedisk-day7.raw" "$W/day7.raw" || { echo "dedisk restore differs from day7.raw" >&2; exit 1; }
rm -f "$B/dedisk-day7.raw"
# dedisk fsyncs the restored disk before it reports success; restic does not, so its
# restore is timed with a trailing sync to compare the same durable result.
measure restic-restore-7 sh -c "restic restore -q --repo '$B/restic-repo' latest --target '$B/restic-restore' && sync"
rm -rf "$B/restic-restore"

python3 - "$B" <<'PY'
import sys
b = sys.argv[1]
t = {l.split()[0]: [float(x) for x in l.split()[1:]] for l in open(f"{b}/times")}
s = {l.split()[0]: int(l.split()[1]) for l in open(f"{b}/sizes")}
print(f"{'step':<12} {'dedisk wall':>11} {'restic wall':>11} {'ratio':>6} {'dedisk cpu':>10} {'restic cpu':>10} {'dedisk repo':>13} {'restic repo':>13}")
steps = [(f"backup-{d}", d) for d in range(1, 8)] + [("restore-7", None)]
for name, d in steps:
    a, r = t[f"dedisk-{name}"], t[f"restic-{name}"]
    ds = f"{s[f'dedisk-repo-{d}']:>13}" if d else " " * 13
    rs = f"{s[f'restic-repo-{d}']:>13}" if d else " " * 13
    print(f"{name:<12} {a[0]:>10.2f}s {r[0]:>10.2f}s {r[0]/a[0]:>5.1f}x {a[1]:>9.2f}s {r[1]:>9.2f}s {ds} {rs}")
rss = lambda tool: max(v[2] for k, v in t.items() if k.startswith(tool)) / 1024
print(f"peak RSS: dedisk {rss('dedisk'):.0f} MiB, restic {rss('restic'):.0f} MiB")
print(f"repository after 7 nights: dedisk {s['dedisk-repo-7']/1e9:.3f} GB, restic {s['restic-repo-7']/1e9:.3f} GB")
PY
