// Softmax cross-entropy against a double-precision reference: losses, the fused gradient with its
// scale, ignored rows, and rows whose logits are far too large to exponentiate directly.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/cross_entropy.h"
#include "kernels/error.h"
#include "tests/kernels/op_test_util.h"

namespace keel::kernels::cpu {
namespace {

using keel::testing::random_floats;
using keel::testing::random_ints;
using keel::testing::rel_error;

constexpr double kTol = 1e-5;

struct Case {
  std::vector<float> logits;  // (N, V)
  std::vector<int32_t> targets;
};

// Random logits with rows 1 and N-2 ignored and row 0 shifted by +1000 (overflows a naive exp).
Case make_case(int64_t N, int64_t V, uint64_t seed) {
  Case c{random_floats(N * V, seed, 3.0f), random_ints(N, 0, static_cast<int32_t>(V), seed + 1)};
  c.targets[1] = kIgnoreIndex;
  c.targets[N - 2] = kIgnoreIndex;
  for (int64_t v = 0; v < V; ++v) c.logits[v] += 1000.0f;
  return c;
}

// losses (N) and grad_scale · (softmax − onehot) (N, V) in double.
void reference(const Case& c, int64_t N, int64_t V, double grad_scale, std::vector<double>& losses,
               std::vector<double>& grad) {
  losses.assign(N, 0.0);
  grad.assign(N * V, 0.0);
  for (int64_t n = 0; n < N; ++n) {
    if (c.targets[n] < 0) continue;
    const float* x = c.logits.data() + n * V;
    double m = -INFINITY, sum = 0.0;
    for (int64_t v = 0; v < V; ++v) m = std::max(m, double(x[v]));
    for (int64_t v = 0; v < V; ++v) sum += std::exp(x[v] - m);
    losses[n] = m + std::log(sum) - x[c.targets[n]];
    for (int64_t v = 0; v < V; ++v) grad[n * V + v] = grad_scale * std::exp(x[v] - m) / sum;
    grad[n * V + c.targets[n]] -= grad_scale;
  }
}

class CrossEntropyTest : public ::testing::TestWithParam<std::pair<int64_t, int64_t>> {};

TEST_P(CrossEntropyTest, ForwardMatchesReferenceAndKeepsLogits) {
  const auto [N, V] = GetParam();
  const Case c = make_case(N, V, 5);
  std::vector<double> want_loss, want_grad;
  reference(c, N, V, 1.0, want_loss, want_grad);
  std::vector<float> losses(N, NAN);
  const std::vector<float> logits = c.logits;
  cross_entropy_forward(losses.data(), logits.data(), c.targets.data(), N, V);
  EXPECT_LE(rel_error(losses, want_loss), kTol);
  EXPECT_EQ(losses[1], 0.0f);
  EXPECT_EQ(losses[N - 2], 0.0f);
  EXPECT_EQ(logits, c.logits);
}

TEST_P(CrossEntropyTest, ForwardBackwardMatchesReference) {
  const auto [N, V] = GetParam();
  const Case c = make_case(N, V, 9);
  const float grad_scale = 1.0f / 7.0f;
  std::vector<double> want_loss, want_grad;
  reference(c, N, V, grad_scale, want_loss, want_grad);
  std::vector<float> losses(N, NAN), logits = c.logits;
  cross_entropy_forward_backward(losses.data(), logits.data(), c.targets.data(), N, V, grad_scale);
  EXPECT_LE(rel_error(losses, want_loss), kTol);
  EXPECT_LE(rel_error(logits, want_grad), kTol);
  for (int64_t row : {int64_t{1}, N - 2}) {
    EXPECT_EQ(losses[row], 0.0f);
    for (int64_t v = 0; v < V; ++v) ASSERT_EQ(logits[row * V + v], 0.0f) << "row " << row;
  }
  // Each kept row's gradient sums to zero (softmax sums to one).
  for (int64_t n = 0; n < N; ++n) {
    double sum = 0.0;
    for (int64_t v = 0; v < V; ++v) sum += logits[n * V + v];
    EXPECT_NEAR(sum, 0.0, 1e-6) << "row " << n;
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, CrossEntropyTest,
                         ::testing::Values(std::pair<int64_t, int64_t>{5, 37},
                                           std::pair<int64_t, int64_t>{9, 1000},
                                           std::pair<int64_t, int64_t>{6, 50257}),
                         [](const auto& test) {
                           std::string name = "N";  // appended: GCC 12's -Wrestrict misfires
                           name += std::to_string(test.param.first);  // on "N" + string + ...
                           name += "_V";
                           return name + std::to_string(test.param.second);
                         });

TEST(CrossEntropyTest, RejectsTargetOutOfVocabulary) {
  std::vector<float> logits(2 * 4, 0.0f), losses(2);
  const std::vector<int32_t> targets = {1, 4};
  EXPECT_THROW(cross_entropy_forward(losses.data(), logits.data(), targets.data(), 2, 4),
               keel::Error);
}

}  // namespace
}  // namespace keel::kernels::cpu
