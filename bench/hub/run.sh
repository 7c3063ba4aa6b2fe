#!/usr/bin/env bash
# Hub benchmark (issue 4), one run, release build:
#  - upload of BYTES (default 1 GiB) through the hub (HTTPS, chunked + SHA-256, AES-256-GCM at
#    rest, fsync) as a ratio of a plain loopback TCP copy of the same bytes into a file;
#  - p50/p99 latency of catalogue queries (dataset search, QIDO-RS) from CLIENTS (default 1000)
#    concurrent clients, each with its own TLS connection.
# Usage: bench/hub/run.sh [BYTES] [CLIENTS] [QUERIES_PER_CLIENT]
set -euo pipefail
cd "$(dirname "$0")/../.."
ulimit -n 65536 2>/dev/null || true
cargo run --release --quiet -p medfed-hub --example hub_bench -- \
  --bytes "${1:-1073741824}" --clients "${2:-1000}" --queries "${3:-10}"
