#!/usr/bin/env bash
# Differential fuzzing of tokengate's two upstream paths: generated upstream answers, split
# at random points, read by the lean path's parser and by hyper's client; both must give the
# same verdict (src/upstream/differential.rs). The test suite runs a few hundred cases; this
# runs as many as asked, in a release build.
#
# Usage: scripts/fuzz-upstream.sh [CASES=1000000]
set -euo pipefail
cd "$(dirname "$0")/.."
CASES=${1:-1000000}
started=$(date +%s)
PROPTEST_CASES=$CASES cargo test --release --locked --lib \
  upstream::differential::both_paths_give_one_verdict -- --exact --nocapture
echo "differential fuzzing: $CASES cases, no divergence, $(($(date +%s) - started)) s"
