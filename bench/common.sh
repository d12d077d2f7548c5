# Shared by the benchmark scripts (sourced, not run): the tools they need, a work folder
# cleaned up on exit with every process they started, a wait for a loopback port, and the
# nginx configs (the benchmarked upstream, the proxy_pass to compare with).
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
