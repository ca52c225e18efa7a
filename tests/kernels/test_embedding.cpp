// Embedding forward and backward against a double-precision reference, the token range check, and
// the backward's independence from the thread count.
#include <gtest/gtest.h>
#include <omp.h>

#include <cstring>
#include <string>
#include <vector>

#include "kernels/embedding.h"
#include "kernels/error.h"
#include "op_test_util.h"

namespace keel::kernels::cpu {
namespace {

using testing::random_floats;
using testing::random_ints;
using testing::rel_error;

// Runs f with an OpenMP team of `threads`, then restores the previous setting.
template <class F>
void with_threads(int threads, F&& f) {
  const int before = omp_get_max_threads();
  omp_set_num_threads(threads);
  f();
  omp_set_num_threads(before);
}

std::vector<double> reference_backward(const std::vector<float>& dtable0,
                                       const std::vector<float>& dout,
                                       const std::vector<int32_t>& tokens, int64_t C) {
  std::vector<double> want(dtable0.begin(), dtable0.end());
  for (size_t n = 0; n < tokens.size(); ++n) {
    for (int64_t c = 0; c < C; ++c) want[tokens[n] * C + c] += dout[n * C + c];
  }
  return want;
}

TEST(EmbeddingTest, ForwardGathersRows) {
  const int64_t N = 7, C = 37, V = 11;
  const auto table = random_floats(V * C, 1);
  const auto tokens = random_ints(N, 0, V, 2);
  std::vector<float> out(N * C, -1.0f);
  embedding_forward(out.data(), tokens.data(), table.data(), N, C, V);
  std::vector<double> want(N * C);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t c = 0; c < C; ++c) want[n * C + c] = table[tokens[n] * C + c];
  }
  // A gather is exact.
  EXPECT_EQ(rel_error(out, want), 0.0);
}

TEST(EmbeddingTest, ForwardRejectsTokensOutsideVocabulary) {
  const int64_t C = 5, V = 11;
  const auto table = random_floats(V * C, 3);
  std::vector<float> out(3 * C);
  for (int32_t bad : {11, -1, 1 << 30}) {
    const std::vector<int32_t> tokens = {0, bad, 4};
    try {
      embedding_forward(out.data(), tokens.data(), table.data(), 3, C, V);
      ADD_FAILURE() << "token " << bad << " was accepted";
    } catch (const Error& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find("token " + std::to_string(bad) + " "), std::string::npos) << message;
      EXPECT_NE(message.find("[0, 11)"), std::string::npos) << message;
    }
  }
}

TEST(EmbeddingTest, BackwardAccumulatesRepeatedTokensOnTopOfExistingGradient) {
  // 37 tokens in a vocabulary of 5: every row of dtable receives several rows of dout.
  const int64_t N = 37, C = 37, V = 5;
  const auto tokens = random_ints(N, 0, V, 4);
  const auto dout = random_floats(N * C, 5);
  const auto dtable0 = random_floats(V * C, 6);
  std::vector<float> dtable = dtable0;
  embedding_backward(dtable.data(), dout.data(), tokens.data(), N, C, V);
  const double err = rel_error(dtable, reference_backward(dtable0, dout, tokens, C));
  EXPECT_LE(err, 1e-5);
  RecordProperty("rel_error", ::testing::PrintToString(err));
}

TEST(EmbeddingTest, BackwardRejectsTokensOutsideVocabulary) {
  const int64_t C = 4, V = 3;
  std::vector<float> dtable(V * C, 0.0f);
  const auto dout = random_floats(2 * C, 7);
  const std::vector<int32_t> tokens = {1, 3};
  EXPECT_THROW(embedding_backward(dtable.data(), dout.data(), tokens.data(), 2, C, V), Error);
}

TEST(EmbeddingTest, BackwardIsBitwiseIdenticalForOneAndTwoThreads) {
  // Wide enough that two threads split the columns; few tokens, so rows collide often.
  const int64_t N = 513, C = 300, V = 7;
  const auto tokens = random_ints(N, 0, V, 8);
  const auto dout = random_floats(N * C, 9);
  const auto dtable0 = random_floats(V * C, 10);
  std::vector<float> one = dtable0, two = dtable0;
  with_threads(1, [&] { embedding_backward(one.data(), dout.data(), tokens.data(), N, C, V); });
  with_threads(2, [&] { embedding_backward(two.data(), dout.data(), tokens.data(), N, C, V); });
  EXPECT_EQ(std::memcmp(one.data(), two.data(), one.size() * sizeof(float)), 0);
  EXPECT_LE(rel_error(two, reference_backward(dtable0, dout, tokens, C)), 1e-5);
}

}  // namespace
}  // namespace keel::kernels::cpu
