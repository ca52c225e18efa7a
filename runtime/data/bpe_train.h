// Learning byte-level BPE merges from text, as Hugging Face's BpeTrainer does it (pieces counted
// once each, the most frequent adjacent pair merged next, ties to the pair of smaller ids in
// GPT-2's byte order), so that the same corpus gives the same merges in both.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/data/bytes_map.h"
#include "runtime/data/tokenizer.h"

namespace keel::runtime {

struct BpeTrainOptions {
  int64_t vocab_size = 0;  // tokens in all: 256 bytes + merges + special tokens
  SplitPattern pattern = SplitPattern::kLlama3;
  std::vector<std::string> special_tokens = {std::string(kBosToken), std::string(kEosToken),
                                             std::string(kPadToken)};
  int64_t min_frequency = 1;  // a pair seen fewer times is never merged
};

class BpeTrainer {
 public:
  explicit BpeTrainer(BpeTrainOptions options);

  // Counts the pieces of documents (pieces never span two documents), on all OpenMP threads.
  void add_texts(std::span<const std::string_view> documents);
  void add_text(std::string_view document) { add_texts({&document, 1}); }

  // Learns the merges; progress(done, wanted) is called now and then. Fewer merges than asked
  // are learned when no pair is left to merge (the vocabulary is then smaller).
  Tokenizer train(const std::function<void(int64_t, int64_t)>& progress = {}) const;

 private:
  BpeTrainOptions options_;
  std::vector<BytesMap> counts_;  // per OpenMP thread: piece → occurrences
};

}  // namespace keel::runtime
