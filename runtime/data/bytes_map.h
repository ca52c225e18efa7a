// An open-addressing hash map from short byte strings to a 64-bit value, its keys kept in one
// arena: the word counts of BPE training and the per-thread piece cache of encoding, where a
// node-based map's allocation per key would cost more than the work it saves.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <vector>

namespace keel::runtime {

inline uint64_t hash_bytes(std::string_view s) {
  uint64_t h = 0x9e3779b97f4a7c15ull ^ (s.size() * 0xff51afd7ed558ccdull);
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    h = (h ^ w) * 0xbf58476d1ce4e5b9ull;
    h ^= h >> 29;
  }
  uint64_t tail = 0;
  std::memcpy(&tail, s.data() + i, s.size() - i);
  h = (h ^ tail) * 0x94d049bb133111ebull;
  return h ^ (h >> 32);
}

class BytesMap {
 public:
  struct Entry {
    uint64_t hash;
    uint64_t key_offset;  // into the arena
    uint32_t key_length;
    uint64_t value;
  };

  explicit BytesMap(size_t initial_capacity = 1 << 12) { rehash(round_up(initial_capacity)); }

  // The value slot of key, inserted as 0 when absent.
  uint64_t& operator[](std::string_view key) {
    const uint64_t h = hash_bytes(key);
    size_t at = find(key, h);
    if (slots_[at] == kEmpty) {
      if ((entries_.size() + 1) * 2 > slots_.size()) {
        rehash(slots_.size() * 2);
        at = find(key, h);
      }
      slots_[at] = static_cast<uint32_t>(entries_.size());
      entries_.push_back({h, arena_.size(), static_cast<uint32_t>(key.size()), 0});
      arena_.insert(arena_.end(), key.begin(), key.end());
    }
    return entries_[slots_[at]].value;
  }

  // The value of key, or nullptr.
  const uint64_t* get(std::string_view key) const {
    const size_t at = find(key, hash_bytes(key));
    return slots_[at] == kEmpty ? nullptr : &entries_[slots_[at]].value;
  }

  size_t size() const { return entries_.size(); }
  size_t arena_bytes() const { return arena_.size(); }
  std::string_view key(size_t entry) const {
    return {arena_.data() + entries_[entry].key_offset, entries_[entry].key_length};
  }
  uint64_t value(size_t entry) const { return entries_[entry].value; }
  void clear() {
    entries_.clear();
    arena_.clear();
    std::fill(slots_.begin(), slots_.end(), kEmpty);
  }

 private:
  static constexpr uint32_t kEmpty = 0xffffffffu;
  static size_t round_up(size_t n) {
    size_t c = 16;
    while (c < n) c *= 2;
    return c;
  }
  size_t find(std::string_view key, uint64_t h) const {
    const size_t mask = slots_.size() - 1;
    for (size_t at = h & mask;; at = (at + 1) & mask) {
      const uint32_t s = slots_[at];
      if (s == kEmpty) return at;
      const Entry& e = entries_[s];
      if (e.hash == h && e.key_length == key.size() &&
          std::memcmp(arena_.data() + e.key_offset, key.data(), key.size()) == 0)
        return at;
    }
  }
  void rehash(size_t capacity) {
    slots_.assign(capacity, kEmpty);
    const size_t mask = capacity - 1;
    for (size_t i = 0; i < entries_.size(); ++i) {
      size_t at = entries_[i].hash & mask;
      while (slots_[at] != kEmpty) at = (at + 1) & mask;
      slots_[at] = static_cast<uint32_t>(i);
    }
  }

  std::vector<uint32_t> slots_;
  std::vector<Entry> entries_;
  std::vector<char> arena_;
};

}  // namespace keel::runtime
