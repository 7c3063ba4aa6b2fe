#!/usr/bin/env bash
# Federated learning benchmark (issue 6), one session, release build, everything on 127.0.0.1:
# the Flower kit (../shared/bench/flower-peer: FedAvg logistic regression, Wisconsin breast
# cancer, 5 sites, 20 rounds) and then medfed on exactly the rows the kit exported: a hub and
# 5 site nodes as processes over mutual TLS, secure aggregation on. Prints both and the ratios
# (above 1: medfed is faster). Goal: <= 20 ms per round, 20 rounds in < 2 s end to end.
# Usage: bench/federated/run.sh [OUTDIR]
# env: FLOWER_LOOPBACK=1 also runs Flower's deployment engine (real processes, ~8 min);
#      FLWR_VENV as for the kit (default ~/venvs/flwr).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-$(mktemp -d "${TMPDIR:-/tmp}/medfed-fl-bench.XXXXXX")}"
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"
KIT="$(cd ../shared/bench/flower-peer && pwd)"
echo "output folder: $OUT   load: $(cut -d' ' -f1-3 /proc/loadavg)"
cargo build --release --quiet -p medfed --bin medfed --example federated_bench

"$KIT/run.sh" "$OUT/flower"
if [ "${FLOWER_LOOPBACK:-0}" = 1 ]; then
  "$KIT/run.sh" "$OUT/flower" --loopback
fi
target/release/examples/federated_bench --medfed target/release/medfed \
  --task "$OUT/flower/task/iid" --rounds 20 --out "$OUT/medfed.json"

python3 - "$OUT" <<'PY'
import csv, json, sys
out = sys.argv[1]
ours = json.load(open(f"{out}/medfed.json"))
rows = list(csv.DictReader(open(f"{out}/flower/summary.csv")))
print()
print(f"{'':34} {'round median':>13} {'end to end':>11} {'test acc':>9} {'AUC':>7}")
print(f"{'medfed (5 processes, mTLS, secagg)':34} {ours['round_median_ms']:>10.2f} ms {ours['end_to_end_s']:>9.3f} s "
      f"{ours['test_accuracy']:>9.4f} {ours['test_auc']:>7.4f}")
for r in rows:
    name = f"Flower {r['engine']} ({r['sites']} sites)"
    rm, e2e = float(r["round_median_s"]), float(r["end_to_end_s"])
    print(f"{name:34} {rm*1000:>10.2f} ms {e2e:>9.3f} s {float(r['test_accuracy']):>9.4f} {float(r['test_auc']):>7.4f}"
          f"   ratio Flower/medfed: round {rm*1000/ours['round_median_ms']:.1f}x, end to end {e2e/ours['end_to_end_s']:.1f}x")
goal = ours["round_median_ms"] <= 20 and ours["end_to_end_s"] < 2
print(f"\ngoal (<= 20 ms per round, < 2 s end to end): {'met' if goal else 'NOT met'}")
PY
