// Elementwise helpers on the GPU against the CPU versions: one fp32 operation per element, so the
// results must match bit for bit; sizes from 0 to past the capped grid. sum_squares agrees with
// the CPU's double sum to double rounding and repeats bitwise.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/elementwise.h"
#include "tests/kernels/cuda/cuda_test_util.h"
#include "tests/kernels/op_test_util.h"

namespace keel::kernels::cuda {
namespace {

using keel::testing::CudaParamTest;
using keel::testing::DeviceBuffer;
using keel::testing::random_floats;

class CudaElementwise : public CudaParamTest<int64_t> {};

TEST_P(CudaElementwise, AddInplaceMatchesCpu) {
  const int64_t n = GetParam();
  auto y = random_floats(n, 1);
  const auto x = random_floats(n, 2);
  DeviceBuffer<float> d_y(y), d_x(x);
  cpu::add_inplace(y.data(), x.data(), n);
  add_inplace(d_y.get(), d_x.get(), n, stream());
  EXPECT_EQ(d_y.download(), y);
}

TEST_P(CudaElementwise, AddOverwritesAndMatchesCpu) {
  const int64_t n = GetParam();
  const auto a = random_floats(n, 3), b = random_floats(n, 4);
  std::vector<float> want(n, NAN);
  cpu::add(want.data(), a.data(), b.data(), n);
  DeviceBuffer<float> d_a(a), d_b(b), d_y(n);  // d_y poisoned
  add(d_y.get(), d_a.get(), d_b.get(), n, stream());
  EXPECT_EQ(d_y.download(), want);
}

TEST_P(CudaElementwise, ScaleInplaceMatchesCpu) {
  const int64_t n = GetParam();
  auto x = random_floats(n, 5);
  DeviceBuffer<float> d_x(x);
  cpu::scale_inplace(x.data(), -0.37f, n);
  scale_inplace(d_x.get(), -0.37f, n, stream());
  EXPECT_EQ(d_x.download(), x);
}

TEST_P(CudaElementwise, SumSquaresMatchesCpuAndRepeatsBitwise) {
  const int64_t n = GetParam();
  const auto x = random_floats(n, 6, 3.0f);
  DeviceBuffer<float> d_x(x);
  const double want = cpu::sum_squares(x.data(), n);
  const double got = sum_squares(d_x.get(), n, stream());
  EXPECT_NEAR(got, want, 1e-12 * want);
  if (n == 0) {
    EXPECT_EQ(got, 0.0);
  }
  EXPECT_EQ(sum_squares(d_x.get(), n, stream()), got);
}

TEST_P(CudaElementwise, CountNonfiniteMatchesCpu) {
  const int64_t n = GetParam();
  auto x = random_floats(n, 7);
  for (int64_t i = 0; i < n; i += 997)
    x[i] = (i / 997) % 3 == 0 ? NAN : (i % 2 ? INFINITY : -INFINITY);
  DeviceBuffer<float> d_x(x);
  const int64_t want = cpu::count_nonfinite(x.data(), n);
  EXPECT_EQ(want, n == 0 ? 0 : (n - 1) / 997 + 1);
  EXPECT_EQ(count_nonfinite(d_x.get(), n, stream()), want);
}

INSTANTIATE_TEST_SUITE_P(Sizes, CudaElementwise, ::testing::Values(0, 1, 31, 1000, 3000017),
                         [](const auto& test) { return keel::testing::name_of("n", test.param); });

}  // namespace
}  // namespace keel::kernels::cuda
