#!/usr/bin/env bash
# A 3-node Garage cluster on 127.0.0.1 (replication factor 3), for the S3 end-to-end
# tests and the S3 benchmark.
#
#   tests/garage/cluster.sh start DIR   start it (or find it running), write DIR/env
#   tests/garage/cluster.sh stop DIR    stop its nodes
#   tests/garage/cluster.sh kill DIR N  kill node N (1-3) at once (SIGKILL)
#   tests/garage/cluster.sh revive DIR N  start node N again
#
# DIR/env holds the AWS_* variables for the bucket `dedisk-test` and its key, plus
# DEDISK_TEST_S3_BUCKET and DEDISK_TEST_GARAGE_DIR; `. DIR/env` before the tests.
# Node N serves S3 on 127.0.0.1:39N0 and RPC on 39N1; node 1 is the tests' endpoint.
set -euo pipefail
cmd=${1:?usage: cluster.sh start|stop|kill|revive DIR [N]}
dir=${2:?usage: cluster.sh start|stop|kill|revive DIR [N]}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
garage=$(command -v garage) || { echo "cluster.sh: garage is not installed (cargo install garage --locked)" >&2; exit 1; }

s3_port() { echo "39$(( $1 - 1 ))0"; }
rpc_port() { echo "39$(( $1 - 1 ))1"; }

write_config() {
  local n=$1
  umask 077
  cat > "$dir/node$n.toml" <<TOML
metadata_dir = "$dir/node$n/meta"
data_dir = "$dir/node$n/data"
db_engine = "sqlite"
replication_factor = 3
# dedisk's packs are compressed (and in version 2 encrypted): zstd in Garage finds
# nothing to save and, on a small machine running three nodes, takes the CPU a backup
# needs.
compression_level = "none"
rpc_bind_addr = "127.0.0.1:$(rpc_port "$n")"
rpc_public_addr = "127.0.0.1:$(rpc_port "$n")"
rpc_secret = "$(cat "$dir/rpc_secret")"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$(s3_port "$n")"
root_domain = ".s3.garage.localhost"
TOML
}

start_node() {
  local n=$1
  mkdir -p "$dir/node$n/meta" "$dir/node$n/data"
  # setsid: the node outlives the shell that started it, and a test's kill reaches it only.
  setsid "$garage" -c "$dir/node$n.toml" server >>"$dir/node$n.log" 2>&1 < /dev/null &
  echo $! > "$dir/node$n.pid"
}

alive() { [ -f "$dir/node$1.pid" ] && kill -0 "$(cat "$dir/node$1.pid")" 2>/dev/null; }

wait_s3() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$(s3_port "$1")") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "cluster.sh: node $1 does not answer on port $(s3_port "$1"); see $dir/node$1.log" >&2
  return 1
}

g() { "$garage" -c "$dir/node1.toml" "$@"; }

case "$cmd" in
start)
  if [ -f "$dir/env" ] && alive 1 && alive 2 && alive 3; then
    exit 0
  fi
  [ -f "$dir/rpc_secret" ] || (umask 077; od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$dir/rpc_secret")
  for n in 1 2 3; do
    write_config "$n"
    alive "$n" || start_node "$n"
  done
  for n in 1 2 3; do wait_s3 "$n"; done
  if [ ! -f "$dir/env" ]; then
    ids=()
    for n in 1 2 3; do
      ids+=("$("$garage" -c "$dir/node$n.toml" node id -q | cut -d@ -f1)")
    done
    for n in 2 3; do
      g node connect "${ids[$((n-1))]}@127.0.0.1:$(rpc_port "$n")" >/dev/null
    done
    for id in "${ids[@]}"; do g layout assign -z dc1 -c 2G "$id" >/dev/null; done
    g layout apply --version 1 >/dev/null
    for _ in $(seq 50); do g bucket create dedisk-test >/dev/null 2>&1 && break; sleep 0.2; done
    keyout=$(g key create dedisk-test)
    key_id=$(awk -F': *' '/Key ID/ {print $2; exit}' <<<"$keyout")
    secret=$(awk -F': *' '/Secret key/ {print $2; exit}' <<<"$keyout")
    [ -n "$key_id" ] && [ -n "$secret" ] || { echo "cluster.sh: no key in: $keyout" >&2; exit 1; }
    g bucket allow --read --write --owner dedisk-test --key dedisk-test >/dev/null
    (umask 077; cat > "$dir/env.tmp" <<ENV
export AWS_ENDPOINT_URL=http://127.0.0.1:$(s3_port 1)
export AWS_REGION=garage
export AWS_ACCESS_KEY_ID=$key_id
export AWS_SECRET_ACCESS_KEY=$secret
export DEDISK_TEST_S3_BUCKET=dedisk-test
export DEDISK_TEST_GARAGE_DIR=$dir
ENV
    mv "$dir/env.tmp" "$dir/env")
  fi
  ;;
stop)
  for n in 1 2 3; do
    if alive "$n"; then kill "$(cat "$dir/node$n.pid")"; fi
  done
  # Gone before this returns, so a `start` right after starts them anew.
  for n in 1 2 3; do
    for _ in $(seq 100); do alive "$n" || break; sleep 0.1; done
  done
  ;;
kill)
  n=${3:?node number}
  if alive "$n"; then kill -9 "$(cat "$dir/node$n.pid")"; fi
  ;;
revive)
  n=${3:?node number}
  alive "$n" || start_node "$n"
  wait_s3 "$n"
  ;;
*)
  echo "cluster.sh: unknown command $cmd" >&2; exit 2
  ;;
esac
