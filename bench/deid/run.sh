#!/usr/bin/env bash
# De-identification throughput and memory against `cp -r` of the same folder, in the same run.
#
#   bench/deid/run.sh [WORKDIR]
#
# Sets (made in WORKDIR unless already there; nothing is written into the repository):
#   real:    every file pydicom and pydicom-data ship (target/pyenv, made by .ci/run), hard-linked
#            (copied where linking fails) into one flat folder: many vendors, every transfer syntax
#   mixed:   1,200 files from `medfed synth` (20 patients x 2 studies x 2 series x 15, 128x128)
#   series:  one 300-slice 512x512 CT series (~160 MB)
#   mutated: 100 damaged copies of the real files (bench/deid/mutate.py: cuts, flipped bits,
#            lengths set to 0xFFFFFFF0)
# For each set: REPS runs (median) of `cp -r` and `medfed deid` into emptied folders with a warm
# page cache; prints seconds, files/s, MB/s, the ratio cp/medfed (>= 1: medfed as fast as cp),
# medfed's peak RSS against the largest input file, and the report's outcome counts.
# medfed syncs its outputs once before writing its report (cp does not), so the cp + sync
# ratio is printed too. Bars: real >= 0.5, mixed >= 0.8, peak RSS <= 4x the largest file.
# PEERS=1 also runs ../shared/bench/deid-peers (dicognito, dicom-anonymizer) on the real set.
# JOBS chooses medfed's worker threads (default: one per core).
set -euo pipefail
cd "$(dirname "$0")/../.."
REPS=${REPS:-5}
WORK=${1:-$(mktemp -d)}
mkdir -p "$WORK"
echo "workdir: $WORK"
nice cargo build --release -q -p medfed
BIN=$PWD/target/release/medfed
KEY="$WORK/bench-site.key"
[ -x /usr/bin/time ] || { echo "needs GNU time at /usr/bin/time" >&2; exit 2; }

if [ ! -d "$WORK/real" ]; then
  mkdir -p "$WORK/real"
  for d in target/pyenv/lib/python3*/site-packages/pydicom/data/test_files \
           target/pyenv/lib/python3*/site-packages/data_store/data; do
    [ -d "$d" ] || { echo "missing $d (made by .ci/run)" >&2; exit 2; }
    (cd "$d" && find . -type f) | while read -r f; do
      name="$(basename "$d")__$(echo "${f#./}" | tr / _)"
      ln "$d/$f" "$WORK/real/$name" 2>/dev/null || cp "$d/$f" "$WORK/real/$name"
    done
  done
fi
[ -d "$WORK/mixed" ] || $BIN synth "$WORK/mixed" --patients 20 --studies 2 --series 2 --slices 15 --matrix 128 >/dev/null
[ -d "$WORK/series" ] || $BIN synth "$WORK/series" --patients 1 --studies 1 --series 1 --slices 300 --matrix 512 >/dev/null
[ -d "$WORK/mutated" ] || python3 bench/deid/mutate.py "$WORK/mutated" 100 $(find "$WORK/real" -type f -name '*.dcm' | sort)

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
now() { date +%s.%N; }

# Outputs an interrupted run left: removed, then 30 s for ext4 to stop skipping their inodes.
if compgen -G "$WORK/out-*" >/dev/null; then rm -rf "$WORK"/out-*; sync; sleep 31; fi
for set in real mixed series mutated; do
  IN="$WORK/$set"
  files=$(find "$IN" -type f | wc -l)
  bytes=$(du -sbL "$IN" | cut -f1)
  largest=$(find "$IN" -type f -printf '%s\n' | sort -n | tail -1)
  cat $(find "$IN" -type f) >/dev/null   # warm the page cache
  cp_times=(); cps_times=(); md_times=(); rss=()
  # Each timed run writes into a new folder, and outputs are deleted only at the end: ext4
  # skips inodes freed in the last 30 s when it allocates new ones, and looking each of them up
  # made whichever tool ran right after a deletion pay for it (medfed, always after cp's output
  # was deleted, spent most of its kernel time there). A sync between runs keeps either tool
  # from paying for the other's write-back.
  for r in $(seq "$REPS"); do
    t0=$(now); cp -r "$IN" "$WORK/out-$set-cp-$r"; t1=$(now); sync -f "$WORK/out-$set-cp-$r"; t2=$(now)
    cp_times+=("$(echo "$t1 - $t0" | bc -l)"); cps_times+=("$(echo "$t2 - $t0" | bc -l)")
    sync
    t0=$(now)
    /usr/bin/time -o "$WORK/time.txt" -f "%M" $BIN deid "$IN" "$WORK/out-$set-md-$r" --key-file "$KEY" ${JOBS:+--jobs $JOBS} 2>/dev/null || true
    t1=$(now)
    md_times+=("$(echo "$t1 - $t0" | bc -l)"); rss+=("$(tail -1 "$WORK/time.txt")")
    sync
  done
  cp_s=$(printf '%s\n' "${cp_times[@]}" | median)
  cps_s=$(printf '%s\n' "${cps_times[@]}" | median)
  md_s=$(printf '%s\n' "${md_times[@]}" | median)
  rss_kb=$(printf '%s\n' "${rss[@]}" | sort -n | tail -1)
  outcomes=$(python3 -c 'import json,sys,collections; r=json.load(open(sys.argv[1])); c=collections.Counter(f["outcome"] for f in r["files"]); print(" ".join(f"{k}={v}" for k,v in sorted(c.items())), "reported", len(r["files"]))' "$WORK/out-$set-md-1/deid-report.json")
  awk -v set="$set" -v f="$files" -v b="$bytes" -v c="$cp_s" -v cs="$cps_s" -v m="$md_s" -v rss="$rss_kb" -v big="$largest" 'BEGIN {
    printf "%-8s %5d files %7.1f MB | cp -r %6.3f s (+sync %6.3f s) | medfed %6.3f s %6.0f files/s %5.0f MB/s | cp/medfed %.2f (with sync %.2f) | peak RSS %.1f MB = %.1fx largest file (%.1f MB)\n",
      set, f, b/1e6, c, cs, m, f/m, b/1e6/m, c/m, cs/m, rss/1024, rss*1024/big, big/1e6 }'
  echo "         medfed report: $outcomes"
done
rm -rf "$WORK"/out-*
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); cores: $(nproc)"

if [ "${PEERS:-0}" = 1 ] && [ -x ../shared/bench/deid-peers/run.sh ]; then
  # The peers on the same flat real folder, medfed timed beside them (their summary prints
  # peer/ours ratios).
  OURS_CMD="$BIN deid {in} {out}/md --key-file $KEY" REPS=3 ../shared/bench/deid-peers/run.sh "$WORK/real" "$WORK/peers" || true
fi
