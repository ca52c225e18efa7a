#!/usr/bin/env bash
# Optimizer-state bytes per parameter for each optimizer choice: AdamW, 8-bit AdamW, GaLore (rank
# 128 around AdamW), 8-bit GaLore, Adafactor.
#   - configs/small.yaml (134 M parameters): as the run allocates it: `keel train` for one step
#     prints its memory plan from the optimizer it built (state_bytes of the allocated objects);
#   - a TinyLlama-1.1B shape (hidden 2048, 22 layers, vocab 32000): `keel plan`, which goes
#     through the same declarations without allocating (a step of it takes minutes here);
#   - ZeRO 3 at 2 and 4 ranks, per rank: `keel plan --world-size N` (its optimizer line includes
#     ZeRO's fp32 master shards, 4 B per parameter / N, printed beside it).
#
#   tests/bench/bench_optimizer_memory.sh [--keel build/keel] [--rank 128]
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
keel=${KEEL:-build/keel}
rank=128
while [ $# -gt 0 ]; do
  case "$1" in
    --keel) keel=$2; shift 2 ;;
    --rank) rank=$2; shift 2 ;;
    -h|--help) sed -n 2,13p "$0"; exit 0 ;;
    *) echo "bench_optimizer_memory.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -x "$keel" ] || { echo "bench_optimizer_memory.sh: no keel binary at $keel (--keel PATH)" >&2; exit 1; }
cd "$repo_root"
export OMP_WAIT_POLICY=PASSIVE
out=$(mktemp -d "${TMPDIR:-/tmp}/keel_bench_mem.XXXXXX")
trap 'rm -rf "$out"' EXIT
big="--set model.hidden_size=2048 --set model.intermediate_size=5632 --set model.num_hidden_layers=22
  --set model.num_attention_heads=32 --set model.num_key_value_heads=4 --set model.vocab_size=32000
  --set model.max_position_embeddings=2048"
choices=("adamw|--set optimizer.type=adamw"
  "adamw_8bit|--set optimizer.type=adamw_8bit"
  "galore|--set optimizer.type=adamw --set optimizer.galore.rank=$rank"
  "galore_8bit|--set optimizer.type=adamw_8bit --set optimizer.galore.rank=$rank"
  "adafactor|--set optimizer.type=adafactor")
mib() { grep -o 'optimizer state [0-9.]* MiB' | head -1 | awk '{print $3}'; }
params() { grep -o 'model [0-9.]* M parameters' | head -1 | awk '{print $2 * 1e6}'; }
echo "machine: $(nproc) cores; galore rank $rank (attention and MLP matrices)"
small_params=""
printf '%-12s %28s %28s %22s %22s\n' optimizer "small (allocated) MiB B/par" "1.1B (plan) MiB B/par" \
  "1.1B ZeRO3 x2 MiB/rank" "1.1B ZeRO3 x4 MiB/rank"
for c in "${choices[@]}"; do
  name=${c%%|*}; sets=${c#*|}
  # shellcheck disable=SC2086 # sets is several --set arguments
  "$keel" train configs/small.yaml $sets --set training.max_steps=1 --set data.seq_length=64 \
    --set training.per_device_train_batch_size=1 --set training.report_to=none \
    --set training.save_steps=0 --set training.output_dir="$out/$name" > "$out/$name.log" 2>&1 \
    || { cat "$out/$name.log" >&2; exit 1; }
  small=$(mib < "$out/$name.log"); small_params=$(params < "$out/$name.log")
  # shellcheck disable=SC2086
  plan=$("$keel" plan configs/small.yaml $big $sets)
  b=$(echo "$plan" | mib)
  # shellcheck disable=SC2086
  z2=$("$keel" plan configs/small.yaml $big $sets --world-size 2 --set parallel.zero_stage=3 | mib)
  # shellcheck disable=SC2086
  z4=$("$keel" plan configs/small.yaml $big $sets --world-size 4 --set parallel.zero_stage=3 | mib)
  # fp32 weights at ZeRO 0: 4 B per parameter.
  big_params=$(echo "$plan" | grep -o 'parameters [0-9.]* MiB' | head -1 | awk '{print $2 * 1048576 / 4}')
  printf '%-12s %18.1f %9.3f %18.1f %9.3f %22.1f %22.1f\n' "$name" "$small" \
    "$(awk -v m="$small" -v p="$small_params" 'BEGIN { print m * 1048576 / p }')" "$b" \
    "$(awk -v m="$b" -v p="$big_params" 'BEGIN { print m * 1048576 / p }')" "$z2" "$z4"
done
echo "1.1B: $big_params parameters; the ZeRO 3 columns include the fp32 master shards:" \
  "$(awk -v p="$big_params" 'BEGIN { printf "%.1f", p / 2 / 262144 }') MiB per rank at 2 ranks," \
  "$(awk -v p="$big_params" 'BEGIN { printf "%.1f", p / 4 / 262144 }') at 4"
