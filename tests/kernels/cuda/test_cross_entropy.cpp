// Cross-entropy on the GPU against the CPU version: losses with the logits left unchanged, the
// fused gradient with its scale, ignored rows (−100 and any other negative target), a row shifted
// by +1000, vocabularies from 1 to several blocks' worth of threads, and bad targets rejected.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/cross_entropy.h"
#include "kernels/error.h"
#include "tests/kernels/cuda/cuda_test_util.h"
#include "tests/kernels/op_test_util.h"

namespace keel::kernels::cuda {
namespace {

using keel::testing::CudaParamTest;
using keel::testing::CudaTest;
using keel::testing::DeviceBuffer;
using keel::testing::random_floats;
using keel::testing::random_ints;
using keel::testing::rel_error;
using keel::testing::to_double;

constexpr double kTol = 1e-5;

struct Case {
  std::vector<float> logits;  // (N, V)
  std::vector<int32_t> targets;
};

// Random logits; rows 1 and N−2 ignored (−100 and −1), row 0 shifted by +1000. N ≥ 4.
Case make_case(int64_t N, int64_t V, uint64_t seed) {
  Case c{random_floats(N * V, seed, 3.0f), random_ints(N, 0, static_cast<int32_t>(V), seed + 1)};
  c.targets[1] = kIgnoreIndex;
  c.targets[N - 2] = -1;
  for (int64_t v = 0; v < V; ++v) c.logits[v] += 1000.0f;
  return c;
}

// (N, V)
class CudaCrossEntropy : public CudaParamTest<std::tuple<int64_t, int64_t>> {};

TEST_P(CudaCrossEntropy, ForwardMatchesCpuAndKeepsLogits) {
  const auto [N, V] = GetParam();
  const Case c = make_case(N, V, 5);
  std::vector<float> want(N, NAN);
  cpu::cross_entropy_forward(want.data(), c.logits.data(), c.targets.data(), N, V);
  DeviceBuffer<float> d_logits(c.logits), d_losses(N);
  DeviceBuffer<int32_t> d_targets(c.targets);
  cross_entropy_forward(d_losses.get(), d_logits.get(), d_targets.get(), N, V, stream());
  const auto losses = d_losses.download();
  EXPECT_LE(rel_error(losses, to_double(want)), kTol);
  EXPECT_EQ(losses[1], 0.0f);
  EXPECT_EQ(losses[N - 2], 0.0f);
  EXPECT_EQ(d_logits.download(), c.logits);
}

TEST_P(CudaCrossEntropy, ForwardBackwardMatchesCpu) {
  const auto [N, V] = GetParam();
  const Case c = make_case(N, V, 9);
  const float grad_scale = 1.0f / 7.0f;
  std::vector<float> want_losses(N, NAN), want_grad = c.logits;
  cpu::cross_entropy_forward_backward(want_losses.data(), want_grad.data(), c.targets.data(), N, V,
                                      grad_scale);
  DeviceBuffer<float> d_logits(c.logits), d_losses(N);
  DeviceBuffer<int32_t> d_targets(c.targets);
  cross_entropy_forward_backward(d_losses.get(), d_logits.get(), d_targets.get(), N, V, grad_scale,
                                 stream());
  const auto losses = d_losses.download();
  const auto grad = d_logits.download();
  EXPECT_LE(rel_error(losses, to_double(want_losses)), kTol);
  EXPECT_LE(rel_error(grad, to_double(want_grad)), kTol);
  for (int64_t row : {int64_t{1}, N - 2}) {
    EXPECT_EQ(losses[row], 0.0f);
    for (int64_t v = 0; v < V; ++v) ASSERT_EQ(grad[row * V + v], 0.0f) << "row " << row;
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, CudaCrossEntropy,
                         ::testing::Values(std::make_tuple(4, 1), std::make_tuple(5, 7),
                                           std::make_tuple(17, 1000), std::make_tuple(300, 257),
                                           std::make_tuple(9, 32003)),
                         [](const auto& test) {
                           const auto& p = test.param;
                           return keel::testing::name_of("N", std::get<0>(p), "_V", std::get<1>(p));
                         });

using CudaCrossEntropyChecks = CudaTest;

TEST_F(CudaCrossEntropyChecks, RejectsTargetOutOfVocabularyAndWritesNothing) {
  const int64_t N = 3, V = 5;
  const auto logits = random_floats(N * V, 11);
  DeviceBuffer<float> d_logits(logits), d_losses(N);
  DeviceBuffer<int32_t> d_targets(std::vector<int32_t>{0, 5, 2});
  EXPECT_THROW(
      cross_entropy_forward(d_losses.get(), d_logits.get(), d_targets.get(), N, V, stream()),
      Error);
  EXPECT_THROW(cross_entropy_forward_backward(d_losses.get(), d_logits.get(), d_targets.get(), N, V,
                                              1.0f, stream()),
               Error);
  EXPECT_EQ(d_logits.download(), logits);
}

}  // namespace
}  // namespace keel::kernels::cuda
