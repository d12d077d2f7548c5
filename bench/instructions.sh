#!/usr/bin/env bash
# User-space instructions per request, counted by callgrind: repeatable where wall-clock
# figures drift (a second run of the same binary gives the same count within ~1 %). One
# tokengate worker and one nginx proxy_pass worker, each under valgrind in turn, in front of
# the same nginx upstream on loopback; `wrk -t1 -c4` for 5 s with instrumentation on.
# Under valgrind SHA-256 runs in software (~3,500 instructions of tokengate's count; SHA-NI
# on real hardware).
#
# Usage: bench/instructions.sh [SECONDS=5]
#   TG_BIN=target/release/tokengate   binary to measure (default; built if missing)
# Ports: 127.0.0.1:19280 (upstream) 19281 (nginx) 19283 (tokengate) 19284 (tokengate admin)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
WORK_NAME=instructions
. bench/common.sh
need valgrind valgrind
need callgrind_annotate valgrind

start_upstream 19280
proxy_conf 19281 19280 "worker_processes 1; master_process off;"
mkdir -p "$WORK/tg"
cat >"$WORK/tg/config.yaml" <<YAML
listen: 127.0.0.1:19283
upstream: http://127.0.0.1:19280
workers: 1
store:
  path: $WORK/tg/store
admin:
  listen: 127.0.0.1:19284
abilities: [read, write]
routes:
  - path: /bench/**
    abilities: [read]
YAML
TOKEN=$("$TG_BIN" token create --config "$WORK/tg/config.yaml" --user bench --name bench --abilities read | tail -n 1)

count() { # name port header command... -> "name instructions_per_request"
  local name=$1 port=$2 header=$3 pid n total
  shift 3
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/$name.out" "$@" \
    >"$WORK/$name.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  for _ in $(seq 1 600); do port_open "$port" && break; sleep 0.1; done
  wrk -t1 -c4 -d2s ${header:+-H "$header"} "http://127.0.0.1:$port/bench/item" >/dev/null # warm-up
  callgrind_control -i on "$pid" >/dev/null 2>&1
  n=$(wrk -t1 -c4 -d"${SECS}s" ${header:+-H "$header"} "http://127.0.0.1:$port/bench/item" | awk '/requests in/ {print $1}')
  callgrind_control -i off "$pid" >/dev/null 2>&1
  callgrind_control -d "$pid" >/dev/null 2>&1 # the measured part: $name.out.1
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  total=$(callgrind_annotate "$WORK/$name.out.1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1 + 0}')
  echo "$name $((total / n))"
}

{
  count nginx 19281 "" nginx -c "$WORK/px/nginx.conf" -p "$WORK/px"
  RUST_LOG=warn count tokengate 19283 "Authorization: Bearer $TOKEN" "$TG_BIN" serve --config "$WORK/tg/config.yaml"
} >"$WORK/counts"
awk '{c[$1]=$2; printf "%-10s %8d instructions per request\n", $1, $2} END {printf "tokengate/nginx: %.2f\n", c["tokengate"]/c["nginx"]}' "$WORK/counts"
