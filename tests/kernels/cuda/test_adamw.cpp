// AdamW on the GPU against the CPU version over several steps, state carried on each side: weight
// decay, gradient scaling, an eps that matters and both of torch's lerp forms; sizes from one
// element to past the capped grid (so the grid-stride loop wraps). Parameters are small, so their
// error measures the updates rather than the parameters' own rounding.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/adamw.h"
#include "kernels/error.h"
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

struct Case {
  const char* name;
  AdamWHyper h;
  float param_scale, grad_scale_of_inputs;
};

const Case kCases[] = {
    {"decay_and_scaled_grads", {1e-2f, 0.9f, 0.999f, 1e-8f, 0.1f, 1, 0.37f}, 0.05f, 1.0f},
    {"eps_matters", {3e-3f, 0.9f, 0.95f, 1e-3f, 0.01f, 1, 2.5f}, 0.02f, 1e-3f},
    {"other_lerp_branch", {1e-2f, 0.3f, 0.99f, 1e-8f, 0.0f, 1, 1.0f}, 0.05f, 1.0f},
};

class CudaAdamW : public CudaParamTest<int64_t> {};

TEST_P(CudaAdamW, SeveralStepsMatchCpu) {
  const int64_t n = GetParam(), steps = 5;
  for (const Case& c : kCases) {
    SCOPED_TRACE(c.name);
    auto param = random_floats(n, 1, c.param_scale);
    std::vector<float> m(n, 0.0f), v(n, 0.0f);
    DeviceBuffer<float> d_param(param), d_m(m), d_v(v);
    for (int64_t step = 1; step <= steps; ++step) {
      SCOPED_TRACE(::testing::Message() << "step " << step);
      AdamWHyper h = c.h;
      h.step = step;
      const auto grad = random_floats(n, 100 + static_cast<uint64_t>(step), c.grad_scale_of_inputs);
      DeviceBuffer<float> d_grad(grad);
      cpu::adamw_step(param.data(), m.data(), v.data(), grad.data(), n, h);
      cuda::adamw_step(d_param.get(), d_m.get(), d_v.get(), d_grad.get(), n, h, stream());
      EXPECT_LE(rel_error(d_param.download(), to_double(param)), kTol);
      EXPECT_LE(rel_error(d_m.download(), to_double(m)), kTol);
      EXPECT_LE(rel_error(d_v.download(), to_double(v)), kTol);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, CudaAdamW, ::testing::Values(1, 1037, 1048576 * 2 + 3),
                         [](const auto& test) { return keel::testing::name_of("n", test.param); });

using CudaAdamWChecks = CudaTest;

TEST_F(CudaAdamWChecks, RejectsStepZero) {
  DeviceBuffer<float> d(4);
  AdamWHyper h;
  h.step = 0;
  EXPECT_THROW(cuda::adamw_step(d.get(), d.get(), d.get(), d.get(), 4, h, stream()), Error);
}

}  // namespace
}  // namespace keel::kernels::cuda
