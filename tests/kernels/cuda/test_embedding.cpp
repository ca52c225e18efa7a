// Embedding on the GPU against the CPU version: the forward gather and the backward scatter-add
// are single fp32 copies and adds in the same order, so they must match bit for bit, repeated
// tokens and existing gradient included. Bad tokens are rejected as on the CPU.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/embedding.h"
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

// (N, C, V): few-token vocabularies repeat tokens many times.
class CudaEmbedding : public CudaParamTest<std::tuple<int64_t, int64_t, int64_t>> {};

TEST_P(CudaEmbedding, ForwardGathersTheSameRows) {
  const auto [N, C, V] = GetParam();
  const auto table = random_floats(V * C, 1);
  const auto tokens = random_ints(N, 0, static_cast<int32_t>(V), 2);
  std::vector<float> want(N * C, NAN);
  cpu::embedding_forward(want.data(), tokens.data(), table.data(), N, C, V);
  DeviceBuffer<float> d_table(table), d_out(N * C);
  DeviceBuffer<int32_t> d_tokens(tokens);
  embedding_forward(d_out.get(), d_tokens.get(), d_table.get(), N, C, V, stream());
  EXPECT_EQ(d_out.download(), want);
}

TEST_P(CudaEmbedding, BackwardAccumulatesBitwiseAsTheCpu) {
  const auto [N, C, V] = GetParam();
  const auto dout = random_floats(N * C, 3);
  const auto tokens = random_ints(N, 0, static_cast<int32_t>(V), 4);
  auto want = random_floats(V * C, 5);  // existing gradient: the backward adds to it
  DeviceBuffer<float> d_dtable(want), d_dout(dout);
  DeviceBuffer<int32_t> d_tokens(tokens);
  cpu::embedding_backward(want.data(), dout.data(), tokens.data(), N, C, V);
  embedding_backward(d_dtable.get(), d_dout.get(), d_tokens.get(), N, C, V, stream());
  EXPECT_EQ(d_dtable.download(), want);
}

INSTANTIATE_TEST_SUITE_P(Sizes, CudaEmbedding,
                         ::testing::Values(std::make_tuple(1, 1, 1), std::make_tuple(37, 19, 11),
                                           std::make_tuple(513, 33, 7),
                                           std::make_tuple(64, 1000, 50),
                                           std::make_tuple(300, 288, 4096)),
                         [](const auto& test) {
                           const auto& p = test.param;
                           return keel::testing::name_of("N", std::get<0>(p), "_C", std::get<1>(p),
                                                         "_V", std::get<2>(p));
                         });

using CudaEmbeddingChecks = CudaTest;

TEST_F(CudaEmbeddingChecks, RejectsTokensOutsideVocabularyAndWritesNothing) {
  const int64_t C = 4, V = 5;
  DeviceBuffer<float> d_table(random_floats(V * C, 6));
  for (int32_t bad : {-1, 5}) {
    SCOPED_TRACE(::testing::Message() << "bad token " << bad);
    DeviceBuffer<int32_t> d_tokens(std::vector<int32_t>{0, 4, bad});
    DeviceBuffer<float> d_out(3 * C);
    EXPECT_THROW(embedding_forward(d_out.get(), d_tokens.get(), d_table.get(), 3, C, V, stream()),
                 Error);
    const auto dtable0 = random_floats(V * C, 7);
    DeviceBuffer<float> d_dtable(dtable0), d_dout(random_floats(3 * C, 8));
    EXPECT_THROW(
        embedding_backward(d_dtable.get(), d_dout.get(), d_tokens.get(), 3, C, V, stream()), Error);
    EXPECT_EQ(d_dtable.download(), dtable0);
  }
}

TEST_F(CudaEmbeddingChecks, NoTokensIsANoOp) {
  const auto dtable0 = random_floats(6, 9);
  DeviceBuffer<float> d_dtable(dtable0), d_table(dtable0);
  embedding_forward(nullptr, nullptr, d_table.get(), 0, 3, 2, stream());
  embedding_backward(d_dtable.get(), nullptr, nullptr, 0, 3, 2, stream());
  EXPECT_EQ(d_dtable.download(), dtable0);
}

}  // namespace
}  // namespace keel::kernels::cuda
