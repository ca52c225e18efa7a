"""The generation bench's peer: Hugging Face transformers' greedy generate (with its KV cache) on
keel's export, timed like keel generate (prompt through the model, then one token at a time).
Prints one JSON line: the new token ids, their text, the seconds and tokens/s.

    generate_peer.py --export DIR --prompt TEXT --max-new-tokens N --threads N
"""
import argparse
import json
import time

import torch
from transformers import AutoTokenizer, LlamaForCausalLM


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--export", required=True)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, required=True)
    p.add_argument("--threads", type=int, required=True)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    tok = AutoTokenizer.from_pretrained(a.export)
    model = LlamaForCausalLM.from_pretrained(a.export, torch_dtype=torch.float32).eval()
    ids = tok(a.prompt, return_tensors="pt").input_ids
    # As keel generate: the sequence stays within the positions the model was built for.
    room = model.config.max_position_embeddings - ids.shape[1]
    kwargs = dict(max_new_tokens=min(a.max_new_tokens, room), do_sample=False, use_cache=True,
                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with torch.inference_mode():
        model.generate(ids, **dict(kwargs, max_new_tokens=4))  # warm-up
        t0 = time.perf_counter()
        out = model.generate(ids, **kwargs)
        seconds = time.perf_counter() - t0
    new = out[0, ids.shape[1]:].tolist()
    if new and new[-1] == tok.eos_token_id:
        new = new[:-1]  # keel prints no text for EOS either
    print(json.dumps({"ids": new, "text": tok.decode(new), "seconds": seconds,
                      "tokens_per_second": len(out[0, ids.shape[1]:]) / seconds,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
