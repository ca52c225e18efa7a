// SwiGLU forward and backward against double-precision references (the backward reference itself
// checked by central differences), including gates far outside the range where exp is finite.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "kernels/swiglu.h"
#include "op_test_util.h"

namespace keel::kernels::cpu {
namespace {

using testing::random_floats;
using testing::rel_error;
using testing::to_double;

double sigmoid(double g) { return 1.0 / (1.0 + std::exp(-g)); }

std::vector<double> reference_forward(const std::vector<double>& gu, int64_t N, int64_t I) {
  std::vector<double> out(N * I);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t i = 0; i < I; ++i) {
      const double g = gu[n * 2 * I + i], u = gu[n * 2 * I + I + i];
      out[n * I + i] = g * sigmoid(g) * u;
    }
  }
  return out;
}

// d/dg = dy · u · σ(g)·(1 + g·(1 − σ(g)));  d/du = dy · g·σ(g).
std::vector<double> reference_backward(const std::vector<double>& dy, const std::vector<double>& gu,
                                       int64_t N, int64_t I) {
  std::vector<double> d(N * 2 * I);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t i = 0; i < I; ++i) {
      const double g = gu[n * 2 * I + i], u = gu[n * 2 * I + I + i], s = sigmoid(g);
      d[n * 2 * I + i] = dy[n * I + i] * u * s * (1.0 + g * (1.0 - s));
      d[n * 2 * I + I + i] = dy[n * I + i] * g * s;
    }
  }
  return d;
}

TEST(SwigluTest, ForwardMatchesDoubleReference) {
  const int64_t N = 7, I = 37;
  const auto gu = random_floats(N * 2 * I, 41, 3.0f);
  std::vector<float> out(N * I);
  swiglu_forward(out.data(), gu.data(), N, I);
  const double err = rel_error(out, reference_forward(to_double(gu), N, I));
  EXPECT_LE(err, 1e-5);
  RecordProperty("rel_error", ::testing::PrintToString(err));
}

TEST(SwigluTest, ReferenceBackwardMatchesFiniteDifferences) {
  // L = Σ dy · swiglu(gate_up) in double; its gradient is what reference_backward claims.
  const int64_t N = 2, I = 3;
  const double h = 1e-6;
  auto gu = to_double(random_floats(N * 2 * I, 42, 2.0f));
  const auto dy = to_double(random_floats(N * I, 43));
  const auto loss = [&] {
    const auto y = reference_forward(gu, N, I);
    double l = 0.0;
    for (size_t i = 0; i < y.size(); ++i) l += dy[i] * y[i];
    return l;
  };
  const auto grad = reference_backward(dy, gu, N, I);
  const double err = keel::testing::finite_difference_error(gu, grad, h, loss);
  EXPECT_LE(err, 1e-7);
  RecordProperty("fd_rel_error", ::testing::PrintToString(err));
}

TEST(SwigluTest, BackwardOverwritesAndMatchesDoubleReference) {
  const int64_t N = 7, I = 37;
  const auto gu = random_floats(N * 2 * I, 44, 3.0f);
  const auto dy = random_floats(N * I, 45);
  std::vector<float> d(N * 2 * I, std::numeric_limits<float>::quiet_NaN());
  swiglu_backward(d.data(), dy.data(), gu.data(), N, I);
  const double err = rel_error(d, reference_backward(to_double(dy), to_double(gu), N, I));
  EXPECT_LE(err, 1e-5);
  RecordProperty("rel_error", ::testing::PrintToString(err));
}

TEST(SwigluTest, ExtremeGatesStayFiniteAndAccurate) {
  // Gates where e^(−g) overflows or underflows in fp32, and the exact zeros.
  const std::vector<float> gates = {-1e4f, -200.0f, -90.0f, -88.5f, -87.0f, -50.0f, -20.0f,
                                    -1.0f, -0.0f,   0.0f,   1e-30f, 1.0f,   20.0f,  50.0f,
                                    87.0f, 88.5f,   90.0f,  200.0f, 1e4f};
  const int64_t N = 1, I = static_cast<int64_t>(gates.size());
  std::vector<float> gu(2 * I), dy(I, 1.0f);
  for (int64_t i = 0; i < I; ++i) {
    gu[i] = gates[i];
    gu[I + i] = 1.5f;
  }
  std::vector<float> out(I), d(2 * I);
  swiglu_forward(out.data(), gu.data(), N, I);
  swiglu_backward(d.data(), dy.data(), gu.data(), N, I);
  const auto want_out = reference_forward(to_double(gu), N, I);
  const auto want_d = reference_backward(to_double(dy), to_double(gu), N, I);
  // Relative to each value, plus an absolute 1e-30 for results that are ~0 in fp32 anyway.
  for (int64_t i = 0; i < I; ++i) {
    EXPECT_NEAR(out[i], want_out[i], 1e-6 * std::abs(want_out[i]) + 1e-30) << "g=" << gates[i];
    EXPECT_NEAR(d[i], want_d[i], 1e-6 * std::abs(want_d[i]) + 1e-30) << "g=" << gates[i];
    EXPECT_NEAR(d[I + i], want_d[I + i], 1e-6 * std::abs(want_d[I + i]) + 1e-30)
        << "g=" << gates[i];
  }
}

}  // namespace
}  // namespace keel::kernels::cpu
