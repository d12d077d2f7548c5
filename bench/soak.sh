#!/usr/bin/env bash
# Soak: tokengate (the release binary) under every kind of traffic at once for MINUTES on
# loopback — valid and made-up tokens, sessions with CSRF, WebSockets opening and closing,
# server-sent events, 8 MiB uploads, slow and stuck clients, clients leaving mid-answer,
# an upstream restarted twice, two config reloads and a token revocation storm every 15 s
# (examples/soak.rs drives it and serves the upstream). Fails if a single answer is not the
# expected one, if RSS after the run exceeds RSS after warm-up by more than 10 % or 3 MiB,
# the larger (both taken once the load has stopped and its connections closed; the
# warm-up is a fifth of the run, 40 to 60 s, with every kind of traffic, a storm, a
# reload and a restart), if tokengate holds more file descriptors after the run than
# before it, or if it dies.
# Prints a report (outcomes, RSS, fd and thread curve).
#
# Usage: bench/soak.sh [MINUTES=30]
#   TG_BIN=FILE        binary to soak (default: target/release/tokengate, built first)
#   REPORT=FILE        also write the report there
#   KEEP=1             keep the work folder
#   SOAK_ONLY=a,b      only these kinds of traffic (the task names in examples/soak.rs:
#                      valid_tokens, uploads, revocation_storms, …), to find what grows
# Ports: three free ones on 127.0.0.1 (upstream, tokengate, admin), chosen at start.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-30}
if [ -z "${TG_BIN:-}" ]; then
  cargo build --release --locked
  TG_BIN=target/release/tokengate
fi
cargo build --quiet --locked --example soak
WORK=$(mktemp -d /tmp/tokengate-soak.XXXXXX)
TG_PID=
cleanup() {
  [ -n "$TG_PID" ] && kill "$TG_PID" 2>/dev/null && wait "$TG_PID" 2>/dev/null || true
  [ "${KEEP:-0}" = 1 ] && echo "work folder kept: $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
UP=$(free_port) PROXY=$(free_port) ADMIN=$(free_port)

TOKENGATE_ADMIN_KEY=$(head -c 24 /dev/urandom | base64)
export TOKENGATE_ADMIN_KEY
cat >"$WORK/config.yaml" <<YAML
listen: 127.0.0.1:$PROXY
upstream: http://127.0.0.1:$UP
store:
  path: $WORK/store
admin:
  listen: 127.0.0.1:$ADMIN
tokens:
  prefix: tg_
abilities: [read, create]
sessions:
  secure: false
timeouts:
  client_send_seconds: 3
  client_body_seconds: 10
routes:
  - path: /api/items/**
    abilities: [read]
  - path: /api/upload
    methods: [POST]
    abilities: [create]
  - path: /api/big
    abilities: [read]
  - path: /events
    abilities: [read]
  - path: /ws/**
    abilities: [read]
  - path: /app/**
    auth: session
YAML

RUST_LOG=warn "$TG_BIN" serve --config "$WORK/config.yaml" >"$WORK/log" 2>&1 &
TG_PID=$!
for _ in $(seq 1 2000); do (exec 3<>/dev/tcp/127.0.0.1/$ADMIN) 2>/dev/null && break; sleep 0.01; done

status=0
target/debug/examples/soak --minutes "$MINUTES" --proxy "127.0.0.1:$PROXY" --admin "127.0.0.1:$ADMIN" \
  --upstream "127.0.0.1:$UP" --pid "$TG_PID" --config "$WORK/config.yaml" >"$WORK/report.md" || status=$?
if ! kill -0 "$TG_PID" 2>/dev/null; then
  echo "FAIL tokengate died during the soak" >>"$WORK/report.md"
  status=1
fi
cat "$WORK/report.md"
[ -n "${REPORT:-}" ] && cp "$WORK/report.md" "$REPORT"
if [ "$status" != 0 ]; then
  echo "--- tokengate's log (last 40 lines)" >&2
  tail -n 40 "$WORK/log" >&2
fi
exit "$status"
