// Softmax cross-entropy on the CPU: one pass for the row maximum, one for Σ exp (summed in
// double), and for the fused backward one that writes the gradient over the logits.
#include "kernels/cross_entropy.h"

#include <algorithm>
#include <bit>
#include <cmath>

#include "kernels/error.h"

namespace keel::kernels::cpu {

namespace {

// exp(x) for x ≤ 88, vectorisable (no libm call): x = n·ln2 + r with |r| ≤ ln2/2, exp(r) from
// Cephes' polynomial (within 2 ulp), 2^n assembled in the exponent bits. Returns 0 below −87.33,
// where exp(x) leaves the normal range. (The same routine serves attention.cpp.)
inline float exp_approx(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  constexpr float kMin = -87.3365f, kMax = 88.3f;
  // Rounding by the 1.5·2²³ shift and the masked return (no floor, no branch) keep the loops
  // vectorisable under GCC's default -ftrapping-math.
  constexpr float kShift = 12582912.0f;
  const float xc = std::min(std::max(x, kMin), kMax);
  const float n = std::fma(xc, kLog2e, kShift) - kShift;
  const float r = std::fma(n, -kLn2Lo, std::fma(n, -kLn2Hi, xc));
  float p = 1.9875691500e-4f;
  p = std::fma(p, r, 1.3981999507e-3f);
  p = std::fma(p, r, 8.3334519073e-3f);
  p = std::fma(p, r, 4.1665795894e-2f);
  p = std::fma(p, r, 1.6666665459e-1f);
  p = std::fma(p, r, 5.0000001201e-1f);
  const float y = std::fma(p * r, r, r + 1.0f);
  const float two_n = std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
  const int32_t keep = x < kMin ? 0 : -1;
  return std::bit_cast<float>(std::bit_cast<int32_t>(y * two_n) & keep);
}

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
