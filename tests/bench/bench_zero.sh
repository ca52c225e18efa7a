#!/usr/bin/env bash
# ZeRO bench: (1) the single-rank cost of the ZeRO machinery, stages 1-3 against stage 0 on the
# same model; (2) on 2 ranks, how much collective time the overlap hides for stages 1-3: the
# seconds each step spends blocked on collectives with parallel.overlap_comm true, against false
# (every collective waited for as soon as it starts). Prints a table; numbers go to
# docs/PERFORMANCE.md with this script's output.
#
#   tests/bench/bench_zero.sh [--keel build/keel] [--steps 12] [--config configs/tiny.yaml]
set -euo pipefail

keel=${KEEL:-build/keel}
steps=12
config=configs/tiny.yaml
while [ $# -gt 0 ]; do
  case "$1" in
    --keel) keel=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    -h|--help) sed -n 2,8p "$0"; exit 0 ;;
    *) echo "bench_zero.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -x "$keel" ] || { echo "bench_zero.sh: no keel binary at $keel (--keel PATH)" >&2; exit 1; }
out=$(mktemp -d)
export OMP_WAIT_POLICY=PASSIVE OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# Median over steps 3.. of a metrics.jsonl field.
median() {
  python3 - "$1" "$2" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])][2:]
print(statistics.median(r[sys.argv[2]] for r in rows))
EOF
}

common=(--set training.max_steps="$steps" --set training.logging_steps=1)
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "config: $config, $steps steps, medians over steps 3..$steps"
echo
echo "== one rank, $(nproc) threads: step seconds by ZeRO stage"
base=""
for stage in 0 1 2 3; do
  dir=$out/one_$stage
  "$keel" train "$config" "${common[@]}" --set parallel.zero_stage=$stage \
    --set training.output_dir="$dir" > "$dir.log" 2>&1
  s=$(median "$dir/metrics.jsonl" step_seconds)
  [ -z "$base" ] && base=$s
  python3 -c "print(f'stage $stage: {$s:.4f} s/step, {100*($s/$base-1):+.1f} % against stage 0')"
done

echo
echo "== 2 ranks x 1 thread: seconds blocked on collectives per step (overlap on / off)"
for stage in 1 2 3; do
  for overlap in true false; do
    dir=$out/two_${stage}_$overlap
    mpirun -np 2 --oversubscribe --bind-to none -x OMP_NUM_THREADS=1 -x OMP_WAIT_POLICY \
      "$keel" train "$config" "${common[@]}" --set parallel.zero_stage=$stage \
      --set parallel.overlap_comm=$overlap --set training.output_dir="$dir" > "$dir.log" 2>&1
  done
  on=$(median "$out/two_${stage}_true/metrics.jsonl" comm_wait_seconds)
  off=$(median "$out/two_${stage}_false/metrics.jsonl" comm_wait_seconds)
  step_on=$(median "$out/two_${stage}_true/metrics.jsonl" step_seconds)
  step_off=$(median "$out/two_${stage}_false/metrics.jsonl" step_seconds)
  python3 -c "
on, off = $on, $off
print(f'stage $stage: blocked {on:.4f} s with overlap, {off:.4f} s without: '
      f'{100*(1-on/off) if off > 0 else 0:.0f} % hidden; step {$step_on:.3f} s vs {$step_off:.3f} s')"
done
echo
echo "logs and metrics: $out"
