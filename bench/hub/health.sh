#!/usr/bin/env bash
# Hub responsiveness under load (issue 13, defect 6), one run, release build: p99 of
# GET /api/v1/health from CLIENTS (default 1000) concurrent TLS clients on an idle hub and while
# UPLOADERS (default 4) push UPLOAD_BYTES objects through the chunked upload API; prints both,
# their ratio, and the 50 ms bar.
#
# BEFORE=<commit> also builds that commit in a temporary worktree and runs the same benchmark
# there first (the benchmark program is copied in), for a before/after comparison in one run.
# INTERVAL_MS paces each client (default 1000: 1,000 clients offer 1,000 requests/s); 0 runs a
# closed loop (each client sends its next request when the last is answered: a throughput test).
# UPLOADER_NICE (default 10) is the priority of the uploader processes, which stand for remote
# sites; 0 runs them at the hub's priority (all client work on the hub's cores).
# Usage: bench/hub/health.sh [CLIENTS] [REQUESTS_PER_CLIENT] [UPLOADERS] [UPLOAD_BYTES]
set -euo pipefail
cd "$(dirname "$0")/../.."
ulimit -n 65536 2>/dev/null || true
args=(--clients "${1:-1000}" --requests "${2:-20}" --uploaders "${3:-4}" --upload-bytes "${4:-67108864}" --interval-ms "${INTERVAL_MS:-1000}" --uploader-nice "${UPLOADER_NICE:-10}")
if [ -n "${BEFORE:-}" ]; then
  wt=$(mktemp -d)
  git worktree add --detach "$wt" "$BEFORE" >/dev/null
  trap 'git worktree remove --force "$wt"' EXIT
  cp -r crates/hub/examples/health_bench.rs crates/hub/examples/common "$wt/crates/hub/examples/"
  # Hubs before issue 13 had no per-address connection cap to raise.
  sed -i '/max_connections_per_address/d' "$wt/crates/hub/examples/health_bench.rs"
  # ... nor medfed_hub::server_runtime (their hub ran on tokio's default runtime) ...
  sed -i 's/medfed_hub::server_runtime()?/tokio::runtime::Builder::new_multi_thread().enable_all().build()?/' "$wt/crates/hub/examples/health_bench.rs"
  # ... and required the dataset's provenance.site from the client.
  sed -i 's/"provenance": {"deid_settings"/"provenance": {"site": "org1", "deid_settings"/' "$wt/crates/hub/examples/health_bench.rs"
  echo "== before: $BEFORE"
  (cd "$wt" && CARGO_TARGET_DIR="$PWD/target-before" cargo run --release --quiet -p medfed-hub --example health_bench -- "${args[@]}")
  echo "== after: $(git rev-parse --short HEAD)"
fi
cargo run --release --quiet -p medfed-hub --example health_bench -- "${args[@]}"
