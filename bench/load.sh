#!/usr/bin/env bash
# tokengate's load benchmark: requests/s and p99 of tokengate (checking a bearer token on
# every request) against plain nginx proxy_pass, both in front of the same nginx upstream
# on loopback, in alternating rounds. Prints median, min and max per target and the
# tokengate/nginx ratio of the medians, and each proxy's CPU time per request (user and
# system, median over the rounds). Absolute numbers drift on shared machines; the ratio,
# measured in one run, and the CPU per request are what to compare.
# With TG_PG=1, a fourth target: the same tokengate config on a PostgreSQL store
# (store.kind: postgres, a local server started for the run), in the same rounds; the
# summary adds its ratios to tokengate on sled, the CPU per request of both, and the
# database's transactions/s during its rounds (a cache hit makes no database round trip:
# what remains is the background re-check of cached tokens and last_used_at writes).
#
# Usage: bench/load.sh [ROUNDS=3] [SECONDS=5] [CONNECTIONS=32]
#   TG_BIN=target/release/tokengate   binary to measure (default; built if missing)
#   TG_ROUTE_COUNT=N                  non-matching routes before the benchmarked one (default 0)
#   TG_TOKENS=N                       extra tokens in the store, bulk-imported (default 0)
#   CLOSE=1                           a new client connection per request (wrk -H 'Connection: close')
#   TG_PG=1                           also tokengate on PostgreSQL (installed if missing)
#   KEEP=1                            keep the work folder
# Ports: 127.0.0.1:19080 (upstream) 19081 (nginx) 19083 (tokengate) 19084 (its admin)
#        with TG_PG=1: 19085 (tokengate-pg) 19086 (its admin) 19089 (PostgreSQL)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}; SECS=${2:-5}; CONNS=${3:-32}
WORK_NAME=load
. bench/common.sh

start_upstream 19080
proxy_conf 19081 19080 "worker_processes auto;"
tg_config() { # listen-port admin-port store-lines: a tokengate config, on stdout
  echo "listen: 127.0.0.1:$1"
  echo "upstream: http://127.0.0.1:19080"
  echo "store:"
  echo "$3"
  echo "admin:"
  echo "  listen: 127.0.0.1:$2"
  echo "tokens:"
  echo "  prefix: tg_"
  echo "  cache_capacity: $(( ${TG_TOKENS:-0} + 1000 ))"
  echo "abilities: [read, write]"
  echo "routes:"
  for i in $(seq 1 "${TG_ROUTE_COUNT:-0}"); do
    echo "  - path: /other$i/**"
    echo "    abilities: [write]"
  done
  echo "  - path: /bench/**"
  echo "    abilities: [read]"
}
mkdir -p "$WORK/tg"
tg_config 19083 19084 "  path: $WORK/tg/store" >"$WORK/tg/config.yaml"

if [ "${TG_TOKENS:-0}" -gt 0 ]; then
  python3 - "${TG_TOKENS}" >"$WORK/tg/tokens.jsonl" <<'PY'
import json, sys
for i in range(int(sys.argv[1])):
    print(json.dumps({"user": f"u{i}", "name": f"t{i}", "abilities": ["read"]}))
PY
  "$TG_BIN" token import --config "$WORK/tg/config.yaml" <"$WORK/tg/tokens.jsonl" >/dev/null
fi
TOKEN=$("$TG_BIN" token create --config "$WORK/tg/config.yaml" --user bench --name bench --abilities read | tail -n 1)

if [ "${TG_PG:-0}" = 1 ]; then
  start_postgres 19089
  export TG_BENCH_DATABASE_URL=$PG_URL
  mkdir -p "$WORK/tgpg"
  tg_config 19085 19086 "  kind: postgres
  url_env: TG_BENCH_DATABASE_URL" >"$WORK/tgpg/config.yaml"
  "$TG_BIN" migrate --config "$WORK/tgpg/config.yaml" >/dev/null
  if [ "${TG_TOKENS:-0}" -gt 0 ]; then
    # Owners on a database store are numbers (Sanctum's tokenable_id): one token each.
    python3 - "${TG_TOKENS}" >"$WORK/tgpg/tokens.jsonl" <<'PY'
import json, sys
for i in range(int(sys.argv[1])):
    print(json.dumps({"user": str(i + 1000), "name": f"t{i}", "abilities": ["read"]}))
PY
    "$TG_BIN" token import --config "$WORK/tgpg/config.yaml" <"$WORK/tgpg/tokens.jsonl" >/dev/null
  fi
  PG_TOKEN=$("$TG_BIN" token create --config "$WORK/tgpg/config.yaml" --user 1 --name bench --abilities read | tail -n 1)
fi

nginx -c "$WORK/px/nginx.conf" -p "$WORK/px" 2>>"$WORK/px/error.log" & PIDS+=($!); PX_PID=$!
RUST_LOG=warn "$TG_BIN" serve --config "$WORK/tg/config.yaml" >"$WORK/tg/log" 2>&1 & PIDS+=($!); TG_PID=$!
wait_port 19081; wait_port 19083

code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" http://127.0.0.1:19083/bench/item)
[ "$code" = 200 ] || { echo "tokengate answered $code to a valid token" >&2; cat "$WORK/tg/log" >&2; exit 1; }
if [ "${TG_PG:-0}" = 1 ]; then
  RUST_LOG=warn "$TG_BIN" serve --config "$WORK/tgpg/config.yaml" >"$WORK/tgpg/log" 2>&1 & PIDS+=($!); TGPG_PID=$!
  wait_port 19085
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $PG_TOKEN" http://127.0.0.1:19085/bench/item)
  [ "$code" = 200 ] || { echo "tokengate-pg answered $code to a valid token" >&2; cat "$WORK/tgpg/log" >&2; exit 1; }
fi

# The processes whose CPU time is charged to each proxy: nginx's master and workers, and
# tokengate (all its threads).
NGINX_PIDS="$PX_PID $(pgrep -P "$PX_PID" | tr '\n' ' ')"
# name^url^header^pids ('^': a token holds '|')
TARGETS=("direct^http://127.0.0.1:19080/bench/item^^" "nginx^http://127.0.0.1:19081/bench/item^^$NGINX_PIDS" "tokengate^http://127.0.0.1:19083/bench/item^Authorization: Bearer $TOKEN^$TG_PID")
[ "${TG_PG:-0}" = 1 ] && TARGETS+=("tokengate-pg^http://127.0.0.1:19085/bench/item^Authorization: Bearer $PG_TOKEN^$TGPG_PID")

cpu_ticks() { # pids... -> "user system" clock ticks, summed
  local u=0 s=0 a b
  for p in "$@"; do read -r a b < <(awk '{print $14, $15}' "/proc/$p/stat"); u=$((u + a)); s=$((s + b)); done
  echo "$u $s"
}

run_wrk() { # name url header pids -> "rps p99_ms user_us sys_us" (CPU per request of pids; - without)
  local out u0 s0 u1 s1
  # shellcheck disable=SC2086 # $4: a list of pids
  read -r u0 s0 < <(cpu_ticks $4)
  local args=(-t1 -c"$CONNS" -d"${SECS}s" --latency)
  [ -n "$3" ] && args+=(-H "$3")
  [ "${CLOSE:-0}" = 1 ] && args+=(-H "Connection: close")
  out=$(wrk "${args[@]}" "$2")
  # shellcheck disable=SC2086
  read -r u1 s1 < <(cpu_ticks $4)
  if echo "$out" | grep -q 'Non-2xx'; then echo "$1: non-2xx answers" >&2; echo "$out" >&2; exit 1; fi
  echo "$out" | awk -v du=$((u1 - u0)) -v ds=$((s1 - s0)) -v hz="$(getconf CLK_TCK)" -v pids="$4" '
    / requests in / {n=$1} /Requests\/sec/ {rps=$2}
    $1=="99%" {v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v=v*1000}; p99=v}
    END {if (pids == "" || n == 0) print rps, p99, "-", "-"; else printf "%s %s %.2f %.2f\n", rps, p99, du*1e6/hz/n, ds*1e6/hz/n}'
}

for t in "${TARGETS[@]}"; do IFS='^' read -r name url hdr pids <<<"$t"; run_wrk "$name" "$url" "$hdr" "$pids" >/dev/null; done # warm-up
for _ in $(seq 1 "$ROUNDS"); do
  for t in "${TARGETS[@]}"; do
    IFS='^' read -r name url hdr pids <<<"$t"
    if [ "$name" = tokengate-pg ]; then
      # The database's work during the round: committed transactions (every query tokengate
      # makes is one) and rows read, per second. PostgreSQL's backends report them about
      # once a second, so a short round can be off by a second's worth.
      read -r x0 r0 < <(pg_stats); t0=$(date +%s%3N)
      echo "$name $(run_wrk "$name" "$url" "$hdr" "$pids")" >>"$WORK/results"
      read -r x1 r1 < <(pg_stats); t1=$(date +%s%3N)
      echo "$((x1 - x0)) $((r1 - r0)) $((t1 - t0))" >>"$WORK/pg-rounds"
    else
      echo "$name $(run_wrk "$name" "$url" "$hdr" "$pids")" >>"$WORK/results"
    fi
  done
done
rss=$(awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$TG_PID/status")
pg_rss=-
[ "${TG_PG:-0}" = 1 ] && pg_rss=$(awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$TGPG_PID/status")

python3 - "$WORK/results" "$rss" "$ROUNDS" "$SECS" "$CONNS" "${CLOSE:-0}" "$pg_rss" "$WORK/pg-rounds" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, rps, p99, user, system = line.split()
    rows.setdefault(name, []).append((float(rps), float(p99), user, system))
print(f"rounds={sys.argv[3]} seconds={sys.argv[4]} connections={sys.argv[5]}{' (Connection: close)' if sys.argv[6] == '1' else ''}")
w = max(10, *(len(n) for n in rows))
print(f"{'target':<{w}} {'req/s med':>10} {'min':>9} {'max':>9} {'p99 ms med':>11} {'min':>6} {'max':>6}"
      f" {'CPU us/req: user':>17} {'sys':>6}")
med = {}
def cpu(values):
    known = [float(x) for x in values if x != "-"]
    return f"{statistics.median(known):.2f}" if known else "-"
for n, v in rows.items():
    r = [x[0] for x in v]; p = [x[1] for x in v]
    med[n] = (statistics.median(r), statistics.median(p))
    print(f"{n:<{w}} {med[n][0]:>10.0f} {min(r):>9.0f} {max(r):>9.0f} {med[n][1]:>11.2f} {min(p):>6.2f} {max(p):>6.2f}"
          f" {cpu(x[2] for x in v):>17} {cpu(x[3] for x in v):>6}")
print(f"tokengate/nginx throughput ratio: {med['tokengate'][0] / med['nginx'][0]:.2f}")
print(f"tokengate/nginx p99 ratio: {med['tokengate'][1] / med['nginx'][1]:.2f}")
print(f"tokengate peak RSS: {sys.argv[2]} MiB")
if "tokengate-pg" in rows:
    pg, tg = med["tokengate-pg"], med["tokengate"]
    print(f"tokengate-pg/tokengate throughput ratio: {pg[0] / tg[0]:.2f}")
    print(f"tokengate-pg/tokengate p99 ratio: {pg[1] / tg[1]:.2f}")
    for n in ("tokengate", "tokengate-pg"):
        print(f"{n} CPU us/req (median): user {cpu(x[2] for x in rows[n])} sys {cpu(x[3] for x in rows[n])}")
    print(f"tokengate-pg peak RSS: {sys.argv[7]} MiB")
    rounds = [tuple(map(int, l.split())) for l in open(sys.argv[8])]
    xact = statistics.median(x * 1000 / ms for x, _, ms in rounds)
    read = statistics.median(r * 1000 / ms for _, r, ms in rounds)
    print(f"PostgreSQL under tokengate-pg load (median of rounds): {xact:.1f} transactions/s, {read:.0f} rows read/s")
PY
