// Attention against a key/value cache on the CPU: one (query, head) pair per OpenMP task, its
// scores and weighted sum of values as two single-threaded GEMV-shaped GEMMs over the cache rows.
#include "kernels/attention_cached.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/error.h"
#include "kernels/matmul.h"

namespace keel::kernels::cpu {

size_t attention_cached_workspace_floats(int64_t positions, int max_threads) {
  return static_cast<size_t>(std::max<int64_t>(positions, 1)) *
         static_cast<size_t>(std::max(max_threads, 1));
}

void attention_cached(float* out, const float* q, const float* k_cache, const float* v_cache,
                      int64_t n, int64_t p0, int64_t H, int64_t Hkv, int64_t D, float* workspace,
                      Stream) {
  KEEL_CHECK(n >= 0 && p0 >= 0, "attention_cached: negative n = {} or p0 = {}", n, p0);
  KEEL_CHECK(D > 0 && Hkv > 0 && H > 0 && H % Hkv == 0,
             "attention_cached: H = {} query heads must be a positive multiple of Hkv = {}, D = {}",
             H, Hkv, D);
  const int64_t G = H / Hkv, kv_stride = Hkv * D, positions = p0 + n;
  // gemm() checks its sizes fit 32-bit BLAS and would throw inside the OpenMP region: check here.
  KEEL_CHECK(
      positions <= std::numeric_limits<int>::max() && kv_stride <= std::numeric_limits<int>::max(),
      "attention_cached: {} positions of {} floats overflow 32-bit BLAS", positions, kv_stride);
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  // A thread's scores hold one row of up to `positions` floats.
#pragma omp parallel
  {
    float* p = workspace + static_cast<size_t>(omp_get_thread_num()) *
                               static_cast<size_t>(std::max<int64_t>(positions, 1));
#pragma omp for schedule(static)
    for (int64_t task = 0; task < n * H; ++task) {
      const int64_t i = task / H, h = task % H, kvh = h / G, len = p0 + i + 1;
      const float* qi = q + i * H * D + h * D;
      float* oi = out + i * H * D + h * D;
      // p (1, len) = scale · q (1, D) · K (len, D)ᵀ
      gemm(false, true, 1, len, D, scale, qi, D, k_cache + kvh * D, kv_stride, 0.0f, p, len);
      const float m = *std::max_element(p, p + len);
      double sum = 0.0;
      for (int64_t j = 0; j < len; ++j) {
        p[j] = std::exp(p[j] - m);
        sum += p[j];
      }
      // out (1, D) = p (1, len) · V (len, D) / Σ p
      gemm(false, false, 1, D, len, static_cast<float>(1.0 / sum), p, len, v_cache + kvh * D,
           kv_stride, 0.0f, oi, D);
    }
  }
}

}  // namespace keel::kernels::cpu
