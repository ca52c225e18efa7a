// RMSNorm on the GPU against the CPU version: out and rstd; dx overwritten (over NaN) or
// accumulated; dweight accumulated onto an existing gradient; widths below, at and far above one
// block of threads; and a bitwise-repeatable backward.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/rmsnorm.h"
#include "tests/kernels/cuda/cuda_test_util.h"
#include "tests/kernels/op_test_util.h"

namespace keel::kernels::cuda {
namespace {

using keel::testing::CudaParamTest;
using keel::testing::DeviceBuffer;
using keel::testing::random_floats;
using keel::testing::rel_error;
using keel::testing::to_double;

constexpr double kTol = 1e-5;
constexpr float kEps = 1e-5f;

// (N, C)
class CudaRmsNorm : public CudaParamTest<std::tuple<int64_t, int64_t>> {};

TEST_P(CudaRmsNorm, ForwardMatchesCpu) {
  const auto [N, C] = GetParam();
  const auto x = random_floats(N * C, 1, 2.0f), weight = random_floats(C, 2);
  std::vector<float> want_out(N * C, NAN), want_rstd(N, NAN);
  cpu::rmsnorm_forward(want_out.data(), want_rstd.data(), x.data(), weight.data(), N, C, kEps);
  DeviceBuffer<float> d_x(x), d_weight(weight), d_out(N * C), d_rstd(N);
  rmsnorm_forward(d_out.get(), d_rstd.get(), d_x.get(), d_weight.get(), N, C, kEps, stream());
  EXPECT_LE(rel_error(d_out.download(), to_double(want_out)), kTol);
  EXPECT_LE(rel_error(d_rstd.download(), to_double(want_rstd)), kTol);
}

TEST_P(CudaRmsNorm, BackwardMatchesCpuOverwritingOrAccumulatingDx) {
  const auto [N, C] = GetParam();
  const auto x = random_floats(N * C, 3, 2.0f), weight = random_floats(C, 4);
  const auto dout = random_floats(N * C, 5), dx0 = random_floats(N * C, 6);
  const auto dweight0 = random_floats(C, 7);
  std::vector<float> out(N * C), rstd(N);
  cpu::rmsnorm_forward(out.data(), rstd.data(), x.data(), weight.data(), N, C, kEps);
  DeviceBuffer<float> d_x(x), d_weight(weight), d_dout(dout), d_rstd(rstd);
  for (bool accumulate : {false, true}) {
    SCOPED_TRACE(::testing::Message() << "accumulate_dx=" << accumulate);
    std::vector<float> want_dx = accumulate ? dx0 : std::vector<float>(N * C, NAN);
    std::vector<float> want_dweight = dweight0;
    cpu::rmsnorm_backward(want_dx.data(), want_dweight.data(), dout.data(), x.data(), weight.data(),
                          rstd.data(), N, C, accumulate);
    DeviceBuffer<float> d_dx(N * C), d_dweight(dweight0);
    if (accumulate) d_dx.upload(dx0);
    rmsnorm_backward(d_dx.get(), d_dweight.get(), d_dout.get(), d_x.get(), d_weight.get(),
                     d_rstd.get(), N, C, accumulate, stream());
    EXPECT_LE(rel_error(d_dx.download(), to_double(want_dx)), kTol);
    EXPECT_LE(rel_error(d_dweight.download(), to_double(want_dweight)), kTol);
  }
}

TEST_P(CudaRmsNorm, BackwardIsBitwiseRepeatable) {
  const auto [N, C] = GetParam();
  const auto x = random_floats(N * C, 8), weight = random_floats(C, 9);
  const auto dout = random_floats(N * C, 10), dweight0 = random_floats(C, 11);
  std::vector<float> out(N * C), rstd(N);
  cpu::rmsnorm_forward(out.data(), rstd.data(), x.data(), weight.data(), N, C, kEps);
  DeviceBuffer<float> d_x(x), d_weight(weight), d_dout(dout), d_rstd(rstd);
  std::vector<float> first_dx, first_dweight;
  for (int run = 0; run < 2; ++run) {
    DeviceBuffer<float> d_dx(N * C), d_dweight(dweight0);
    rmsnorm_backward(d_dx.get(), d_dweight.get(), d_dout.get(), d_x.get(), d_weight.get(),
                     d_rstd.get(), N, C, false, stream());
    if (run == 0) {
      first_dx = d_dx.download();
      first_dweight = d_dweight.download();
    } else {
      EXPECT_EQ(d_dx.download(), first_dx);
      EXPECT_EQ(d_dweight.download(), first_dweight);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, CudaRmsNorm,
                         ::testing::Values(std::make_tuple(1, 1), std::make_tuple(7, 3),
                                           std::make_tuple(33, 288), std::make_tuple(300, 17),
                                           std::make_tuple(5, 4099)),
                         [](const auto& test) {
                           const auto& p = test.param;
                           return keel::testing::name_of("N", std::get<0>(p), "_C", std::get<1>(p));
                         });

}  // namespace
}  // namespace keel::kernels::cuda
