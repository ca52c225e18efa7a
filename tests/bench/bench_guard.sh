#!/usr/bin/env bash
# What the divergence guard costs (training.on_nonfinite): each step is judged from the loss and
# gradient norm that the step computes anyway (no extra pass), and the weights are scanned for NaN
# and infinities only before they are evaluated, saved or exported. This bench trains the 134M
# shape (configs/small.yaml) for a few steps with a checkpoint at the last, and prints the weight
# scan's time against a step's and a save's, all from the same run.
#
#   tests/bench/bench_guard.sh [--keel build/keel] [--config configs/small.yaml] [--steps 3]
set -euo pipefail

keel=${KEEL:-build/keel}
config=configs/small.yaml
steps=3
while [ $# -gt 0 ]; do
  case "$1" in
    --keel) keel=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    -h|--help) sed -n 2,8p "$0"; exit 0 ;;
    *) echo "bench_guard.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -x "$keel" ] || { echo "bench_guard.sh: no keel binary at $keel (--keel PATH)" >&2; exit 1; }
out=$(mktemp -d "${TMPDIR:-/tmp}/keel_bench_guard.XXXXXX")
trap 'rm -rf "$out"' EXIT
export OMP_WAIT_POLICY=PASSIVE

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "config: $config, $steps steps, a checkpoint at the last"
"$keel" train "$config" --set training.max_steps="$steps" --set training.save_steps="$steps" \
  --set training.logging_steps=1 --set training.report_to=none \
  --set training.output_dir="$out/run" > "$out/log" 2>&1 || { cat "$out/log"; exit 1; }
# The steps after the first (which faults its pages in), from metrics.jsonl.
step_s=$(python3 -c "
import json, sys
s = [json.loads(l)['step_seconds'] for l in open('$out/run/metrics.jsonl')][1:]
print(sum(s) / len(s))")
check_s=$(grep -o 'checking the weights finite [0-9.e+-]*' "$out/log" | awk '{print $NF}')
save_s=$(grep -o 'saved in [0-9.e+-]*' "$out/log" | head -1 | awk '{print $NF}')
params=$(grep -o 'model [0-9.]* M parameters' "$out/log" | awk '{print $2}')
python3 - <<PY
step, check, save = $step_s, $check_s, $save_s
print(f"model {float('$params'):.1f} M parameters")
print(f"step (mean of steps 2-$steps):  {step:8.3f} s")
print(f"per-step judgement:          0 extra passes (the loss and norm the step computed)")
print(f"weight scan (once, at the save): {check*1e3:8.1f} ms = {100*check/step:.2f} % of a step, "
      f"{100*check/save:.2f} % of the save ({save:.2f} s)")
PY
