// ProcessGrid under MPI: for every layout the world size allows (every tp·dp·pp factorisation and
// every ep dividing dp; on 4 ranks that includes tp 2 × dp 2 and dp 4 split by ep 2), a collective
// in each group reaches exactly the members GridLayout lists, in that order, and is counted on
// that group's communicator only; pipeline neighbours talk over the pp group.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "mpi_test_env.h"
#include "parallel/process_grid.h"

namespace keel::parallel::testing {
namespace {

std::vector<GridSizes> layouts_for(int world) {
  std::vector<GridSizes> out;
  for (int tp = 1; tp <= world; ++tp)
    for (int pp = 1; pp <= world; ++pp) {
      if (world % (tp * pp) != 0) continue;
      const int dp = world / (tp * pp);
      for (int ep = 1; ep <= dp; ++ep)
        if (dp % ep == 0) out.push_back({tp, dp, pp, ep});
    }
  return out;
}

TEST(MpiProcessGridTest, EachGroupReachesExactlyTheLayoutsMembers) {
  MpiCommunicator& w = world();
  const int rank = w.rank();
  const auto layouts = layouts_for(w.size());
  ASSERT_GE(layouts.size(), w.size() == 4 ? 9u : 4u);
  for (const GridSizes& sizes : layouts) {
    const GridLayout layout(sizes);
    SCOPED_TRACE(layout.describe());
    ProcessGrid grid(w, layout);
    EXPECT_EQ(grid.rank(), rank);
    EXPECT_EQ(grid.coord(), layout.coord(rank));
    grid.reset_stats();
    for (Group g : kAllGroups) {
      SCOPED_TRACE(std::string(group_name(g)));
      Communicator& c = grid.comm(g);
      const std::vector<int> members = layout.members(g, rank);
      ASSERT_EQ(c.size(), static_cast<int>(members.size()));
      EXPECT_EQ(c.rank(), layout.index_in(g, rank));

      // Who is in the group, in group-rank order.
      int32_t me = rank;
      std::vector<int32_t> gathered(members.size(), -1);
      c.all_gather(host_view(gathered), host_view(&me, 1));
      EXPECT_EQ(std::vector<int>(gathered.begin(), gathered.end()), members);

      // A sum reaches the members and nobody else.
      std::vector<float> one_hot(static_cast<size_t>(w.size()), 0.0f);
      one_hot[static_cast<size_t>(rank)] = 1.0f;
      c.all_reduce(host_view(one_hot));
      std::vector<float> want(static_cast<size_t>(w.size()), 0.0f);
      for (int m : members) want[static_cast<size_t>(m)] = 1.0f;
      EXPECT_EQ(one_hot, want);

      // Counted on this group only, with this group's size in the formulas.
      EXPECT_EQ(c.stats()[CommOp::kAllGather],
                (OpCounter{1, all_gather_bytes(4 * members.size(), c.size())}));
      EXPECT_EQ(c.stats()[CommOp::kAllReduce],
                (OpCounter{1, all_reduce_bytes(4 * static_cast<uint64_t>(w.size()), c.size())}));
      EXPECT_EQ(c.stats().total_calls(), 2u);
    }
    EXPECT_EQ(grid.total_stats().total_calls(), 2 * kAllGroups.size());
  }
}

TEST(MpiProcessGridTest, PipelineStagesPassActivationsForward) {
  MpiCommunicator& w = world();
  for (const GridSizes& sizes : layouts_for(w.size())) {
    if (sizes.pp == 1) continue;
    const GridLayout layout(sizes);
    SCOPED_TRACE(layout.describe());
    ProcessGrid grid(w, layout);
    const int stage = grid.coord().pp;
    // In the pp communicator a stage's rank is its stage index.
    int32_t got = -1, mine = grid.rank();
    if (const auto prev = layout.pipeline_prev(grid.rank())) {
      grid.pp().recv(host_view(&got, 1), stage - 1);
      EXPECT_EQ(got, *prev);
    }
    if (layout.pipeline_next(grid.rank())) grid.pp().send(host_view(&mine, 1), stage + 1);
  }
}

TEST(MpiProcessGridTest, DataParallelGradientsReduceWithinTheGroup) {
  // tp 2 × dp 2 on 4 ranks, dp 2 on 2: a ZeRO-style step in miniature. Each rank's "gradient" is
  // its global rank; reduce-scatter over dp then all-gather gives every rank the sum over its dp
  // group, and the bytes equal one all-reduce's.
  MpiCommunicator& w = world();
  const GridLayout layout = GridLayout::for_world(w.size(), w.size() == 4 ? 2 : 1, 1);
  ProcessGrid grid(w, layout);
  Communicator& dp = grid.dp();
  const int64_t shard = 1000003;
  std::vector<float> grad(static_cast<size_t>(shard * dp.size()), static_cast<float>(grid.rank()));
  dp.reset_stats();
  float* mine = grad.data() + dp.rank() * shard;
  dp.reduce_scatter(host_view(mine, static_cast<size_t>(shard)), host_view(grad));
  dp.all_gather(host_view(grad), host_view(mine, static_cast<size_t>(shard)));
  float want = 0.0f;
  for (int m : layout.members(Group::kData, grid.rank())) want += static_cast<float>(m);
  EXPECT_EQ(first_mismatch(grad, std::vector<float>(grad.size(), want)), "");
  EXPECT_EQ(dp.stats().total_bytes(), all_reduce_bytes(grad.size() * 4, dp.size()));
  EXPECT_EQ(grid.tp().stats().total_calls(), 0u);
}

TEST(MpiProcessGridTest, LayoutThatDoesNotFitTheJobIsAnErrorOnEveryRank) {
  MpiCommunicator& w = world();
  std::string error;
  try {
    ProcessGrid grid(w, GridLayout(GridSizes{w.size(), 2, 1, 1}));
  } catch (const Error& e) {
    error = e.what();
  }
  EXPECT_NE(error.find(format("the job has {} ranks but the grid needs", w.size())),
            std::string::npos)
      << error;
}

// The tests run under one mpirun on one machine: every rank shares this host, in the world and in
// any group split from it.
TEST(MpiHostTest, EveryRankOfOneMachineSharesItsHost) {
  MpiCommunicator& w = world();
  EXPECT_EQ(w.ranks_on_host(), w.size());
  std::unique_ptr<Communicator> half = w.split(w.rank() % 2, w.rank());
  ASSERT_TRUE(half);
  EXPECT_EQ(half->ranks_on_host(), half->size());
  EXPECT_EQ(half->size(), (w.size() + 1 - w.rank() % 2) / 2);
}

}  // namespace
}  // namespace keel::parallel::testing
