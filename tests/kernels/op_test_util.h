// Shared helpers for op tests: seeded random inputs and error measures against double-precision
// references. Each op test computes its reference naively in double from the same inputs.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace keel::testing {

inline std::vector<float> random_floats(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

inline std::vector<int32_t> random_ints(size_t n, int32_t lo, int32_t hi_exclusive, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> dist(lo, hi_exclusive - 1);
  std::vector<int32_t> v(n);
  for (int32_t& x : v) x = dist(rng);
  return v;
}

inline std::vector<double> to_double(const std::vector<float>& v) {
  return std::vector<double>(v.begin(), v.end());
}

// ‖got − want‖₂ / ‖want‖₂ (the absolute error when want is all zeros): the per-tensor relative
// error every op and model test bounds.
inline double rel_error(const float* got, const double* want, size_t n) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(got[i]) - want[i];
    num += d * d;
    den += want[i] * want[i];
  }
  if (den == 0.0) return std::sqrt(num);
  return std::sqrt(num / den);
}

inline double rel_error(const std::vector<float>& got, const std::vector<double>& want) {
  return got.size() == want.size() ? rel_error(got.data(), want.data(), got.size()) : INFINITY;
}

// (loss(v + h) − loss(v − h)) / 2h: the central finite difference of loss() in the variable v,
// which the loss reads by reference; v is restored.
template <class Loss>
double central_difference(double& v, double h, const Loss& loss) {
  const double saved = v;
  v = saved + h;
  const double plus = loss();
  v = saved - h;
  const double minus = loss();
  v = saved;
  return (plus - minus) / (2 * h);
}

// ‖fd − grad‖₂ / ‖fd‖₂ where fd is the finite-difference gradient of loss() in every element of x:
// how far an analytic (reference) gradient is from the numerical one.
template <class Loss>
double finite_difference_error(std::vector<double>& x, const std::vector<double>& grad, double h,
                               const Loss& loss) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double fd = central_difference(x[i], h, loss);
    num += (fd - grad[i]) * (fd - grad[i]);
    den += fd * fd;
  }
  return std::sqrt(num / den);
}

}  // namespace keel::testing
