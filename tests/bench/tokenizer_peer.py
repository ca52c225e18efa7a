#!/usr/bin/env python3
"""The peers of keel's tokenizer bench (tests/bench/bench_tokenizer.sh): Hugging Face `tokenizers`
trains a byte-level BPE of the same size on the same text, and encodes it, as does `tiktoken`,
with keel's trained tokenizer (its tokenizer.json and the same ranks); both must give exactly the
tokens keel wrote into its shards. Prints one JSON object of timings.
"""
import argparse
import gzip
import json
import os
import re
import struct
import sys
import time

import tiktoken
import tokenizers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3 = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"""
          r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"]


def read(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        return f.read().decode("utf-8")


def chunks(text, size):
    """Cuts text where keel does (an ASCII letter after a lone newline), every ~size characters."""
    out, at = [], 0
    safe = re.compile(r"(?<=[!-~]\n)(?=[A-Za-z])")
    while at < len(text):
        m = safe.search(text, at + size) if at + size < len(text) else None
        end = m.start() if m else len(text)
        out.append(text[at:end])
        at = end
    return out


def byte_decoder():
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def keel_tokens(prep_dir):
    ids = []
    for name in sorted(os.listdir(prep_dir)):
        if name.startswith("train_") and name.endswith(".tokens"):
            with open(os.path.join(prep_dir, name), "rb") as f:
                data = f.read()
            width, = struct.unpack_from("<I", data, 12)
            count, = struct.unpack_from("<Q", data, 24)
            ids.extend(struct.unpack_from("<%d%s" % (count, "H" if width == 2 else "I"), data, 64))
    return ids


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--vocab", type=int, required=True)
    ap.add_argument("--pattern", choices=["gpt2", "llama3"], required=True)
    ap.add_argument("--prep", required=True, help="keel prepare's --out directory")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--chunk-chars", type=int, default=4096,
                    help="the text is cut into pieces of about this many characters for the "
                         "peers' batch encoders")
    a = ap.parse_args()
    text = read(a.corpus)
    mb = len(text.encode()) / 1e6
    result = {"tokenizers": tokenizers.__version__, "tiktoken": tiktoken.__version__, "mb": mb}

    if not a.skip_train:
        tok = Tokenizer(models.BPE())
        if a.pattern == "gpt2":
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        else:
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(LLAMA3), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=a.vocab, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      special_tokens=SPECIALS)
        t0 = time.perf_counter()
        tok.train_from_iterator([text], trainer)
        result["hf_train_s"] = time.perf_counter() - t0
        # The same merges as keel's (ids differ: Hugging Face puts special tokens first).
        keel_json = json.load(open(os.path.join(a.prep, "tokenizer.json"), encoding="utf-8"))
        hf_json = json.loads(tok.to_str())
        norm = lambda ms: [m if isinstance(m, str) else " ".join(m) for m in ms]
        result["hf_train_same_merges"] = norm(hf_json["model"]["merges"]) == norm(keel_json["model"]["merges"])

    expected = [t for t in keel_tokens(a.prep) if t < a.vocab - len(SPECIALS)]
    parts = chunks(text, a.chunk_chars)
    hf = Tokenizer.from_file(os.path.join(a.prep, "tokenizer.json"))
    t0 = time.perf_counter()
    got = [i for e in hf.encode_batch(parts, add_special_tokens=False) for i in e.ids]
    result["hf_encode_s"] = time.perf_counter() - t0
    result["hf_encode_same_tokens"] = got == expected

    dec = byte_decoder()
    vocab = json.load(open(os.path.join(a.prep, "tokenizer.json"), encoding="utf-8"))["model"]["vocab"]
    ranks = {bytes(dec[c] for c in tok_str): i for tok_str, i in vocab.items()}
    enc = tiktoken.Encoding("keel", pat_str=GPT2 if a.pattern == "gpt2" else LLAMA3,
                            mergeable_ranks=ranks, special_tokens={})
    t0 = time.perf_counter()
    got = [i for ids in enc.encode_ordinary_batch(parts, num_threads=a.threads) for i in ids]
    result["tiktoken_encode_s"] = time.perf_counter() - t0
    result["tiktoken_same_tokens"] = got == expected
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
