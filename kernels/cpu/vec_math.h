// Small helpers shared by the CPU kernels: a vectorisable exp, and the column blocking that keeps
// parameter-gradient reductions deterministic.
#pragma once

#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

namespace keel::kernels::cpu {

// exp(x) for x ≤ 88, vectorisable (no libm call): x = n·ln2 + r with |r| ≤ ln2/2, exp(r) from
// Cephes' polynomial (within 2 ulp), 2^n assembled in the exponent bits. Returns 0 below
// −87.33, where exp(x) leaves the normal range.
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

// Width of the column blocks a reduction over rows hands to threads (each thread sums whole
// columns in row order, so the result does not depend on the thread count): one block per thread
// when C is small, at most max_block columns so a block's slice of a row stays in L1, a multiple
// of 16 floats (a cache line) so threads rarely share a line.
inline int64_t column_block(int64_t C, int64_t max_block) {
  const int64_t threads = omp_get_max_threads();
  const int64_t per_thread = ((C + threads - 1) / threads + 15) / 16 * 16;
  return std::clamp<int64_t>(per_thread, 16, max_block);
}

}  // namespace keel::kernels::cpu
