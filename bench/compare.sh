#!/usr/bin/env bash
# The side-by-side comparison: builds in release, runs workq (memory and
# embedded stores), Redis (rediswq protocol), RabbitMQ and NATS JetStream
# interleaved over several rounds, and writes the results under docs/bench/.
# Extra arguments go to workq-bench (see `workq-bench --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/workq-target}"
cargo build --release -p queue-server -p workq-bench
mkdir -p docs/bench
"$CARGO_TARGET_DIR/release/workq-bench" \
  --markdown docs/bench/compare.md --svg docs/bench/throughput-vs-consumers.svg "$@" \
  > docs/bench/compare.json
echo "wrote docs/bench/compare.{md,json} and docs/bench/throughput-vs-consumers.svg"
