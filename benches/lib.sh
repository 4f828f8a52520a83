# Helpers the end-to-end benchmarks share; sourced after $B (the work folder) is set.

# Drops the page cache: every measured step starts cold.
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }

# measure NAME CMD...: appends "NAME wall cpu rss_kib" to $B/times (cold, GNU time);
# the command's output goes to $B/out.log and is shown if it fails.
measure() {
  local name=$1; shift
  cold
  /usr/bin/time -o "$B/t" -f "%e %U %S %M" "$@" > "$B/out.log" 2>&1 || { cat "$B/out.log" >&2; exit 1; }
  read -r wall user sys rss < "$B/t"
  echo "$name $wall $(echo "$user + $sys" | bc) $rss" >> "$B/times"
}

# size PATH: bytes under PATH.
size() { du -sb "$1" | cut -f1; }
