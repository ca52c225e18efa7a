// SwiGLU on the GPU against the CPU version: forward, backward overwriting a NaN-poisoned gradient,
// and gates far beyond where a naive exp overflows.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/swiglu.h"
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

// Runs both backends on gate_up (N, 2·I) and dout (N, I) and compares out and dgate_up.
void expect_matches_cpu(const std::vector<float>& gate_up, const std::vector<float>& dout,
                        int64_t N, int64_t I, Stream stream) {
  std::vector<float> want_out(N * I, NAN), want_dgate_up(N * 2 * I, NAN);
  cpu::swiglu_forward(want_out.data(), gate_up.data(), N, I);
  cpu::swiglu_backward(want_dgate_up.data(), dout.data(), gate_up.data(), N, I);
  DeviceBuffer<float> d_gate_up(gate_up), d_dout(dout), d_out(N * I), d_dgate_up(N * 2 * I);
  swiglu_forward(d_out.get(), d_gate_up.get(), N, I, stream);
  swiglu_backward(d_dgate_up.get(), d_dout.get(), d_gate_up.get(), N, I, stream);
  EXPECT_LE(rel_error(d_out.download(), to_double(want_out)), kTol);
  EXPECT_LE(rel_error(d_dgate_up.download(), to_double(want_dgate_up)), kTol);
}

// (N, I)
class CudaSwiglu : public CudaParamTest<std::tuple<int64_t, int64_t>> {};

TEST_P(CudaSwiglu, ForwardAndBackwardMatchCpu) {
  const auto [N, I] = GetParam();
  expect_matches_cpu(random_floats(N * 2 * I, 1, 3.0f), random_floats(N * I, 2), N, I, stream());
}

INSTANTIATE_TEST_SUITE_P(Sizes, CudaSwiglu,
                         ::testing::Values(std::make_tuple(1, 1), std::make_tuple(7, 13),
                                           std::make_tuple(65, 768), std::make_tuple(3, 4099)),
                         [](const auto& test) {
                           const auto& p = test.param;
                           return keel::testing::name_of("N", std::get<0>(p), "_I", std::get<1>(p));
                         });

using CudaSwigluChecks = CudaTest;

TEST_F(CudaSwigluChecks, ExtremeGatesMatchCpu) {
  const std::vector<float> gates = {0.0f,  -0.0f,  1e-30f, -1e-30f, 20.0f, -20.0f,
                                    87.0f, -87.0f, 100.0f, -100.0f, 1e30f, -1e30f};
  const int64_t I = static_cast<int64_t>(gates.size());
  std::vector<float> gate_up(gates);
  for (int64_t i = 0; i < I; ++i) gate_up.push_back(0.5f + 0.25f * static_cast<float>(i));
  expect_matches_cpu(gate_up, random_floats(I, 3), 1, I, stream());
}

TEST_F(CudaSwigluChecks, NoRowsIsANoOp) {
  EXPECT_NO_THROW(swiglu_forward(nullptr, nullptr, 0, 5, stream()));
  EXPECT_NO_THROW(swiglu_backward(nullptr, nullptr, nullptr, 0, 5, stream()));
  EXPECT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
}

}  // namespace
}  // namespace keel::kernels::cuda
