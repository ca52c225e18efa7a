// RoPE tables, forward and backward against double-precision references in the Hugging Face
// "rotate half" layout, with rows wider than the rotated heads and T not a multiple of 8.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/rope.h"
#include "op_test_util.h"

namespace keel::kernels::cpu {
namespace {

using testing::random_floats;
using testing::rel_error;
using testing::to_double;

double angle(int64_t t, int64_t i, int64_t D, double theta) {
  return static_cast<double>(t) * std::pow(theta, -2.0 * static_cast<double>(i) / D);
}

// Rotates each head's pairs (i, i + D/2) by sign · angle(t, i), in double, leaving the columns past
// H·D alone. sign = −1 is the transpose, i.e. the backward.
std::vector<double> reference_rotate(std::vector<double> x, int64_t B, int64_t T, int64_t H,
                                     int64_t D, int64_t stride, double theta, double sign) {
  const int64_t half = D / 2;
  for (int64_t row = 0; row < B * T; ++row) {
    for (int64_t h = 0; h < H; ++h) {
      double* head = x.data() + row * stride + h * D;
      for (int64_t i = 0; i < half; ++i) {
        const double a = head[i], b = head[i + half];
        const double c = std::cos(angle(row % T, i, D, theta));
        const double s = sign * std::sin(angle(row % T, i, D, theta));
        head[i] = a * c - b * s;
        head[i + half] = b * c + a * s;
      }
    }
  }
  return x;
}

struct Shape {
  int64_t B, T, H, D, stride;
};

class RopeShapes : public ::testing::TestWithParam<Shape> {};

TEST(RopeTest, TablesUseDoubleAngles) {
  // At position 4095 an fp32 angle is off by ~2e-4; the tables must carry only fp32 rounding.
  const int64_t T = 4096, D = 64;
  for (const double theta : {10000.0, 500000.0}) {
    std::vector<float> cos(T * D / 2), sin(T * D / 2);
    rope_tables(cos.data(), sin.data(), T, D, theta);
    double worst = 0.0;
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t i = 0; i < D / 2; ++i) {
        worst = std::max(worst, std::abs(cos[t * D / 2 + i] - std::cos(angle(t, i, D, theta))));
        worst = std::max(worst, std::abs(sin[t * D / 2 + i] - std::sin(angle(t, i, D, theta))));
      }
    }
    EXPECT_LE(worst, 0x1p-24) << "theta=" << theta;  // one ulp just below 1
  }
}

TEST_P(RopeShapes, ForwardMatchesDoubleReference) {
  const auto [B, T, H, D, stride] = GetParam();
  const double theta = 10000.0;
  std::vector<float> cos(T * D / 2), sin(T * D / 2);
  rope_tables(cos.data(), sin.data(), T, D, theta);
  const auto x0 = random_floats(B * T * stride, 31);
  std::vector<float> x = x0;
  rope_forward(x.data(), cos.data(), sin.data(), B, T, H, D, stride);
  const auto want = reference_rotate(to_double(x0), B, T, H, D, stride, theta, 1.0);
  const double err = rel_error(x, want);
  EXPECT_LE(err, 1e-5);
  RecordProperty("rel_error", ::testing::PrintToString(err));
  // The rotation must change the heads (position 0 aside) and leave the rest of the row alone.
  EXPECT_GT(rel_error(x0, want), 1e-2);
  for (int64_t row = 0; row < B * T; ++row) {
    EXPECT_EQ(std::memcmp(x.data() + row * stride + H * D, x0.data() + row * stride + H * D,
                          (stride - H * D) * sizeof(float)),
              0)
        << "row " << row;
  }
}

TEST_P(RopeShapes, BackwardMatchesDoubleReference) {
  const auto [B, T, H, D, stride] = GetParam();
  const double theta = 500000.0;
  std::vector<float> cos(T * D / 2), sin(T * D / 2);
  rope_tables(cos.data(), sin.data(), T, D, theta);
  const auto dy = random_floats(B * T * stride, 32);
  std::vector<float> dx = dy;
  rope_backward(dx.data(), cos.data(), sin.data(), B, T, H, D, stride);
  const auto want = reference_rotate(to_double(dy), B, T, H, D, stride, theta, -1.0);
  const double err = rel_error(dx, want);
  EXPECT_LE(err, 1e-5);
  RecordProperty("rel_error", ::testing::PrintToString(err));
  // Backward undoes forward.
  std::vector<float> round_trip = dy;
  rope_forward(round_trip.data(), cos.data(), sin.data(), B, T, H, D, stride);
  rope_backward(round_trip.data(), cos.data(), sin.data(), B, T, H, D, stride);
  EXPECT_LE(rel_error(round_trip, to_double(dy)), 1e-6);
}

INSTANTIATE_TEST_SUITE_P(RopeTest, RopeShapes,
                         ::testing::Values(Shape{2, 5, 1, 6, 6}, Shape{2, 5, 3, 6, 23},
                                           Shape{1, 13, 3, 6, 18}, Shape{3, 11, 2, 64, 130}));

TEST(RopeTest, ReferenceBackwardMatchesFiniteDifferences) {
  // L(x) = Σ dy · rope(x) in double; its gradient is what the sign = −1 reference claims.
  const int64_t B = 1, T = 3, H = 2, D = 6, stride = 13;
  const double theta = 10000.0, h = 1e-6;
  auto x = to_double(random_floats(B * T * stride, 33));
  const auto dy = to_double(random_floats(B * T * stride, 34));
  const auto loss = [&] {
    const auto y = reference_rotate(x, B, T, H, D, stride, theta, 1.0);
    double l = 0.0;
    for (size_t i = 0; i < y.size(); ++i) l += dy[i] * y[i];
    return l;
  };
  const auto grad = reference_rotate(dy, B, T, H, D, stride, theta, -1.0);
  const double err = keel::testing::finite_difference_error(x, grad, h, loss);
  EXPECT_LE(err, 1e-7);
  RecordProperty("fd_rel_error", ::testing::PrintToString(err));
}

TEST(RopeTest, RejectsOddHeadDimAndShortRows) {
  std::vector<float> table(8), x(64);
  EXPECT_ANY_THROW(rope_tables(table.data(), table.data(), 2, 5, 10000.0));
  EXPECT_ANY_THROW(rope_forward(x.data(), table.data(), table.data(), 1, 2, 2, 6, 11));
}

}  // namespace
}  // namespace keel::kernels::cpu
