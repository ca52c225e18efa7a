// Rotary position embedding on the CPU, in place, parallel over rows. Each head's pairs
// (i, i + D/2) rotate by their angle at the row's position; backward rotates by the opposite angle.
#include "kernels/rope.h"

#include <cmath>

#include "kernels/error.h"

namespace keel::kernels::cpu {

namespace {

// sign = +1 rotates by +angle (forward), −1 by −angle (backward: the transpose of a rotation).
void rotate(float* x, const float* cos, const float* sin, int64_t B, int64_t T, int64_t H,
            int64_t D, int64_t row_stride, float sign) {
  KEEL_CHECK(D % 2 == 0, "rope: head dimension {} must be even", D);
  KEEL_CHECK(row_stride >= H * D, "rope: row_stride {} is shorter than {} heads of {}", row_stride,
             H, D);
  const int64_t half = D / 2;
  const int64_t rows = B * T;
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t t = row % T;
    const float* cr = cos + t * half;
    const float* sr = sin + t * half;
    for (int64_t h = 0; h < H; ++h) {
      float* lo = x + row * row_stride + h * D;
      float* hi = lo + half;
      // Iteration i touches only lo[i] and hi[i], so iterations are independent.
#pragma omp simd
      for (int64_t i = 0; i < half; ++i) {
        const float a = lo[i];
        const float b = hi[i];
        const float s = sign * sr[i];
        lo[i] = a * cr[i] - b * s;
        hi[i] = b * cr[i] + a * s;
      }
    }
  }
}

}  // namespace

void rope_tables(float* cos, float* sin, int64_t T, int64_t D, double theta) {
  KEEL_CHECK(D % 2 == 0, "rope: head dimension {} must be even", D);
  KEEL_CHECK(theta > 0.0, "rope: theta must be positive, got {}", theta);
  const int64_t half = D / 2;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < half; ++i) {
      const double inv_freq =
          std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(D));
      const double angle = static_cast<double>(t) * inv_freq;
      cos[t * half + i] = static_cast<float>(std::cos(angle));
      sin[t * half + i] = static_cast<float>(std::sin(angle));
    }
  }
}

void rope_forward(float* x, const float* cos, const float* sin, int64_t B, int64_t T, int64_t H,
                  int64_t D, int64_t row_stride, Stream) {
  rotate(x, cos, sin, B, T, H, D, row_stride, 1.0f);
}

void rope_backward(float* dx, const float* cos, const float* sin, int64_t B, int64_t T, int64_t H,
                   int64_t D, int64_t row_stride, Stream) {
  rotate(dx, cos, sin, B, T, H, D, row_stride, -1.0f);
}

}  // namespace keel::kernels::cpu
