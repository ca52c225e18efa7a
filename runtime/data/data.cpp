#include "runtime/data/data.h"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>

#include "kernels/error.h"
#include "kernels/hash.h"
#include "runtime/data/shard_manifest.h"
#include "runtime/data/tokenizer_json.h"

namespace keel::runtime {

namespace fs = std::filesystem;

namespace {

// The next SplitMix64 draw from a running state.
uint64_t next_random(uint64_t& state) {
  const uint64_t r = splitmix64(state);
  state += kSplitMixGamma;
  return r;
}

constexpr const char* kShardSuffix = ".tokens";

// What data.train names: a prepared directory of shards, one shard, or a text file.
enum class DataSource { kDirectory, kShard, kText };

DataSource data_source(const std::string& path) {
  if (fs::is_directory(path)) return DataSource::kDirectory;
  return path.ends_with(kShardSuffix) ? DataSource::kShard : DataSource::kText;
}

std::vector<std::string> shard_paths(const std::string& dir, const std::string& split) {
  std::vector<std::string> paths;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.starts_with(split + "_") && name.ends_with(kShardSuffix))
      paths.push_back(e.path().string());
  }
  std::sort(paths.begin(), paths.end());
  return paths;
}

}  // namespace

std::string read_text_file(const std::string& path, const std::string& what) {
  std::string bytes;
  if (path.ends_with(".gz")) {
    gzFile f = gzopen(path.c_str(), "rb");
    KEEL_CHECK(f != nullptr, "cannot open {} '{}': {}", what, path, std::strerror(errno));
    std::vector<char> buf(1 << 20);
    int n;
    while ((n = gzread(f, buf.data(), static_cast<unsigned>(buf.size()))) > 0)
      bytes.append(buf.data(), static_cast<size_t>(n));
    int err = 0;
    const char* msg = gzerror(f, &err);
    const std::string why = msg ? msg : "";
    gzclose(f);
    KEEL_CHECK(n == 0 && (err == Z_OK || err == Z_STREAM_END),
               "{} '{}' is not a valid gzip file ({}); decompress it or fix the path", what, path,
               why);
  } else {
    std::ifstream f(path, std::ios::binary);
    KEEL_CHECK(f.good(), "cannot open {} '{}': {}", what, path, std::strerror(errno));
    bytes.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }
  return bytes;
}

ResolvedTokenizer resolve_tokenizer(const std::string& setting, const std::string& data_path) {
  if (setting != "auto") return {load_tokenizer(setting), setting};
  const DataSource source = data_source(data_path);
  if (source == DataSource::kText) return {Tokenizer::bytes(), "bytes"};
  const fs::path dir =
      source == DataSource::kDirectory ? fs::path(data_path) : fs::path(data_path).parent_path();
  const std::string path = (dir / "tokenizer.json").string();
  KEEL_CHECK(fs::exists(path),
             "data.tokenizer is auto, but {} has no tokenizer.json beside its shards; set "
             "data.tokenizer to the tokenizer.json they were made with",
             data_path);
  return {read_tokenizer_json(path), path};
}

TokenData::TokenData(const std::string& data_path, const Tokenizer& tokenizer, int64_t seq_length,
                     const std::string& split, int64_t model_vocab_size)
    : seq_length_(seq_length) {
  first_sequence_.push_back(0);
  const DataSource source = data_source(data_path);
  if (source == DataSource::kText) {
    const std::string what = split == "train" ? "data.train" : "data.validation";
    const std::string text = read_text_file(data_path, what);
    KEEL_CHECK(!text.empty(), "{} '{}' is empty", what, data_path);
    if (tokenizer.bos_id() >= 0) text_tokens_.push_back(tokenizer.bos_id());
    ParallelEncoder(tokenizer).encode(text, text_tokens_);
    if (tokenizer.eos_id() >= 0) text_tokens_.push_back(tokenizer.eos_id());
    add_part(static_cast<int64_t>(text_tokens_.size()));
    const std::span<const int32_t> tokens(text_tokens_);
    fingerprint_ = fnv1a(std::to_string(
        shard_checksum({reinterpret_cast<const uint8_t*>(tokens.data()), tokens.size_bytes()})));
  } else {
    open_shards(data_path, source == DataSource::kDirectory, tokenizer, split, model_vocab_size);
  }
  KEEL_CHECK(num_sequences_ >= 1,
             "{} has {} tokens, fewer than one sequence of data.seq_length + 1 = {}; use more "
             "data or a shorter data.seq_length",
             data_path, num_tokens_, seq_length + 1);
}

void TokenData::add_part(int64_t tokens) {
  // Each part (the text, or a shard) holds (tokens - 1) / T sequences.
  num_tokens_ += tokens;
  num_sequences_ += std::max<int64_t>(0, (tokens - 1) / seq_length_);
  first_sequence_.push_back(num_sequences_);
}

void TokenData::open_shards(const std::string& data_path, bool directory,
                            const Tokenizer& tokenizer, const std::string& split,
                            int64_t model_vocab_size) {
  // A directory is checked against its own prepare.json, a lone shard against the one beside it
  // when that lists it.
  const std::string parent = fs::path(data_path).parent_path().string();
  const ShardManifest manifest = read_shard_manifest(directory        ? data_path
                                                     : parent.empty() ? "."
                                                                      : parent);
  const std::vector<std::string> paths =
      directory ? shard_paths(data_path, split) : std::vector<std::string>{data_path};
  if (directory) {
    if (manifest.listed) check_shard_names(manifest, split, paths);
    note_ = manifest.unchecked_note();
  }
  KEEL_CHECK(!paths.empty(),
             "data directory {} holds no {}_*{} shards; make them with keel prepare --out {}",
             data_path, split, kShardSuffix, data_path);
  for (const std::string& p : paths) {
    const TokenShard& s = shards_.emplace_back(p);
    KEEL_CHECK(s.info().tokenizer_fingerprint == tokenizer.fingerprint(),
               "token shard {} was made with another tokenizer than the one this run uses ({} "
               "tokens); set data.tokenizer to the tokenizer.json keel prepare wrote beside it",
               p, tokenizer.vocab_size());
    // Checked here, not when a token beyond the model is read hours into the run.
    KEEL_CHECK(model_vocab_size <= 0 || s.info().vocab_size <= model_vocab_size,
               "token shard {} holds tokens of a {}-token vocabulary, more than the model's {}; "
               "set model.vocab_size to {} or more",
               p, s.info().vocab_size, model_vocab_size, s.info().vocab_size);
    add_part(s.size());
  }
  // Every byte is checksummed at every start: CRC-32C runs at GB/s on each thread, a small price
  // next to training on damaged data (docs/DATA.md has the numbers).
  std::vector<uint32_t> sums(shards_.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (size_t i = 0; i < shards_.size(); ++i) sums[i] = shard_checksum(shards_[i].file_bytes());
  fingerprint_ = kFnvOffsetBasis;
  for (size_t i = 0; i < shards_.size(); ++i) {
    const std::string name = fs::path(shards_[i].path()).filename().string();
    if (const ShardEntry* want = manifest.listed ? manifest.find(name) : nullptr)
      check_shard(manifest, *want, shards_[i], sums[i]);
    fingerprint_ =
        fnv1a(name + ' ' + std::to_string(shards_[i].size()) + ' ' + std::to_string(sums[i]) + '\n',
              fingerprint_);
  }
}

std::unique_ptr<TokenData> open_validation(const DataConfig& data, const Tokenizer& tokenizer,
                                           int64_t model_vocab_size) {
  const std::string& v = data.validation;
  if (v == "none") return nullptr;
  if (v == "auto") {
    if (data_source(data.train) != DataSource::kDirectory) return nullptr;
    // Listed validation shards are opened (and checked) even when all of them are gone.
    const ShardManifest manifest = read_shard_manifest(data.train);
    const bool listed = std::any_of(manifest.shards.begin(), manifest.shards.end(),
                                    [](const ShardEntry& e) { return e.split == "val"; });
    if (!listed && shard_paths(data.train, "val").empty()) return nullptr;
    return std::make_unique<TokenData>(data.train, tokenizer, data.seq_length, "val",
                                       model_vocab_size);
  }
  KEEL_CHECK(fs::exists(v),
             "data.validation '{}' does not exist; give a prepared directory, a .tokens shard or "
             "a text file, or 'auto' or 'none'",
             v);
  return std::make_unique<TokenData>(v, tokenizer, data.seq_length, "val", model_vocab_size);
}

uint64_t data_fingerprint(const TokenData& train, const TokenData* validation) {
  const uint64_t t = train.fingerprint();
  return validation == nullptr ? t : splitmix64(t ^ splitmix64(validation->fingerprint()));
}

void TokenData::sequence(int64_t index, int32_t* tokens, int32_t* targets) const {
  KEEL_CHECK(index >= 0 && index < num_sequences_, "sequence {} of {}", index, num_sequences_);
  const int64_t T = seq_length_;
  const auto part =
      static_cast<size_t>(std::upper_bound(first_sequence_.begin(), first_sequence_.end(), index) -
                          first_sequence_.begin() - 1);
  const int64_t at = (index - first_sequence_[part]) * T;
  if (shards_.empty()) {
    std::copy_n(text_tokens_.data() + at, T, tokens);
    std::copy_n(text_tokens_.data() + at + 1, T, targets);
  } else {
    shards_[part].read(at, T, tokens);
    shards_[part].read(at + 1, T, targets);
  }
}

SequenceOrder::SequenceOrder(int64_t num_sequences, uint64_t seed)
    : count_(num_sequences), seed_(seed) {
  KEEL_CHECK(count_ >= 1, "no sequences to order");
  perm_.resize(static_cast<size_t>(count_));
}

void SequenceOrder::shuffle(int64_t epoch) {
  std::iota(perm_.begin(), perm_.end(), int64_t{0});
  uint64_t state = seed_ * 0x2545f4914f6cdd1dull + static_cast<uint64_t>(epoch);
  for (int64_t i = count_ - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(next_random(state) % static_cast<uint64_t>(i + 1));
    std::swap(perm_[static_cast<size_t>(i)], perm_[static_cast<size_t>(j)]);
  }
  epoch_ = epoch;
}

int64_t SequenceOrder::sequence(int64_t i) {
  KEEL_CHECK(i >= 0, "negative sample index {}", i);
  const int64_t epoch = i / count_;
  if (epoch != epoch_) shuffle(epoch);
  return perm_[static_cast<size_t>(i % count_)];
}

void fill_batch(const TokenData& data, SequenceOrder& order, int64_t first, int64_t B,
                int32_t* tokens, int32_t* targets) {
  const int64_t T = data.seq_length();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t index = order.sequence(first + b);
    data.sequence(index, tokens + b * T, targets + b * T);
  }
}

}  // namespace keel::runtime
