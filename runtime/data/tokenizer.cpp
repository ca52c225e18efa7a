#include "runtime/data/tokenizer.h"

#include <omp.h>

#include <algorithm>
#include <array>
#include <limits>

#include "kernels/error.h"
#include "kernels/hash.h"

namespace keel::runtime {

namespace {

constexpr uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}
constexpr uint64_t kNoPair = ~uint64_t{0};
constexpr size_t kMaxCachedPiece = 64;
constexpr size_t kMaxCacheEntries = 1 << 20;

// Special tokens by role, in the spellings of LLaMA 3, LLaMA 2 / SentencePiece and GPT-2.
constexpr std::array<std::string_view, 3> kBosNames = {kBosToken, "<s>", "<|bos|>"};
constexpr std::array<std::string_view, 5> kEosNames = {kEosToken, "</s>", "<|endoftext|>",
                                                       "<|eos|>", "<|eot_id|>"};
constexpr std::array<std::string_view, 3> kPadNames = {kPadToken, "<pad>",
                                                       "<|finetune_right_pad_id|>"};

template <size_t N>
int32_t find_role(const std::vector<SpecialToken>& specials,
                  const std::array<std::string_view, N>& names) {
  for (std::string_view name : names)
    for (const SpecialToken& s : specials)
      if (s.content == name) return s.id;
  return -1;
}

}  // namespace

Tokenizer::Tokenizer(std::vector<std::string> tokens,
                     std::vector<std::pair<int32_t, int32_t>> merges,
                     std::vector<SpecialToken> specials, SplitPattern pattern, bool ignore_merges)
    : tokens_(std::move(tokens)),
      merges_(std::move(merges)),
      specials_(std::move(specials)),
      pattern_(pattern),
      ignore_merges_(ignore_merges) {
  const auto n = static_cast<int64_t>(tokens_.size());
  KEEL_CHECK(n <= std::numeric_limits<int32_t>::max(), "a vocabulary of {} tokens is too large", n);
  special_index_.assign(tokens_.size(), -1);
  for (size_t i = 0; i < specials_.size(); ++i) {
    const SpecialToken& s = specials_[i];
    KEEL_CHECK(s.id >= 0 && s.id < n,
               "special token '{}' has id {}, outside the vocabulary [0, {})", s.content, s.id, n);
    KEEL_CHECK(!s.content.empty(), "special token {} has no text", s.id);
    special_index_[static_cast<size_t>(s.id)] = static_cast<int32_t>(i);
  }
  std::fill(std::begin(byte_token_), std::end(byte_token_), -1);
  token_ids_.reserve(tokens_.size());
  for (int32_t id = 0; id < n; ++id) {
    const std::string& t = tokens_[static_cast<size_t>(id)];
    if (is_special(id)) continue;
    KEEL_CHECK(!t.empty(), "token {} is empty and is not a special token", id);
    const auto [it, fresh] = token_ids_.emplace(t, id);
    KEEL_CHECK(fresh, "tokens {} and {} are the same bytes", it->second, id);
    if (t.size() == 1) byte_token_[static_cast<uint8_t>(t[0])] = id;
  }
  for (int b = 0; b < 256; ++b)
    KEEL_CHECK(byte_token_[b] >= 0,
               "the vocabulary has no token for the byte {}; a byte-level BPE needs one for each "
               "of the 256 byte values",
               b);

  size_t capacity = 16;
  while (capacity < merges_.size() * 2) capacity *= 2;
  merge_table_.assign(capacity, Merge{kNoPair, 0, 0});
  for (size_t rank = 0; rank < merges_.size(); ++rank) {
    const auto [l, r] = merges_[rank];
    KEEL_CHECK(l >= 0 && l < n && r >= 0 && r < n && !is_special(l) && !is_special(r),
               "merge {} joins ids {} and {}, which are not ordinary tokens", rank, l, r);
    const std::string joined = tokens_[static_cast<size_t>(l)] + tokens_[static_cast<size_t>(r)];
    const auto it = token_ids_.find(joined);
    KEEL_CHECK(it != token_ids_.end(), "merge {} ({} + {}) makes a token the vocabulary lacks",
               rank, l, r);
    const uint64_t key = pair_key(l, r);
    size_t at = splitmix64(key) & (capacity - 1);
    while (merge_table_[at].pair != kNoPair && merge_table_[at].pair != key)
      at = (at + 1) & (capacity - 1);
    if (merge_table_[at].pair == key) continue;  // a repeated merge keeps its first rank
    merge_table_[at] = {key, static_cast<uint32_t>(rank), it->second};
  }

  bos_ = find_role(specials_, kBosNames);
  eos_ = find_role(specials_, kEosNames);
  pad_ = find_role(specials_, kPadNames);

  uint64_t h = fnv1a(pattern_name(pattern_)) ^ (ignore_merges_ ? 0x5bd1e995ull : 0);
  auto mix = [&h](std::string_view s) { h = splitmix64(h ^ fnv1a(s) ^ s.size()); };
  for (const std::string& t : tokens_) mix(t);
  for (const auto& [l, r] : merges_) h = splitmix64(h ^ pair_key(l, r));
  for (const SpecialToken& s : specials_) {
    mix(s.content);
    h = splitmix64(h ^ static_cast<uint64_t>(s.id));
  }
  fingerprint_ = h;
}

Tokenizer Tokenizer::bytes(SplitPattern pattern) {
  std::vector<std::string> tokens(256);
  for (int b = 0; b < 256; ++b)
    tokens[static_cast<size_t>(b)] = std::string(1, static_cast<char>(b));
  return Tokenizer(std::move(tokens), {}, {}, pattern);
}

const Tokenizer::Merge* Tokenizer::find_merge(int32_t left, int32_t right) const {
  const uint64_t key = pair_key(left, right);
  const size_t mask = merge_table_.size() - 1;
  for (size_t at = splitmix64(key) & mask;; at = (at + 1) & mask) {
    const Merge& m = merge_table_[at];
    if (m.pair == key) return &m;
    if (m.pair == kNoPair) return nullptr;
  }
}

// Merges the lowest-ranked adjacent pair, every occurrence left to right, until none merges.
// (A merge's result only takes part in merges of higher rank, so this is the rank-order merge
// of Hugging Face's BPE and of tiktoken.)
void Tokenizer::bpe(std::string_view piece, std::vector<int32_t>& syms) const {
  syms.clear();
  if (ignore_merges_) {
    const auto it = token_ids_.find(std::string(piece));
    if (it != token_ids_.end()) {
      syms.push_back(it->second);
      return;
    }
  }
  for (char c : piece) syms.push_back(byte_token_[static_cast<uint8_t>(c)]);
  while (syms.size() > 1) {
    const Merge* best = nullptr;
    for (size_t i = 0; i + 1 < syms.size(); ++i) {
      const Merge* m = find_merge(syms[i], syms[i + 1]);
      if (m != nullptr && (best == nullptr || m->rank < best->rank)) best = m;
    }
    if (best == nullptr) break;
    const auto left = static_cast<int32_t>(best->pair >> 32);
    const auto right = static_cast<int32_t>(best->pair & 0xffffffffu);
    size_t w = 0;
    for (size_t i = 0; i < syms.size(); ++i) {
      if (i + 1 < syms.size() && syms[i] == left && syms[i + 1] == right) {
        syms[w++] = best->result;
        ++i;
      } else {
        syms[w++] = syms[i];
      }
    }
    syms.resize(w);
  }
}

void Tokenizer::encode(std::string_view text, std::vector<int32_t>& out) const {
  Encoder(*this).encode(text, out);
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int32_t> out;
  encode(text, out);
  return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids) const {
  std::string text;
  for (int32_t id : ids) {
    KEEL_CHECK(id >= 0 && id < vocab_size(), "token id {} is outside the vocabulary [0, {})", id,
               vocab_size());
    const int32_t special = special_index_[static_cast<size_t>(id)];
    text += special >= 0 ? specials_[static_cast<size_t>(special)].content
                         : tokens_[static_cast<size_t>(id)];
  }
  return text;
}

void Encoder::encode(std::string_view text, std::vector<int32_t>& out) {
  const Tokenizer& t = tokenizer_;
  for (size_t i = 0; i < text.size();) {
    const size_t end = piece_end(text, i, t.pattern_);
    const std::string_view piece = text.substr(i, end - i);
    i = end;
    if (piece.size() == 1) {
      out.push_back(t.byte_token_[static_cast<uint8_t>(piece[0])]);
      continue;
    }
    if (piece.size() > kMaxCachedPiece) {
      t.bpe(piece, scratch_);
      out.insert(out.end(), scratch_.begin(), scratch_.end());
      continue;
    }
    if (const uint64_t* hit = cache_.get(piece)) {
      const int32_t* ids = ids_.data() + (*hit >> 8);
      out.insert(out.end(), ids, ids + (*hit & 0xff));
      continue;
    }
    t.bpe(piece, scratch_);
    out.insert(out.end(), scratch_.begin(), scratch_.end());
    if (cache_.size() >= kMaxCacheEntries) {
      cache_.clear();
      ids_.clear();
    }
    cache_[piece] = (static_cast<uint64_t>(ids_.size()) << 8) | scratch_.size();
    ids_.insert(ids_.end(), scratch_.begin(), scratch_.end());
  }
}

ParallelEncoder::ParallelEncoder(const Tokenizer& tokenizer) {
  for (int t = 0; t < omp_get_max_threads(); ++t)
    encoders_.push_back(std::make_unique<Encoder>(tokenizer));
}

void ParallelEncoder::encode_batch(std::span<const std::string_view> texts,
                                   std::vector<std::vector<int32_t>>& outs) {
  outs.resize(texts.size());
  const auto n = static_cast<int64_t>(texts.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < n; ++i) {
    auto& out = outs[static_cast<size_t>(i)];
    out.clear();
    encoders_[static_cast<size_t>(omp_get_thread_num())]->encode(texts[static_cast<size_t>(i)],
                                                                 out);
  }
}

void ParallelEncoder::encode(std::string_view text, std::vector<int32_t>& out) {
  const std::vector<std::string_view> chunks = split_into_chunks(text, 1 << 20);
  encode_batch(chunks, chunk_tokens_);
  for (const auto& c : chunk_tokens_) out.insert(out.end(), c.begin(), c.end());
}

}  // namespace keel::runtime
