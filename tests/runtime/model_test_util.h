// What the model's stage tests share (test_model_stage.cpp, test_model_slots.cpp): a small
// LLaMA with grouped key/value heads, and fixed micro-batches for it.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/config/config.h"

namespace keel::runtime::test {

inline ModelConfig small_model() {
  ModelConfig c;
  c.vocab_size = 97;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 16;
  return c;
}

inline constexpr int64_t kB = 2, kT = 16;

// A fixed micro-batch (number mb of several): tokens, and targets with a few ignored.
inline void batch(std::vector<int32_t>& tokens, std::vector<int32_t>& targets, int mb = 0) {
  for (int64_t i = 0; i < kB * kT; ++i) {
    tokens.push_back(static_cast<int32_t>((i * 37 + 11 + 13 * mb) % 97));
    targets.push_back((i + mb) % 7 == 3 ? -1 : static_cast<int32_t>((i * 53 + 5 + 7 * mb) % 97));
  }
}

}  // namespace keel::runtime::test
