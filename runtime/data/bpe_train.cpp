#include "runtime/data/bpe_train.h"

#include <omp.h>

#include <algorithm>
#include <array>
#include <numeric>
#include <queue>
#include <unordered_map>

#include "kernels/error.h"
#include "runtime/data/tokenizer_json.h"

namespace keel::runtime {

namespace {

constexpr size_t kChunkBytes = 1 << 20;

// Hugging Face numbers the 256 byte tokens in the order of their GPT-2 stand-in characters
// (runtime/data/tokenizer_json.h); keel numbers them by byte value. Ties between pairs are broken
// in Hugging Face's numbering so that both learn the same merges.
std::array<uint32_t, 256> hf_byte_order() {
  std::array<uint8_t, 256> bytes{};
  std::iota(bytes.begin(), bytes.end(), uint8_t{0});
  std::sort(bytes.begin(), bytes.end(),
            [](uint8_t a, uint8_t b) { return byte_code_point(a) < byte_code_point(b); });
  std::array<uint32_t, 256> order{};
  for (uint32_t i = 0; i < 256; ++i) order[bytes[i]] = i;
  return order;
}

using Pair = uint64_t;  // left << 32 | right, keel ids
Pair make_pair(uint32_t l, uint32_t r) { return (static_cast<uint64_t>(l) << 32) | r; }

struct Candidate {
  int64_t count;
  Pair pair;
  std::vector<uint32_t> words;  // where the pair may occur
};

}  // namespace

BpeTrainer::BpeTrainer(BpeTrainOptions options)
    : options_(std::move(options)), counts_(static_cast<size_t>(omp_get_max_threads())) {
  const int64_t floor = 256 + static_cast<int64_t>(options_.special_tokens.size());
  KEEL_CHECK(options_.vocab_size >= floor,
             "a vocabulary of {} tokens is too small: byte-level BPE needs 256 byte tokens plus "
             "{} special tokens; ask for at least {}",
             options_.vocab_size, options_.special_tokens.size(), floor);
}

void BpeTrainer::add_texts(std::span<const std::string_view> documents) {
  std::vector<std::string_view> chunks;
  for (std::string_view d : documents)
    for (std::string_view c : split_into_chunks(d, kChunkBytes)) chunks.push_back(c);
  const auto n = static_cast<int64_t>(chunks.size());
  const SplitPattern pattern = options_.pattern;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t c = 0; c < n; ++c) {
    BytesMap& counts = counts_[static_cast<size_t>(omp_get_thread_num())];
    const std::string_view chunk = chunks[static_cast<size_t>(c)];
    for (size_t i = 0; i < chunk.size();) {
      const size_t end = piece_end(chunk, i, pattern);
      ++counts[chunk.substr(i, end - i)];
      i = end;
    }
  }
}

Tokenizer BpeTrainer::train(const std::function<void(int64_t, int64_t)>& progress) const {
  // The words: each distinct piece once, as token ids, with its count.
  BytesMap all;
  for (const BytesMap& m : counts_)
    for (size_t e = 0; e < m.size(); ++e) all[m.key(e)] += m.value(e);
  std::vector<std::vector<uint32_t>> words(all.size());
  std::vector<int64_t> word_count(all.size());
  for (size_t w = 0; w < all.size(); ++w) {
    for (char c : all.key(w)) words[w].push_back(static_cast<uint8_t>(c));
    word_count[w] = static_cast<int64_t>(all.value(w));
  }

  std::vector<std::string> tokens(256);
  for (int b = 0; b < 256; ++b)
    tokens[static_cast<size_t>(b)] = std::string(1, static_cast<char>(b));
  std::unordered_map<std::string, uint32_t> token_ids;
  for (uint32_t b = 0; b < 256; ++b) token_ids[tokens[b]] = b;

  static const std::array<uint32_t, 256> byte_order = hf_byte_order();
  auto hf_key = [](Pair p) {
    auto hf = [](uint64_t id) { return id < 256 ? uint64_t{byte_order[id]} : id; };
    return (hf(p >> 32) << 32) | hf(p & 0xffffffffu);
  };
  auto before = [&](const Candidate& a, const Candidate& b) {  // a pops after b
    if (a.count != b.count) return a.count < b.count;
    return hf_key(a.pair) > hf_key(b.pair);
  };
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(before)> queue(before);

  std::unordered_map<Pair, int64_t> pair_counts;
  std::unordered_map<Pair, std::vector<uint32_t>> where;
  for (uint32_t w = 0; w < words.size(); ++w) {
    const auto& s = words[w];
    for (size_t i = 0; i + 1 < s.size(); ++i) {
      const Pair p = make_pair(s[i], s[i + 1]);
      pair_counts[p] += word_count[w];
      auto& ws = where[p];
      if (ws.empty() || ws.back() != w) ws.push_back(w);
    }
  }
  for (auto& [p, ws] : where) queue.push({pair_counts[p], p, std::move(ws)});
  where.clear();

  const auto num_specials = static_cast<int64_t>(options_.special_tokens.size());
  const int64_t wanted = options_.vocab_size - num_specials - 256;
  std::vector<std::pair<int32_t, int32_t>> merges;
  std::vector<std::pair<Pair, int64_t>> changes;
  while (static_cast<int64_t>(tokens.size()) + num_specials < options_.vocab_size &&
         !queue.empty()) {
    Candidate top = std::move(const_cast<Candidate&>(queue.top()));
    queue.pop();
    const int64_t now = pair_counts[top.pair];
    if (top.count != now) {
      top.count = now;
      queue.push(std::move(top));
      continue;
    }
    if (top.count < 1 || top.count < options_.min_frequency) break;
    const auto left = static_cast<uint32_t>(top.pair >> 32);
    const auto right = static_cast<uint32_t>(top.pair & 0xffffffffu);
    const std::string joined = tokens[left] + tokens[right];
    auto [it, fresh] = token_ids.emplace(joined, static_cast<uint32_t>(tokens.size()));
    if (fresh) tokens.push_back(joined);
    const uint32_t made = it->second;
    merges.emplace_back(static_cast<int32_t>(left), static_cast<int32_t>(right));

    for (uint32_t w : top.words) {
      auto& s = words[w];
      changes.clear();
      for (size_t i = 0; i + 1 < s.size(); ++i) {
        if (s[i] != left || s[i + 1] != right) continue;
        if (i > 0) {
          changes.emplace_back(make_pair(s[i - 1], left), -1);
          changes.emplace_back(make_pair(s[i - 1], made), 1);
        }
        s[i] = made;
        s.erase(s.begin() + static_cast<std::ptrdiff_t>(i) + 1);
        if (i + 1 < s.size()) {
          changes.emplace_back(make_pair(right, s[i + 1]), -1);
          changes.emplace_back(make_pair(made, s[i + 1]), 1);
        }
      }
      for (const auto& [p, delta] : changes) {
        pair_counts[p] += delta * word_count[w];
        if (delta > 0) {
          auto& ws = where[p];
          if (ws.empty() || ws.back() != w) ws.push_back(w);
        }
      }
    }
    for (auto& [p, ws] : where) {
      const int64_t count = pair_counts[p];
      if (count > 0) queue.push({count, p, std::move(ws)});
    }
    where.clear();
    if (progress && (merges.size() % 1000 == 0))
      progress(static_cast<int64_t>(merges.size()), wanted);
  }
  if (progress) progress(static_cast<int64_t>(merges.size()), wanted);

  std::vector<SpecialToken> specials;
  for (const std::string& s : options_.special_tokens) {
    specials.push_back({s, static_cast<int32_t>(tokens.size())});
    tokens.emplace_back();
  }
  return Tokenizer(std::move(tokens), std::move(merges), std::move(specials), options_.pattern);
}

}  // namespace keel::runtime
