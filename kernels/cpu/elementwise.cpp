#include "kernels/elementwise.h"

#include <cstring>

namespace keel::kernels::cpu {

void add_inplace(float* y, const float* x, int64_t n, Stream) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

void add(float* y, const float* a, const float* b, int64_t n, Stream) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] = a[i] + b[i];
}

void scale_inplace(float* x, float s, int64_t n, Stream) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) x[i] *= s;
}

double sum_squares(const float* x, int64_t n, Stream) {
  double total = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : total)
  for (int64_t i = 0; i < n; ++i) total += static_cast<double>(x[i]) * x[i];
  return total;
}

int64_t count_nonfinite(const float* x, int64_t n, Stream) {
  // By the bits (all exponent bits set), which vectorises and ignores -ffast-math's assumptions.
  int64_t count = 0;
#pragma omp parallel for simd schedule(static) reduction(+ : count)
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, x + i, sizeof bits);
    count += (bits & 0x7f800000u) == 0x7f800000u;
  }
  return count;
}

}  // namespace keel::kernels::cpu
