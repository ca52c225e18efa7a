// The vocabulary-parallel embedding and cross-entropy: the vocabulary cut into uneven slices, the
// slices joined as the TP group joins them (max, then sums), against the plain ops on the whole
// vocabulary. Holds that a rank never needs another's logits and that tokens and targets outside
// a slice change nothing there.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"
#include "kernels/vocab_parallel.h"
#include "tests/kernels/op_test_util.h"

namespace keel::kernels::cpu {
namespace {

using keel::testing::random_floats;
using keel::testing::random_ints;

// Slices [0, 5), [5, 9), [9, V): uneven, as a vocabulary TP does not divide is split.
std::vector<std::pair<int64_t, int64_t>> slices(int64_t V) { return {{0, 5}, {5, 4}, {9, V - 9}}; }

TEST(VocabParallel, EmbeddingSlicesSumToTheWholeLookupAndGradient) {
  const int64_t N = 13, C = 7, V = 23;
  const std::vector<float> table = random_floats(V * C, 1, 1.0f);
  const std::vector<float> dout = random_floats(N * C, 2, 1.0f);
  const std::vector<int32_t> tokens = random_ints(N, 0, static_cast<int32_t>(V), 3);
  std::vector<float> want(N * C), want_grad(V * C, 0.5f);
  embedding_forward(want.data(), tokens.data(), table.data(), N, C, V);
  embedding_backward(want_grad.data(), dout.data(), tokens.data(), N, C, V);

  std::vector<float> sum(N * C, 0.0f), part(N * C, NAN), grad(V * C, 0.5f);
  for (const auto& [v0, n] : slices(V)) {
    embedding_forward_slice(part.data(), tokens.data(), table.data() + v0 * C, N, C, v0, n);
    for (int64_t i = 0; i < N * C; ++i) sum[i] += part[i];
    embedding_backward_slice(grad.data() + v0 * C, dout.data(), tokens.data(), N, C, v0, n);
  }
  EXPECT_EQ(sum, want);  // one slice holds each row, the others add exact zeros
  EXPECT_EQ(grad, want_grad);
}

class VocabParallelCe : public ::testing::TestWithParam<bool> {};

TEST_P(VocabParallelCe, SlicesJoinedGiveTheWholeRowsLossAndGradient) {
  const bool backward = GetParam();
  const int64_t N = 11, V = 37;
  const float scale = 0.25f;
  std::vector<float> logits = random_floats(N * V, 4, 3.0f);
  std::vector<int32_t> targets = random_ints(N, 0, static_cast<int32_t>(V), 5);
  targets[2] = kIgnoreIndex;
  targets[3] = 4, targets[4] = 5, targets[5] = 36;  // a target at each slice edge
  for (int64_t v = 0; v < V; ++v) logits[static_cast<size_t>(v)] += 1000.0f;  // overflows exp

  std::vector<float> want_loss(N), want_grad = logits;
  if (backward)
    cross_entropy_forward_backward(want_loss.data(), want_grad.data(), targets.data(), N, V, scale);
  else
    cross_entropy_forward(want_loss.data(), logits.data(), targets.data(), N, V);

  // Each slice as its own rank's buffer; the joins done here as the TP group does them.
  std::vector<std::vector<float>> part;
  for (const auto& [v0, n] : slices(V)) {
    part.emplace_back(N * n);
    for (int64_t r = 0; r < N; ++r)
      std::copy_n(logits.data() + r * V + v0, n, part.back().data() + r * n);
  }
  std::vector<float> row_max(N, -INFINITY), m(N);
  for (size_t i = 0; i < part.size(); ++i) {
    cross_entropy_slice_max(m.data(), part[i].data(), N, slices(V)[i].second);
    for (int64_t r = 0; r < N; ++r) row_max[r] = std::max(row_max[r], m[r]);
  }
  std::vector<double> stats(2 * N, 0.0), s(2 * N);
  for (size_t i = 0; i < part.size(); ++i) {
    const auto [v0, n] = slices(V)[i];
    cross_entropy_slice_sums(s.data(), part[i].data(), row_max.data(), targets.data(), N, n, v0);
    for (int64_t j = 0; j < 2 * N; ++j) stats[j] += s[j];
  }
  for (size_t i = 0; i < part.size(); ++i) {
    const auto [v0, n] = slices(V)[i];
    std::vector<float> losses(N, NAN);
    cross_entropy_slice_finish(losses.data(), part[i].data(), row_max.data(), stats.data(),
                               targets.data(), N, n, v0, scale, backward);
    for (int64_t r = 0; r < N; ++r) {
      EXPECT_NEAR(losses[r], want_loss[r], 1e-5 * std::max(1.0f, std::abs(want_loss[r])))
          << "row " << r << " slice " << i;
      for (int64_t v = 0; v < n; ++v) {
        const float want = backward ? want_grad[r * V + v0 + v] : logits[r * V + v0 + v];
        EXPECT_NEAR(part[i][r * n + v], want, 1e-6f * std::max(1.0f, std::abs(want)))
            << "row " << r << " column " << v0 + v;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Passes, VocabParallelCe, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& p) {
                           return p.param ? "Backward" : "Forward";
                         });

}  // namespace
}  // namespace keel::kernels::cpu
