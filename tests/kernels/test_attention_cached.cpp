// Attention against a key/value cache equals the causal attention over the whole sequence, row by
// row, whatever chunks the positions arrive in (prefill several, then one at a time), for GQA, MQA
// and plain multi-head layouts.
#include <gtest/gtest.h>
#include <omp.h>

#include <vector>

#include "kernels/attention.h"
#include "kernels/attention_cached.h"
#include "tests/kernels/op_test_util.h"

namespace keel::kernels::cpu {
namespace {

struct Case {
  int64_t T, H, Hkv, D;
  std::vector<int64_t> chunks;  // positions per call, summing to T
};

class AttentionCached : public ::testing::TestWithParam<Case> {};

TEST_P(AttentionCached, EqualsFullCausalAttention) {
  const Case c = GetParam();
  const int64_t stride = (c.H + 2 * c.Hkv) * c.D, HD = c.H * c.D, KV = c.Hkv * c.D;
  const std::vector<float> qkv = testing::random_floats(static_cast<size_t>(c.T * stride), 7, 2.0f);
  const int threads = omp_get_max_threads();
  std::vector<float> full(static_cast<size_t>(c.T * HD)), lse(static_cast<size_t>(c.H * c.T));
  std::vector<float> ws(attention_workspace_floats(1, c.T, c.H, c.Hkv, c.D, threads));
  attention_forward(full.data(), lse.data(), qkv.data(), 1, c.T, c.H, c.Hkv, c.D, ws.data());

  // The cache rows as a decoder fills them, and the queries of each chunk.
  std::vector<float> k(static_cast<size_t>(c.T * KV)), v(k.size()),
      q(static_cast<size_t>(c.T * HD));
  for (int64_t t = 0; t < c.T; ++t) {
    const float* row = qkv.data() + t * stride;
    std::copy_n(row, HD, q.data() + t * HD);
    std::copy_n(row + HD, KV, k.data() + t * KV);
    std::copy_n(row + HD + KV, KV, v.data() + t * KV);
  }
  std::vector<float> out(full.size(), -1.0f);
  std::vector<float> cws(attention_cached_workspace_floats(c.T, threads));
  int64_t p0 = 0;
  for (int64_t n : c.chunks) {
    attention_cached(out.data() + p0 * HD, q.data() + p0 * HD, k.data(), v.data(), n, p0, c.H,
                     c.Hkv, c.D, cws.data());
    p0 += n;
  }
  ASSERT_EQ(p0, c.T);
  EXPECT_LE(testing::rel_error(out, testing::to_double(full)), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Layouts, AttentionCached,
                         ::testing::Values(Case{37, 8, 2, 16, {5, 1, 1, 30}},  // GQA
                                           Case{20, 4, 1, 8, {1, 1, 1, 17}},   // MQA
                                           Case{70, 3, 3, 12, {64, 1, 1, 4}},  // multi-head
                                           Case{9, 2, 2, 5, {9}},              // one prefill
                                           Case{1, 4, 2, 32, {1}}));           // one position

}  // namespace
}  // namespace keel::kernels::cpu
