#!/usr/bin/env bash
# cbt-nights.sh [WORKDIR] — nights that cost what changed (issue 16): the shared
# workload's nights replayed as guest writes through QEMU into a qcow2 that carries a
# persistent dirty bitmap, each night backed up by dedisk from that bitmap over NBD
# (`qemu-nbd -r -B b0`, `--base latest --dirty-bitmap b0`), and by borg from the night's
# raw image, in the same run. Then a 100 GiB disk with 1% of it changed.
#
# Input: the shared workload (../shared/workload/make-workload.sh, default
# /var/tmp/vmwork): day1.raw .. day7.raw. The page cache is dropped before every timed
# step. The last night is restored and checked against day7.raw. Prints per night the
# changed bytes the bitmap holds, what dedisk read, wall seconds of dedisk and borg and
# their ratio. The read-only exports allow 4 connections (`-e 4`), as the NBD server of a
# libvirt pull-mode backup does (it has no limit). Needs root (drop_caches), qemu-img/qemu-nbd, borg (borgbackup),
# python3-libnbd (the replay writes through NBD), GNU time.
set -euo pipefail
W=${1:-/var/tmp/vmwork}
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${DEDISK:-$HERE/../target/release/dedisk}
HELPERS=${WORKLOAD_HELPERS:-$HERE/../../shared/workload/workload_helpers.py}
B=${OUT:-$W/bench-cbt}
PY=/usr/bin/python3
export DEDISK_PASSWORD=bench-password BORG_PASSPHRASE=bench-password
[ -x "$BIN" ] || (cd "$HERE/.." && cargo build --release -q)
for t in qemu-img qemu-nbd borg /usr/bin/time; do
  command -v "$t" >/dev/null || { echo "needs $t" >&2; exit 1; }
done
$PY -c 'import nbd' 2>/dev/null || { echo "needs python3-libnbd" >&2; exit 1; }
rm -rf "$B/repo" "$B/borg" "$B/cache" "$B/times" "$B"/*.qcow2 "$B"/*.sock; mkdir -p "$B"
export DEDISK_CACHE_DIR=$B/cache
NBD_PID=
stop_nbd() { if [ -n "$NBD_PID" ]; then kill "$NBD_PID" 2>/dev/null || true; wait "$NBD_PID" 2>/dev/null || true; NBD_PID=; fi; }
trap stop_nbd EXIT
# serve IMAGE SOCKET [qemu-nbd flags...]: a qemu-nbd on SOCKET, waited for.
serve() {
  local img=$1 sock=$2; shift 2
  rm -f "$sock"
  qemu-nbd -t -x vda -f qcow2 -k "$sock" "$@" "$img" & NBD_PID=$!
  for _ in $(seq 100); do [ -S "$sock" ] && return; sleep 0.05; done
  echo "qemu-nbd did not start" >&2; exit 1
}
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
# measure NAME CMD...: wall seconds of one command, cold; its stdout in $B/out.log.
measure() {
  local name=$1; shift
  cold
  /usr/bin/time -o "$B/t" -f "%e %M" "$@" > "$B/out.log" 2> "$B/err.log" || { cat "$B/err.log" >&2; exit 1; }
  read -r wall rss < "$B/t"
  echo "$name $wall $rss" >> "$B/times"
  echo "$wall"
}
json_field() { $PY -c "import json,sys; d=[json.loads(l) for l in open('$B/out.log') if l.startswith('{')][-1]['disks'][0]; print($1)"; }

for n in 2 3 4 5 6 7; do
  [ -s "$B/ranges$n" ] || $PY "$HELPERS" changed-ranges "$W/day$((n-1)).raw" "$W/day$n.raw" > "$B/ranges$n"
done
qemu-img convert -f raw -O qcow2 "$W/day1.raw" "$B/disk.qcow2"
"$BIN" init --repo "$B/repo" >/dev/null
URI="vda=nbd+unix:///vda?socket=$B/ro.sock"
serve "$B/disk.qcow2" "$B/ro.sock" -r -e 4
dfull=$(measure dedisk-day1 "$BIN" --repo "$B/repo" backup -q --name vm "$URI")
stop_nbd
qemu-img bitmap --add "$B/disk.qcow2" b0
# Both repositories encrypted (borg: repokey-blake2, AES-CTR + BLAKE2b).
borg init -e repokey-blake2 "$B/borg" >/dev/null 2>&1
bfull=$(measure borg-day1 borg create "$B/borg::day1" "$W/day1.raw")
printf '%-6s %10s %10s %10s %9s %9s %7s\n' night changed_MB read_MB verify_MB dedisk_s borg_s ratio
printf '%-6s %10s %10s %10s %9s %9s %7s\n' day1 full - - "$dfull" "$bfull" "$(echo "scale=1; $bfull / $dfull" | bc)"
for n in 2 3 4 5 6 7; do
  serve "$B/disk.qcow2" "$B/rw.sock"
  $PY "$HERE/replay-night.py" "$B/ranges$n" "$W/day$n.raw" "nbd+unix:///vda?socket=$B/rw.sock" >/dev/null
  stop_nbd
  serve "$B/disk.qcow2" "$B/ro.sock" -r -e 4 -B b0
  d=$(measure "dedisk-day$n" "$BIN" --repo "$B/repo" --json backup --name vm --base latest --dirty-bitmap b0 "$URI")
  changed=$(json_field "d['changes']['changed_bytes']//1000000")
  verified=$(json_field "d['changes']['verified_bytes']//1000000")
  read=$(json_field "d['stats']['read_bytes']//1000000")
  [ "$(json_field "'base' in d['changes']")" = True ] || { echo "night $n was not incremental: $(cat "$B/out.log")" >&2; exit 1; }
  stop_nbd
  qemu-img bitmap --clear "$B/disk.qcow2" b0
  b=$(measure "borg-day$n" borg create "$B/borg::day$n" "$W/day$n.raw")
  printf '%-6s %10s %10s %10s %9s %9s %7s\n' "day$n" "$changed" "$read" "$verified" "$d" "$b" "$(echo "scale=1; $b / $d" | bc)"
done
"$BIN" --repo "$B/repo" restore -q vm@latest "$B/restored.raw"
[ "$(sha256sum < "$B/restored.raw")" = "$(sha256sum < "$W/day7.raw")" ] || { echo "day 7 restored wrong" >&2; exit 1; }
rm -f "$B/restored.raw" "$B/disk.qcow2"
echo "day 7 restored byte for byte"

# A 100 GiB disk: 4 GiB written, backed up in full; then 1% of it (1 GiB, 4096 scattered
# 256 KiB writes of guest data: pieces of day7.raw that are not all zeros) changed and
# backed up from the bitmap.
qemu-img create -q -f qcow2 "$B/big.qcow2" 100G
serve "$B/big.qcow2" "$B/rw.sock"
$PY - "$B/rw.sock" <<'PYEOF'
import nbd, os, random, sys
h = nbd.NBD(); h.connect_uri("nbd+unix:///vda?socket=" + sys.argv[1])
rnd = random.Random(1)
for i in range(1024):  # 4 MiB every 100 MiB
    h.pwrite(os.urandom(4 << 20), i * (100 << 20))
h.flush(); h.shutdown()
PYEOF
stop_nbd
BIG="vda=nbd+unix:///vda?socket=$B/ro.sock"
serve "$B/big.qcow2" "$B/ro.sock" -r -e 4
bigfull=$(measure dedisk-big-full "$BIN" --repo "$B/repo" backup -q --name big "$BIG")
stop_nbd
qemu-img bitmap --add "$B/big.qcow2" b0
serve "$B/big.qcow2" "$B/rw.sock"
$PY - "$B/rw.sock" "$W/day7.raw" <<'PYEOF'
import nbd, os, random, sys
h = nbd.NBD(); h.connect_uri("nbd+unix:///vda?socket=" + sys.argv[1])
rnd = random.Random(2)
src = open(sys.argv[2], "rb")
size = os.path.getsize(sys.argv[2])
written = 0
while written < 4096:  # 1 GiB in 256 KiB writes anywhere on the 100 GiB
    src.seek(rnd.randrange(0, size // 4096 - 64) * 4096)
    piece = src.read(256 << 10)
    if piece.count(0) == len(piece):
        continue
    h.pwrite(piece, rnd.randrange(0, (100 << 30) // 4096 - 64) * 4096)
    written += 1
h.flush(); h.shutdown()
PYEOF
stop_nbd
serve "$B/big.qcow2" "$B/ro.sock" -r -e 4 -B b0
bigincr=$(measure dedisk-big-1pct "$BIN" --repo "$B/repo" --json backup --name big --base latest --dirty-bitmap b0 "$BIG")
echo "100 GiB disk: full (4 GiB data) ${bigfull}s; 1% changed: ${bigincr}s, changed $(json_field "d['changes']['changed_bytes']//1000000") MB, read $(json_field "d['stats']['read_bytes']//1000000") MB"
stop_nbd
rm -f "$B/big.qcow2"
echo "peak RSS (KiB): $(awk '$1 ~ /^dedisk/ {print $3}' "$B/times" | sort -n | tail -1)"
