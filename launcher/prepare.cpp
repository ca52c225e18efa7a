#include "launcher/prepare.h"

#include <iostream>

#include "kernels/error.h"
#include "runtime/prepare.h"

namespace keel::launcher {

namespace {

constexpr const char* kPrepareUsage =
    R"(usage: keel prepare INPUT... --out DIR (--vocab-size N | --tokenizer PATH) [options]

Turns text into token shards. Trains a byte-level BPE tokenizer on the training part of the
inputs (or uses the given one), encodes every document as <|begin_of_text|> tokens
<|end_of_text|> on all cores (OMP_NUM_THREADS), and writes DIR/tokenizer.json,
DIR/train_NNNNN.tokens, DIR/val_NNNNN.tokens and DIR/prepare.json. Train on them with
data.train: DIR (data.tokenizer auto picks DIR/tokenizer.json).

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

int64_t parse_int(const std::string& option, const std::string& v) {
  size_t used = 0;
  long long n = 0;
  try {
    n = std::stoll(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  KEEL_CHECK(used == v.size() && n >= 0, "{} takes a whole number, got '{}'", option, v);
  return n;
}

}  // namespace

int run_prepare(const std::vector<std::string>& args) {
  runtime::PrepareOptions o;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "-h" || a == "--help") {
      std::cout << kPrepareUsage;
      return 0;
    }
    if (!a.empty() && a[0] == '-') {
      KEEL_CHECK(i + 1 < args.size(), "{} needs a value (keel prepare --help)", a);
      const std::string& v = args[++i];
      if (a == "--out") {
        o.out_dir = v;
      } else if (a == "--vocab-size") {
        o.vocab_size = parse_int(a, v);
      } else if (a == "--tokenizer") {
        o.tokenizer = v;
      } else if (a == "--pattern") {
        KEEL_CHECK(v == "llama3" || v == "gpt2", "--pattern is '{}'; choose llama3 or gpt2", v);
        o.pattern = v == "gpt2" ? runtime::SplitPattern::kGpt2 : runtime::SplitPattern::kLlama3;
      } else if (a == "--val-fraction") {
        size_t used = 0;
        try {
          o.val_fraction = std::stod(v, &used);
        } catch (const std::exception&) {
          used = 0;
        }
        KEEL_CHECK(used == v.size(), "--val-fraction takes a number in [0, 1), got '{}'", v);
      } else if (a == "--text-key") {
        o.text_key = v;
      } else if (a == "--shard-tokens") {
        o.shard_tokens = parse_int(a, v);
      } else if (a == "--seed") {
        o.seed = static_cast<uint64_t>(parse_int(a, v));
      } else {
        KEEL_FAIL("unknown option '{}' for 'keel prepare' (keel prepare --help)", a);
      }
    } else {
      o.inputs.push_back(a);
    }
  }
  runtime::prepare_data(o, std::cout);
  return 0;
}

}  // namespace keel::launcher
