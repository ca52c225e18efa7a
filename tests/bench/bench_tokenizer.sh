#!/usr/bin/env bash
# Tokenizer bench: keel prepare's BPE training and encoding throughput against Hugging Face
# `tokenizers` (training and encoding) and `tiktoken` (encoding) on the same text, the same
# threads and the same machine, in one run. The peers encode with keel's trained tokenizer and must
# produce exactly keel's tokens (and Hugging Face's trainer exactly keel's merges); the bench
# fails if they do not. Ratios > 1 mean keel is faster.
#
#   tests/bench/bench_tokenizer.sh [--keel build/keel] [--corpus data/kjv.txt.gz] [--vocab 4096]
#       [--pattern llama3|gpt2] [--threads N] [--python PATH] [--large]
#
# --large builds a ~100 MB corpus from this machine's Python sources (/usr/lib/python3*) and
# trains 32768 tokens on it: the "32k merges on 100 MB in minutes on 2 cores" check.
# The peers need `pip install tokenizers tiktoken` in the interpreter given by --python (default:
# .venv-tok/bin/python, created on first use).
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
keel=${KEEL:-build/keel}
corpus=data/kjv.txt.gz
vocab=4096
pattern=llama3
threads=$(nproc)
python="$repo_root/.venv-tok/bin/python"
large=0
while [ $# -gt 0 ]; do
  case "$1" in
    --keel) keel=$2; shift 2 ;;
    --corpus) corpus=$2; shift 2 ;;
    --vocab) vocab=$2; shift 2 ;;
    --pattern) pattern=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    --large) large=1; shift ;;
    -h|--help) sed -n 2,15p "$0"; exit 0 ;;
    *) echo "bench_tokenizer.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -x "$keel" ] || { echo "bench_tokenizer.sh: no keel binary at $keel (--keel PATH)" >&2; exit 1; }
if ! "$python" -c 'import tokenizers, tiktoken' 2> /dev/null; then
  [ "$python" = "$repo_root/.venv-tok/bin/python" ] || { echo "bench_tokenizer.sh: $python lacks tokenizers/tiktoken" >&2; exit 1; }
  echo "bench_tokenizer.sh: installing tokenizers and tiktoken into .venv-tok" >&2
  /usr/bin/python3 -m venv "$repo_root/.venv-tok"
  "$python" -m pip install --quiet --disable-pip-version-check tokenizers tiktoken >&2
fi
out=$(mktemp -d "${TMPDIR:-/tmp}/keel_bench_tok.XXXXXX")
trap 'rm -rf "$out"' EXIT
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=$threads RAYON_NUM_THREADS=$threads

if [ "$large" = 1 ]; then
  corpus="$out/python_sources.txt"
  find /usr/lib/python3* -name '*.py' -size -1000k 2> /dev/null | LC_ALL=C sort | xargs cat 2> /dev/null \
    | iconv -f utf-8 -t utf-8 -c | head -c 100000000 > "$corpus"
  [ "$vocab" = 4096 ] && vocab=32768
fi

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); threads $threads"
echo "corpus: $corpus, vocabulary $vocab, $pattern split"
"$keel" prepare "$corpus" --vocab-size "$vocab" --pattern "$pattern" --val-fraction 0 \
  --out "$out/prep" > "$out/keel.log"
peer=$("$python" "$repo_root/tests/bench/tokenizer_peer.py" --corpus "$corpus" --vocab "$vocab" \
  --pattern "$pattern" --prep "$out/prep" --threads "$threads")
"$python" - "$out/prep/prepare.json" "$peer" <<'PY'
import json, sys
keel = json.load(open(sys.argv[1]))
peer = json.loads(sys.argv[2])
mb = keel["input_bytes"] / 1e6
kt, ke = keel["seconds"]["train_tokenizer"], keel["seconds"]["encode"]
print(f"peers: tokenizers {peer['tokenizers']}, tiktoken {peer['tiktoken']}; {mb:.1f} MB of text, "
      f"{keel['train_tokens']} tokens")
print(f"{'':24}{'seconds':>10}{'MB/s':>10}{'keel is':>10}")
print(f"{'train  keel':24}{kt:10.3f}{mb / kt:10.1f}")
print(f"{'train  tokenizers':24}{peer['hf_train_s']:10.3f}{mb / peer['hf_train_s']:10.1f}{peer['hf_train_s'] / kt:9.2f}x")
print(f"{'encode keel':24}{ke:10.3f}{mb / ke:10.1f}")
for name, key in (("tokenizers", "hf_encode_s"), ("tiktoken", "tiktoken_encode_s")):
    print(f"{'encode ' + name:24}{peer[key]:10.3f}{mb / peer[key]:10.1f}{peer[key] / ke:9.2f}x")
checks = {k: v for k, v in peer.items() if k.endswith(("same_merges", "same_tokens"))}
print("same results:", ", ".join(f"{k} {v}" for k, v in checks.items()))
sys.exit(0 if all(checks.values()) else 1)
PY
