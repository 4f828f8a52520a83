#!/usr/bin/env bash
# Soak test (issue 12): nights of backups of a disk that changes in place, with random
# kill -9s of backups and prunes, random index damage and random pack damage followed by
# repair. After every step it asserts:
#   - every snapshot still present restores byte-identical to its source that night
#     (or, for a snapshot `repair snapshots` rewrote, restores with exit 3 and a warning);
#   - `verify --read-data` agrees with the restores: it passes when nothing is damaged,
#     and fails while damage that a restore meets is outstanding;
#   - no command panics, and nothing is left in tmp/ once every writer is gone.
# A failure stops the soak with the step, the command and its output.
#
#   benches/soak.sh [SECONDS] [WORKDIR]      (default 3600 s in /var/tmp/dedisk-soak)
#
# One step in INDEX_EVERY (default 6) overwrites an index page, one in PACK_EVERY
# (default 10) flips a pack byte.
#
# Needs: a built target/release/dedisk, python3. Prints a summary line per step and the
# totals at the end (kills, damages, restores checked, failures: always 0 or it stops).
set -euo pipefail
# Repositories are encrypted by default (format version 2): the password of these runs.
export DEDISK_PASSWORD=${DEDISK_PASSWORD:-bench-password}
SECONDS_WANTED=${1:-3600}
W=${2:-/var/tmp/dedisk-soak}
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/dedisk}
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 2; }
rm -rf "$W"; mkdir -p "$W/restore"
REPO=$W/repo DISK=$W/disk.img
# Unencrypted: the soak overwrites pages of REPO/index.sqlite (an encrypted
# repository keeps its index in the host cache instead).
"$BIN" init -q --encryption none "$REPO" --pack-size 4 >/dev/null
truncate -s 256M "$DISK"
for i in $(seq 0 15); do head -c 4M /dev/urandom | dd of="$DISK" bs=1M seek=$((i * 16)) conv=notrunc status=none; done

declare -A want=()       # snapshot id -> sha256 of its source
declare -A repaired=()   # snapshot id -> 1 when `repair snapshots` rewrote it
damaged=0                # a damaged pack is outstanding
n_backup=0 n_killed_backup=0 n_prune=0 n_killed_prune=0 n_index=0 n_pack=0 n_restores=0
started=$(date +%s)

fail() { echo "SOAK FAILED at step $step: $*" >&2; exit 1; }
run() { # run a dedisk command, capture output; fail on exit codes other than those allowed
  local allowed=$1; shift
  set +e; out=$("$BIN" "$@" 2>&1); rc=$?; set -e
  grep -q panicked <<<"$out" && fail "dedisk $* panicked: $out"
  [[ " $allowed " == *" $rc "* ]] || fail "dedisk $* exited $rc: $out"
}
# Exit 3 (a warning, such as a rebuilt index) is fine here: only the listing matters.
snapshots() { { "$BIN" --json snapshots --repo "$REPO" 2>/dev/null || true; } | head -n 1 | python3 -c 'import json,sys; [print(s["id"]) for s in json.load(sys.stdin)["snapshots"]]'; }
random_delay() { python3 -c "import random; print(random.uniform(0.05, $1))"; }

check_all() {
  local present id got
  present=$(snapshots)
  for id in $present; do
    [ -n "${want[$id]:-}" ] || fail "snapshot $id is present but no backup of it finished"
    rm -f "$W/restore/got.raw"
    rm -f "$W"/restore/.*dedisk-restore   # partial disks that damaged restores keep
    if [ -n "${repaired[$id]:-}" ]; then
      # Exit 3: it says what it lost. Exit 1 too while new damage is outstanding.
      run "3 $([ "$damaged" = 1 ] && echo 1)" restore --repo "$REPO" "$id" "$W/restore/got.raw"
    elif [ "$damaged" = 1 ]; then
      run "0 1" restore --repo "$REPO" "$id" "$W/restore/got.raw"
      [ "$rc" = 1 ] && { grep -q damaged <<<"$out" || fail "restore of $id failed without naming damage: $out"; continue; }
      got=$(sha256sum "$W/restore/got.raw" | cut -d' ' -f1)
      [ "$got" = "${want[$id]}" ] || fail "snapshot $id restored with exit 0 but differs"
    else
      run "0" restore --repo "$REPO" "$id" "$W/restore/got.raw"
      got=$(sha256sum "$W/restore/got.raw" | cut -d' ' -f1)
      [ "$got" = "${want[$id]}" ] || fail "snapshot $id restores differently from its source"
    fi
    n_restores=$((n_restores + 1))
  done
  if [ "$damaged" = 1 ]; then
    run "1" verify --repo "$REPO" --read-data
  else
    run "0 3" verify --repo "$REPO" --read-data
  fi
  rm -f "$W/restore/got.raw" "$W"/restore/.*dedisk-restore
  [ -z "$(ls -A "$REPO/tmp")" ] || fail "tmp/ holds $(ls "$REPO/tmp") with no writer running"
}

step=0
while [ $(( $(date +%s) - started )) -lt "$SECONDS_WANTED" ]; do
  step=$((step + 1)); did=""
  # The VM writes: a few MiB at random places, some of it in place over old data.
  for _ in 1 2 3; do
    head -c $((RANDOM % 3 + 1))M /dev/urandom | dd of="$DISK" bs=1M seek=$((RANDOM % 250)) conv=notrunc status=none
  done
  sha=$(sha256sum "$DISK" | cut -d' ' -f1)
  before=$(snapshots)
  if [ $((RANDOM % 3)) = 0 ]; then
    "$BIN" backup -q --repo "$REPO" --name vm "vda=$DISK" >/dev/null 2>&1 & pid=$!
    sleep "$(random_delay 1.5)"; kill -9 $pid 2>/dev/null || true; wait $pid 2>/dev/null || true
    n_killed_backup=$((n_killed_backup + 1)); did="backup killed"
  else
    run "0 3" backup -q --repo "$REPO" --name vm "vda=$DISK"
    n_backup=$((n_backup + 1)); did="backup"
  fi
  # A snapshot that appeared is of tonight's disk (a killed backup may have finished).
  for id in $(snapshots); do
    grep -qx "$id" <<<"$before" || want[$id]=$sha
  done
  if [ $((RANDOM % 4)) = 0 ]; then
    if [ $((RANDOM % 2)) = 0 ]; then
      "$BIN" forget -q --repo "$REPO" --keep-last 4 --prune >/dev/null 2>&1 & pid=$!
      sleep "$(random_delay 1.0)"; kill -9 $pid 2>/dev/null || true; wait $pid 2>/dev/null || true
      n_killed_prune=$((n_killed_prune + 1)); did="$did, prune killed"
    else
      run "0 3" forget -q --repo "$REPO" --keep-last 4 --prune
      n_prune=$((n_prune + 1)); did="$did, prune"
    fi
  fi
  if [ $((RANDOM % ${INDEX_EVERY:-6})) = 0 ]; then
    python3 - "$REPO/index.sqlite" <<'PY'
import os, random, sys
p = sys.argv[1]
pages = os.path.getsize(p) // 4096
with open(p, "r+b") as f:
    page = random.randrange(pages)
    f.seek(page * 4096 + (100 if page == 0 else 0))
    f.write(os.urandom(4096 - (100 if page == 0 else 0)))
PY
    n_index=$((n_index + 1)); did="$did, index page overwritten"
  fi
  if [ "$damaged" = 0 ] && [ $((RANDOM % ${PACK_EVERY:-10})) = 0 ]; then
    pack=$(find "$REPO/packs" -name '*.pack' | shuf -n 1)
    python3 - "$pack" <<'PY'
import os, random, sys
p = sys.argv[1]
with open(p, "r+b") as f:
    at = random.randrange(64, max(65, os.path.getsize(p) - 128))
    f.seek(at); b = f.read(1); f.seek(at); f.write(bytes([b[0] ^ 0x40]))
PY
    damaged=1; n_pack=$((n_pack + 1)); did="$did, pack byte flipped"
  fi
  check_all
  if [ "$damaged" = 1 ]; then
    # Repair: the damaged pack goes, damaged snapshots are rewritten with their losses.
    rm -f "$pack"
    run "0 3" repair index --repo "$REPO"
    before=$(snapshots)
    run "0 3" repair snapshots --repo "$REPO" --read-data
    for id in $(snapshots); do
      grep -qx "$id" <<<"$before" || { want[$id]=rewritten; repaired[$id]=1; }
    done
    damaged=0; did="$did, repaired"
    check_all
  fi
  echo "step $step ($(( $(date +%s) - started )) s): $did; $(snapshots | wc -l) snapshot(s) checked"
done
echo "soak passed: $step steps in $(( $(date +%s) - started )) s; backups $n_backup (+$n_killed_backup killed), prunes $n_prune (+$n_killed_prune killed), index pages overwritten $n_index, pack bytes flipped $n_pack, restores checked $n_restores, failures 0"
