// RMSNorm on the CPU. Forward and backward parallelise over rows; the weight gradient, a sum over
// rows, parallelises over columns instead so every column is summed in row order (deterministic).
#include "kernels/rmsnorm.h"

#include <omp.h>

#include <algorithm>
#include <cmath>

#include "kernels/cpu/vec_math.h"

namespace keel::kernels::cpu {

namespace {

// Column block of the weight gradient: one per thread when C is small, at most kMaxColBlock so
// the double accumulator fits on the stack and a block's slice of a row stays in L1.
constexpr int64_t kMaxColBlock = 512;

}  // namespace

void rmsnorm_forward(float* out, float* rstd, const float* x, const float* weight, int64_t N,
                     int64_t C, float eps, Stream) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* xr = x + n * C;
    float* yr = out + n * C;
    // Sum of squares in double: for C in the thousands an fp32 sum loses more than 1e-6.
    double ss = 0.0;
#pragma omp simd reduction(+ : ss)
    for (int64_t c = 0; c < C; ++c) ss += static_cast<double>(xr[c]) * xr[c];
    // Correctly rounded rsqrt of the fp32 statistics, as Hugging Face's torch.rsqrt computes it.
    const float r = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(C) + eps));
    rstd[n] = r;
    // (x · rstd) · w, in the order LlamaRMSNorm multiplies.
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) yr[c] = (xr[c] * r) * weight[c];
  }
}

void rmsnorm_backward(float* dx, float* dweight, const float* dout, const float* x,
                      const float* weight, const float* rstd, int64_t N, int64_t C,
                      bool accumulate_dx, Stream) {
  // dweight: columns split across threads, each summed over rows in order and in double.
  const int64_t block = column_block(C, kMaxColBlock);
  const int64_t blocks = (C + block - 1) / block;
#pragma omp parallel for schedule(static)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t c0 = blk * block;
    const int64_t width = std::min(block, C - c0);
    double acc[kMaxColBlock] = {};
    for (int64_t n = 0; n < N; ++n) {
      const float* xr = x + n * C + c0;
      const float* dyr = dout + n * C + c0;
      const double r = rstd[n];
#pragma omp simd
      for (int64_t c = 0; c < width; ++c) acc[c] += static_cast<double>(dyr[c]) * xr[c] * r;
    }
    // One rounding: the fp32 gradient already there joins the double sum before the cast.
    for (int64_t c = 0; c < width; ++c) {
      dweight[c0 + c] = static_cast<float>(static_cast<double>(dweight[c0 + c]) + acc[c]);
    }
  }

  // y = x·r·w with r = (mean(x²) + eps)^(-1/2), so
  // dx_j = r·(w_j·dy_j − x_j · r² · Σ_k dy_k·w_k·x_k / C).
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* xr = x + n * C;
    const float* dyr = dout + n * C;
    float* dxr = dx + n * C;
    double dot = 0.0;
#pragma omp simd reduction(+ : dot)
    for (int64_t c = 0; c < C; ++c) dot += static_cast<double>(dyr[c]) * weight[c] * xr[c];
    const float r = rstd[n];
    const float k = static_cast<float>(dot * r * r / static_cast<double>(C));
    if (accumulate_dx) {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) dxr[c] += r * (weight[c] * dyr[c] - xr[c] * k);
    } else {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) dxr[c] = r * (weight[c] * dyr[c] - xr[c] * k);
    }
  }
}

}  // namespace keel::kernels::cpu
