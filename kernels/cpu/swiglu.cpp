// SwiGLU on the CPU: out = silu(gate) · up, parallel over rows. The sigmoid uses exp_approx,
// which GCC vectorises: std::exp stays a scalar libm call without -ffast-math.
#include "kernels/swiglu.h"

#include <algorithm>
#include <bit>
#include <cstdint>

#include "kernels/cpu/vec_math.h"

namespace keel::kernels::cpu {

namespace {

// GCC will not if-convert a float ?: whose arms it can constant-fold (-ftrapping-math), so the
// clamp and the select below work on the bit patterns, where min and masks vectorise.
inline int32_t bits(float x) { return std::bit_cast<int32_t>(x); }

// σ(g) from e = e^(−|g|) ≤ 1, which never overflows: 1/(1+e) for g ≥ 0, e/(1+e) for g < 0 (the
// latter keeps full relative precision where σ is tiny). |g| is capped at 87, where σ is within
// 2e-38 of 0 or 1; NaN and ±inf come out as ±87 too, and a NaN gate still poisons the product.
inline float sigmoid(float g) {
  const int32_t abs_g = std::min(bits(g) & 0x7fffffff, bits(87.0f));
  const float e = exp_approx(-std::bit_cast<float>(abs_g));
  const float q = 1.0f / (1.0f + e);
  const int32_t negative = bits(g) >> 31;  // all ones when the sign bit is set
  return std::bit_cast<float>((bits(q) & ~negative) | (bits(e * q) & negative));
}

}  // namespace

void swiglu_forward(float* out, const float* gate_up, int64_t N, int64_t I, Stream) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* g = gate_up + n * 2 * I;
    const float* u = g + I;
    float* y = out + n * I;
#pragma omp simd
    for (int64_t i = 0; i < I; ++i) y[i] = g[i] * sigmoid(g[i]) * u[i];
  }
}

void swiglu_backward(float* dgate_up, const float* dout, const float* gate_up, int64_t N, int64_t I,
                     Stream) {
  // silu'(g) = σ(g)·(1 + g·(1 − σ(g))).
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* g = gate_up + n * 2 * I;
    const float* u = g + I;
    const float* dy = dout + n * I;
    float* dg = dgate_up + n * 2 * I;
    float* du = dg + I;
#pragma omp simd
    for (int64_t i = 0; i < I; ++i) {
      const float s = sigmoid(g[i]);
      dg[i] = dy[i] * u[i] * (s * (1.0f + g[i] * (1.0f - s)));
      du[i] = dy[i] * (g[i] * s);
    }
  }
}

}  // namespace keel::kernels::cpu
