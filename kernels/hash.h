// Small deterministic hashes keel keys its randomness and checks on: SplitMix64 (weight
// initialisation by element index, the data shuffle, GaLore's sketch) and FNV-1a over bytes
// (parameter names, the config every rank must share).
#pragma once

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

}  // namespace keel
