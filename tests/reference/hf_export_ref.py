#!/usr/bin/env python3
"""The real client of `keel export --format hf`: Hugging Face transformers loads what keel exported
(LlamaForCausalLM and AutoTokenizer, from PyPI) and computes the logits of a prompt and its greedy
continuation; keel's test (tests/runtime/test_hf_reference.cpp) must reproduce both from the same
directory with its own tokenizer and model.

First (with --keel) it makes the export: keel prepares the bundled corpus with a 512-token BPE,
trains a small LLaMA for 60 steps and exports it into golden/hf_export/. Then transformers runs.

    /usr/bin/python3 -m venv /tmp/hf && /tmp/hf/bin/pip install torch transformers
    /tmp/hf/bin/python tests/reference/hf_export_ref.py --keel build/keel
"""
import argparse
import json
import os
import shutil
import subprocess
import tempfile

import torch
import transformers
from transformers import AutoTokenizer, LlamaForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
EXPORT = os.path.join(HERE, "golden", "hf_export")
PROMPT = "And God said, Let there be"
NEW_TOKENS = 24

CONFIG = """
model: {vocab_size: 512, hidden_size: 64, intermediate_size: 160, num_hidden_layers: 2,
        num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 128,
        rope_theta: 10000.0, rms_norm_eps: 1.0e-5}
data: {train: %(prep)s, seq_length: 64}
training: {max_steps: 60, learning_rate: 3.0e-3, warmup_steps: 5, logging_steps: 20,
           per_device_train_batch_size: 8, save_steps: 60, output_dir: %(run)s}
"""


def make_export(keel):
    tmp = tempfile.mkdtemp()
    try:
        prep, run = os.path.join(tmp, "prep"), os.path.join(tmp, "run")
        env = dict(os.environ, OMP_NUM_THREADS="1")
        subprocess.run([keel, "prepare", os.path.join(ROOT, "data", "kjv.txt.gz"),
                        "--vocab-size", "512", "--out", prep], check=True, env=env)
        cfg = os.path.join(tmp, "c.yaml")
        with open(cfg, "w") as f:
            f.write(CONFIG % {"prep": prep, "run": run})
        subprocess.run([keel, "train", cfg], check=True, env=env)
        shutil.rmtree(EXPORT, ignore_errors=True)
        subprocess.run([keel, "export", "--format", "hf", run, EXPORT], check=True)
    finally:
        shutil.rmtree(tmp)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keel", help="make the export first with this keel binary")
    a = ap.parse_args()
    if a.keel:
        make_export(a.keel)
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(EXPORT)
    model = LlamaForCausalLM.from_pretrained(EXPORT, dtype=torch.float32).eval()
    ids = tok(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits[0].double()
        out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, num_beams=1,
                             pad_token_id=tok.pad_token_id)
    continuation = out[0, ids.shape[1]:].tolist()
    golden = {
        "transformers": transformers.__version__, "torch": torch.__version__,
        "prompt": PROMPT, "ids": ids[0].tolist(),
        "logits_shape": list(logits.shape), "logits": logits.flatten().tolist(),
        "greedy_ids": continuation, "greedy_text": tok.decode(continuation),
    }
    with open(os.path.join(HERE, "golden", "hf_export_transformers.json"), "w") as f:
        json.dump(golden, f)
        f.write("\n")
    print(f"prompt ids {golden['ids']}; greedy: {golden['greedy_text']!r}")


if __name__ == "__main__":
    main()
