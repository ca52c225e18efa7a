// Token embedding on the CPU: a row gather forward, a scatter-add backward that stays
// deterministic by giving each thread whole columns of the table and walking tokens in order.
#include "kernels/embedding.h"

#include <omp.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/vec_math.h"
#include "kernels/error.h"

namespace keel::kernels::cpu {

namespace {

// Widest column block the backward hands a thread (see column_block in vec_math.h).
constexpr int64_t kMaxColBlock = 512;

// Checked before any parallel region: an exception cannot leave an OpenMP loop.
void check_tokens(const int32_t* tokens, int64_t N, int64_t V) {
  for (int64_t n = 0; n < N; ++n) {
    KEEL_CHECK(tokens[n] >= 0 && tokens[n] < V,
               "embedding: token {} at position {} is outside the vocabulary [0, {}); check the "
               "tokenizer's vocab_size against the model's",
               tokens[n], n, V);
  }
}

}  // namespace

void embedding_forward(float* out, const int32_t* tokens, const float* table, int64_t N, int64_t C,
                       int64_t V, Stream) {
  check_tokens(tokens, N, V);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    std::memcpy(out + n * C, table + static_cast<int64_t>(tokens[n]) * C,
                static_cast<size_t>(C) * sizeof(float));
  }
}

void embedding_backward(float* dtable, const float* dout, const int32_t* tokens, int64_t N,
                        int64_t C, int64_t V, Stream) {
  check_tokens(tokens, N, V);
  const int64_t block = column_block(C, kMaxColBlock);
  const int64_t blocks = (C + block - 1) / block;
  // Each (v, c) is summed by exactly one thread, over n in increasing order: the result does not
  // depend on the thread count. Every block reads all of tokens and its own columns of dout.
#pragma omp parallel for schedule(static)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t c0 = blk * block;
    const int64_t width = std::min(block, C - c0);
    for (int64_t n = 0; n < N; ++n) {
      float* dst = dtable + static_cast<int64_t>(tokens[n]) * C + c0;
      const float* src = dout + n * C + c0;
#pragma omp simd
      for (int64_t c = 0; c < width; ++c) dst[c] += src[c];
    }
  }
}

}  // namespace keel::kernels::cpu
