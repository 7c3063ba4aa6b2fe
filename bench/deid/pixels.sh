#!/usr/bin/env bash
# clean-pixel-data throughput on an ultrasound-like series with burned-in text, against
# `cp -r` of the same folder in the same run.
#
#   bench/deid/pixels.sh [WORKDIR]
#
# Sets (made in WORKDIR unless already there; nothing is written into the repository):
#   cine:   one 300-frame 480x640 RGB ultrasound object (~276 MB), name/ID/date burned into
#           every frame (crates/synth/examples/burned_in.rs)
#   frames: 300 single-frame objects of the same kind (each is OCR'd on its own)
# For each: REPS runs (median) of `cp -r` and `medfed deid --option clean-pixel-data` into
# emptied folders with a warm page cache; prints seconds and the ratio cp/medfed (1 = as fast
# as cp). JOBS chooses medfed's worker threads (default: one per core).
set -euo pipefail
cd "$(dirname "$0")/../.."
REPS=${REPS:-3}
WORK=${1:-$(mktemp -d)}
mkdir -p "$WORK"
echo "workdir: $WORK"
nice cargo build --release -q -p medfed
nice cargo build --release -q -p medfed-synth --example burned_in
TARGET=$(realpath "${CARGO_TARGET_DIR:-target}")
BIN=$TARGET/release/medfed
GEN=$TARGET/release/examples/burned_in
KEY="$WORK/bench-site.key"

[ -d "$WORK/cine" ] || "$GEN" "$WORK/cine" 300 1
[ -d "$WORK/frames" ] || "$GEN" "$WORK/frames" 1 300

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
now() { date +%s.%N; }

for set in ${SETS:-cine frames}; do
  IN="$WORK/$set"
  files=$(find "$IN" -type f | wc -l)
  bytes=$(du -sbL "$IN" | cut -f1)
  cat $(find "$IN" -type f) >/dev/null   # warm the page cache
  cp_times=(); md_times=()
  for r in $(seq "$REPS"); do
    rm -rf "$WORK/out-cp" "$WORK/out-md"; sync
    t0=$(now); cp -r "$IN" "$WORK/out-cp"; t1=$(now)
    cp_times+=("$(echo "$t1 - $t0" | bc -l)")
    rm -rf "$WORK/out-cp"; sync
    t0=$(now)
    $BIN deid "$IN" "$WORK/out-md" --key-file "$KEY" --option clean-pixel-data \
      --report "$WORK/report-$set.json" ${JOBS:+--jobs $JOBS} >/dev/null 2>&1 || true
    t1=$(now)
    md_times+=("$(echo "$t1 - $t0" | bc -l)")
  done
  cp_s=$(printf '%s\n' "${cp_times[@]}" | median)
  md_s=$(printf '%s\n' "${md_times[@]}" | median)
  ok=$(grep -o '"files_ok": *[0-9]*' "$WORK/report-$set.json" | grep -o '[0-9]*$' || echo "?")
  printf '%-7s %4d files %7.1f MB  cp -r %7.3f s  medfed clean-pixel-data %7.3f s  ratio cp/medfed %.3f  (%s de-identified)\n' \
    "$set" "$files" "$(echo "$bytes / 1000000" | bc -l)" "$cp_s" "$md_s" "$(echo "$cp_s / $md_s" | bc -l)" "$ok"
done
