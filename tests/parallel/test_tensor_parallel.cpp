// Tensor parallelism's split of a LLaMA layer, without MPI: every rank's heads, key/value heads,
// MLP rows and vocabulary rows tile the model exactly once (shared key/value heads once per
// group of ranks), query heads sit with the key/value head they read, and the sizes TP cannot
// serve are one clear error naming the key; without a TP group, sequence parallelism's mappings
// are copies.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "kernels/error.h"
#include "parallel/tensor_parallel.h"

namespace keel::parallel {
namespace {

TEST(EvenSpan, TilesTheRangeWithTheFirstRanksHoldingOneMore) {
  EXPECT_EQ(even_span(257, 2, 0), (Span{0, 129}));
  EXPECT_EQ(even_span(257, 2, 1), (Span{129, 128}));
  for (int ranks : {1, 3, 4, 7}) {
    int64_t next = 0;
    for (int r = 0; r < ranks; ++r) {
      const Span s = even_span(23, ranks, r);
      EXPECT_EQ(s.begin, next);
      EXPECT_GE(s.count, 23 / ranks);
      EXPECT_LE(s.count, 23 / ranks + 1);
      next = s.end();
    }
    EXPECT_EQ(next, 23);
  }
}

struct Model {
  int64_t H, Hkv, I, V;
};

class TpSplitTest : public ::testing::TestWithParam<std::pair<Model, int>> {};

TEST_P(TpSplitTest, RanksTileTheLayerAndQueriesMeetTheirKeys) {
  const auto [m, tp] = GetParam();
  std::vector<int> heads(m.H, 0), kv(m.Hkv, 0), inter(m.I, 0), vocab(m.V, 0);
  for (int r = 0; r < tp; ++r) {
    const TpSplit s = tp_split(m.H, m.Hkv, m.I, m.V, tp, r);
    EXPECT_EQ(s.heads.count, m.H / tp);
    for (int64_t h = s.heads.begin; h < s.heads.end(); ++h) {
      ++heads[h];
      // Query head h reads key/value head h / (H / Hkv): it must be one this rank holds.
      const int64_t reads = h / (m.H / m.Hkv);
      EXPECT_TRUE(reads >= s.kv_heads.begin && reads < s.kv_heads.end()) << "rank " << r;
    }
    for (int64_t h = s.kv_heads.begin; h < s.kv_heads.end(); ++h) ++kv[h];
    for (int64_t i = s.inter.begin; i < s.inter.end(); ++i) ++inter[i];
    for (int64_t v = s.vocab.begin; v < s.vocab.end(); ++v) ++vocab[v];
    EXPECT_EQ(s.kv_replicas, m.Hkv % tp == 0 ? 1 : tp / m.Hkv);
  }
  const int kv_copies = m.Hkv % tp == 0 ? 1 : static_cast<int>(tp / m.Hkv);
  EXPECT_EQ(heads, std::vector<int>(m.H, 1));
  EXPECT_EQ(kv, std::vector<int>(m.Hkv, kv_copies));
  EXPECT_EQ(inter, std::vector<int>(m.I, 1));
  EXPECT_EQ(vocab, std::vector<int>(m.V, 1));
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, TpSplitTest,
    ::testing::Values(std::pair{Model{4, 4, 96, 256}, 1}, std::pair{Model{4, 2, 96, 257}, 2},
                      std::pair{Model{4, 1, 96, 257}, 2}, std::pair{Model{8, 2, 96, 1000}, 4},
                      std::pair{Model{8, 8, 96, 7}, 4}, std::pair{Model{8, 1, 96, 255}, 8}));

TEST(TpSplitErrors, NameTheSizeTpCannotServe) {
  auto message = [](Model m, int tp) {
    try {
      tp_split(m.H, m.Hkv, m.I, m.V, tp, 0);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message({6, 6, 96, 256}, 4).find("model.num_attention_heads 6"), std::string::npos);
  EXPECT_NE(message({12, 3, 96, 256}, 4).find("model.num_key_value_heads 3"), std::string::npos);
  EXPECT_NE(message({4, 4, 90, 256}, 4).find("model.intermediate_size 90"), std::string::npos);
  EXPECT_NE(message({4, 4, 96, 3}, 4).find("model.vocab_size 3"), std::string::npos);
}

// TP = 1: the gather and the scatter of one chunk are copies, and nothing in place.
TEST(TpMappings, WithoutAGroupGatherAndScatterCopy) {
  const TpMappings none;
  EXPECT_EQ(none.size(), 1);
  std::vector<float> chunk = {1, 2, 3}, full = {9, 9, 9};
  none.all_gather(full.data(), chunk.data(), 3);
  EXPECT_EQ(full, chunk);
  std::vector<float> out = {0, 0, 0};
  full = {4, 5, 6};
  none.reduce_scatter(out.data(), full.data(), 3);
  EXPECT_EQ(out, full);
  none.all_gather(full.data(), full.data(), 3);
  none.reduce_scatter(full.data(), full.data(), 3);
  EXPECT_EQ(full, (std::vector<float>{4, 5, 6}));
}

}  // namespace
}  // namespace keel::parallel
