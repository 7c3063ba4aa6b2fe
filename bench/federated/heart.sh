#!/usr/bin/env bash
# Four-centre UCI Heart Disease (issue 6): per-centre mean test accuracy of each centre alone,
# pooled, FedAvg and exact federated Newton regression, in one process, release build.
# Usage: bench/federated/heart.sh [PATH to heart_disease_4centres.csv]
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo run --release --quiet -p medfed-federated --example heart -- \
  "${1:-../shared/datasets/heart_disease_uci_4centres/heart_disease_4centres.csv}"
