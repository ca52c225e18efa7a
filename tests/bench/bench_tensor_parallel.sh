#!/usr/bin/env bash
# Tensor parallelism against data parallelism on one machine: the same model and global batch on
# 2 ranks x 1 thread, split two ways: dp2 (each rank the whole model, half the batch) and tp2
# (each rank half of every layer, the whole batch). Prints, per layout, the median tokens/s over
# steps 3.., the peak resident memory of rank 0, keel plan's memory per rank, and the bytes moved
# per step against keel plan's count for TP. Numbers go to docs/PERFORMANCE.md with this output.
#
#   tests/bench/bench_tensor_parallel.sh [--keel build/keel] [--steps 10]
#                                        [--config configs/bench_stories15m.yaml] [--set k=v ...]
set -euo pipefail

keel=${KEEL:-build/keel}
steps=10
config=configs/bench_stories15m.yaml
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --keel) keel=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --set) extra+=(--set "$2"); shift 2 ;;
    -h|--help) sed -n 2,9p "$0"; exit 0 ;;
    *) echo "bench_tensor_parallel.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -x "$keel" ] || { echo "bench_tensor_parallel.sh: no keel binary at $keel (--keel PATH)" >&2; exit 1; }
out=$(mktemp -d "${TMPDIR:-/tmp}/keel_tp.XXXXXX")
export OMP_WAIT_POLICY=PASSIVE OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# The global batch of the config, kept: dp2 takes half of it per rank, tp2 all of it.
batch=$(awk '/per_device_train_batch_size:/ {print $2}' "$config")
for arg in "${extra[@]}"; do
  case "$arg" in training.per_device_train_batch_size=*) batch=${arg#*=} ;; esac
done
[ $((batch % 2)) -eq 0 ] || { echo "bench_tensor_parallel.sh: the batch ($batch) must be even" >&2; exit 1; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "config: $config ${extra[*]}, global batch $batch, $steps steps, medians over steps 3..$steps"
common=(--set training.max_steps="$steps" --set training.logging_steps=1
        --set training.report_to=none "${extra[@]}")
for layout in dp2 tp2; do
  if [ "$layout" = dp2 ]; then
    sets=(--set training.per_device_train_batch_size=$((batch / 2)))
  else
    sets=(--set parallel.tensor_model_parallel_size=2 --set training.per_device_train_batch_size="$batch")
  fi
  plan=$("$keel" plan "$config" --world-size 2 "${common[@]}" "${sets[@]}")
  mpirun -np 2 --oversubscribe --bind-to none -x OMP_NUM_THREADS=1 -x OMP_WAIT_POLICY \
    "$keel" train "$config" "${common[@]}" "${sets[@]}" --set training.output_dir="$out/$layout" \
    > "$out/$layout.log" 2>&1 || { tail -20 "$out/$layout.log"; exit 1; }
  python3 - "$out/$layout/metrics.jsonl" "$layout" "$plan" <<'PY'
import json, re, statistics, sys
path, layout, plan = sys.argv[1:]
rows = [json.loads(l) for l in open(path) if "step_seconds" in l][2:]
tps = statistics.median(r["tokens_per_second"] for r in rows)
rss = max(r["peak_rss_mib"] for r in rows)
comm = statistics.median(r["comm_bytes"] for r in rows)
planned = re.search(r"memory plan per rank ([0-9.]+ MiB)", plan).group(1)
tp = re.search(r"\((\d+) bytes\) per rank per step", plan)
line = (f"{layout}: {tps:.0f} tokens/s, peak RSS rank 0 {rss:.0f} MiB, planned {planned} per rank, "
        f"{comm / 2**20:.1f} MiB moved per step")
if tp:
    line += f" (keel plan's TP count {int(tp.group(1)) / 2**20:.1f} MiB)"
print(line)
PY
done
echo "logs and metrics: $out"
