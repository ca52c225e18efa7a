#!/usr/bin/env bash
# Generation bench: `keel generate` (KV cache, one token at a time) against Hugging Face
# transformers' greedy `generate` (its KV cache, PyTorch eager) on the same trained model, keel's
# export of it, with the same threads, in one run. Both decode greedily and must print the same
# text; the bench fails if they do not. It also times keel at several lengths: with the cache a
# token costs about the same at any position, without one it would grow with the position.
#
#   tests/bench/bench_generate.sh [--keel build/keel] [--run runs/demo] [--tokens 256]
#       [--threads N] [--python .venv-bench/bin/python]
#
# --run is a trained run (default runs/demo, which scripts/demo.sh makes). The peer needs torch
# and transformers in --python (scripts/bench_env.sh installs them in .venv-bench).
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
keel=${KEEL:-build/keel}
run=runs/demo
tokens=256
threads=$(nproc)
python="$repo_root/.venv-bench/bin/python"
prompt="And God said"
while [ $# -gt 0 ]; do
  case "$1" in
    --keel) keel=$2; shift 2 ;;
    --run) run=$2; shift 2 ;;
    --tokens) tokens=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    -h|--help) sed -n 2,13p "$0"; exit 0 ;;
    *) echo "bench_generate.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -x "$keel" ] || { echo "bench_generate.sh: no keel binary at $keel (--keel PATH)" >&2; exit 1; }
[ -d "$run" ] || { echo "bench_generate.sh: no run at $run; make one with scripts/demo.sh or give --run DIR" >&2; exit 1; }
"$python" -c 'import torch, transformers' 2> /dev/null \
  || { echo "bench_generate.sh: $python lacks torch/transformers (scripts/bench_env.sh)" >&2; exit 1; }
out=$(mktemp -d "${TMPDIR:-/tmp}/keel_bench_gen.XXXXXX")
trap 'rm -rf "$out"' EXIT
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=$threads

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); threads $threads"
"$keel" export --format hf "$run" "$out/hf" > /dev/null

# keel: the text on stdout, "N tokens in S s (R tokens/s)" on stderr; prints "N R". The sequence
# stops at the model's max_position_embeddings, so N may be below the tokens asked for.
keel_gen() {
  "$keel" generate "$run" --prompt "$prompt" --max-new-tokens "$1" --temperature 0 \
    > "$out/keel_$1.txt" 2> "$out/keel_$1.log"
  grep -o '[0-9]* tokens in [0-9.e-]* s ([0-9.]* tokens/s' "$out/keel_$1.log" \
    | awk '{print $1, substr($6, 2)}'
}
keel_gen 8 > /dev/null  # warm-up
for n in 32 128 "$tokens"; do
  read -r count rate <<< "$(keel_gen "$n")"
  printf 'keel generate, %4d new tokens: %8.1f tokens/s\n' "$count" "$rate"
done
read -r count keel_rate <<< "$(keel_gen "$tokens")"
peer=$("$python" "$repo_root/tests/bench/generate_peer.py" --export "$out/hf" --prompt "$prompt" \
  --max-new-tokens "$tokens" --threads "$threads" 2> "$out/peer.log" | tail -1)
peer_rate=$(echo "$peer" | "$python" -c 'import json,sys; print(json.load(sys.stdin)["tokens_per_second"])')
echo "$peer" | "$python" -c 'import json,sys; sys.stdout.write(json.load(sys.stdin)["text"])' > "$out/peer.txt"
# keel prints the prompt, then the continuation, then a newline.
printf '%s' "$prompt" > "$out/prompt.txt"
cat "$out/prompt.txt" "$out/peer.txt" > "$out/peer_full.txt"
echo >> "$out/peer_full.txt"
if ! cmp -s "$out/keel_$tokens.txt" "$out/peer_full.txt"; then
  echo "bench_generate.sh: keel and transformers decoded different text:" >&2
  diff "$out/keel_$tokens.txt" "$out/peer_full.txt" >&2 || true
  exit 1
fi
printf 'keel generate:              %8.1f tokens/s (%d new tokens, greedy)\n' "$keel_rate" "$count"
printf 'transformers generate:      %8.1f tokens/s (torch %s)\n' "$peer_rate" \
  "$(echo "$peer" | "$python" -c 'import json,sys; print(json.load(sys.stdin)["torch"])')"
"$python" -c "print(f'ratio keel / transformers:  {$keel_rate / $peer_rate:8.2f}x  (same text)')"
