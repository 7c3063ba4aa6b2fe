#!/usr/bin/env bash
# IBSI radiomics benchmark: medfed beside PyRadiomics (and MIRP if its venv exists) on the
# synthetic 512x512x100 CT of shared/bench/radiomics-peers, 20k- and 200k-voxel regions.
# Times whole processes (reading the image included) with CPU seconds and peak RSS per run;
# the kit prints the peer/ours ratio. PyRadiomics computes fewer features than medfed's 482.
# usage: bench/radiomics/run.sh [OUTDIR]     env: REPS (3), PYRAD_VENV, MIRP_VENV (see the kit)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SHARED="${MEDFED_SHARED_DIR:-$ROOT/../shared}"
KIT="$SHARED/bench/radiomics-peers"
[ -x "$KIT/run.sh" ] || { echo "peer kit not found at $KIT (set MEDFED_SHARED_DIR)" >&2; exit 2; }
OUT="${1:-$(mktemp -d "${TMPDIR:-/tmp}/medfed-radiomics-bench.XXXXXX")}"
mkdir -p "$OUT"
(cd "$ROOT" && cargo build --release --locked -q)
BIN="$ROOT/target/release/medfed"
# One core for medfed too, as the goal is stated per core.
export OURS_CMD="env RAYON_NUM_THREADS=1 $BIN radiomics --image {image} --mask {mask} --out {out}.csv"
REPS="${REPS:-3}" "$KIT/run.sh" "$OUT"
# The split of medfed's time: reading (mask, then the image box) vs the chain and all 482
# features of the region (wall, and CPU of the one worker thread), medians of REPS runs.
echo
echo "medfed, one thread, time split per ROI, median (min) of ${REPS:-3} runs:"
for roi in 20k 200k; do
  for _ in $(seq "${REPS:-3}"); do
    MEDFED_LOG=medfed=info RAYON_NUM_THREADS=1 "$BIN" radiomics --image "$OUT/data/ct.nii.gz" \
      --mask "$OUT/data/mask_$roi.nii.gz" --out "$OUT/split_$roi.csv" 2>&1 >/dev/null \
      | sed -E 's/\x1b\[[0-9;]*m//g' | grep -oE '(load_s|features_s|features_cpu_s)=[0-9.]+' | tr '\n' ' '
    echo
  done | python3 -c '
import statistics, sys
runs = [dict(kv.split("=") for kv in line.split()) for line in sys.stdin if line.strip()]
for key in ("load_s", "features_s", "features_cpu_s"):
    v = [float(r[key]) for r in runs]
    print(f"  {sys.argv[1]:>4} {key:<10} {statistics.median(v):.3f} s ({min(v):.3f})")
' "$roi"
done
echo
echo "medfed on the IBSI digital phantom is checked by the test suite (482/482)."
