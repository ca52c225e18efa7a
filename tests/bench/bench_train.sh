#!/usr/bin/env bash
# Training throughput: keel against PyTorch eager on the same model, threads, batch and sequence,
# in one run and one environment. Prints tokens/s of both, their ratio, and each one's share of the
# fp32 GEMM ceiling that keel_gemm_ceiling measures first. tests/bench/README.md explains it all.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: tests/bench/bench_train.sh [--keel PATH] [--shapes small,stories15m] [--steps N]
                                  [--threads N] [--torch-python PATH] [--ceiling PATH] [--out DIR]

  --keel PATH          the keel binary (default: $KEEL, else build/keel or build-bench/keel;
                       keel is skipped when none exists)
  --shapes LIST        comma-separated: small (134M, hidden 768, seq 512, batch 4) and/or
                       stories15m (hidden 288, seq 256, batch 8); default both
  --steps N            timed steps per side, after one warm-up step (default 4)
  --threads N          threads for both sides and for the ceiling (default: nproc)
  --torch-python PATH  python with torch (default: .venv-bench/bin/python if its torch imports,
                       else /usr/bin/python3; scripts/bench_env.sh creates the venv)
  --ceiling PATH       keel_gemm_ceiling binary (default: found under build*/ or built in build-bench)
  --out DIR            keep logs and metrics here (default: a fresh temporary directory)
EOF
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
keel="${KEEL:-}"
shapes="small,stories15m"
steps=4
threads=$(nproc)
torch_python=""
ceiling_bin=""
out=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --keel) keel="$2"; shift 2 ;;
    --shapes) shapes="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --torch-python) torch_python="$2"; shift 2 ;;
    --ceiling) ceiling_bin="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "bench_train: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
[[ "$steps" =~ ^[1-9][0-9]*$ ]] || { echo "bench_train: --steps needs a positive integer" >&2; exit 2; }
[[ "$threads" =~ ^[1-9][0-9]*$ ]] || { echo "bench_train: --threads needs a positive integer" >&2; exit 2; }
cd "$repo"
out="${out:-$(mktemp -d "${TMPDIR:-/tmp}/keel-bench.XXXXXX")}"
mkdir -p "$out"

# ---- one environment for every program this script starts ------------------------------------
# Both sides get the same threads, passive OpenMP waiting (no spinning cores stolen from the other
# pool), and jemalloc with transparent huge pages and no decay: freed memory stays mapped, so
# neither side pays page faults for its per-step activations after the first step.
jemalloc=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
[[ -r "$jemalloc" ]] || { echo "bench_train: $jemalloc missing (apt-get install libjemalloc2)" >&2; exit 1; }
export OMP_NUM_THREADS="$threads"
export OMP_WAIT_POLICY=PASSIVE
export OPENBLAS_NUM_THREADS="$threads"
export MKL_NUM_THREADS="$threads"  # PyPI torch's BLAS is MKL; keel ignores this one
export LD_PRELOAD="$jemalloc"
# keel finds OpenBLAS's OpenMP build through its RUNPATH; this gives the same library to a torch
# that calls the system BLAS (Debian's python3-torch links libblas.so.3, otherwise the pthreads
# OpenBLAS). PyPI's torch links MKL statically and is not affected.
export LD_LIBRARY_PATH="/usr/lib/x86_64-linux-gnu/openblas-openmp${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export MALLOC_CONF="thp:always,metadata_thp:always,dirty_decay_ms:-1,muzzy_decay_ms:-1"
# OPENBLAS_CORETYPE is passed through as found (both sides see the same value).

json_get() {  # json_get FILE KEY: KEY of the last JSON line in FILE
  if command -v jq >/dev/null; then
    tail -n 1 "$1" | jq -r ".$2"
  else
    tail -n 1 "$1" | python3 -c "import json,sys; print(json.loads(sys.stdin.read())['$2'])"
  fi
}

keel_tps() {  # keel_tps METRICS_JSONL median|max: tokens_per_second over logged steps after the first
  if command -v jq >/dev/null; then
    jq -s --arg how "$2" '[.[1:][].tokens_per_second] | sort
      | if length == 0 then "null"
        elif $how == "max" then .[-1]
        elif length % 2 == 1 then .[length / 2 | floor]
        else (.[length / 2 - 1] + .[length / 2]) / 2 end' "$1"
  else
    python3 -c "import json,statistics,sys
v=[json.loads(l)['tokens_per_second'] for l in open(sys.argv[1]) if l.strip()][1:]
print((max(v) if sys.argv[2] == 'max' else statistics.median(v)) if v else 'null')" "$1" "$2"
  fi
}

# ---- the programs ----------------------------------------------------------------------------
if [[ -z "$keel" ]]; then
  for candidate in build/keel build-bench/keel; do
    [[ -x "$candidate" ]] && { keel="$candidate"; break; }
  done
fi
if [[ -n "$keel" && ! -x "$keel" ]]; then
  echo "bench_train: --keel $keel is not an executable; keel is skipped" >&2
  keel=""
fi

if [[ -z "$torch_python" ]]; then
  torch_python=/usr/bin/python3
  if [[ -x .venv-bench/bin/python ]] && .venv-bench/bin/python -c 'import torch' 2>/dev/null; then
    torch_python=.venv-bench/bin/python
  fi
fi
torch_version=$("$torch_python" -c 'import torch; print(torch.__version__)') || {
  echo "bench_train: $torch_python cannot import torch (scripts/bench_env.sh sets one up)" >&2
  exit 1
}

if [[ -z "$ceiling_bin" ]]; then
  for candidate in build/tests/bench/keel_gemm_ceiling build-bench/tests/bench/keel_gemm_ceiling; do
    [[ -x "$candidate" ]] && { ceiling_bin="$candidate"; break; }
  done
fi
if [[ -z "$ceiling_bin" ]]; then
  echo "bench_train: building keel_gemm_ceiling in build-bench/" >&2
  cmake -S . -B build-bench -G Ninja >/dev/null && ninja -C build-bench keel_gemm_ceiling >&2
  ceiling_bin=build-bench/tests/bench/keel_gemm_ceiling
fi

# ---- shapes: name hidden layers heads kv_heads intermediate vocab seq batch --------------------
declare -A shape_dims=(
  [small]="768 12 12 12 2048 32000 512 4"
  [stories15m]="288 6 6 6 768 32000 256 8"
)

IFS=, read -r -a shape_list <<<"$shapes"
for shape in "${shape_list[@]}"; do
  [[ -n "${shape_dims[$shape]:-}" ]] || {
    echo "bench_train: unknown shape '$shape' (known: ${!shape_dims[*]})" >&2; exit 2; }
done

keel_args=()
set_keel_args() {  # set_keel_args SHAPE OUTPUT_DIR: the config and overrides keel trains SHAPE with
  keel_args=(--set "training.max_steps=$((steps + 1))" --set training.logging_steps=1
             --set "training.output_dir=$2")
  case "$1" in
    small) keel_args=(configs/small.yaml "${keel_args[@]}") ;;
    stories15m)
      if [[ -f configs/bench_stories15m.yaml ]]; then
        keel_args=(configs/bench_stories15m.yaml "${keel_args[@]}")
      else
        keel_args=(configs/small.yaml "${keel_args[@]}" --set model.hidden_size=288
                   --set model.num_hidden_layers=6 --set model.num_attention_heads=6
                   --set model.num_key_value_heads=6 --set model.intermediate_size=768
                   --set data.seq_length=256 --set training.per_device_train_batch_size=8
                   --set model.max_position_embeddings=256)
      fi ;;
  esac
}

# Parameters (untied lm_head, all counted) and model FLOPs per trained token:
#   6 · P_matmul  +  6 · L · C · (T + 1)
# P_matmul = L · (C·(H + 2·KV)·D + H·D·C + 3·C·I) + C·V is every weight a token is multiplied by
# (q, k, v, o, gate, up, down, lm_head); the embedding lookup and the RMSNorm gains do no GEMM.
# Attention: causal, query t needs t+1 keys, so (T+1)/2 keys per query on average; QKᵀ and P·V
# take 2·D FLOPs per key and head each forward (4·C per key over all heads), ×3 with backward.
params_of() {
  local C=$1 L=$2 H=$3 KV=$4 I=$5 V=$6 D=$(( $1 / $3 ))
  echo $(( 2 * V * C + L * (C * (H + 2 * KV) * D + H * D * C + 3 * C * I + 2 * C) + C ))
}
flops_per_token() {
  local C=$1 L=$2 H=$3 KV=$4 I=$5 V=$6 T=$7 D=$(( $1 / $3 ))
  local matmul=$(( L * (C * (H + 2 * KV) * D + H * D * C + 3 * C * I) + C * V ))
  echo $(( 6 * matmul + 6 * L * C * (T + 1) ))
}

# ---- run -------------------------------------------------------------------------------------
echo "== keel training bench ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores:" \
     "$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), load $(cut -d' ' -f1-3 /proc/loadavg))"
echo "environment (both sides):"
for var in OMP_NUM_THREADS OMP_WAIT_POLICY OPENBLAS_NUM_THREADS MKL_NUM_THREADS OPENBLAS_CORETYPE \
           LD_PRELOAD LD_LIBRARY_PATH MALLOC_CONF; do
  echo "  $var=${!var-(unset)}"
done
echo "keel:  ${keel:-(not built: skipped)}"
echo "torch: $torch_version via $torch_python"
echo "logs:  $out"
echo

load() { cut -d' ' -f1 /proc/loadavg; }

# The ceiling is measured before and after the training runs and the higher one counts: on a busy
# machine a low reading would flatter both sides' share of it.
"$ceiling_bin" --json | tee "$out/ceiling_before.log"
echo

rows=()
for shape in "${shape_list[@]}"; do
  read -r C L H KV I V T B <<<"${shape_dims[$shape]}"
  params=$(params_of "$C" "$L" "$H" "$KV" "$I" "$V")
  fpt=$(flops_per_token "$C" "$L" "$H" "$KV" "$I" "$V" "$T")
  echo "== $shape: hidden $C, layers $L, heads $H/$KV, intermediate $I, vocab $V, seq $T," \
       "batch $B: $params params, $fpt FLOPs/token"

  echo "-- torch eager ($steps timed steps after 1 warm-up)"
  "$torch_python" tests/bench/torch_llama.py --hidden "$C" --layers "$L" --heads "$H" \
    --kv-heads "$KV" --intermediate "$I" --vocab "$V" --seq "$T" --batch "$B" --steps "$steps" \
    --warmup-steps 1 --threads "$threads" >"$out/torch_$shape.json" 2>"$out/torch_$shape.log" || {
      cat "$out/torch_$shape.log" >&2; exit 1; }
  sed 's/^/   /' "$out/torch_$shape.log"
  torch_tps=$(json_get "$out/torch_$shape.json" tokens_per_second)
  torch_best=$(json_get "$out/torch_$shape.json" tokens_per_second_best)
  echo "   tokens/s (median): $torch_tps; load average now $(load)"

  keel_tps=null
  keel_best=null
  if [[ -n "$keel" ]]; then
    echo "-- keel ($steps timed steps after 1 warm-up)"
    rm -rf "$out/keel_$shape"
    set_keel_args "$shape" "$out/keel_$shape"
    echo "   $keel train ${keel_args[*]}"
    if "$keel" train "${keel_args[@]}" >"$out/keel_$shape.log" 2>&1; then
      keel_tps=$(keel_tps "$out/keel_$shape/metrics.jsonl" median)
      keel_best=$(keel_tps "$out/keel_$shape/metrics.jsonl" max)
      echo "   tokens/s (median): $keel_tps; load average now $(load)"
    else
      echo "   keel failed (last lines of $out/keel_$shape.log):"
      tail -n 5 "$out/keel_$shape.log" | sed 's/^/   /'
    fi
  fi
  rows+=("$shape $params $fpt $keel_tps $torch_tps $keel_best $torch_best")
  echo
done

"$ceiling_bin" --json >"$out/ceiling_after.log"
ceiling_before=$(json_get "$out/ceiling_before.log" ceiling_gflops)
ceiling_after=$(json_get "$out/ceiling_after.log" ceiling_gflops)
ceiling=$(awk -v a="$ceiling_before" -v b="$ceiling_after" 'BEGIN { print (a > b) ? a : b }')
echo "ceiling: $ceiling_before GFLOP/s before, $ceiling_after after; $ceiling counts" \
     "(load average now $(load))"
echo

table() {  # table median|best: one row per shape
  printf '%-11s %7s %10s %10s %11s %10s %8s %8s\n' shape params MFLOP/tok "keel tok/s" \
    "torch tok/s" keel/torch "keel %" "torch %"
  for row in "${rows[@]}"; do
    read -r shape params fpt keel_tps torch_tps keel_best torch_best <<<"$row"
    [[ "$1" == best ]] && { keel_tps=$keel_best; torch_tps=$torch_best; }
    awk -v s="$shape" -v p="$params" -v f="$fpt" -v k="$keel_tps" -v t="$torch_tps" -v c="$ceiling" '
      function pct(tps) { return sprintf("%.1f%%", 100 * tps * f / (c * 1e9)) }
      BEGIN {
        skipped = (k == "null")
        printf "%-11s %6.1fM %10.1f %10s %11.1f %10s %8s %8s\n", s, p / 1e6, f / 1e6,
               skipped ? "skipped" : sprintf("%.1f", k), t,
               skipped ? "-" : sprintf("%.2fx", k / t), skipped ? "-" : pct(k), pct(t)
      }'
  done
}

echo "== tokens/s, median of timed steps; % of ceiling = tokens/s · FLOPs/token ÷ ${ceiling} GFLOP/s"
table median
echo
echo "== the same for each side's fastest timed step (least disturbed by other load on the machine)"
table best
echo "torch $torch_version (eager, $(json_get "$out/torch_${shape_list[0]}.json" attention) attention," \
     "$(json_get "$out/torch_${shape_list[0]}.json" optimizer)); ceiling ${ceiling} GFLOP/s" \
     "(OpenBLAS sgemm, $threads threads)"
