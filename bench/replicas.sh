#!/usr/bin/env bash
# Replicas on PostgreSQL: REPLICAS tokengate processes sharing one database whose Sanctum
# table holds ROWS tokens, inserted in SQL (the plaintext of row i is `i|si`). Reports the
# insert time; per replica the startup time (launch to the proxy port accepting, and to
# /readyz answering 200), RSS at rest (3 s after the last replica is ready), the tokens it
# caches and its store reads (tokengate_token_store_reads_total: cache misses read from the
# database); then what the database does for them, per second and per replica (committed
# transactions, rows read = tup_returned + tup_fetched, CPU of the replicas and of
# PostgreSQL), over SECONDS at rest, under load, and at rest again after the load. The load
# is one wrk per replica at once (CONNECTIONS shared between them), each request carrying a
# token drawn at random from SAMPLE of the rows, after a warm-up pass that uses each of them
# once on every replica.
#
# PostgreSQL's backends report their counters about once a second: a window of a few
# seconds is off by up to a second's worth.
#
# Usage: bench/replicas.sh [ROWS=1000000] [REPLICAS=2] [SECONDS=10] [CONNECTIONS=32] [SAMPLE=10000]
#   TG_BIN=target/release/tokengate   binary to measure (default; built if missing)
#   TG_WORKERS=N                      workers of each replica (default 1)
#   TG_CACHE_CAPACITY=N               tokens.cache_capacity of each replica (default: tokengate's)
#   KEEP=1                            keep the work folder (and the database's data)
# Ports: 127.0.0.1:19480 (nginx upstream) 19489 (PostgreSQL) 19500+k (replica k) 19600+k (its admin)
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-1000000}; REPLICAS=${2:-2}; SECS=${3:-10}; CONNS=${4:-32}; SAMPLE=${5:-10000}
for n in "$ROWS" "$REPLICAS" "$SECS" "$CONNS" "$SAMPLE"; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [ROWS] [REPLICAS] [SECONDS] [CONNECTIONS] [SAMPLE] (positive integers)" >&2; exit 2; }
done
[ "$SAMPLE" -le "$ROWS" ] || SAMPLE=$ROWS
PER=$(( CONNS / REPLICAS )); [ "$PER" -ge 1 ] || PER=1
WORK_NAME=replicas
. bench/common.sh
now_ms() { date +%s%3N; }
HZ=$(getconf CLK_TCK)

start_upstream 19480
start_postgres 19489
export TG_BENCH_DATABASE_URL=$PG_URL

for k in $(seq 1 "$REPLICAS"); do
  mkdir -p "$WORK/r$k"
  {
    echo "listen: 127.0.0.1:$((19500 + k))"
    echo "upstream: http://127.0.0.1:19480"
    echo "workers: ${TG_WORKERS:-1}"
    echo "store:"
    echo "  kind: postgres"
    echo "  url_env: TG_BENCH_DATABASE_URL"
    echo "admin:"
    echo "  listen: 127.0.0.1:$((19600 + k))"
    if [ -n "${TG_CACHE_CAPACITY:-}" ]; then
      echo "tokens:"
      echo "  cache_capacity: $TG_CACHE_CAPACITY"
    fi
    echo "abilities: [read]"
    echo "routes:"
    echo "  - path: /bench/**"
    echo "    abilities: [read]"
  } >"$WORK/r$k/config.yaml"
done
"$TG_BIN" migrate --config "$WORK/r1/config.yaml" >/dev/null

# The rows: Sanctum's table as Laravel fills it, the secret of row i being `si`.
t0=$(now_ms)
pg_sql "INSERT INTO personal_access_tokens
          (id, tokenable_type, tokenable_id, name, token, abilities, created_at, updated_at)
        SELECT i, 'App\\Models\\User', i % 1000, 'bench ' || i,
               encode(sha256(('s' || i)::bytea), 'hex'), '[\"read\"]',
               now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC'
        FROM generate_series(1, $ROWS) AS i" >/dev/null
pg_sql "SELECT setval(pg_get_serial_sequence('personal_access_tokens', 'id'), $ROWS)" >/dev/null
INSERT_MS=$(( $(now_ms) - t0 ))
t0=$(now_ms)
pg_sql "VACUUM ANALYZE personal_access_tokens" >/dev/null
VACUUM_MS=$(( $(now_ms) - t0 ))
TABLE_MB=$(pg_sql "SELECT pg_total_relation_size('personal_access_tokens') / 1048576")
python3 - "$ROWS" "$SAMPLE" >"$WORK/sample.txt" <<'PY'
import random, sys
random.seed(42)  # the same sample every run
for i in random.sample(range(1, int(sys.argv[1]) + 1), int(sys.argv[2])):
    print(f"{i}|s{i}")
PY

metric() { # replica name -> the value of an admin metric without labels
  curl -s "http://127.0.0.1:$((19600 + $1))/metrics" | awk -v m="$2" '$1 == m {print $2}'
}
rss_mib() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
ticks() { # pids... -> user+system clock ticks, summed
  local sum=0 t
  for p in "$@"; do t=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null) || t=0; sum=$((sum + t)); done
  echo "$sum"
}
pg_pids() { # the postmaster and its children now
  local pm
  pm=$(head -n 1 "$PG_DIR/data/postmaster.pid")
  echo "$pm $(pgrep -P "$pm" | tr '\n' ' ')"
}

# Replicas one after the other, each timed from launch.
declare -A PID START_PORT START_READY
for k in $(seq 1 "$REPLICAS"); do
  t0=$(now_ms)
  RUST_LOG=warn "$TG_BIN" serve --config "$WORK/r$k/config.yaml" >"$WORK/r$k/log" 2>&1 & PIDS+=($!); PID[$k]=$!
  until port_open $((19500 + k)); do
    kill -0 "${PID[$k]}" 2>/dev/null || { echo "replica $k exited:" >&2; cat "$WORK/r$k/log" >&2; exit 1; }
    sleep 0.01
  done
  START_PORT[$k]=$(( $(now_ms) - t0 ))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$((19600 + k))/readyz")" = 200 ]; do
    kill -0 "${PID[$k]}" 2>/dev/null || { echo "replica $k exited:" >&2; cat "$WORK/r$k/log" >&2; exit 1; }
    sleep 0.01
  done
  START_READY[$k]=$(( $(now_ms) - t0 ))
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $(head -n 1 "$WORK/sample.txt")" "http://127.0.0.1:$((19500 + k))/bench/item")
  [ "$code" = 200 ] || { echo "replica $k answered $code to a stored token" >&2; cat "$WORK/r$k/log" >&2; exit 1; }
done
sleep 3
declare -A REST_RSS CACHED0 READS0
for k in $(seq 1 "$REPLICAS"); do
  REST_RSS[$k]=$(rss_mib "${PID[$k]}")
  CACHED0[$k]=$(metric "$k" tokengate_tokens)
  READS0[$k]=$(metric "$k" tokengate_token_store_reads_total)
done

window() { # label command...: runs the command (sleep N, or the load), then adds to $WORK/db
  # the database's transactions/s and rows read/s (in total and per replica), and the CPU
  # used meanwhile by each replica (average) and by PostgreSQL, in % of one core
  local label=$1 x0 r0 x1 r1 t0 ms c0 c1 p0 p1 pgp
  shift
  read -ra pgp <<<"$(pg_pids)"
  read -r x0 r0 < <(pg_stats); t0=$(now_ms)
  c0=$(ticks "${PID[@]}"); p0=$(ticks "${pgp[@]}")
  "$@"
  c1=$(ticks "${PID[@]}"); p1=$(ticks "${pgp[@]}")
  read -r x1 r1 < <(pg_stats); ms=$(( $(now_ms) - t0 ))
  awk -v l="$label" -v x=$((x1 - x0)) -v r=$((r1 - r0)) -v ms="$ms" -v n="$REPLICAS" -v c=$((c1 - c0)) -v p=$((p1 - p0)) -v hz="$HZ" \
    'BEGIN {s = ms / 1000; printf "%-20s %9.1f %11.1f %10.0f %11.0f %14.1f %10.1f\n", l, x / s, x / s / n, r / s, r / s / n, c / hz / s / n * 100, p / hz / s * 100}' >>"$WORK/db"
}

load() { # one wrk per replica at once, for SECONDS; RSS of each sampled meanwhile
  local k wrks=() samplers=()
  for k in $(seq 1 "$REPLICAS"); do
    (while kill -0 "${PID[$k]}" 2>/dev/null; do awk '/VmRSS/ {print $2}' "/proc/${PID[$k]}/status"; sleep 0.25; done >"$WORK/r$k/rss") 2>/dev/null &
    samplers+=($!); PIDS+=($!)
  done
  for k in $(seq 1 "$REPLICAS"); do
    TOKENS_FILE="$WORK/sample.txt" wrk -t1 -c"$PER" -d"${SECS}s" --latency -s bench/random-token.lua \
      "http://127.0.0.1:$((19500 + k))/bench/item" >"$WORK/r$k/wrk" & wrks+=($!); PIDS+=($!)
  done
  wait "${wrks[@]}"
  kill "${samplers[@]}" 2>/dev/null || true
}

window "at rest, before load" sleep "$SECS"
# Warm-up: every sampled token once on every replica (a first use may read the database).
# wrk runs to the end of -d even when the script stops it early, so -d is sized to the sample.
warm=()
for k in $(seq 1 "$REPLICAS"); do
  WARM=1 TOKENS_FILE="$WORK/sample.txt" wrk -t1 -c"$PER" -d"$(( SAMPLE / 2000 + 3 ))s" -s bench/random-token.lua \
    "http://127.0.0.1:$((19500 + k))/bench/item" >"$WORK/r$k/warm" & warm+=($!); PIDS+=($!)
done
wait "${warm[@]}"
for k in $(seq 1 "$REPLICAS"); do
  if grep -q 'Non-2xx' "$WORK/r$k/warm"; then echo "replica $k: non-2xx answers in the warm-up" >&2; cat "$WORK/r$k/warm" >&2; exit 1; fi
done
sleep 1
declare -A READS1
for k in $(seq 1 "$REPLICAS"); do READS1[$k]=$(metric "$k" tokengate_token_store_reads_total); done
window "under load" load
declare -A RPS P99 LOAD_RSS READS2 CACHED2
for k in $(seq 1 "$REPLICAS"); do
  if grep -q 'Non-2xx' "$WORK/r$k/wrk"; then echo "replica $k: non-2xx answers" >&2; cat "$WORK/r$k/wrk" >&2; exit 1; fi
  RPS[$k]=$(awk '/Requests\/sec/ {printf "%.0f", $2}' "$WORK/r$k/wrk")
  P99[$k]=$(awk '$1 == "99%" {v = $2; if (v ~ /us$/) {sub(/us$/, "", v); v /= 1000} else if (v ~ /ms$/) sub(/ms$/, "", v); else if (v ~ /s$/) {sub(/s$/, "", v); v *= 1000}; printf "%.2f", v}' "$WORK/r$k/wrk")
  LOAD_RSS[$k]=$(sort -n "$WORK/r$k/rss" | tail -n 1 | awk '{printf "%.1f", $1/1024}')
  READS2[$k]=$(metric "$k" tokengate_token_store_reads_total)
done
sleep 2 # the load's connections closed, its last queries reported
window "at rest, after load" sleep "$SECS"
declare -A PEAK
for k in $(seq 1 "$REPLICAS"); do
  CACHED2[$k]=$(metric "$k" tokengate_tokens)
  PEAK[$k]=$(awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/${PID[$k]}/status")
done

echo "rows=$ROWS replicas=$REPLICAS seconds=$SECS connections=$CONNS ($PER per replica) sample=$SAMPLE workers=${TG_WORKERS:-1}"
echo "insert: ${INSERT_MS} ms, VACUUM ANALYZE: ${VACUUM_MS} ms, table with indexes: ${TABLE_MB} MiB"
printf "%-7s %8s %8s %8s %8s %5s | %10s %9s %8s %8s %6s | %8s %8s\n" \
  replica port_ms ready_ms rest_MiB cached reads warm_reads req/s p99_ms load_MiB reads cached peak_MiB
for k in $(seq 1 "$REPLICAS"); do
  printf "%-7s %8s %8s %8s %8s %5s | %10s %9s %8s %8s %6s | %8s %8s\n" "$k" "${START_PORT[$k]}" "${START_READY[$k]}" \
    "${REST_RSS[$k]}" "${CACHED0[$k]}" "${READS0[$k]}" "$(( READS1[$k] - READS0[$k] ))" "${RPS[$k]}" "${P99[$k]}" \
    "${LOAD_RSS[$k]}" "$(( READS2[$k] - READS1[$k] ))" "${CACHED2[$k]}" "${PEAK[$k]}"
done
echo "  startup: launch to the proxy port accepting, to /readyz answering 200; at rest: 3 s after the last"
echo "  replica was ready; cached: tokengate_tokens at rest, and after the load; reads: store reads"
echo "  (tokengate_token_store_reads_total) at rest (a first request was made with one sampled token),"
echo "  during the warm-up pass, during the load; peak: VmHWM at the end (the startup's reading included)"
printf "%-20s %9s %11s %10s %11s %14s %10s\n" PostgreSQL xact/s per_replica rows/s per_replica "replica_CPU%" "pg_CPU%"
cat "$WORK/db"
