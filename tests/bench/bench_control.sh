#!/usr/bin/env bash
# The control plane's cost and latencies on a real 2-rank run (2 ranks x 1 thread):
#  1. step time with neither server nor heartbeats (control.address: none, hang_timeout 0: the
#     peer), with heartbeats alone, with the server and heartbeats and one `keel watch`, and with
#     100 watchers, in alternating rounds; mean s/step over steps 3..;
#  2. the latency of `keel stop` (answer = final checkpoint committed; then the job's exit) and of
#     SIGTERM to rank 1 (to the job's exit), with the step time beside them: a command waits for
#     the step boundary, so up to one step of it is the step in flight.
# Numbers go to docs/PERFORMANCE.md with this output.
#
#   tests/bench/bench_control.sh [--keel build/keel] [--steps 12] [--rounds 2]
#                                [--config configs/bench_stories15m.yaml] [--set k=v ...]
set -euo pipefail

keel=${KEEL:-build/keel}
steps=12
rounds=2
config=configs/bench_stories15m.yaml
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --keel) keel=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --set) extra+=(--set "$2"); shift 2 ;;
    -h|--help) sed -n 2,12p "$0"; exit 0 ;;
    *) echo "bench_control.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -x "$keel" ] || { echo "bench_control.sh: no keel binary at $keel (--keel PATH)" >&2; exit 1; }
keel=$(realpath "$keel")
out=$(mktemp -d "${TMPDIR:-/tmp}/keel_control.XXXXXX")
export OMP_WAIT_POLICY=PASSIVE OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
now() { date +%s.%N; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "config: $config ${extra[*]}, 2 ranks x 1 thread, $steps steps, means over steps 3..$steps"

# Starts a 2-rank run in the background (its mpirun pid in $job) writing to $out/$1.
start() {
  local name=$1; shift
  mpirun -np 2 --oversubscribe --bind-to none -x OMP_NUM_THREADS=1 -x OMP_WAIT_POLICY \
    "$keel" train "$config" --set training.logging_steps=1 --set training.report_to=none \
    --set training.output_dir="$out/$name" "${extra[@]}" "$@" > "$out/$name.log" 2>&1 &
  job=$!
}
# Waits until the run in $out/$1 serves and has trained $2 steps.
wait_steps() {
  for _ in $(seq 600); do
    if [ -f "$out/$1/control.json" ]; then
      s=$("$keel" status "$out/$1" --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["step"])' 2>/dev/null || echo -1)
      [ "$s" -ge "$2" ] && return 0
    fi
    sleep 0.2
  done
  echo "bench_control.sh: $1 never reached step $2" >&2; tail "$out/$1.log" >&2; exit 1
}
mean_step() {
  python3 - "$out/$1/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if "step_seconds" in l][2:]
print(f"{sum(r['step_seconds'] for r in rows) / len(rows):.4f}")
PY
}

declare -A total
for round in $(seq "$rounds"); do
  for mode in bare heartbeat watch1 watch100; do
    name="$mode-$round"
    if [ "$mode" = bare ] || [ "$mode" = heartbeat ]; then
      timeout=300; [ "$mode" = bare ] && timeout=0
      start "$name" --set training.max_steps="$steps" --set control.address=none \
        --set control.hang_timeout=$timeout
      wait "$job"
    else
      start "$name" --set training.max_steps="$steps"
      n=1; [ "$mode" = watch100 ] && n=100
      for _ in $(seq 600); do [ -f "$out/$name/control.json" ] && break; sleep 0.1; done
      pids=()
      for _ in $(seq "$n"); do
        "$keel" watch "$out/$name" --json > /dev/null 2>&1 &
        pids+=($!)
      done
      wait "$job"
      wait "${pids[@]}" || true
    fi
    s=$(mean_step "$name")
    total[$mode]=$(python3 -c "print(${total[$mode]:-0} + $s)")
    echo "round $round: $mode: $s s/step"
  done
done
python3 - "${total[bare]}" "${total[heartbeat]}" "${total[watch1]}" "${total[watch100]}" "$rounds" <<'PY'
import sys
bare, beat, one, hundred, rounds = map(float, sys.argv[1:])
def row(name, x):
    return f"{name} {x / rounds:.4f} s/step ({100 * (x / bare - 1):+.1f} %)"
print("mean over rounds: neither server nor heartbeats " + f"{bare / rounds:.4f} s/step; " +
      "; ".join([row("heartbeats", beat), row("server + 1 watcher", one),
                 row("server + 100 watchers", hundred)]))
PY

# Stop: answer (final checkpoint committed) and exit, from the call.
start stop --set training.max_steps=1000
wait_steps stop 3
t0=$(now)
"$keel" stop "$out/stop" > "$out/stop.answer"
t1=$(now)
wait "$job"
t2=$(now)
echo "keel stop: answered (checkpoint committed) after $(python3 -c "print(f'{$t1 - $t0:.2f}')") s, job exited after $(python3 -c "print(f'{$t2 - $t0:.2f}')") s; $(cat "$out/stop.answer"); step time $(mean_step stop) s"

# SIGTERM to rank 1: to the job's exit.
start sigterm --set training.max_steps=1000
wait_steps sigterm 3
rank1=""
for p in $(pgrep -f "training.output_dir=$out/sigterm"); do
  tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | grep -qx OMPI_COMM_WORLD_RANK=1 && rank1=$p
done
[ -n "$rank1" ] || { echo "bench_control.sh: rank 1 not found" >&2; exit 1; }
t0=$(now)
kill -TERM "$rank1"
wait "$job"
t2=$(now)
echo "SIGTERM to rank 1: job exited (after its checkpoint) $(python3 -c "print(f'{$t2 - $t0:.2f}')") s later; $(grep -o 'SIGTERM received.*' "$out/sigterm.log" | head -1); step time $(mean_step sigterm) s"
rm -rf "$out"
