#include "runtime/data.h"

#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <numeric>

#include "kernels/error.h"
#include "runtime/hash.h"

namespace keel::runtime {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The next SplitMix64 draw from a running state.
uint64_t next_random(uint64_t& state) {
  const uint64_t r = splitmix64(state);
  state += kSplitMixGamma;
  return r;
}

}  // namespace

ByteCorpus::ByteCorpus(const std::string& path) : path_(path) {
  if (ends_with(path, ".gz")) {
    gzFile f = gzopen(path.c_str(), "rb");
    KEEL_CHECK(f != nullptr, "cannot open data.train '{}': {}", path, std::strerror(errno));
    std::vector<uint8_t> buf(1 << 20);
    int n;
    while ((n = gzread(f, buf.data(), static_cast<unsigned>(buf.size()))) > 0)
      bytes_.insert(bytes_.end(), buf.begin(), buf.begin() + n);
    int err = 0;
    const char* msg = gzerror(f, &err);
    const std::string what = msg ? msg : "";
    gzclose(f);
    KEEL_CHECK(n == 0 && (err == Z_OK || err == Z_STREAM_END),
               "data.train '{}' is not a valid gzip file ({}); decompress it or fix the path", path,
               what);
  } else {
    std::ifstream f(path, std::ios::binary);
    KEEL_CHECK(f.good(), "cannot open data.train '{}': {}", path, std::strerror(errno));
    bytes_.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }
  KEEL_CHECK(!bytes_.empty(), "data.train '{}' is empty", path);
}

SequenceOrder::SequenceOrder(int64_t corpus_tokens, int64_t seq_length, uint64_t seed)
    : seq_length_(seq_length), count_((corpus_tokens - 1) / seq_length), seed_(seed) {
  KEEL_CHECK(count_ >= 1,
             "the corpus has {} tokens, fewer than one sequence of data.seq_length + 1 = {}; "
             "use more data or a shorter data.seq_length",
             corpus_tokens, seq_length + 1);
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

int64_t SequenceOrder::start(int64_t i) {
  KEEL_CHECK(i >= 0, "negative sample index {}", i);
  const int64_t epoch = i / count_;
  if (epoch != epoch_) shuffle(epoch);
  return perm_[static_cast<size_t>(i % count_)] * seq_length_;
}

void fill_batch(const ByteCorpus& corpus, SequenceOrder& order, int64_t first, int64_t B, int64_t T,
                int32_t* tokens, int32_t* targets) {
  const uint8_t* data = corpus.data();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t at = order.start(first + b);
    for (int64_t t = 0; t < T; ++t) {
      tokens[b * T + t] = data[at + t];
      targets[b * T + t] = data[at + t + 1];
    }
  }
}

}  // namespace keel::runtime
