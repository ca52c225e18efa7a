// Training data: the corpus as tokens, and the one global order of training sequences that every
// layout shares. Global sample i is the same sequence whatever the DP size, micro-batch size or
// accumulation steps; a step's global batch is a run of consecutive samples and each rank and
// micro-batch takes its slice of it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace keel::runtime {

// A corpus tokenized byte by byte (token = byte value, vocabulary 256). Plain files and gzip
// files (*.gz) are read whole.
class ByteCorpus {
 public:
  explicit ByteCorpus(const std::string& path);
  int64_t size() const { return static_cast<int64_t>(bytes_.size()); }
  const uint8_t* data() const { return bytes_.data(); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::vector<uint8_t> bytes_;
};

// Sequences of seq_length + 1 tokens start every seq_length tokens (inputs and shifted targets
// share the boundary token). Each epoch visits all of them in an order shuffled from the seed
// and the epoch number.
class SequenceOrder {
 public:
  SequenceOrder(int64_t corpus_tokens, int64_t seq_length, uint64_t seed);
  int64_t num_sequences() const { return count_; }
  // Corpus offset of global sample i (i ≥ 0; sample count_·e + j is sequence j of epoch e).
  int64_t start(int64_t i);

 private:
  void shuffle(int64_t epoch);
  int64_t seq_length_, count_;
  uint64_t seed_;
  int64_t epoch_ = -1;
  std::vector<int64_t> perm_;
};

// tokens and targets (B, T) for global samples [first, first + B): targets are the next tokens.
void fill_batch(const ByteCorpus& corpus, SequenceOrder& order, int64_t first, int64_t B, int64_t T,
                int32_t* tokens, int32_t* targets);

}  // namespace keel::runtime
