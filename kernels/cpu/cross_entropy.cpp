// Softmax cross-entropy on the CPU: one pass for the row maximum, one for Σ exp (summed in
// double), and for the fused backward one that writes the gradient over the logits.
#include "kernels/cross_entropy.h"

#include <algorithm>
#include <bit>
#include <cmath>

#include "kernels/cpu/vec_math.h"
#include "kernels/error.h"

namespace keel::kernels::cpu {

namespace {

// Targets are checked before the parallel loop: an exception must not leave an OpenMP region.
void check_targets(const int32_t* targets, int64_t N, int64_t V) {
  KEEL_CHECK(N >= 0 && V > 0, "cross_entropy: bad sizes N = {}, V = {}", N, V);
  for (int64_t n = 0; n < N; ++n) {
    KEEL_CHECK(targets[n] < V, "cross_entropy: target {} of row {} is not below V = {}", targets[n],
               n, V);
  }
}

float row_max(const float* x, int64_t V) {
  float m = x[0];
#pragma omp simd reduction(max : m)
  for (int64_t v = 0; v < V; ++v) m = std::max(m, x[v]);
  return m;
}

double row_sum_exp(const float* x, int64_t V, float m) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t v = 0; v < V; ++v) sum += static_cast<double>(exp_approx(x[v] - m));
  return sum;
}

}  // namespace

void cross_entropy_forward(float* losses, const float* logits, const int32_t* targets, int64_t N,
                           int64_t V, Stream) {
  check_targets(targets, N, V);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    if (targets[n] < 0) {
      losses[n] = 0.0f;
      continue;
    }
    const float* x = logits + n * V;
    const float m = row_max(x, V);
    const double lse = static_cast<double>(m) + std::log(row_sum_exp(x, V, m));
    losses[n] = static_cast<float>(lse - static_cast<double>(x[targets[n]]));
  }
}

void cross_entropy_forward_backward(float* losses, float* logits, const int32_t* targets, int64_t N,
                                    int64_t V, float grad_scale, Stream) {
  check_targets(targets, N, V);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    float* x = logits + n * V;
    if (targets[n] < 0) {
      losses[n] = 0.0f;
      std::fill(x, x + V, 0.0f);
      continue;
    }
    const int32_t target = targets[n];
    const float m = row_max(x, V);
    const double sum = row_sum_exp(x, V, m);
    losses[n] =
        static_cast<float>(static_cast<double>(m) + std::log(sum) - static_cast<double>(x[target]));
    const float f = static_cast<float>(static_cast<double>(grad_scale) / sum);
#pragma omp simd
    for (int64_t v = 0; v < V; ++v) x[v] = exp_approx(x[v] - m) * f;
    x[target] -= grad_scale;
  }
}

}  // namespace keel::kernels::cpu
