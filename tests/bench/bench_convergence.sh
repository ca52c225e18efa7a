#!/usr/bin/env bash
# Convergence bench: the README's demo model (configs/demo.yaml: 15.7 M parameters, the KJV with a
# 4096-token BPE tokenizer) trained with each optimizer for the same steps on the same data, one
# process, and each run's validation loss at the end beside AdamW's. Each run keeps its
# metrics.jsonl and loss.svg under --out.
#
#   tests/bench/bench_convergence.sh [--keel build/keel] [--steps 150] [--out runs/convergence]
#       [--optimizers "adamw adamw_8bit galore galore_8bit"] [--galore-rank 64]
# galore and galore_8bit are GaLore (optimizer.galore: rank --galore-rank, refresh every 50 steps,
# scale 0.25, exact projector) around adamw and adamw_8bit.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
keel=${KEEL:-build/keel}
steps=150
out=runs/convergence
optimizers="adamw adamw_8bit galore galore_8bit"
galore_rank=64
while [ $# -gt 0 ]; do
  case "$1" in
    --keel) keel=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --optimizers) optimizers=$2; shift 2 ;;
    --galore-rank) galore_rank=$2; shift 2 ;;
    -h|--help) sed -n 2,11p "$0"; exit 0 ;;
    *) echo "bench_convergence.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -x "$keel" ] || { echo "bench_convergence.sh: no keel binary at $keel (--keel PATH)" >&2; exit 1; }
cd "$repo_root"
export OMP_WAIT_POLICY=PASSIVE
data=runs/kjv-bpe4k
[ -f "$data/prepare.json" ] || "$keel" prepare data/kjv.txt.gz --vocab-size 4096 --out "$data" > /dev/null
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "configs/demo.yaml, one process, $steps steps, validation every 50 and at the end"
base=""
for o in $optimizers; do
  rm -rf "$out/$o"
  case "$o" in
    galore) choice="--set optimizer.type=adamw --set optimizer.galore.rank=$galore_rank" ;;
    galore_8bit) choice="--set optimizer.type=adamw_8bit --set optimizer.galore.rank=$galore_rank" ;;
    *) choice="--set optimizer.type=$o" ;;
  esac
  # shellcheck disable=SC2086 # choice is several --set arguments
  "$keel" train configs/demo.yaml $choice --set optimizer.galore.update_proj_gap=50 \
    --set training.max_steps="$steps" \
    --set training.output_dir="$out/$o" --set training.save_steps=0 \
    --set training.resume_from_checkpoint=none > "$out.$o.log" 2>&1 \
    || { cat "$out.$o.log" >&2; exit 1; }
  eval_loss=$(grep -o '"eval_loss": [0-9.]*' "$out/$o/metrics.jsonl" | tail -1 | cut -d' ' -f2)
  plan=$(grep -o 'optimizer state [0-9.]* MiB' "$out.$o.log" | head -1)
  secs=$(grep -o 'done, [0-9]* steps in [0-9.]* s' "$out.$o.log" | awk '{print $5}')
  [ -n "$base" ] || base=$eval_loss
  printf '%-12s validation loss %.4f (%+.2f %% of %s'"'"'s), %s, %.0f s; curve %s\n' "$o" \
    "$eval_loss" "$(awk -v a="$eval_loss" -v b="$base" 'BEGIN { print (a / b - 1) * 100 }')" \
    "${optimizers%% *}" "$plan" "$secs" "$out/$o/loss.svg"
done
