// `keel prepare`: text in, token shards out. Reads plain text and JSONL files, trains a byte-level
// BPE tokenizer on the training part (or takes a tokenizer.json), encodes every document on all
// threads as BOS + tokens + EOS, and writes <out>/tokenizer.json, train_NNNNN.tokens,
// val_NNNNN.tokens and prepare.json (what was done, with counts and timings).
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "runtime/data/pretokenize.h"

namespace keel::runtime {

struct PrepareOptions {
  std::vector<std::string> inputs;  // *.txt / *.jsonl, either gzipped (*.gz)
  std::string out_dir;
  int64_t vocab_size = 0;  // train a tokenizer of this many tokens (specials included) ...
  std::string tokenizer;   // ... or encode with this tokenizer.json ("bytes": one per byte)
  SplitPattern pattern = SplitPattern::kLlama3;
  // JSONL: each record goes to validation with this probability (seeded); text files: this
  // fraction of each file's bytes, its end, cut at a line break.
  double val_fraction = 0.01;
  std::string text_key = "text";  // the JSONL field holding a document's text
  int64_t shard_tokens = int64_t{1} << 25;
  uint64_t seed = 1234;
};

struct PrepareReport {
  int64_t input_bytes = 0, documents = 0, vocab_size = 0;
  int64_t train_tokens = 0, val_tokens = 0, train_shards = 0, val_shards = 0;
  double read_seconds = 0, train_seconds = 0, encode_seconds = 0, write_seconds = 0;
};

PrepareReport prepare_data(const PrepareOptions& options, std::ostream& log);

}  // namespace keel::runtime
