// The stacking of per-block optimizer state in checkpoints (runtime/store/block_index.h): each
// distinct buffer gets its own rows, ranks holding a buffer alike share them, and without TP the
// shards stack rank after rank as before TP.
#include <gtest/gtest.h>

#include "kernels/error.h"
#include "runtime/store/block_index.h"

namespace keel::runtime {
namespace {

const std::string kName = "optimizer.exp_avg_absmax.lm_head.weight";

// Without TP: shard k of equal blocks n starts at row k·n, as checkpoints stacked it before TP.
TEST(BlockIndex, ShardsStackRankAfterRank) {
  std::vector<BlockRecord> all;
  for (int64_t k = 3; k >= 0; --k) all.push_back({kName, k, 16 * k, 0, 5});
  const BlockIndex index(all);
  EXPECT_EQ(index.total(kName), 20);
  for (const BlockRecord& r : all) EXPECT_EQ(index.first(r), 5 * r.shard);
}

// TP slices of unequal sizes (129 and 128 rows of a 257-row head cut in 33 and 32 blocks) get
// disjoint rows; ranks holding the same slice (a shared key/value head, a norm) share them.
TEST(BlockIndex, TensorParallelSlicesNeverCollide) {
  const BlockRecord tp0{kName, 0, 0, 0, 33}, tp1{kName, 0, 129, 0, 32};
  const BlockRecord norm{"optimizer.exp_avg_absmax.model.norm.weight", 0, 0, 0, 1};
  const BlockIndex index({tp0, tp1, norm, norm});
  EXPECT_EQ(index.total(kName), 65);
  EXPECT_EQ(index.first(tp0), 0);
  EXPECT_EQ(index.first(tp1), 33);
  EXPECT_EQ(index.total(norm.name), 1);
  EXPECT_EQ(index.totals().size(), 2u);
  // Under ZeRO each TP slice's shards: shard first, then the slice's corner.
  const BlockRecord s00{kName, 0, 0, 0, 17}, s01{kName, 0, 129, 0, 16};
  const BlockRecord s10{kName, 1, 65, 0, 17}, s11{kName, 1, 193, 0, 16};
  const BlockIndex zero({s11, s10, s01, s00});
  EXPECT_EQ(zero.first(s00), 0);
  EXPECT_EQ(zero.first(s01), 17);
  EXPECT_EQ(zero.first(s10), 33);
  EXPECT_EQ(zero.first(s11), 50);
  EXPECT_EQ(zero.total(kName), 66);
}

TEST(BlockIndex, OneBufferWithTwoSizesIsAnError) {
  EXPECT_THROW(BlockIndex({{kName, 0, 0, 0, 3}, {kName, 0, 0, 0, 4}}), Error);
  const BlockIndex index({{kName, 0, 0, 0, 3}});
  EXPECT_THROW(index.first({kName, 1, 0, 0, 3}), Error);
  EXPECT_THROW(index.total("optimizer.exp_avg_absmax.other"), Error);
}

}  // namespace
}  // namespace keel::runtime
