#!/usr/bin/env bash
# Pipeline parallelism, measured on this machine in one run: (1) the bubble, per stage, as the
# seconds each stage's rank log says it waited on its neighbours over the step's seconds, against
# (p-1)/(m+p-1) for GPipe and 1F1B, (p-1)/(v·m+p-1) for interleaved 1F1B (v = 2 chunks a rank)
# and (p-1)/(3m+p-1) for ZB-H1 (its bubble when a weight pass costs what an input pass does), at
# p = 2 and 4 stages and m micro-batches a step, with the step's speed-up over one rank running
# all the layers (1 thread, the same m); (2) the activations
# each stage plans and the peak RSS each rank reaches, GPipe against 1F1B, at p = 2 and m = 8.
# One rank per stage, 1 OpenMP thread each, B = 1 sequence of --seq tokens per micro-batch; stages
# of equal layers (parallel.pipeline_layers). Ranks beyond the cores share them: those runs make
# MPI yield while it waits, and the bench measures what that is worth. Numbers go to
# docs/PERFORMANCE.md with this output.
#
#   tests/bench/bench_pipeline.sh [--keel build/keel] [--config configs/tiny.yaml] [--steps 6]
#                                 [--seq 128] [--micro-batches "1 2 4 8 16"] [--stages "2 4"]
#                                 [--poll-micro-batches "4 16"] [--rounds 1] [--set k=v ...]
set -euo pipefail

keel=${KEEL:-build/keel}
config=configs/tiny.yaml
steps=6
seq=128
rounds=1
micro="1 2 4 8 16"
stages="2 4"
poll="4 16"
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --keel) keel=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --seq) seq=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --micro-batches) micro=$2; shift 2 ;;
    --stages) stages=$2; shift 2 ;;
    --poll-micro-batches) poll=$2; shift 2 ;;
    --set) extra+=(--set "$2"); shift 2 ;;
    -h|--help) sed -n 2,14p "$0"; exit 0 ;;
    *) echo "bench_pipeline.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -x "$keel" ] || { echo "bench_pipeline.sh: no keel binary at $keel (--keel PATH)" >&2; exit 1; }
[ "$steps" -ge 3 ] || { echo "bench_pipeline.sh: --steps must be 3 or more (steps 3.. count)" >&2; exit 2; }
out=$(mktemp -d "${TMPDIR:-/tmp}/keel_pipeline.XXXXXX")
cores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc obeys OMP_NUM_THREADS
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
layers=$(awk '/num_hidden_layers:/ {print $2}' "$config")
for arg in "${extra[@]}"; do
  case "$arg" in model.num_hidden_layers=*) layers=${arg#*=} ;; esac
done
load() { cut -d' ' -f1-3 /proc/loadavg; }

echo "machine: $cores cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(date -u +%F)"
echo "config: $config${extra[*]:+ ${extra[*]}}, $layers layers, 1 sequence of $seq tokens per micro-batch," \
  "$steps steps, means over steps 3..$steps"
common=(--set training.max_steps="$steps" --set training.logging_steps=1
        --set training.report_to=none --set training.per_device_train_batch_size=1
        --set data.seq_length="$seq" "${extra[@]}")

# The host's busy CPU seconds (steal included) and the time, before and after a run, and each
# rank's CPU seconds (bash's `times` after it): what other processes kept busy meanwhile, in cores.
# The host is shared; a number taken while they ran is not this machine's. (mpirun does not always
# reap its ranks before it exits, so this shell's children's times would miss some of them.)
host_ticks() {
  echo "$(awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat) $(date +%s.%N)"
}
others() {
  python3 - "$@" <<'PY'
import glob, os, re, sys
(b0, t0), (b1, t1) = (map(float, x.split()) for x in sys.argv[1:3])
ours = 0.0
for path in glob.glob(sys.argv[3] + ".cpu.*"):
    children = open(path).read().split("\n")[1]  # user and system of the rank
    for m, sec in re.findall(r"(\d+)m([0-9.]+)s", children):
        ours += 60 * int(m) + float(sec)
busy = (b1 - b0) / os.sysconf("SC_CLK_TCK")
print(f"{max(0.0, (busy - ours) / (t1 - t0)):.2f}")
PY
}

# run NAME RANKS MICRO SCHEDULE YIELD: one training run (RANKS = 1: one process holding every
# layer); its rank logs go to $out/NAME/logs, the other processes' cores to $out/NAME.others.
# interleaved_1f1b runs 2 chunks a rank.
run() {
  local p=$2 m=$3 schedule=$4 yield=$5 dir=$out/$1 before split chunks=$2 v=1
  # shellcheck disable=SC2016  # expanded by the rank's bash, not here
  local cmd=(bash -c '"$@"; rc=$?; times > "$CPU.${OMPI_COMM_WORLD_RANK:-0}"; exit $rc' rank
             "$keel" train "$config" "${common[@]}" --set training.gradient_accumulation_steps="$m"
             --set training.output_dir="$dir")
  if [ "$p" -gt 1 ]; then
    [ "$schedule" = interleaved_1f1b ] && v=2 && chunks=$((2 * p))
    [ $((layers % chunks)) -eq 0 ] ||
      { echo "bench_pipeline.sh: $layers layers do not split into $chunks equal chunks" >&2; exit 1; }
    split=$((layers / chunks))
    for _ in $(seq 2 "$chunks"); do split+=",$((layers / chunks))"; done
    cmd=(mpirun -np "$p" --oversubscribe --bind-to none --mca mpi_yield_when_idle "$yield"
         -x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS -x OMP_WAIT_POLICY -x CPU "${cmd[@]}"
         --set parallel.pipeline_model_parallel_size="$p"
         --set parallel.virtual_pipeline_model_parallel_size="$v"
         --set parallel.pipeline_schedule="$schedule" --set parallel.pipeline_layers="$split")
  fi
  before=$(host_ticks)
  CPU=$dir.cpu "${cmd[@]}" > "$dir.log" 2>&1 || { tail -20 "$dir.log"; exit 1; }
  others "$before" "$(host_ticks)" "$dir" > "$dir.others"
}

# One JSON line per run from its logs: per stage the mean wait and step seconds over steps 3..,
# the planned activations and the peak RSS of the step lines (before the final gather of weights).
summarize() {
  python3 - "$out/$1" "$2" "$3" "$4" "$5" >> "$out/results.jsonl" <<'PY'
import glob, json, re, sys
d, p, m, schedule, yld = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
stages = []
for path in sorted(glob.glob(d + "/logs/rank_*.log")):
    text = open(path).read()
    head = re.search(r"pipeline stage (\d+) of \d+ \(([^)]*)\)", text)
    plan = re.search(r"memory plan per rank ([0-9.]+) MiB.*?activations ([0-9.]+) MiB"
                     r"(?: \((\d+) micro-batch(?:es| chunks) in flight(?: x ([0-9.]+) MiB)?)?", text)
    steps = re.findall(r"^step (\d+)/\d+ .*\| mem ([0-9.]+) MiB .*?"
                       r"(?:\| pipeline wait ([0-9.e+-]+) s of ([0-9.e+-]+))?$", text, re.M)
    late = [s for s in steps if int(s[0]) >= 3]
    stages.append({
        "stage": int(head.group(1)) if head else 0,
        "layers": head.group(2) if head else "all",
        "plan_mib": float(plan.group(1)), "act_mib": float(plan.group(2)),
        "slots": int(plan.group(3) or 1),
        "slot_mib": float(plan.group(4)) if plan.group(4) else float(plan.group(2)),
        "rss_mib": max(float(s[1]) for s in steps),
        "wait": sum(float(s[2] or 0) for s in late) / len(late),
        "step": (sum(float(s[3]) for s in late) / len(late) if late[0][3] else None),
    })
stages.sort(key=lambda s: s["stage"])
if stages[0]["step"] is None:  # one rank: its step time from metrics.jsonl
    rows = [json.loads(l) for l in open(d + "/metrics.jsonl")][2:]
    stages[0]["step"] = sum(r["step_seconds"] for r in rows) / len(rows)
others = float(open(d + ".others").read())
print(json.dumps({"p": p, "m": m, "schedule": schedule, "yield": yld, "others": others,
                  "stages": stages}))
PY
}

# Waits (at most 20 s) for a second in which the host's other work keeps less than a tenth of
# a core busy, so that fewer runs share the cores with it.
quiet() {
  local hz b a
  hz=$(getconf CLK_TCK)
  for _ in $(seq 20); do
    b=$(host_ticks); sleep 1; a=$(host_ticks)
    [ $(( ${a%% *} - ${b%% *} )) -lt $(( hz / 10 )) ] && return
  done
  return 0  # not quiet: run anyway, the others' column will say so
}

# measure NAME RANKS MICRO SCHEDULE YIELD: run, then summarize.
measure() {
  quiet
  run "$@"
  summarize "$@"
}

# Per round and m, every layout in turns, so that a busy spell of the shared host falls on all of
# them alike; of several rounds, each layout's run that other work disturbed least is reported.
# Ranks beyond the cores yield while MPI waits; for m in --poll-micro-batches the same 1F1B run
# with MPI polling follows, to show what yielding is worth.
echo
for round in $(seq "$rounds"); do
  for m in $micro; do
    echo "== round $round, m = $m: one rank (1 thread, all $layers layers), then pp ${stages// /, pp};" \
      "load $(load)"
    measure "one_${m}_$round" 1 "$m" - 0
    for p in $stages; do
      yield=0
      [ "$p" -gt "$cores" ] && yield=1
      for schedule in gpipe 1f1b interleaved_1f1b zb_h1; do
        # Interleaving takes micro-batches in groups of p.
        [ "$schedule" = interleaved_1f1b ] && [ $((m % p)) -ne 0 ] && continue
        measure "pp${p}_${schedule}_${m}_$round" "$p" "$m" "$schedule" "$yield"
      done
      if [ "$yield" -eq 1 ] && [[ " $poll " == *" $m "* ]]; then
        measure "pp${p}_1f1b_${m}_poll_$round" "$p" "$m" 1f1b 0
      fi
    done
  done
done
echo "load at the end: $(load)"

python3 - "$out/results.jsonl" "$cores" <<'PY'
import json, sys
cores = int(sys.argv[2])
best = {}  # per layout, the round that other work disturbed least
for r in map(json.loads, open(sys.argv[1])):
    key = (r["p"], r["m"], r["schedule"], r["yield"])
    if key not in best or r["others"] < best[key]["others"]:
        best[key] = r
runs = list(best.values())
one = {r["m"]: r["stages"][0]["step"] for r in runs if r["p"] == 1}
one_others = {r["m"]: r["others"] for r in runs if r["p"] == 1}

print("\n== bubble: wait / step per stage (means over steps 3..), against the schedule's formula:")
print("(p-1)/(m+p-1) for gpipe and 1f1b, (p-1)/(2m+p-1) for interleaved_1f1b (v = 2), (p-1)/(3m+p-1)")
print("for zb_h1. A stage's wait is what its log counts: blocked on a neighbour's send or receive,")
print("and on the last stage's loss after its schedule (where an early stage spends its tail).")
print("| p | schedule | yield | m | formula | stage 0 | later stages | "
      "step s | speed-up vs 1 rank | p·m/(m+p-1) | others' cores |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
factor = {"gpipe": 1, "1f1b": 1, "interleaved_1f1b": 2, "zb_h1": 3}
runs.sort(key=lambda r: (r["p"], r["m"], list(factor).index(r["schedule"]) if r["schedule"] in factor else -1))
for r in runs:
    p, m = r["p"], r["m"]
    if p == 1 or (p > cores and r["yield"] == "0"):
        continue
    formula = (p - 1) / (factor[r["schedule"]] * m + p - 1)
    st = r["stages"]
    frac = [s["wait"] / s["step"] for s in st]
    later = ", ".join(f"{frac[s]:.3f}" for s in range(1, p))
    step = st[0]["step"]
    speed = f"{one[m] / step:.2f}x" if m in one else "-"
    ideal = f"{p * m / (m + p - 1):.2f}x" if p <= cores else f"< {cores}x"
    print(f"| {p} | {r['schedule']} | {r['yield']} | {m} | {formula:.3f} | {frac[0]:.3f} | {later} "
          f"| {step:.3f} | {speed} | {ideal} | {r['others']:.2f} / {one_others.get(m, 0):.2f} |")
print(f"(speed-up: one rank's step over the pipeline's, same m; the formula's where p <= {cores} "
      "cores, less than the cores where ranks share them; others' cores: what other processes "
      "kept busy during this run / during the one-rank run)")

polled = [r for r in runs if r["p"] > cores and r["yield"] == "0"]
if polled:
    print(f"\n== ranks beyond the {cores} cores: MPI yielding while it waits against polling (1f1b)")
    print("| p | m | step s, yield | step s, poll | stage 0 wait / step, yield | same, poll | "
          "others' cores, yield / poll |")
    print("|---|---|---|---|---|---|---|")
    for r in polled:
        y = [x for x in runs if x["p"] == r["p"] and x["m"] == r["m"] and
             x["schedule"] == "1f1b" and x["yield"] == "1"]
        if not y:
            continue
        a, b = y[0]["stages"][0], r["stages"][0]
        print(f"| {r['p']} | {r['m']} | {a['step']:.3f} | {b['step']:.3f} | "
              f"{a['wait'] / a['step']:.3f} | {b['wait'] / b['step']:.3f} | "
              f"{y[0]['others']:.2f} / {r['others']:.2f} |")

print("\n== activations per stage at p = 2, m = 8: planned (memory plan) and measured (peak RSS)")
print("| schedule | stage | layers | micro-batches in flight | planned activations MiB | "
      "planned total MiB | peak RSS MiB |")
print("|---|---|---|---|---|---|---|")
mem = {}
for r in runs:
    if r["p"] == 2 and r["m"] == 8 and not (r["p"] > cores and r["yield"] == "0"):
        mem[r["schedule"]] = r["stages"]
        for s in r["stages"]:
            print(f"| {r['schedule']} | {s['stage']} | {s['layers']} | {s['slots']} | "
                  f"{s['act_mib']:.1f} | {s['plan_mib']:.1f} | {s['rss_mib']:.0f} |")
for r in runs:
    if r["p"] == 1 and r["m"] == 8:
        s = r["stages"][0]
        print(f"| one rank | - | all | 1 | {s['act_mib']:.1f} | {s['plan_mib']:.1f} | "
              f"{s['rss_mib']:.0f} |")
if {"gpipe", "1f1b"} <= mem.keys():
    for g, f in zip(mem["gpipe"], mem["1f1b"]):
        print(f"stage {g['stage']}: GPipe - 1F1B = {g['act_mib'] - f['act_mib']:.1f} MiB planned "
              f"({g['slots']} - {f['slots']} micro-batches x {g['slot_mib']:.1f} MiB), "
              f"{g['rss_mib'] - f['rss_mib']:.0f} MiB measured")
PY
echo "logs: $out"
