// Small deterministic hashes keel keys its randomness and checks on: SplitMix64 (weight
// initialisation by element index, the data shuffle, GaLore's sketch), FNV-1a over bytes
// (parameter names, the config every rank must share) and CRC-32C (TensorBoard's records, the
// checksums of checkpoints).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace keel {

inline constexpr uint64_t kSplitMixGamma = 0x9e3779b97f4a7c15ull;

// SplitMix64's output for the state x (the state advances by kSplitMixGamma per draw).
constexpr uint64_t splitmix64(uint64_t x) {
  x += kSplitMixGamma;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

inline constexpr uint64_t kFnvOffsetBasis = 0xcbf29ce484222325ull;

// FNV-1a of s, continuing from h (the offset basis starts a fresh hash).
constexpr uint64_t fnv1a(std::string_view s, uint64_t h = kFnvOffsetBasis) {
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as iSCSI, ext4 and TFRecord use it:
// crc32c("123456789") == 0xE3069283. It continues from the CRC of the bytes before, so
// crc32c(b, crc32c(a)) == crc32c(a followed by b). With SSE4.2 (the default -march=native build
// on x86-64) it runs the CPU's crc32 instruction on three streams at once, ~20 GB/s; elsewhere
// crc32c_portable.
uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);
inline uint32_t crc32c(std::string_view s, uint32_t crc = 0) {
  return crc32c(s.data(), s.size(), crc);
}
// The table-driven CRC-32C (slicing by 8, ~1 byte per cycle) for CPUs without a CRC
// instruction; the tests hold the fast one against it.
uint32_t crc32c_portable(const void* data, size_t n, uint32_t crc = 0);

}  // namespace keel
