#!/usr/bin/env python3
"""Goldens for keel's byte-level BPE from the real clients: Hugging Face `tokenizers` trains a
tokenizer on the bundled corpus with each of the two split patterns keel implements (GPT-2's and
LLaMA 3's) and pre-tokenizes and encodes a set of awkward texts; `tiktoken`, given the same
ranks, must encode them identically. keel's test (tests/runtime/test_tokenizer_reference.cpp)
learns merges from the same corpus and must get the same merges, pieces and ids.

    python3 -m venv /tmp/tok && /tmp/tok/bin/pip install tokenizers tiktoken
    /tmp/tok/bin/python tests/reference/tokenizer_ref.py

Deterministic: running it twice writes identical files.
"""
import gzip
import json
import os
import random

import tiktoken
import tokenizers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
GOLDEN = os.path.join(HERE, "golden")

GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3 = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"""
          r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
VOCAB = {"gpt2": 1024, "llama3": 512}


def pre_tokenizer(pattern):
    if pattern == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def train(pattern, text):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer(pattern)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB[pattern], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[])
    tok.train_from_iterator([text], trainer)
    return tok


def awkward_texts():
    rng = random.Random(1234)
    pools = [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789",
        " " * 8 + "\n\n\t\r\u3000\u00a0\u2003\x0b\x0c",
        ".,;:!?'\"()[]{}-_/\\@#$%^&*+=<>|~`", "'s'S're'RE've'll'LL'd'm'T",
        "天地玄黄宇宙洪荒日月盈昃辰宿列张", "привет мир", "ÇàéöüßñÅ", "مرحبا", "🙂👍🏽🎉",
        "\u0301\u0308\u200d",  # combining marks and a joiner: neither letter, digit nor space
        "²³½Ⅻ٣",  # numbers that are not ASCII digits
    ]
    texts = [
        "Hello world", "I'm here, it's 2024!!", "a   b\n\nc  ", "DON'T stop", "1234567",
        "(hello)", "end.\n\nNext", "a \n  \n b", "x   ", "\t  indented\r\n  code(x) { return x*2; }  \n",
        "The quick brown fox — jumps over 13 lazy dogs.", "天地玄黄，宇宙洪荒。", "Ça va? 42 °C 🙂👍🏽",
    ]
    for _ in range(300):
        n = rng.randint(1, 60)
        texts.append("".join(rng.choice(rng.choice(pools)) for _ in range(n)))
    return texts


def main():
    with gzip.open(os.path.join(ROOT, "data", "kjv.txt.gz"), "rt", encoding="utf-8") as f:
        corpus = f.read()
    texts = awkward_texts()
    cases = {"tokenizers_version": tokenizers.__version__, "tiktoken_version": tiktoken.__version__,
             "texts": texts}
    for pattern in ("gpt2", "llama3"):
        tok = train(pattern, corpus)
        tok.save(os.path.join(GOLDEN, f"tokenizer_{pattern}_kjv.json"))
        # Raw pieces, as byte offsets into the UTF-8 text.
        pieces, ids = [], []
        ranks = {}
        for token, i in tok.get_vocab().items():
            ranks[bytes(BYTE_OF[c] for c in token)] = i
        enc = tiktoken.Encoding(f"kjv_{pattern}", pat_str=GPT2 if pattern == "gpt2" else LLAMA3,
                                mergeable_ranks=ranks, special_tokens={})
        for t in texts:
            spans = tok.pre_tokenizer.pre_tokenize_str(t)
            raw = b"".join(bytes(BYTE_OF[c] for c in s) for s, _ in spans)
            assert raw == t.encode(), (pattern, t)
            pieces.append([len(bytes(BYTE_OF[c] for c in s)) for s, _ in spans])
            got = tok.encode(t, add_special_tokens=False).ids
            assert got == enc.encode(t), (pattern, t, got, enc.encode(t))
            ids.append(got)
        cases[f"{pattern}_piece_lengths"] = pieces
        cases[f"{pattern}_ids"] = ids
        cases[f"{pattern}_kjv_ids_first_4096_bytes"] = tok.encode(
            corpus.encode()[:4096].decode(), add_special_tokens=False).ids
    with open(os.path.join(GOLDEN, "tokenizer_cases.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, indent=None, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {len(texts)} cases; tiktoken agreed with tokenizers on every one")


def bytes_to_unicode():
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


BYTE_OF = bytes_to_unicode()

if __name__ == "__main__":
    main()
