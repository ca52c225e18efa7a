// Sequence parallelism's mappings (parallel/tensor_parallel.h) on the world as the TP group: the
// gather puts every rank's chunk in its place, the scatter leaves each rank the sum of its chunk,
// both in place (the chunk inside the full buffer, as the model calls them) and not, and each
// moves the bytes of one all-gather or reduce-scatter of the full buffer. Under mpirun -np 2, 4.
#include <gtest/gtest.h>

#include <vector>

#include "mpi_test_env.h"
#include "parallel/tensor_parallel.h"

namespace keel::parallel::testing {
namespace {

TEST(MpiTensorParallelTest, GatherPutsEveryChunkInItsPlace) {
  MpiCommunicator& c = world();
  const TpMappings tp(&c);
  const int ranks = c.size();
  for (const bool in_place : {false, true}) {
    for (int64_t n : kSizes) {
      SCOPED_TRACE(n);
      std::vector<float> full(static_cast<size_t>(n * ranks), -99.0f), want;
      std::vector<float> chunk(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) chunk[static_cast<size_t>(i)] = value(c.rank(), i);
      for (int r = 0; r < ranks; ++r)
        for (int64_t i = 0; i < n; ++i) want.push_back(value(r, i));
      float* mine = full.data() + c.rank() * n;
      if (in_place) std::copy(chunk.begin(), chunk.end(), mine);
      c.reset_stats();
      tp.all_gather(full.data(), in_place ? mine : chunk.data(), n);
      EXPECT_EQ(first_mismatch(full, want), "");
      EXPECT_EQ(c.stats()[CommOp::kAllGather].bytes, all_gather_bytes(4 * n * ranks, ranks));
    }
  }
}

TEST(MpiTensorParallelTest, ScatterLeavesEachRankTheSumOfItsChunk) {
  MpiCommunicator& c = world();
  const TpMappings tp(&c);
  const int ranks = c.size();
  for (const bool in_place : {false, true}) {
    for (int64_t n : kSizes) {
      SCOPED_TRACE(n);
      // Rank k's full buffer holds value(k, j) at every j; chunk r is j in [r·n, (r+1)·n).
      std::vector<float> full(static_cast<size_t>(n * ranks)), want(static_cast<size_t>(n), 0.0f);
      for (int64_t j = 0; j < n * ranks; ++j) full[static_cast<size_t>(j)] = value(c.rank(), j);
      for (int k = 0; k < ranks; ++k)
        for (int64_t i = 0; i < n; ++i) want[static_cast<size_t>(i)] += value(k, c.rank() * n + i);
      std::vector<float> chunk(static_cast<size_t>(n), -99.0f);
      float* mine = full.data() + c.rank() * n;
      c.reset_stats();
      tp.reduce_scatter(in_place ? mine : chunk.data(), full.data(), n);
      if (in_place) chunk.assign(mine, mine + n);
      EXPECT_EQ(first_mismatch(chunk, want), "");
      EXPECT_EQ(c.stats()[CommOp::kReduceScatter].bytes,
                reduce_scatter_bytes(4 * n * ranks, ranks));
    }
  }
}

}  // namespace
}  // namespace keel::parallel::testing
