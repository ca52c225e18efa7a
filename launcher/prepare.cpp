#include "launcher/prepare.h"

#include <iostream>

#include "kernels/error.h"
#include "launcher/command_line.h"
#include "runtime/data/prepare.h"

namespace keel::launcher {

namespace {

constexpr const char* kPrepareUsage =
    R"(usage: keel prepare INPUT... --out DIR (--vocab-size N | --tokenizer PATH) [options]

Turns text into token shards. Trains a byte-level BPE tokenizer on the training part of the
inputs (or uses the given one), encodes every document as <|begin_of_text|> tokens
<|end_of_text|> on all cores (OMP_NUM_THREADS), and writes DIR/tokenizer.json,
DIR/train_NNNNN.tokens, DIR/val_NNNNN.tokens and DIR/prepare.json, which records this command
and lists every shard with its token count and CRC-32C: a run refuses DIR if a shard is missing,
extra or changed. Train on them with data.train: DIR (data.tokenizer auto picks
DIR/tokenizer.json).

Inputs: *.jsonl files hold one JSON object per line, a document each (its text in --text-key);
any other file is plain text and one document. Either may be gzipped (*.gz).

options:
  --out DIR               where to write; it must not hold prepared data already
  --vocab-size N          train a tokenizer of N tokens: 256 bytes, N - 259 merges, 3 special
                          tokens (<|begin_of_text|>, <|end_of_text|>, <|pad|>)
  --tokenizer PATH        encode with this Hugging Face tokenizer.json (byte-level BPE, as
                          GPT-2's and LLaMA 3's), or 'bytes' (one token per byte)
  --pattern llama3|gpt2   the pre-tokenization split of a trained tokenizer (default llama3)
  --val-fraction F        the validation share, in [0, 1) (default 0.01): JSONL records drawn
                          with this probability; of a text file, its last F of bytes
  --text-key KEY          the JSONL field that holds the text (default text)
  --shard-tokens N        tokens per shard file (default 33554432)
  --seed N                the seed of the JSONL validation draw (default 1234)
  -h, --help              show this help

example:
  keel prepare data/kjv.txt.gz --vocab-size 4096 --out data/kjv-bpe4k
)";

}  // namespace

int run_prepare(const std::vector<std::string>& args) {
  const CommandLine cl(args, "prepare",
                       {"--out", "--vocab-size", "--tokenizer", "--pattern", "--val-fraction",
                        "--text-key", "--shard-tokens", "--seed"});
  if (cl.help()) {
    std::cout << kPrepareUsage;
    return 0;
  }
  runtime::PrepareOptions o;
  o.inputs = cl.positional();
  o.out_dir = cl.text("--out", o.out_dir);
  o.vocab_size = cl.whole("--vocab-size", o.vocab_size);
  o.tokenizer = cl.text("--tokenizer", o.tokenizer);
  const std::string pattern = cl.text("--pattern", "llama3");
  KEEL_CHECK(pattern == "llama3" || pattern == "gpt2", "--pattern is '{}'; choose llama3 or gpt2",
             pattern);
  o.pattern = pattern == "gpt2" ? runtime::SplitPattern::kGpt2 : runtime::SplitPattern::kLlama3;
  o.val_fraction = cl.number("--val-fraction", o.val_fraction);
  o.text_key = cl.text("--text-key", o.text_key);
  o.shard_tokens = cl.whole("--shard-tokens", o.shard_tokens);
  o.seed = static_cast<uint64_t>(cl.whole("--seed", static_cast<int64_t>(o.seed)));
  runtime::prepare_data(o, std::cout);
  return 0;
}

}  // namespace keel::launcher
