#!/usr/bin/env bash
# Two keel binaries on one config, in turns: the mean and the fastest step time of each (steps 3
# to N, after the first steps fault their pages in), round after round, so that a change to the
# engine can be held against the commit before it in one run on one machine.
#
#   tests/bench/bench_ab.sh OLD_KEEL NEW_KEEL [--config configs/bench_stories15m.yaml]
#                           [--steps 12] [--rounds 3]
# OLD_KEEL: e.g. a worktree of the earlier commit built beside this one
#   (git worktree add /tmp/old COMMIT && cmake -S /tmp/old -B /tmp/old/build -G Ninja
#    -DCMAKE_BUILD_TYPE=Release && ninja -C /tmp/old/build keel).
set -euo pipefail
[ $# -ge 2 ] || { sed -n 2,10p "$0"; exit 2; }
old=$1 new=$2
shift 2
config=configs/bench_stories15m.yaml
steps=12
rounds=3
while [ $# -gt 0 ]; do
  case "$1" in
    --config) config=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    *) echo "bench_ab.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
export OMP_WAIT_POLICY=PASSIVE
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "config: $config, steps 3-$steps, $rounds rounds, old then new"
for round in $(seq 1 "$rounds"); do
  for side in old new; do
    bin=$old
    [ "$side" = new ] && bin=$new
    out=$(mktemp -d "${TMPDIR:-/tmp}/keel_ab.XXXXXX")
    "$bin" train "$config" --set training.max_steps="$steps" --set training.logging_steps=1 \
      --set training.report_to=none --set training.output_dir="$out" > "$out.log" 2>&1 ||
      { cat "$out.log"; exit 1; }
    python3 - "$out/metrics.jsonl" "$side" "$round" "$(cut -d' ' -f1 /proc/loadavg)" <<'PY'
import json, sys
path, side, rnd, load = sys.argv[1:]
s = [json.loads(l)["step_seconds"] for l in open(path) if "step_seconds" in l][2:]
print(f"round {rnd} {side}: mean {sum(s) / len(s):.4f} s/step, fastest {min(s):.4f} (load {load})")
PY
    rm -rf "$out" "$out.log"
  done
done
