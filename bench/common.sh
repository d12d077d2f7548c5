# shellcheck shell=bash
# Shared by the benchmark scripts (sourced, not run): the tools they need, a work folder
# cleaned up on exit with every process they started, a wait for a loopback port, the
# nginx configs (the benchmarked upstream, the proxy_pass to compare with), and a
# PostgreSQL server for the database store (start_postgres, pg_sql).
# Expects WORK_NAME set; sets TG_BIN, WORK and PIDS (and PG_URL, PG_DIR after start_postgres).
TG_BIN=${TG_BIN:-target/release/tokengate}
WORK=$(mktemp -d "/tmp/tokengate-$WORK_NAME.XXXXXX")
PIDS=()

need() { # command debian-package
  command -v "$1" >/dev/null 2>&1 && return 0
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "$2" >/dev/null
}
need nginx nginx-light
need wrk wrk
[ -x "$TG_BIN" ] || cargo build --release

cleanup() {
  for p in "${PIDS[@]:-}"; do if [ -n "$p" ]; then kill "$p" 2>/dev/null || true; fi; done
  wait 2>/dev/null || true
  stop_postgres
  if [ "${KEEP:-0}" = 1 ]; then echo "work folder kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

port_open() { (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }
wait_port() { # port [seconds=20]: wait until something accepts on 127.0.0.1:port
  for _ in $(seq 1 $(( ${2:-20} * 100 ))); do port_open "$1" && return 0; sleep 0.01; done
  echo "nothing listens on port $1" >&2
  return 1
}

nginx_conf() { # dir processes http-block: $WORK/dir/nginx.conf, with what every benchmark nginx shares
  mkdir -p "$WORK/$1"
  cat >"$WORK/$1/nginx.conf" <<NGINX
$2
daemon off;
pid $WORK/$1/pid;
error_log $WORK/$1/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
$3
}
NGINX
}

start_upstream() { # port: the benchmarked app, nginx answering a fixed 512-byte body
  local body
  body=$(head -c 512 /dev/zero | tr '\0' 'x')
  nginx_conf up "worker_processes 1;" \
    "  server { listen 127.0.0.1:$1 backlog=4096; location / { default_type text/plain; return 200 \"$body\"; } }"
  nginx -c "$WORK/up/nginx.conf" -p "$WORK/up" 2>>"$WORK/up/error.log" &
  PIDS+=($!)
  wait_port "$1"
}

proxy_conf() { # listen-port upstream-port processes: nginx proxy_pass (the comparison) in $WORK/px
  # processes: "worker_processes auto;", or "worker_processes 1; master_process off;"
  nginx_conf px "$3" "  upstream app { server 127.0.0.1:$2; keepalive 128; }
  server {
    listen 127.0.0.1:$1 backlog=4096;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
  }"
}

# PostgreSQL (the database store), run by an unprivileged user (initdb and postgres refuse
# root): tokengate-test if the test rig made it, else tokengate-bench (created if missing).
# Data in $WORK/pg; superuser postgres, trusted on the Unix socket in $WORK/pg only; role
# and database tokengate with a random password over TCP on 127.0.0.1. Stopped by cleanup.
PG_DIR=
pg_bin() { # the newest installed server's bin folder
  local d
  d=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)
  [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
}
pg_as() { # command...: run as the server's user (as is when not root)
  if [ "$(id -u)" = 0 ]; then (cd "$PG_DIR" && runuser -u "$PG_USER" -- "$@"); else "$@"; fi
}
start_postgres() { # port: PostgreSQL on 127.0.0.1:port; exports PG_URL
  local port=$1 pass
  PG_BIN=$(pg_bin) || {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq postgresql >/dev/null
    PG_BIN=$(pg_bin)
  }
  need psql postgresql-client
  PG_USER=$(id -un)
  if [ "$(id -u)" = 0 ]; then
    if id tokengate-test >/dev/null 2>&1; then PG_USER=tokengate-test
    else
      PG_USER=tokengate-bench
      id "$PG_USER" >/dev/null 2>&1 ||
        useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$PG_USER"
    fi
  fi
  chmod o+x "$WORK" # the server's user goes through $WORK to $WORK/pg, and lists nothing
  PG_DIR="$WORK/pg"
  mkdir -m 700 "$PG_DIR"
  if [ "$(id -u)" = 0 ]; then chown "$PG_USER:" "$PG_DIR"; fi
  pg_as "$PG_BIN/initdb" --pgdata "$PG_DIR/data" --username=postgres --encoding=UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=scram-sha-256 --no-sync >"$WORK/pg-initdb.log" 2>&1 ||
    { cat "$WORK/pg-initdb.log" >&2; return 1; }
  # Sized for a benchmark on a small machine: fsync stays on (reads commit nothing anyway),
  # no WAL archiving or replication, checkpoints rare enough not to land in a measurement.
  pg_as "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 120 -o "-p $port -k $PG_DIR \
    -c listen_addresses=127.0.0.1 -c max_connections=200 -c shared_buffers=128MB \
    -c work_mem=8MB -c maintenance_work_mem=256MB -c wal_level=minimal -c max_wal_senders=0 \
    -c max_wal_size=4GB -c checkpoint_timeout=30min -c synchronous_commit=on" start >/dev/null ||
    { cat "$PG_DIR/server.log" >&2; return 1; }
  PG_PORT=$port
  pass=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  pg_sql_in postgres "CREATE ROLE tokengate LOGIN PASSWORD '$pass'" >/dev/null
  pg_sql_in postgres "CREATE DATABASE tokengate OWNER tokengate" >/dev/null
  export PG_URL="postgres://tokengate:$pass@127.0.0.1:$port/tokengate"
  PGPASSWORD=$pass psql -X -q -h 127.0.0.1 -p "$port" -U tokengate -d tokengate -c 'SELECT 1' >/dev/null
}
pg_sql_in() { # database sql: run as superuser over the Unix socket; rows one a line, fields tab-separated
  psql -X -q -A -t -F $'\t' -v ON_ERROR_STOP=1 -h "$PG_DIR" -p "$PG_PORT" -U postgres -d "$1" -c "$2"
}
pg_sql() { # sql: pg_sql_in the tokengate database
  pg_sql_in tokengate "$1"
}
pg_stats() { # -> "xact_commit tup_returned+tup_fetched" of the tokengate database (read from
  # another database so that reading them adds nothing; backends report every second or so)
  pg_sql_in postgres "SELECT xact_commit, tup_returned + tup_fetched FROM pg_stat_database WHERE datname = 'tokengate'" | tr '\t' ' '
}
stop_postgres() { # fast shutdown, if started
  [ -n "$PG_DIR" ] && [ -f "$PG_DIR/data/postmaster.pid" ] || return 0
  pg_as "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w -t 60 stop >/dev/null 2>&1 || true
}
