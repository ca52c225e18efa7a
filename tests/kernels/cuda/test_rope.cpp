// RoPE on the GPU against the CPU version, in place on rows wider than the rotated heads (the
// padding must survive), with tables built on the CPU and copied; forward then backward restores
// the input; bad shapes are rejected.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/error.h"
#include "kernels/rope.h"
#include "tests/kernels/cuda/cuda_test_util.h"
#include "tests/kernels/op_test_util.h"

namespace keel::kernels::cuda {
namespace {

using keel::testing::CudaParamTest;
using keel::testing::CudaTest;
using keel::testing::DeviceBuffer;
using keel::testing::random_floats;
using keel::testing::rel_error;
using keel::testing::to_double;

constexpr double kTol = 1e-5;
constexpr double kTheta = 10000.0;

struct RopeShape {
  int64_t B, T, H, D, row_stride;
};

struct Tables {
  std::vector<float> cos, sin;  // (T, D/2)
};

Tables make_tables(const RopeShape& s) {
  Tables t{std::vector<float>(s.T * s.D / 2), std::vector<float>(s.T * s.D / 2)};
  cpu::rope_tables(t.cos.data(), t.sin.data(), s.T, s.D, kTheta);
  return t;
}

class CudaRope : public CudaParamTest<RopeShape> {};

TEST_P(CudaRope, ForwardAndBackwardMatchCpuAndKeepPadding) {
  const RopeShape s = GetParam();
  const Tables tables = make_tables(s);
  DeviceBuffer<float> d_cos(tables.cos), d_sin(tables.sin);
  const auto x = random_floats(s.B * s.T * s.row_stride, 1);
  for (bool forward : {true, false}) {
    SCOPED_TRACE(forward ? "forward" : "backward");
    std::vector<float> want = x;
    DeviceBuffer<float> d_x(x);
    if (forward) {
      cpu::rope_forward(want.data(), tables.cos.data(), tables.sin.data(), s.B, s.T, s.H, s.D,
                        s.row_stride);
      rope_forward(d_x.get(), d_cos.get(), d_sin.get(), s.B, s.T, s.H, s.D, s.row_stride, stream());
    } else {
      cpu::rope_backward(want.data(), tables.cos.data(), tables.sin.data(), s.B, s.T, s.H, s.D,
                         s.row_stride);
      rope_backward(d_x.get(), d_cos.get(), d_sin.get(), s.B, s.T, s.H, s.D, s.row_stride,
                    stream());
    }
    const auto got = d_x.download();
    EXPECT_LE(rel_error(got, to_double(want)), kTol);
    for (int64_t row = 0; row < s.B * s.T; ++row) {
      for (int64_t c = s.H * s.D; c < s.row_stride; ++c) {
        ASSERT_EQ(got[row * s.row_stride + c], x[row * s.row_stride + c]) << "row " << row;
      }
    }
  }
}

TEST_P(CudaRope, BackwardUndoesForward) {
  const RopeShape s = GetParam();
  const Tables tables = make_tables(s);
  DeviceBuffer<float> d_cos(tables.cos), d_sin(tables.sin);
  const auto x = random_floats(s.B * s.T * s.row_stride, 2);
  DeviceBuffer<float> d_x(x);
  rope_forward(d_x.get(), d_cos.get(), d_sin.get(), s.B, s.T, s.H, s.D, s.row_stride, stream());
  rope_backward(d_x.get(), d_cos.get(), d_sin.get(), s.B, s.T, s.H, s.D, s.row_stride, stream());
  EXPECT_LE(rel_error(d_x.download(), to_double(x)), kTol);
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaRope,
                         ::testing::Values(RopeShape{1, 1, 1, 2, 2}, RopeShape{2, 7, 3, 8, 29},
                                           // q and k heads of a fused qkv row (5 + 2·5 heads)
                                           RopeShape{3, 33, 10, 64, 15 * 64},
                                           RopeShape{2, 130, 4, 6, 24}),
                         [](const auto& test) {
                           const RopeShape& s = test.param;
                           return keel::testing::name_of("B", s.B, "_T", s.T, "_H", s.H, "_D", s.D,
                                                         "_stride", s.row_stride);
                         });

using CudaRopeChecks = CudaTest;

TEST_F(CudaRopeChecks, RejectsOddHeadDimAndShortRows) {
  DeviceBuffer<float> d(64);
  EXPECT_THROW(rope_forward(d.get(), d.get(), d.get(), 1, 2, 1, 3, 3, stream()), Error);
  EXPECT_THROW(rope_backward(d.get(), d.get(), d.get(), 1, 2, 2, 4, 7, stream()), Error);
}

}  // namespace
}  // namespace keel::kernels::cuda
