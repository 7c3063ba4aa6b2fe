#!/usr/bin/env bash
# De-identification throughput against `cp -r` of the same folder, in the same run, as a ratio.
#
#   bench/deid/run.sh [WORKDIR]
#
# Builds medfed (release), generates two sets with `medfed synth` unless WORKDIR already has them:
#   mixed:  1,200 files (20 patients x 2 studies x 2 series x 15 slices, 128x128, 5 charsets, ~40 MB)
#   series: one 300-slice 512x512 CT series (~160 MB)
# then times, REPS times each (median), `cp -r IN OUT` and `medfed deid IN OUT` into emptied folders,
# with a warm page cache. Prints files/s, MB/s and medfed/cp ratios. Goal: >= 0.5 (mixed), >= 0.7 (series).
# Set JOBS to choose medfed's worker threads (default: one per core).
set -euo pipefail
cd "$(dirname "$0")/../.."
REPS=${REPS:-5}
WORK=${1:-$(mktemp -d)}
echo "workdir: $WORK"
cargo build --release -q
BIN=target/release/medfed
[ -d "$WORK/mixed" ] || $BIN synth "$WORK/mixed" --patients 20 --studies 2 --series 2 --slices 15 --matrix 128 >/dev/null
[ -d "$WORK/series" ] || $BIN synth "$WORK/series" --patients 1 --studies 1 --series 1 --slices 300 --matrix 512 >/dev/null
KEY="$WORK/bench-site.key"

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
now() { date +%s.%N; }

for set in mixed series; do
  IN="$WORK/$set"
  files=$(find "$IN" -type f | wc -l)
  bytes=$(du -sb "$IN" | cut -f1)
  cat $(find "$IN" -type f) >/dev/null   # warm the page cache
  cp_times=(); md_times=()
  for r in $(seq "$REPS"); do
    # Each timed run starts with the previous run's output deleted and flushed, so neither tool
    # pays for the other's write-back.
    rm -rf "$WORK/out-cp" "$WORK/out-md"; sync
    t0=$(now); cp -r "$IN" "$WORK/out-cp"; t1=$(now)
    cp_times+=("$(echo "$t1 - $t0" | bc -l)")
    rm -rf "$WORK/out-cp"; sync
    t0=$(now); $BIN deid "$IN" "$WORK/out-md" --key-file "$KEY" ${JOBS:+--jobs $JOBS} 2>/dev/null; t1=$(now)
    md_times+=("$(echo "$t1 - $t0" | bc -l)")
  done
  cp_s=$(printf '%s\n' "${cp_times[@]}" | median)
  md_s=$(printf '%s\n' "${md_times[@]}" | median)
  awk -v set="$set" -v f="$files" -v b="$bytes" -v c="$cp_s" -v m="$md_s" 'BEGIN {
    printf "%-7s %5d files %7.1f MB | cp -r %6.3f s %7.0f files/s %6.0f MB/s | medfed %6.3f s %7.0f files/s %6.0f MB/s | ratio medfed/cp %.2f\n",
      set, f, b/1e6, c, f/c, b/1e6/c, m, f/m, b/1e6/m, c/m }'
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); cores: $(nproc)"
rm -rf "$WORK/out-cp" "$WORK/out-md"
