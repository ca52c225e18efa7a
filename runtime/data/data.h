// Training data: the tokens (a text file encoded when the run starts, or token shards that
// `keel prepare` wrote) and the one global order of training sequences every layout shares.
// Global sample i is the same sequence whatever the DP size, micro-batch size or accumulation
// steps; a step's global batch is a run of consecutive samples and each rank and micro-batch
// takes its slice of it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/config/config.h"
#include "runtime/data/token_shard.h"
#include "runtime/data/tokenizer.h"

namespace keel::runtime {

// Reads a whole file, plain or gzip (*.gz); `what` names it in errors (e.g. "data.train").
std::string read_text_file(const std::string& path, const std::string& what);

// The tokenizer that data.tokenizer names for the data at data_path: "bytes" (one token per
// byte), a tokenizer.json path, or "auto": the tokenizer.json of a prepared directory or beside a
// .tokens shard, bytes for a text file.
struct ResolvedTokenizer {
  Tokenizer tokenizer;
  std::string path;  // the tokenizer.json read, or "bytes"
};
ResolvedTokenizer resolve_tokenizer(const std::string& setting, const std::string& data_path);

// The token stream of data_path, cut into sequences of seq_length + 1 tokens that start every
// seq_length tokens (inputs and shifted targets share the boundary token) and never cross from
// one shard into the next.
//   - a directory: its <split>_*.tokens shards in name order (what keel prepare --out wrote);
//   - a .tokens file: that shard;
//   - anything else: a text file (gzip too), encoded whole as one document (BOS and EOS around
//     it when the tokenizer has them).
// Shards must carry the fingerprint of tokenizer and, when model_vocab_size > 0, promise no token
// beyond it in their header. A directory's shards must be exactly those its prepare.json lists,
// each of the listed token count and CRC-32C (docs/DATA.md); a directory without the list is read
// unchecked, and note() says so.
class TokenData {
 public:
  TokenData(const std::string& data_path, const Tokenizer& tokenizer, int64_t seq_length,
            const std::string& split = "train", int64_t model_vocab_size = 0);

  int64_t num_tokens() const { return num_tokens_; }
  int64_t num_sequences() const { return num_sequences_; }
  int64_t seq_length() const { return seq_length_; }
  int64_t num_shards() const { return static_cast<int64_t>(shards_.size()); }
  // tokens and targets (T each) of sequence index (0 ≤ index < num_sequences()).
  void sequence(int64_t index, int32_t* tokens, int32_t* targets) const;
  // A hash of what was opened: each shard's name, token count and CRC-32C (a text file's
  // tokens), so ranks can check they read the same data.
  uint64_t fingerprint() const { return fingerprint_; }
  // Why the shards were not checked against a list, for the user ("" when they were).
  const std::string& note() const { return note_; }

 private:
  int64_t seq_length_;
  std::vector<int32_t> text_tokens_;  // a text file's tokens (no shards then)
  std::vector<TokenShard> shards_;
  std::vector<int64_t> first_sequence_;  // per shard, and the total at the end
  int64_t num_tokens_ = 0, num_sequences_ = 0;
  uint64_t fingerprint_ = 0;
  std::string note_;

  void add_part(int64_t tokens);
  void open_shards(const std::string& data_path, bool directory, const Tokenizer& tokenizer,
                   const std::string& split, int64_t model_vocab_size);
};

// The held-out data data.validation names (DataConfig), or null when there is none.
std::unique_ptr<TokenData> open_validation(const DataConfig& data, const Tokenizer& tokenizer,
                                           int64_t model_vocab_size = 0);

// The fingerprint of a run's data: its training data and its validation data (or none).
uint64_t data_fingerprint(const TokenData& train, const TokenData* validation);

// Each epoch visits all sequences in an order shuffled from the seed and the epoch number.
class SequenceOrder {
 public:
  SequenceOrder(int64_t num_sequences, uint64_t seed);
  int64_t num_sequences() const { return count_; }
  // The sequence of global sample i (i ≥ 0; sample count_·e + j is the j-th of epoch e).
  int64_t sequence(int64_t i);

 private:
  void shuffle(int64_t epoch);
  int64_t count_;
  uint64_t seed_;
  int64_t epoch_ = -1;
  std::vector<int64_t> perm_;
};

// tokens and targets (B, T) for global samples [first, first + B).
void fill_batch(const TokenData& data, SequenceOrder& order, int64_t first, int64_t B,
                int32_t* tokens, int32_t* targets);

}  // namespace keel::runtime
