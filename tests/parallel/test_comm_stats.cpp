// The byte-accounting formulas and CommStats' bookkeeping (docs/PARALLEL.md, "Bytes").
#include <gtest/gtest.h>

#include "parallel/communicator.h"

namespace keel::parallel {
namespace {

TEST(CommStatsTest, FormulasAreTheBusBytesOfABandwidthOptimalAlgorithm) {
  // all_reduce: 2n(N−1)/N.
  EXPECT_EQ(all_reduce_bytes(1000, 1), 0u);
  EXPECT_EQ(all_reduce_bytes(1000, 2), 1000u);
  EXPECT_EQ(all_reduce_bytes(1000, 4), 1500u);
  EXPECT_EQ(all_reduce_bytes(28, 3), 37u);  // 56·2/3 = 37.33, rounded down
  // reduce_scatter / all_gather of the full buffer: n(N−1)/N.
  EXPECT_EQ(reduce_scatter_bytes(1000, 1), 0u);
  EXPECT_EQ(reduce_scatter_bytes(1000, 2), 500u);
  EXPECT_EQ(reduce_scatter_bytes(1000, 4), 750u);
  EXPECT_EQ(all_gather_bytes(1000, 4), 750u);
  // ZeRO's claim: reduce-scatter + all-gather move what one all-reduce does (840 = lcm(1..8), so
  // nothing is rounded).
  for (int n = 1; n <= 8; ++n)
    EXPECT_EQ(reduce_scatter_bytes(840, n) + all_gather_bytes(840, n), all_reduce_bytes(840, n));
  EXPECT_EQ(broadcast_bytes(1000, 1), 0u);
  EXPECT_EQ(broadcast_bytes(1000, 3), 1000u);
  // No overflow at large sizes: 2·n·(N−1) for 1 TiB on 1024 ranks fits 64 bits.
  EXPECT_EQ(all_reduce_bytes(uint64_t{1} << 40, 1024), (uint64_t{1} << 41) / 1024 * 1023);
}

TEST(CommStatsTest, CountsCallsAndBytesPerOpAndResets) {
  CommStats s;
  EXPECT_EQ(s.total_calls(), 0u);
  EXPECT_EQ(s.describe(), "no calls");
  s.add(CommOp::kAllReduce, 100);
  s.add(CommOp::kAllReduce, 50);
  s.add(CommOp::kBarrier, 0);
  EXPECT_EQ(s[CommOp::kAllReduce], (OpCounter{2, 150}));
  EXPECT_EQ(s[CommOp::kBarrier], (OpCounter{1, 0}));
  EXPECT_EQ(s[CommOp::kSend], (OpCounter{0, 0}));
  EXPECT_EQ(s.total_calls(), 3u);
  EXPECT_EQ(s.total_bytes(), 150u);
  EXPECT_EQ(s.describe(), "all_reduce 2 calls 150 B, barrier 1 calls 0 B");

  CommStats t;
  t.add(CommOp::kAllReduce, 1 << 20);
  t.add(CommOp::kAllGather, 3 << 20);
  t += s;
  EXPECT_EQ(t[CommOp::kAllReduce], (OpCounter{3, (1 << 20) + 150}));
  EXPECT_EQ(t[CommOp::kAllGather], (OpCounter{1, 3 << 20}));
  EXPECT_EQ(t.total_calls(), 5u);
  EXPECT_EQ(t.describe(),
            "all_reduce 3 calls 1.0 MiB, all_gather 1 calls 3.0 MiB, barrier 1 calls 0 B");

  s.reset();
  EXPECT_EQ(s.total_calls(), 0u);
  EXPECT_EQ(s.total_bytes(), 0u);
}

TEST(CommStatsTest, NamesEveryOp) {
  for (int i = 0; i < kNumCommOps; ++i) EXPECT_NE(comm_op_name(static_cast<CommOp>(i)), "?") << i;
  EXPECT_EQ(comm_op_name(CommOp::kAllToAllV), "all_to_all_v");
  EXPECT_EQ(reduce_op_name(ReduceOp::kMax), "max");
}

}  // namespace
}  // namespace keel::parallel
