#!/usr/bin/env bash
# Optimizer bench: one optimizer step per parameter and the bytes of state per parameter, keel's
# fp32 AdamW and 8-bit AdamW (keel_optimizer_step) beside torch.optim.AdamW and bitsandbytes'
# AdamW8bit (CPU backend), same tensors (4 M parameters each), same threads, one run.
#
#   tests/bench/bench_optimizers.sh [--build build] [--params 67108864] [--threads N]
#       [--python .venv-bench/bin/python]
#
# The peers need torch and bitsandbytes in --python (scripts/bench_env.sh installs torch;
# `pip install bitsandbytes` adds the other). Without bitsandbytes its row is left out.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=build
params=67108864
threads=$(nproc)
python="$repo_root/.venv-bench/bin/python"
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --params) params=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    -h|--help) sed -n 2,10p "$0"; exit 0 ;;
    *) echo "bench_optimizers.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
step="$build/tests/bench/keel_optimizer_step"
[ -x "$step" ] || { echo "bench_optimizers.sh: no $step (cmake --build $build --target keel_optimizer_step)" >&2; exit 1; }
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=$threads
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); threads $threads"
keel=$("$step" --params "$params")
peer=$("$python" "$repo_root/tests/bench/optimizer_peer.py" --params "$params" --threads "$threads" | tail -1)
"$python" - "$keel" "$peer" <<'PY'
import json, sys
k, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"{k['params'] / 1e6:.1f} M parameters in tensors of 4 M; best of 5 steps (peer: best of 5)")
print(f"{'':28s} {'ns/param':>9s} {'state B/param':>14s}")
print(f"{'keel adamw':28s} {k['adamw']['ns_per_param']:9.3f} {k['adamw']['state_bytes_per_param']:14.5f}")
print(f"{'torch AdamW ' + p['torch']:28s} {p['torch_adamw']['ns_per_param']:9.3f} {p['torch_adamw']['state_bytes_per_param']:14.5f}")
print(f"{'keel adamw_8bit':28s} {k['adamw_8bit']['ns_per_param']:9.3f} {k['adamw_8bit']['state_bytes_per_param']:14.5f}")
if "bnb_adamw8bit" in p:
    b = p["bnb_adamw8bit"]
    print(f"{'bitsandbytes AdamW8bit ' + b['version']:28s} {b['ns_per_param']:9.3f} {b['state_bytes_per_param']:14.5f}")
    print(f"ratio 8-bit: keel {b['ns_per_param'] / k['adamw_8bit']['ns_per_param']:.2f}x faster")
print(f"ratio fp32: keel {p['torch_adamw']['ns_per_param'] / k['adamw']['ns_per_param']:.2f}x faster")
PY
