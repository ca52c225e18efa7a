// The vocabulary-parallel embedding and cross-entropy on the CPU, with the arithmetic of the
// plain ops (cross_entropy.cpp: fp32 max, Σ exp in double, exp_approx) so one slice holding the
// whole vocabulary gives the same numbers.
#include "kernels/vocab_parallel.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/vec_math.h"
#include "kernels/error.h"

namespace keel::kernels::cpu {

namespace {
bool in_slice(int32_t token, int64_t v0, int64_t V) { return token >= v0 && token < v0 + V; }
}  // namespace

void embedding_forward_slice(float* out, const int32_t* tokens, const float* table, int64_t N,
                             int64_t C, int64_t v0, int64_t V, Stream) {
  for (int64_t n = 0; n < N; ++n)
    KEEL_CHECK(tokens[n] >= 0, "embedding: token {} of row {} is negative", tokens[n], n);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    float* row = out + n * C;
    if (in_slice(tokens[n], v0, V))
      std::copy_n(table + (tokens[n] - v0) * C, C, row);
    else
      std::fill_n(row, C, 0.0f);
  }
}

void embedding_backward_slice(float* dtable, const float* dout, const int32_t* tokens, int64_t N,
                              int64_t C, int64_t v0, int64_t V, Stream) {
  // Threads own column blocks, and each runs over n in order: the sums do not depend on the
  // thread count.
  constexpr int64_t kBlock = 64;
#pragma omp parallel for schedule(static)
  for (int64_t c0 = 0; c0 < C; c0 += kBlock) {
    const int64_t c1 = std::min(C, c0 + kBlock);
    for (int64_t n = 0; n < N; ++n) {
      if (!in_slice(tokens[n], v0, V)) continue;
      float* d = dtable + (tokens[n] - v0) * C;
      const float* g = dout + n * C;
      for (int64_t c = c0; c < c1; ++c) d[c] += g[c];
    }
  }
}

void cross_entropy_slice_max(float* row_max, const float* logits, int64_t N, int64_t V, Stream) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* x = logits + n * V;
    float m = x[0];
#pragma omp simd reduction(max : m)
    for (int64_t v = 0; v < V; ++v) m = std::max(m, x[v]);
    row_max[n] = m;
  }
}

void cross_entropy_slice_sums(double* stats, const float* logits, const float* row_max,
                              const int32_t* targets, int64_t N, int64_t V, int64_t v0, Stream) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* x = logits + n * V;
    const float m = row_max[n];
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int64_t v = 0; v < V; ++v) sum += static_cast<double>(exp_approx(x[v] - m));
    stats[n] = targets[n] < 0 ? 0.0 : sum;
    stats[N + n] = in_slice(targets[n], v0, V) ? static_cast<double>(x[targets[n] - v0]) : 0.0;
  }
}

void cross_entropy_slice_finish(float* losses, float* logits, const float* row_max,
                                const double* stats, const int32_t* targets, int64_t N, int64_t V,
                                int64_t v0, float grad_scale, bool backward, Stream) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    float* x = logits + n * V;
    if (targets[n] < 0) {
      losses[n] = 0.0f;
      if (backward) std::fill(x, x + V, 0.0f);
      continue;
    }
    const float m = row_max[n];
    const double sum = stats[n];
    losses[n] = static_cast<float>(static_cast<double>(m) + std::log(sum) - stats[N + n]);
    if (!backward) continue;
    const float f = static_cast<float>(static_cast<double>(grad_scale) / sum);
#pragma omp simd
    for (int64_t v = 0; v < V; ++v) x[v] = exp_approx(x[v] - m) * f;
    if (in_slice(targets[n], v0, V)) x[targets[n] - v0] -= grad_scale;
  }
}

}  // namespace keel::kernels::cpu
