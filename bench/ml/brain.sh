#!/usr/bin/env bash
# Brain extraction on real T1 MRI (issue 15), one run: medfed-ml's 3-D U-Net trained on two real
# brains and tested on the third, held out (each brain with a skull held out once: the ITK T1,
# then colin27; the skull-stripped MNI152 template always trains), beside the k-means +
# morphology baseline on the same held-out brain. Data are read in place (bench/ml/brain_data.py).
# Prints per fold: U-Net Dice / HD95 / surface Dice on the held-out brain's own grid, the
# baseline's Dice, and the training time.
# Usage: bench/ml/brain.sh [WORKDIR]   (EPOCHS overrides the spec's 30)
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${1:-$(mktemp -d)}
mkdir -p "$WORK"
VENV=target/ml-venv
if ! $VENV/bin/python -c 'import nilearn, sklearn, scipy, nibabel' 2>/dev/null; then
  python3 -m venv $VENV
  $VENV/bin/pip install --quiet nilearn scikit-learn scipy nibabel
fi
# The dev profile builds dependencies (burn) at opt-level 3 (see Cargo.toml): the kernels run
# at full speed without a second cold build of burn in release.
cargo build -q -p medfed-ml
BIN=target/debug/medfed-ml
$VENV/bin/python bench/ml/brain_data.py "$WORK"
for held_out in itk_t1 colin27; do
  run="$WORK/run-$held_out"
  sed -e "s|^manifest = .*|manifest = \"$WORK/fold-$held_out.csv\"|" \
      ${EPOCHS:+-e "s|^epochs = .*|epochs = $EPOCHS|"} bench/ml/specs/brain.toml > "$WORK/spec-$held_out.toml"
  t0=$(date +%s)
  $BIN train "$WORK/spec-$held_out.toml" -o "$run"
  t1=$(date +%s)
  $BIN evaluate "$run/model.safetensors" --manifest "$WORK/fold-$held_out.csv" --report "$run/eval.csv" >/dev/null
  read -r image label < <(awk -F, -v id="$held_out" '$1 == id {print $2, $3}' "$WORK/fold-$held_out.csv")
  read -r bdice bk berode < <($VENV/bin/python bench/ml/baseline.py "$image" "$label")
  awk -F, -v fold="$held_out" -v b="$bdice" -v bk="$bk" -v be="$berode" -v t=$((t1 - t0)) 'NR == 2 {
    printf "held out %-8s U-Net Dice %.4f  HD95 %.1f mm  surface Dice %.4f | baseline (k-means k=%d, erosion %d) Dice %.4f | training %d s\n",
      fold, $4, $6, $7, bk, be, b, t }' "$run/eval.csv"
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); cores: $(nproc)"
