#!/usr/bin/env python3
"""The real client of `keel export --format hf` for a model with experts, and the real writer of
what `keel import` reads: Hugging Face transformers' MixtralForCausalLM.

1. (with --keel) keel prepares the bundled corpus with a 320-token BPE, trains a small
   Mixtral-style model (every layer 4 experts, top-2, load-balancing loss on) for 100 steps and
   exports it into golden/hf_moe_export/.
2. transformers loads that directory with MixtralForCausalLM and AutoTokenizer and computes the
   logits of a prompt at every position and its greedy continuation.
3. transformers makes a tiny random Mixtral of its own (untied, rope_theta 500) and writes it with
   save_pretrained into golden/hf_moe_saved/ (its per-expert names and its config.json, with
   rope_parameters in place of rope_theta; the export's tokenizer saved beside it), with the
   logits of fixed ids.

Both go to golden/hf_moe_transformers.json; keel's test (tests/runtime/test_hf_moe_reference.cpp)
must reproduce the logits within 1e-5 relative and the greedy tokens exactly, reading the export
directly and the saved model through `keel import`.

A float32 implementation picks the same experts as transformers only where no token's k-th and
(k+1)-th router logits nearly tie: the script stops when any position of either model has a gap
below 1e-4 (it prints the smallest).

    /usr/bin/python3 -m venv /tmp/hf && /tmp/hf/bin/pip install torch transformers
    /tmp/hf/bin/python tests/reference/hf_moe_ref.py --keel build/keel
"""
import argparse
import json
import os
import shutil
import subprocess
import tempfile

import torch
import transformers
from transformers import AutoTokenizer, MixtralConfig, MixtralForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
EXPORT = os.path.join(HERE, "golden", "hf_moe_export")
SAVED = os.path.join(HERE, "golden", "hf_moe_saved")
PROMPT = "And God said"
NEW_TOKENS = 16
MIN_GAP = 1e-4

CONFIG = """
model: {vocab_size: 320, hidden_size: 48, intermediate_size: 32, num_hidden_layers: 2,
        num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 64,
        rope_theta: 10000.0, rms_norm_eps: 1.0e-5, tie_word_embeddings: true,
        num_local_experts: 4, num_experts_per_tok: 2, output_router_logits: true,
        router_aux_loss_coef: 0.02, initializer_range: 0.1}
data: {train: %(prep)s, seq_length: 64}
training: {max_steps: 100, learning_rate: 3.0e-3, warmup_steps: 5, logging_steps: 10,
           per_device_train_batch_size: 8, save_steps: 100, seed: 1, output_dir: %(run)s}
"""

# transformers' own Mixtral: small, untied, a rope_theta neither architecture defaults to; it
# ships the export's tokenizer, saved by transformers too.
SAVED_CONFIG = dict(vocab_size=320, hidden_size=16, intermediate_size=20, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                    num_local_experts=4, num_experts_per_tok=2, rms_norm_eps=1e-5,
                    rope_parameters={"rope_type": "default", "rope_theta": 500.0},
                    tie_word_embeddings=False, initializer_range=0.3)
SAVED_IDS = [317, 17, 242, 8, 59, 300, 0]


def make_export(keel):
    tmp = tempfile.mkdtemp()
    try:
        prep, run = os.path.join(tmp, "prep"), os.path.join(tmp, "run")
        env = dict(os.environ, OMP_NUM_THREADS="1")
        subprocess.run([keel, "prepare", os.path.join(ROOT, "data", "kjv.txt.gz"),
                        "--vocab-size", "320", "--out", prep], check=True, env=env)
        cfg = os.path.join(tmp, "c.yaml")
        with open(cfg, "w") as f:
            f.write(CONFIG % {"prep": prep, "run": run})
        subprocess.run([keel, "train", cfg], check=True, env=env)
        shutil.rmtree(EXPORT, ignore_errors=True)
        subprocess.run([keel, "export", "--format", "hf", run, EXPORT], check=True)
    finally:
        shutil.rmtree(tmp)


def router_gap(model, ids):
    """The smallest gap between a token's k-th and (k+1)-th router logit, any layer: softmax is
    monotonic, so this is the margin of the top-k choice against float32 rounding."""
    k = model.config.num_experts_per_tok
    with torch.no_grad():
        out = model(ids, output_router_logits=True)
    gap = float("inf")
    for logits in out.router_logits:
        z = logits.double().sort(dim=-1, descending=True).values
        gap = min(gap, float((z[:, k - 1] - z[:, k]).min()))
    return gap


def check_gap(what, gap):
    print(f"{what}: smallest router gap {gap:.3g}")
    if gap < MIN_GAP:
        raise SystemExit(f"{what}: a near-tie in routing ({gap:.3g} < {MIN_GAP}); change the "
                         "seed or the training")


def keel_export():
    tok = AutoTokenizer.from_pretrained(EXPORT)
    model = MixtralForCausalLM.from_pretrained(EXPORT, dtype=torch.float32).eval()
    ids = tok(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits[0].double()
        out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, num_beams=1,
                             pad_token_id=tok.pad_token_id)
    check_gap("keel's export", router_gap(model, out))
    continuation = out[0, ids.shape[1]:].tolist()
    return {
        "prompt": PROMPT, "ids": ids[0].tolist(),
        "logits_shape": list(logits.shape), "logits": logits.flatten().tolist(),
        "greedy_ids": continuation, "greedy_text": tok.decode(continuation),
    }


def transformers_saved():
    torch.manual_seed(1)
    model = MixtralForCausalLM(MixtralConfig(**SAVED_CONFIG)).eval()
    ids = torch.tensor([SAVED_IDS])
    check_gap("transformers' Mixtral", router_gap(model, ids))
    with torch.no_grad():
        logits = model(ids).logits[0].double()
    shutil.rmtree(SAVED, ignore_errors=True)
    model.save_pretrained(SAVED)
    AutoTokenizer.from_pretrained(EXPORT).save_pretrained(SAVED)
    return {"ids": SAVED_IDS, "logits_shape": list(logits.shape),
            "logits": logits.flatten().tolist()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keel", help="make the export first with this keel binary")
    a = ap.parse_args()
    if a.keel:
        make_export(a.keel)
    torch.manual_seed(0)
    golden = {"transformers": transformers.__version__, "torch": torch.__version__,
              "export": keel_export(), "saved": transformers_saved()}
    with open(os.path.join(HERE, "golden", "hf_moe_transformers.json"), "w") as f:
        json.dump(golden, f)
        f.write("\n")
    print(f"prompt ids {golden['export']['ids']}; greedy: {golden['export']['greedy_text']!r}")


if __name__ == "__main__":
    main()
