#!/usr/bin/env bash
# Scale benchmark: tokengate with many tokens in its store. Imports TOKENS tokens in bulk,
# then reports the import time, the startup time (launch to first accepted connection), RSS
# at rest (3 s after startup), and requests/s, p99 and the largest RSS sampled under load
# when every request carries a token drawn at random from SAMPLE of them (so the cache
# holds many tokens, not one hot one), and the peak RSS of the whole run (VmHWM: loading
# the cache at startup is the peak).
# The same measurement with 10 tokens is the baseline; the ratio shows what store size costs.
#
# Usage: bench/scale.sh [TOKENS=1000000] [SECONDS=5] [CONNECTIONS=32] [SAMPLE=100000]
# Ports: 127.0.0.1:19280 (nginx upstream) 19283 (tokengate)
set -euo pipefail
cd "$(dirname "$0")/.."
TOKENS=${1:-1000000}; SECS=${2:-5}; CONNS=${3:-32}; SAMPLE=${4:-100000}
WORK_NAME=scale
. bench/common.sh
now_ms() { date +%s%3N; }

start_upstream 19280

measure() { # N -> one result line
  local n=$1 dir="$WORK/n$1"
  mkdir -p "$dir"
  cat >"$dir/config.yaml" <<YAML
listen: 127.0.0.1:19283
upstream: http://127.0.0.1:19280
store:
  path: $dir/store
admin:
  listen: 127.0.0.1:19284
tokens:
  prefix: tg_
  cache_capacity: $(( n + 1000 ))
abilities: [read]
routes:
  - path: /bench/**
    abilities: [read]
YAML
  python3 -c "
import json, sys
for i in range($n):
    sys.stdout.write(json.dumps({'user': 'u%d' % i, 'name': 't%d' % i, 'abilities': ['read']}) + '\n')
" >"$dir/tokens.jsonl"
  local t0 t1 t2
  t0=$(now_ms)
  "$TG_BIN" token import --config "$dir/config.yaml" <"$dir/tokens.jsonl" >"$dir/tokens.txt" 2>/dev/null
  t1=$(now_ms)
  shuf -n "$SAMPLE" --random-source=<(yes) "$dir/tokens.txt" >"$dir/sample.txt" || head -n "$SAMPLE" "$dir/tokens.txt" >"$dir/sample.txt"
  t2=$(now_ms)
  RUST_LOG=warn "$TG_BIN" serve --config "$dir/config.yaml" >"$dir/log" 2>&1 & local pid=$!
  PIDS+=("$pid")
  wait_port 19283
  local startup=$(( $(now_ms) - t2 ))
  sleep 3
  local rss_idle
  rss_idle=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$pid/status")
  # warm-up: every sampled token once (its first use reads the store), then a short run
  # (wrk keeps running to the end of -d even after the script stops it, so -d is sized to the sample)
  WARM=1 TOKENS_FILE="$dir/sample.txt" wrk -t1 -c"$CONNS" -d"$(( SAMPLE / 10000 + 3 ))s" -s bench/random-token.lua http://127.0.0.1:19283/bench/item >/dev/null
  TOKENS_FILE="$dir/sample.txt" wrk -t1 -c"$CONNS" -d2s -s bench/random-token.lua http://127.0.0.1:19283/bench/item >/dev/null
  local out rss_load=0 sampler
  (while kill -0 "$pid" 2>/dev/null; do awk '/VmRSS/ {print $2}' "/proc/$pid/status"; sleep 0.25; done >"$dir/rss") 2>/dev/null &
  sampler=$!
  out=$(TOKENS_FILE="$dir/sample.txt" wrk -t1 -c"$CONNS" -d"${SECS}s" --latency -s bench/random-token.lua http://127.0.0.1:19283/bench/item)
  if echo "$out" | grep -q 'Non-2xx'; then echo "non-2xx answers with $n tokens" >&2; echo "$out" >&2; exit 1; fi
  local rps p99 hwm
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  hwm=$(awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$pid/status")
  kill "$sampler" 2>/dev/null || true
  rss_load=$(sort -n "$dir/rss" | tail -1 | awk '{printf "%.1f", $1/1024}')
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local store_mb
  store_mb=$(du -sm "$dir/store" | cut -f1)
  printf "%-9s %10s %9s %10s %10s %10s %10s %9s %9s\n" "$n" "$(( t1 - t0 ))" "$startup" "$rss_idle" "$rps" "$p99" "$rss_load" "$hwm" "$store_mb"
  echo "$n $rps" >>"$WORK/rps"
}

printf "%-9s %10s %9s %10s %10s %10s %10s %9s %9s\n" tokens import_ms start_ms rest_MiB req/s p99 load_MiB peak_MiB store_MiB
measure 10
measure "$TOKENS"
python3 - "$WORK/rps" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1])]
small, large = float(rows[0][1]), float(rows[1][1])
print(f"throughput with {rows[1][0]} tokens / with {rows[0][0]}: {large / small:.2f}")
PY
