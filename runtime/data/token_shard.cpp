#include "runtime/data/token_shard.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "kernels/error.h"
#include "runtime/store/durable_file.h"

namespace keel::runtime {

namespace {

constexpr char kMagic[8] = {'K', 'E', 'E', 'L', 'T', 'O', 'K', '\0'};

// The header as it lies on disk (little-endian hosts only, as the rest of keel's files).
struct Header {
  char magic[8];
  uint32_t version;
  uint32_t token_bytes;
  uint64_t vocab_size;
  uint64_t num_tokens;
  uint64_t num_documents;
  uint64_t tokenizer_fingerprint;
  uint8_t reserved[16];
};
static_assert(sizeof(Header) == kShardHeaderBytes);

template <class T>
int64_t max_token(const uint8_t* data, int64_t n) {
  T m = 0;
  const auto* p = reinterpret_cast<const T*>(data);
  for (int64_t i = 0; i < n; ++i) m = p[i] > m ? p[i] : m;
  return static_cast<int64_t>(m);
}

}  // namespace

int token_bytes_for(int64_t vocab_size) { return vocab_size <= 65536 ? 2 : 4; }

void write_token_shard(const std::string& path, std::span<const int32_t> tokens,
                       const ShardInfo& info) {
  Header h{};
  std::memcpy(h.magic, kMagic, sizeof kMagic);
  h.version = kShardVersion;
  h.token_bytes = static_cast<uint32_t>(token_bytes_for(info.vocab_size));
  h.vocab_size = static_cast<uint64_t>(info.vocab_size);
  h.num_tokens = tokens.size();
  h.num_documents = static_cast<uint64_t>(info.num_documents);
  h.tokenizer_fingerprint = info.tokenizer_fingerprint;
  write_durably(path, [&](int fd, const std::string& tmp) {
    write_all(fd, reinterpret_cast<const char*>(&h), sizeof h, tmp);
    constexpr size_t kBlock = 1 << 20;
    std::vector<uint8_t> block(kBlock * h.token_bytes);
    for (size_t at = 0; at < tokens.size(); at += kBlock) {
      const size_t n = std::min(kBlock, tokens.size() - at);
      for (size_t i = 0; i < n; ++i) {
        const int32_t t = tokens[at + i];
        KEEL_CHECK(t >= 0 && t < info.vocab_size,
                   "token {} at {} is outside the vocabulary [0, {})", t, at + i, info.vocab_size);
        if (h.token_bytes == 2) {
          const auto v = static_cast<uint16_t>(t);
          std::memcpy(block.data() + 2 * i, &v, 2);
        } else {
          std::memcpy(block.data() + 4 * i, &t, 4);
        }
      }
      write_all(fd, reinterpret_cast<const char*>(block.data()), n * h.token_bytes, tmp);
    }
  });
}

TokenShard::TokenShard(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  KEEL_CHECK(fd >= 0, "cannot open token shard {}: {}", path, std::strerror(errno));
  struct stat st {};
  const int rc = ::fstat(fd, &st);
  const auto bytes = static_cast<int64_t>(st.st_size);
  if (rc != 0 || bytes < kShardHeaderBytes) {
    ::close(fd);
    KEEL_FAIL(
        "{} is not a token shard: {} bytes, shorter than the {}-byte header; run keel "
        "prepare again",
        path, bytes, kShardHeaderBytes);
  }
  void* m = ::mmap(nullptr, static_cast<size_t>(bytes), PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  KEEL_CHECK(m != MAP_FAILED, "cannot map token shard {}: {}", path, std::strerror(errno));
  map_ = static_cast<const uint8_t*>(m);
  map_bytes_ = static_cast<size_t>(bytes);
  try {
    Header h;
    std::memcpy(&h, map_, sizeof h);
    KEEL_CHECK(std::memcmp(h.magic, kMagic, sizeof kMagic) == 0,
               "{} is not a token shard (its first bytes are not KEELTOK); give data.train a "
               "directory or .tokens file written by keel prepare, or a text file",
               path);
    KEEL_CHECK(h.version == kShardVersion,
               "token shard {} is of format version {}; this keel reads version {}", path,
               h.version, kShardVersion);
    KEEL_CHECK(h.token_bytes == 2 || h.token_bytes == 4,
               "token shard {}: {} bytes per token in its header (2 or 4); the file is damaged",
               path, h.token_bytes);
    KEEL_CHECK(h.vocab_size >= 1 && h.vocab_size <= (uint64_t{1} << 31),
               "token shard {}: vocabulary size {} in its header; the file is damaged", path,
               h.vocab_size);
    const uint64_t expected = kShardHeaderBytes + h.num_tokens * h.token_bytes;
    KEEL_CHECK(static_cast<uint64_t>(bytes) == expected,
               "token shard {} is {} bytes, but its header promises {} tokens of {} bytes ({} "
               "bytes in all); the file is truncated or damaged: run keel prepare again",
               path, bytes, h.num_tokens, h.token_bytes, expected);
    info_ = {static_cast<int64_t>(h.vocab_size), static_cast<int64_t>(h.num_documents),
             h.tokenizer_fingerprint};
    num_tokens_ = static_cast<int64_t>(h.num_tokens);
    token_bytes_ = static_cast<int>(h.token_bytes);
    const uint8_t* data = map_ + kShardHeaderBytes;
    const int64_t top = token_bytes_ == 2 ? max_token<uint16_t>(data, num_tokens_)
                                          : max_token<uint32_t>(data, num_tokens_);
    KEEL_CHECK(num_tokens_ == 0 || top < info_.vocab_size,
               "token shard {} holds token {}, outside its vocabulary of {}; the file is damaged",
               path, top, info_.vocab_size);
  } catch (...) {
    ::munmap(const_cast<uint8_t*>(map_), map_bytes_);
    throw;
  }
}

TokenShard::~TokenShard() {
  if (map_ != nullptr) ::munmap(const_cast<uint8_t*>(map_), map_bytes_);
}

TokenShard::TokenShard(TokenShard&& o) noexcept
    : path_(std::move(o.path_)),
      info_(o.info_),
      num_tokens_(o.num_tokens_),
      token_bytes_(o.token_bytes_),
      map_(o.map_),
      map_bytes_(o.map_bytes_) {
  o.map_ = nullptr;
}

void TokenShard::read(int64_t first, int64_t n, int32_t* out) const {
  KEEL_CHECK(first >= 0 && n >= 0 && first + n <= num_tokens_,
             "tokens [{}, {}) are outside shard {} of {} tokens", first, first + n, path_,
             num_tokens_);
  const uint8_t* p = map_ + kShardHeaderBytes + first * token_bytes_;
  if (token_bytes_ == 2) {
    for (int64_t i = 0; i < n; ++i) {
      uint16_t v;
      std::memcpy(&v, p + 2 * i, 2);
      out[i] = v;
    }
  } else {
    std::memcpy(out, p, static_cast<size_t>(n) * 4);
  }
}

}  // namespace keel::runtime
