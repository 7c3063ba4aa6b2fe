#!/usr/bin/env bash
# The two-U-Net cascade on synthetic chest CT (issue 15), one run: phantoms from medfed-synth
# (16 train, 4 validation, 10 test; no real chest CT with lung and lesion masks ships in any
# package), the lung network and the lesion network trained (bench/ml/specs), then the cascade on
# the held-out test phantoms: lung Dice, lesion Dice and lesion-fraction error per case and mean.
# Then fine-tuning: a second "site" with other scanner noise and blur (seeds 1001-), the lung
# model's last layers retrained on its train cases, Dice before/after per split.
# Usage: bench/ml/cascade.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${1:-$(mktemp -d)}
mkdir -p "$WORK"
cargo build -q -p medfed-ml
BIN=target/debug/medfed-ml
[ -f "$WORK/data/cases.csv" ] || $BIN synth-chest "$WORK/data" --train 16 --validation 4 --test 10 --seed 1
for net in lung lesion; do
  sed "s|^manifest = .*|manifest = \"$WORK/data/cases.csv\"|" bench/ml/specs/$net.toml > "$WORK/$net.toml"
  t0=$(date +%s)
  $BIN train "$WORK/$net.toml" -o "$WORK/$net"
  echo "$net network trained in $(( $(date +%s) - t0 )) s"
done
$BIN cascade "$WORK/lung/model.safetensors" "$WORK/lesion/model.safetensors" --manifest "$WORK/data/cases.csv" -o "$WORK/cascade" >/dev/null
python3 - "$WORK/cascade/cascade.csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
lung = [float(r["organ_dice"]) for r in rows]
lesion = [float(r["lesion_dice"]) for r in rows]
err = [abs(float(r["lesion_fraction"]) - float(r["true_lesion_fraction"])) * 100 for r in rows]
print(f"cascade on {len(rows)} held-out synthetic phantoms: lung Dice mean {sum(lung)/len(lung):.4f} (min {min(lung):.4f}), "
      f"lesion Dice mean {sum(lesion)/len(lesion):.4f} (min {min(lesion):.4f}), "
      f"lesion-fraction error mean {sum(err)/len(err):.2f} points (max {max(err):.2f})")
PY
# Transfer learning to a site with noisier, softer images.
[ -f "$WORK/site-b/cases.csv" ] || $BIN synth-chest "$WORK/site-b" --train 6 --validation 2 --test 8 --noise-hu 60 --blur 2 --seed 1001
$BIN finetune "$WORK/lung/model.safetensors" --manifest "$WORK/site-b/cases.csv" --freeze 3 --epochs 6 --steps 10 -o "$WORK/lung-site-b"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); cores: $(nproc)"
