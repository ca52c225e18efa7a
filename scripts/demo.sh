#!/usr/bin/env bash
# The README's demo, the whole path on the bundled corpus: train a BPE tokenizer and write token
# shards (keel prepare), pretrain on 2 ranks with a validation loss every 50 steps (keel launch),
# then sample from the trained model (keel generate). About 5 minutes on 2 cores.
#   bash scripts/demo.sh [extra keel launch arguments, e.g. --set training.max_steps=20]
set -euo pipefail
cd "$(dirname "$0")/.."
keel=./build/keel
[ -x "$keel" ] || bash scripts/setup.sh
if [ ! -f runs/kjv-bpe4k/prepare.json ]; then
  "$keel" prepare data/kjv.txt.gz --vocab-size 4096 --out runs/kjv-bpe4k
fi
"$keel" launch -n 2 configs/demo.yaml "$@"
"$keel" generate runs/demo --prompt "And God said" --max-new-tokens 48 --temperature 0.8 \
  --top-k 40 --num-samples 3 --seed 1
