// SwiGLU on the CPU: out = silu(gate) · up, parallel over rows. The sigmoid uses an inline exp
// that GCC vectorises: std::exp stays a scalar libm call without -ffast-math.
#include "kernels/swiglu.h"

#include <algorithm>
#include <bit>
#include <cstdint>

namespace keel::kernels::cpu {

namespace {

// GCC will not if-convert a float ?: whose arms it can constant-fold (-ftrapping-math), so the
// clamp and the select below work on the bit patterns, where min and masks vectorise.
inline int32_t bits(float x) { return std::bit_cast<int32_t>(x); }

// e^a for a in [-87, 0], within 2 ulp (Cephes expf: a = n·ln2 + r, |r| ≤ ln2/2, a degree-6
// polynomial for e^r, 2^n written into the exponent field; n ≥ -126 keeps 2^n a normal float).
inline float exp_nonpositive(float a) {
  // Round to nearest by the 1.5·2^23 trick: std::floor does not vectorise here.
  const float n = (a * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  // Cody–Waite: ln2 = 0.693359375 (exact in n·ln2_hi) − 2.12194440e-4.
  float r = a - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float er = p * r * r + r + 1.0f;
  return er * std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
}

// σ(g) from e = e^(−|g|) ≤ 1, which never overflows: 1/(1+e) for g ≥ 0, e/(1+e) for g < 0 (the
// latter keeps full relative precision where σ is tiny). |g| is capped at 87, where σ is within
// 2e-38 of 0 or 1; NaN and ±inf come out as ±87 too, and a NaN gate still poisons the product.
inline float sigmoid(float g) {
  const int32_t abs_g = std::min(bits(g) & 0x7fffffff, bits(87.0f));
  const float e = exp_nonpositive(-std::bit_cast<float>(abs_g));
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
