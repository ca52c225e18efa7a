#!/usr/bin/env bash
# Mixture of experts on this machine, in one run: (a) the tokens/s of configs/moe.yaml (8 experts
# of MLP width 512, top-2, every layer) against its dense peer with the same active parameters (the
# same model with one dense MLP of width 2 x 512 = 1024 in every layer, i.e. configs/tiny.yaml's
# model: equal active parameters but for the MoE's routers, 8 x 384 a layer), same batch, threads
# and steps, runs alternating so that a busy spell of the shared host falls on both; median
# tokens/s over steps 3.. (keel counts the same model FLOPs per token for both, 80.9 M and 80.8 M,
# so the ratio of tokens/s is that of FLOP/s); (b) the expert-load imbalance (the busiest expert's
# routed choices over the mean, max over layers: load_imbalance in metrics.jsonl; 1 = balanced,
# E/k = 4 = every token on one expert) over a training run of configs/moe.yaml with the
# load-balancing loss in the objective (model.output_router_logits true, as shipped) and without
# it (false), drawn as an SVG (--svg); --balance-steps 0 skips it; (c) under expert parallelism
# (2 ranks, parallel.expert_model_parallel_size 2, one thread each), the all-to-all bytes rank 0
# sends per step as its communicator counted them, as its routing says, and as a uniform router
# would send (half of each token's k choices leave the rank, and half the other rank's arrive,
# each way forward and backward); --ep-steps 0 skips it. Numbers go to docs/PERFORMANCE.md with
# this output.
#
#   tests/bench/bench_moe.sh [--keel build/keel] [--threads 2] [--speed-steps 8] [--rounds 2]
#                            [--balance-steps 150] [--svg docs/img/moe/load_imbalance.svg]
#                            [--ep-steps 6] [--out DIR] [--set k=v ...]
set -euo pipefail

keel=${KEEL:-build/keel}
config=configs/moe.yaml
threads=2
speed_steps=8
rounds=2
balance_steps=150
ep_steps=6
svg=""
out=""
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --keel) keel=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --speed-steps) speed_steps=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --balance-steps) balance_steps=$2; shift 2 ;;
    --ep-steps) ep_steps=$2; shift 2 ;;
    --svg) svg=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --set) extra+=(--set "$2"); shift 2 ;;
    -h|--help) sed -n 2,22p "$0"; exit 0 ;;
    *) echo "bench_moe.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -x "$keel" ] || { echo "bench_moe.sh: no keel binary at $keel (--keel PATH)" >&2; exit 1; }
[ "$speed_steps" -ge 4 ] || { echo "bench_moe.sh: --speed-steps must be 4 or more (steps 3.. count)" >&2; exit 2; }
[ -n "$out" ] || out=$(mktemp -d "${TMPDIR:-/tmp}/keel_moe.XXXXXX")
mkdir -p "$out"
export OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads OMP_WAIT_POLICY=PASSIVE
load() { cut -d' ' -f1-3 /proc/loadavg; }
# The host's busy CPU seconds (steal included) and the time: with the run's own CPU seconds,
# what other processes kept busy meanwhile, in cores (the host is shared).
host_ticks() {
  echo "$(awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat) $(date +%s.%N)"
}

# The dense peer: the same model with its MoE MLPs replaced by one of k x the expert's width.
width=$(awk '/intermediate_size:/ {print $2}' "$config")
k=$(awk '/num_experts_per_tok:/ {print $2}' "$config")
for arg in "${extra[@]}"; do
  case "$arg" in
    model.intermediate_size=*) width=${arg#*=} ;;
    model.num_experts_per_tok=*) k=${arg#*=} ;;
  esac
done
dense=(--set model.num_local_experts=0 --set model.intermediate_size=$((k * width)))

echo "machine: $(env -u OMP_NUM_THREADS nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(date -u +%F)"
echo "config: $config${extra[*]:+ ${extra[*]}}; dense peer: ${dense[*]}; $threads OpenMP threads"
"$keel" plan "$config" "${extra[@]}" | grep -E "mixture of experts|experts per rank|memory plan"
"$keel" plan "$config" "${dense[@]}" "${extra[@]}" | grep "memory plan" | sed 's/^keel: /keel (dense peer): /'

# Waits (at most 20 s) for a second in which the host's other work keeps less than a tenth of a
# core busy, so that fewer runs share the cores with it.
quiet() {
  local hz b a
  hz=$(getconf CLK_TCK)
  for _ in $(seq 20); do
    b=$(host_ticks); sleep 1; a=$(host_ticks)
    [ $(( ${a%% *} - ${b%% *} )) -lt $(( hz / 10 )) ] && return
  done
  return 0  # not quiet: run anyway, the others' column will say so
}

# run NAME STEPS [--set ...]: one training run into $out/NAME, with its log, and the cores other
# processes kept busy during it in $out/NAME.others.
run() {
  local name=$1 steps=$2 before after
  shift 2
  quiet
  before=$(host_ticks)
  # shellcheck disable=SC2016  # expanded by the inner bash
  bash -c '"$@"; rc=$?; times > "$CPU"; exit $rc' run "$keel" train "$config" \
    --set training.max_steps="$steps" --set training.report_to=none \
    --set training.output_dir="$out/$name" "${extra[@]}" "$@" > "$out/$name.log" 2>&1 \
    || { tail -20 "$out/$name.log"; exit 1; }
  after=$(host_ticks)
  python3 - "$before" "$after" "$out/$name.log.cpu" > "$out/$name.others" <<'PY'
import os, re, sys
(b0, t0), (b1, t1) = (map(float, x.split()) for x in sys.argv[1:3])
ours = sum(60 * int(m) + float(s)
           for m, s in re.findall(r"(\d+)m([0-9.]+)s", open(sys.argv[3]).read().split("\n")[1]))
print(f"{max(0.0, ((b1 - b0) / os.sysconf('SC_CLK_TCK') - ours) / (t1 - t0)):.2f}")
PY
}
export CPU  # each run's `times` file

echo
echo "== (a) tokens/s, $speed_steps steps a run, $rounds rounds of MoE then dense"
for round in $(seq "$rounds"); do
  for side in moe dense; do
    sets=(--set training.logging_steps=1)
    [ "$side" = dense ] && sets+=("${dense[@]}")
    CPU="$out/speed_${side}_$round.log.cpu"
    run "speed_${side}_$round" "$speed_steps" "${sets[@]}"
    echo "round $round $side: done, load $(load), others' cores $(cat "$out/speed_${side}_$round.others")"
  done
done

echo
[ "$balance_steps" -gt 0 ] &&
  echo "== (b) expert-load imbalance over $balance_steps steps, load-balancing loss on and off"
for aux in true false; do
  [ "$balance_steps" -gt 0 ] || break
  CPU="$out/balance_$aux.log.cpu"
  run "balance_$aux" "$balance_steps" --set training.logging_steps=5 \
    --set model.output_router_logits="$aux"
  echo "output_router_logits $aux: $(grep -m1 '^keel: done' "$out/balance_$aux.log" | cut -d'(' -f1)," \
    "load $(load), others' cores $(cat "$out/balance_$aux.others")"
done

python3 - "$out" "$rounds" "$svg" "$config" "$balance_steps" <<'PY'
import json, os, statistics, sys
out, rounds, svg, config, steps = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])

def rows(name):
    return [json.loads(l) for l in open(f"{out}/{name}/metrics.jsonl") if l.strip()]

print("\n== (a) tokens/s: median over steps 3.. of each run; ratio MoE / dense per round")
print("| round | MoE tokens/s | dense tokens/s | MoE / dense | peak RSS MoE / dense MiB | "
      "others' cores MoE / dense |")
print("|---|---|---|---|---|---|")
ratios = []
for r in range(1, rounds + 1):
    m, d = rows(f"speed_moe_{r}")[2:], rows(f"speed_dense_{r}")[2:]
    tm = statistics.median(x["tokens_per_second"] for x in m)
    td = statistics.median(x["tokens_per_second"] for x in d)
    om = float(open(f"{out}/speed_moe_{r}.others").read())
    od = float(open(f"{out}/speed_dense_{r}.others").read())
    ratios.append((om + od, r, tm / td))
    print(f"| {r} | {tm:.0f} | {td:.0f} | {tm / td:.3f} | "
          f"{max(x['peak_rss_mib'] for x in m):.0f} / {max(x['peak_rss_mib'] for x in d):.0f} | "
          f"{om:.2f} / {od:.2f} |")
if ratios:  # --rounds 0 measures no speed
    best = min(ratios)
    print(f"MoE / dense over the rounds: {', '.join(f'{x[2]:.3f}' for x in sorted(ratios, key=lambda x: x[1]))}; "
          f"in the round other processes disturbed least (round {best[1]}): {best[2]:.3f}")
if steps <= 0:
    sys.exit(0)

print("\n== (b) load imbalance (max over layers of the busiest expert's choices / the mean)")
runs = {aux: rows(f"balance_{aux}") for aux in ("true", "false")}
print("| step | " + " | ".join(f"aux {'on' if a == 'true' else 'off'}: imbalance, mean over layers, "
                                 "aux_loss, loss" for a in runs) + " |")
print("|---|---|---|")
for i, row in enumerate(runs["true"]):
    if row["step"] not in (1, 10, 25, 50, 75, 100, 125, 150) and i != len(runs["true"]) - 1:
        continue
    cells = []
    for a in runs:
        x = next((y for y in runs[a] if y["step"] == row["step"]), None)
        if x is None:
            cells.append("-")
            continue
        mean = statistics.mean(x["load_imbalance_per_layer"])
        cells.append(f"{x['load_imbalance']:.2f}, {mean:.2f}, {x['aux_loss']:.3f}, {x['loss']:.3f}")
    print(f"| {row['step']} | " + " | ".join(cells) + " |")
for a, rs in runs.items():
    last = rs[-len(rs) // 3:]  # the last third of the logged steps
    print(f"aux {'on ' if a == 'true' else 'off'}: imbalance over the last third "
          f"{statistics.mean(x['load_imbalance'] for x in last):.2f} (max over layers), "
          f"{statistics.mean(statistics.mean(x['load_imbalance_per_layer']) for x in last):.2f} "
          f"(mean over layers); final loss {rs[-1]['loss']:.3f}")

if not svg:
    sys.exit(0)
# The chart in the look of keel's own loss.svg (runtime/train/loss_curve.cpp): 800 x 480, a grid,
# one polyline per series. Solid: max over layers; dashed: mean over layers.
W, H, L, R, T, B = 800, 480, 80, 20, 44, 56
xmax = max(x["step"] for rs in runs.values() for x in rs)
ymax = max(4.0, max(x["load_imbalance"] for rs in runs.values() for x in rs))
px = lambda s: L + s / xmax * (W - L - R)
py = lambda v: T + (ymax - v) / (ymax - 1) * (H - T - B)
e = []
e.append(f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
         f'viewBox="0 0 {W} {H}" font-family="sans-serif">')
e.append(f'<rect width="{W}" height="{H}" fill="white"/>')
e.append(f'<text x="{W / 2}" y="24" text-anchor="middle" font-size="15">{config}: expert-load '
         f'imbalance with and without the load-balancing loss</text>')
e.append('<g stroke="#ddd" stroke-width="1">')
xt = 25 if xmax > 60 else 10
ticks_x = list(range(0, xmax + 1, xt))
ticks_y = [1 + 0.5 * i for i in range(int((ymax - 1) / 0.5) + 1)]
for s in ticks_x:
    e.append(f'<line x1="{px(s):.2f}" y1="{T}" x2="{px(s):.2f}" y2="{H - B}"/>')
for v in ticks_y:
    e.append(f'<line x1="{L}" y1="{py(v):.2f}" x2="{W - R}" y2="{py(v):.2f}"/>')
e.append('</g><g font-size="12" fill="#333">')
for s in ticks_x:
    e.append(f'<text x="{px(s):.2f}" y="{H - B + 18}" text-anchor="middle">{s}</text>')
for v in ticks_y:
    e.append(f'<text x="{L - 8}" y="{py(v) + 4:.2f}" text-anchor="end">{v:.1f}</text>')
e.append('</g>')
e.append(f'<rect x="{L}" y="{T}" width="{W - L - R}" height="{H - T - B}" fill="none" stroke="#333"/>')
e.append(f'<text x="{L + (W - L - R) / 2}" y="{H - 14}" text-anchor="middle" font-size="13">step</text>')
e.append(f'<text transform="translate(18 {T + (H - T - B) / 2}) rotate(-90)" text-anchor="middle" '
         f'font-size="13">busiest expert / mean (1 = balanced, 4 = all on one)</text>')
colors = {"true": "#1f77b4", "false": "#d62728"}
names = {"true": "with the aux loss", "false": "without"}
for a, rs in runs.items():
    for key, dash in (("max", ""), ("mean", ' stroke-dasharray="5 3"')):
        pts = " ".join(
            f"{px(x['step']):.2f},{py(x['load_imbalance'] if key == 'max' else statistics.mean(x['load_imbalance_per_layer'])):.2f}"
            for x in rs)
        e.append(f'<polyline fill="none" stroke="{colors[a]}" stroke-width="1.5"{dash} points="{pts}"/>')
lx, ly = W - R - 260, T + 6
e.append(f'<g font-size="12"><rect x="{lx}" y="{ly}" width="250" height="78" fill="white" fill-opacity="0.85"/>')
y = ly + 14
for a in runs:
    for key, dash in (("max over layers", ""), ("mean over layers", ' stroke-dasharray="5 3"')):
        e.append(f'<line x1="{lx + 8}" y1="{y}" x2="{lx + 32}" y2="{y}" stroke="{colors[a]}" stroke-width="2"{dash}/>')
        e.append(f'<text x="{lx + 38}" y="{y + 4}">{names[a]}, {key}</text>')
        y += 18
e.append('</g></svg>')
os.makedirs(os.path.dirname(svg) or ".", exist_ok=True)
open(svg, "w").write("\n".join(e) + "\n")
print(f"\nchart: {svg}")
PY

if [ "$ep_steps" -gt 0 ]; then
  echo
  echo "== (c) expert parallelism: all-to-all bytes of rank 0 per step, 2 ranks, ep 2"
  OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 mpirun --allow-run-as-root --oversubscribe -np 2 \
    "$keel" train "$config" "${extra[@]}" --set parallel.expert_model_parallel_size=2 \
    --set training.max_steps="$ep_steps" --set training.logging_steps=1 \
    --set training.save_steps=0 --set training.resume_from_checkpoint=none \
    --set training.output_dir="$out/ep2" > "$out/ep2.log" 2>&1 ||
    { echo "bench_moe.sh: the ep2 run failed, see $out/ep2.log" >&2; exit 1; }
  python3 - "$out/ep2" <<'PY'
import json, re, sys
run = sys.argv[1]
lines = [json.loads(l) for l in open(run + "/metrics.jsonl") if '"all_to_all_bytes"' in l]
cfg = open(run + "/config.yaml").read()
val = lambda key: int(re.search(r"\b" + key + r": *(\d+)", cfg).group(1))
C, L, E, k = val("hidden_size"), val("num_hidden_layers"), val("num_local_experts"), val("num_experts_per_tok")
B, A, T = val("per_device_train_batch_size"), val("gradient_accumulation_steps"), val("seq_length")
N = B * T
# A uniform router: half of this rank's N·k choices leave, half the other rank's N·k arrive and go
# back; forward and backward each move both; plus one exchange of E counts (8 bytes) per forward.
uniform = L * A * (2 * (N * k // 2 + N * k // 2) * C * 4 + E * 8 // 2)
print(f"per step: {L} MoE layers x {A} micro-batches of {N} tokens, k={k}, hidden {C}")
print(f"uniform-router count: {uniform} bytes ({uniform / 2**20:.1f} MiB)")
print("step | counted (MiB) | routed (MiB) | counted / uniform | load_imbalance")
for x in lines:
    print(f"{x['step']} | {x['all_to_all_bytes'] / 2**20:.2f} | {x['all_to_all_bytes_routed'] / 2**20:.2f}"
          f" | {x['all_to_all_bytes'] / uniform:.3f} | {x['load_imbalance']:.2f}")
same = all(x['all_to_all_bytes'] == x['all_to_all_bytes_routed'] for x in lines)
print("counted == routed on every step:", same)
PY
fi
echo "load at the end: $(load)"
echo "logs: $out"
