#!/usr/bin/env bash
# GaLore's cost as a share of a real training step: configs/small.yaml (134 M parameters, batch
# 4 × 512 tokens, one process) trained for 6 steps with each optimizer, every step logged. GaLore
# (rank --rank on attention and MLP matrices) refreshes its projectors at steps 1 and 4
# (update_proj_gap 3), so step 4 is a refresh step and steps 3, 5 and 6 are not; step 1 also
# faults in every buffer and is left out. For each optimizer: the mean of steps 2, 3, 5, 6 (no
# refresh), step 4, and what each adds to AdamW's step.
#
#   tests/bench/bench_galore_step.sh [--keel build/keel] [--rank 128] [--out runs/galore_step]
#       [--runs "adamw adamw_8bit galore_exact galore_randomized galore_8bit_randomized"]
# The first run listed is the one the others are held against.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
keel=${KEEL:-build/keel}
rank=128
out=runs/galore_step
runs="adamw adamw_8bit galore_exact galore_randomized galore_8bit_randomized"
while [ $# -gt 0 ]; do
  case "$1" in
    --keel) keel=$2; shift 2 ;;
    --rank) rank=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    -h|--help) sed -n 2,12p "$0"; exit 0 ;;
    *) echo "bench_galore_step.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -x "$keel" ] || { echo "bench_galore_step.sh: no keel binary at $keel (--keel PATH)" >&2; exit 1; }
cd "$repo_root"
export OMP_WAIT_POLICY=PASSIVE
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "configs/small.yaml, one process, 6 steps; GaLore rank $rank, refresh at steps 1 and 4"
galore="--set optimizer.galore.rank=$rank --set optimizer.galore.update_proj_gap=3"
base=""
for run in $runs; do
  case "$run" in
    adamw) sets="--set optimizer.type=adamw" ;;
    adamw_8bit) sets="--set optimizer.type=adamw_8bit" ;;
    galore_exact) sets="$galore --set optimizer.galore.projector=exact" ;;
    galore_randomized) sets="$galore --set optimizer.galore.projector=randomized" ;;
    galore_8bit_randomized)
      sets="$galore --set optimizer.galore.projector=randomized --set optimizer.type=adamw_8bit" ;;
    *) echo "bench_galore_step.sh: unknown run $run" >&2; exit 2 ;;
  esac
  rm -rf "${out:?}/$run"
  # shellcheck disable=SC2086 # sets is several --set arguments
  "$keel" train configs/small.yaml $sets --set training.max_steps=6 \
    --set training.logging_steps=1 --set training.save_steps=0 \
    --set training.output_dir="$out/$run" --set training.resume_from_checkpoint=none \
    > "$out.$run.log" 2>&1 || { cat "$out.$run.log" >&2; exit 1; }
  read -r plain refresh < <(grep -o '"step": [0-9]*, .*"step_seconds": [0-9.e+-]*' \
    "$out/$run/metrics.jsonl" | awk '{ s = $2 + 0; t = $NF + 0
      if (s == 4) r = t; else if (s > 1) { sum += t; n++ } }
      END { printf "%.3f %.3f\n", sum / n, r }')
  [ -n "$base" ] || base=$plain
  printf '%-24s step %.3f s (%+.3f s, %+.1f %% of %s'"'"'s), refresh step %.3f s (%+.3f s)\n' \
    "$run" "$plain" "$(awk -v a="$plain" -v b="$base" 'BEGIN { print a - b }')" \
    "$(awk -v a="$plain" -v b="$base" 'BEGIN { print (a / b - 1) * 100 }')" "${runs%% *}" \
    "$refresh" \
    "$(awk -v a="$refresh" -v b="$plain" 'BEGIN { print a - b }')"
done
