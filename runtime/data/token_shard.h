// Token shards, what `keel prepare` writes and training reads: a 64-byte header (magic
// "KEELTOK\0", format version, bytes per token, vocabulary size, token count, document count,
// fingerprint of the tokenizer that made it), then the tokens as little-endian uint16 (vocabulary
// ≤ 65536) or uint32. Read through a read-only memory mapping, checked in full when opened.
#pragma once

#include <cstdint>
#include <span>
#include <string>

namespace keel::runtime {

inline constexpr uint32_t kShardVersion = 1;
inline constexpr int64_t kShardHeaderBytes = 64;

struct ShardInfo {
  int64_t vocab_size = 0;
  int64_t num_documents = 0;
  uint64_t tokenizer_fingerprint = 0;
};

// Bytes per token for a vocabulary: 2 up to 65536 tokens, else 4.
int token_bytes_for(int64_t vocab_size);

// Writes tokens (each in [0, vocab_size)) as one shard, durably (temporary, fsync, rename).
void write_token_shard(const std::string& path, std::span<const int32_t> tokens,
                       const ShardInfo& info);

class TokenShard {
 public:
  // Maps path and checks it: magic, version, token width, a size that matches the header's count,
  // every token below the header's vocabulary size. Errors name the file and what is wrong.
  explicit TokenShard(const std::string& path);
  ~TokenShard();
  TokenShard(TokenShard&& other) noexcept;
  TokenShard(const TokenShard&) = delete;
  TokenShard& operator=(const TokenShard&) = delete;
  TokenShard& operator=(TokenShard&&) = delete;

  const std::string& path() const { return path_; }
  const ShardInfo& info() const { return info_; }
  int64_t size() const { return num_tokens_; }
  int token_bytes() const { return token_bytes_; }
  // The whole file as mapped, header included (what its checksum covers).
  std::span<const uint8_t> file_bytes() const { return {map_, map_bytes_}; }
  // Copies tokens [first, first + n) into out.
  void read(int64_t first, int64_t n, int32_t* out) const;

 private:
  std::string path_;
  ShardInfo info_;
  int64_t num_tokens_ = 0;
  int token_bytes_ = 0;
  const uint8_t* map_ = nullptr;
  size_t map_bytes_ = 0;
};

}  // namespace keel::runtime
