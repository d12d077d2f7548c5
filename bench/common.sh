# Shared by the benchmark scripts (sourced, not run): the tools they need, a work folder
# cleaned up on exit with every process they started, and a wait for a loopback port.
# Expects WORK_NAME set; sets TG_BIN, WORK and PIDS.
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
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ "${KEEP:-0}" = 1 ] && echo "work folder kept: $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT

port_open() { (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }
wait_port() { # port: wait (up to 20 s) until something accepts on 127.0.0.1:port
  for _ in $(seq 1 2000); do port_open "$1" && return 0; sleep 0.01; done
  echo "nothing listens on port $1" >&2
  return 1
}

start_upstream() { # port: the benchmarked app, nginx answering a fixed 512-byte body
  local body
  body=$(head -c 512 /dev/zero | tr '\0' 'x')
  mkdir -p "$WORK/up"
  cat >"$WORK/up/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $WORK/up/pid;
error_log $WORK/up/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$1 backlog=4096; location / { default_type text/plain; return 200 "$body"; } }
}
NGINX
  nginx -c "$WORK/up/nginx.conf" -p "$WORK/up" 2>>"$WORK/up/error.log" &
  PIDS+=($!)
  wait_port "$1"
}
