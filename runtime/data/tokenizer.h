// Byte-level BPE, as GPT-2 and LLaMA 3 use it: text is split into pieces by a pre-tokenization
// pattern, each piece's bytes start as one token each, and the learned merges join neighbours in
// rank order. Any byte string encodes and decodes back to itself. Special tokens (BOS, EOS, PAD)
// have ids of their own and are never produced by encoding text.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "runtime/data/bytes_map.h"
#include "runtime/data/pretokenize.h"

namespace keel::runtime {

struct SpecialToken {
  std::string content;
  int32_t id;
};

// The special tokens keel's own tokenizers carry, after the merged tokens.
inline constexpr std::string_view kBosToken = "<|begin_of_text|>";
inline constexpr std::string_view kEosToken = "<|end_of_text|>";
inline constexpr std::string_view kPadToken = "<|pad|>";

class Tokenizer {
 public:
  // tokens[id] is the byte string of token id ("" for ids that special tokens take); every byte
  // value must be a token; merges are (left, right) token ids in rank order, each joining into
  // the token whose bytes are the two concatenated. ignore_merges (LLaMA 3): a piece that is a
  // token as a whole encodes to it directly.
  Tokenizer(std::vector<std::string> tokens, std::vector<std::pair<int32_t, int32_t>> merges,
            std::vector<SpecialToken> specials, SplitPattern pattern, bool ignore_merges = false);

  // The 256 single-byte tokens, ids = byte values, no merges: keel's `bytes` tokenizer.
  static Tokenizer bytes(SplitPattern pattern = SplitPattern::kLlama3);

  // Appends the tokens of text (special-token text is encoded as ordinary bytes).
  void encode(std::string_view text, std::vector<int32_t>& out) const;
  std::vector<int32_t> encode(std::string_view text) const;
  // The bytes of ids; special tokens decode to their content. An id out of range is an error.
  std::string decode(std::span<const int32_t> ids) const;

  int64_t vocab_size() const { return static_cast<int64_t>(tokens_.size()); }
  int64_t num_merges() const { return static_cast<int64_t>(merges_.size()); }
  const std::string& token(int32_t id) const { return tokens_[static_cast<size_t>(id)]; }
  const std::vector<std::pair<int32_t, int32_t>>& merges() const { return merges_; }
  const std::vector<SpecialToken>& specials() const { return specials_; }
  SplitPattern pattern() const { return pattern_; }
  bool ignore_merges() const { return ignore_merges_; }
  bool is_special(int32_t id) const { return special_index_[static_cast<size_t>(id)] >= 0; }
  // Ids of the special tokens by role, -1 where the tokenizer has none.
  int32_t bos_id() const { return bos_; }
  int32_t eos_id() const { return eos_; }
  int32_t pad_id() const { return pad_; }
  // A hash of everything that decides the encoding (tokens, merges, specials, pattern), written
  // into token shards so that a shard and a tokenizer that disagree are caught.
  uint64_t fingerprint() const { return fingerprint_; }

 private:
  friend class Encoder;
  struct Merge {
    uint64_t pair;  // left << 32 | right
    uint32_t rank;
    int32_t result;
  };
  // Rank and result of the merge of (left, right), or nullptr.
  const Merge* find_merge(int32_t left, int32_t right) const;
  void bpe(std::string_view piece, std::vector<int32_t>& out) const;

  std::vector<std::string> tokens_;
  std::vector<std::pair<int32_t, int32_t>> merges_;
  std::vector<SpecialToken> specials_;
  SplitPattern pattern_;
  bool ignore_merges_;
  int32_t byte_token_[256];
  std::vector<Merge> merge_table_;  // open addressing on pair, capacity a power of two
  std::unordered_map<std::string, int32_t> token_ids_;  // bytes → id, ordinary tokens only
  std::vector<int32_t> special_index_;                  // per id: its index in specials_, or -1
  int32_t bos_ = -1, eos_ = -1, pad_ = -1;
  uint64_t fingerprint_ = 0;
};

// Encodes with a cache of the pieces it has seen (one Encoder per thread).
class Encoder {
 public:
  explicit Encoder(const Tokenizer& tokenizer) : tokenizer_(tokenizer) {}
  void encode(std::string_view text, std::vector<int32_t>& out);

 private:
  const Tokenizer& tokenizer_;
  BytesMap cache_{1 << 16};  // piece → (offset << 8 | count) into ids_
  std::vector<int32_t> ids_;
  std::vector<int32_t> scratch_;
};

// Encodes on all OpenMP threads, each with its own Encoder (and cache) kept across calls.
class ParallelEncoder {
 public:
  explicit ParallelEncoder(const Tokenizer& tokenizer);
  // outs[i] = the tokens of texts[i] (replaced).
  void encode_batch(std::span<const std::string_view> texts,
                    std::vector<std::vector<int32_t>>& outs);
  // Appends the tokens of one long text, cut at safe split points into chunks of about 1 MiB.
  void encode(std::string_view text, std::vector<int32_t>& out);

 private:
  std::vector<std::unique_ptr<Encoder>> encoders_;  // one per OpenMP thread
  std::vector<std::vector<int32_t>> chunk_tokens_;
};

}  // namespace keel::runtime
