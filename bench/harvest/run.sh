#!/usr/bin/env bash
# Harvest benchmark (issue 5), one run, release build, everything on 127.0.0.1: instances per
# second from dcmtk's storescu through a medfed site node (receiver, synced inbox,
# de-identification, STOW-RS over mutual TLS) into the hub's encrypted, indexed store, beside
# the same storescu into dcmtk's storescp, as a ratio. Needs dcmtk (storescu, storescp).
# Usage: bench/harvest/run.sh [INSTANCES] [MATRIX]
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --quiet -p medfed --bin medfed --example harvest_bench
target/release/examples/harvest_bench --medfed target/release/medfed \
  --instances "${1:-1000}" --matrix "${2:-256}"
