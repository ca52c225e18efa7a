// GridLayout's rank arithmetic without MPI: exhaustive over small shapes (every rank in exactly one
// group of each kind, members ordered by their coordinate, coordinates round trip), Megatron's
// documented 16-rank example, the expert split of DP, and the configuration errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "parallel/process_grid.h"

namespace keel::parallel {
namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// The coordinate a group of kind g varies.
int varying(Group g, const GridCoord& c, int rank, const GridSizes& s) {
  switch (g) {
    case Group::kTensor: return c.tp;
    case Group::kData: return c.dp;
    case Group::kPipeline: return c.pp;
    case Group::kExpert: return c.ep;
    case Group::kExpertData: return c.edp;
    case Group::kTensorData: return c.tp + s.tp * c.dp;  // TP fastest inside the stage
    case Group::kTensorExpertData: return c.tp + s.tp * c.edp;
    case Group::kWorld: return rank;
  }
  return -1;
}

// Whether a and b agree on every coordinate that a group of kind g holds fixed.
bool same_group(Group g, const GridCoord& a, const GridCoord& b) {
  switch (g) {
    case Group::kTensor: return a.dp == b.dp && a.pp == b.pp;
    case Group::kData: return a.tp == b.tp && a.pp == b.pp;
    case Group::kPipeline: return a.tp == b.tp && a.dp == b.dp;
    case Group::kExpert: return a.tp == b.tp && a.pp == b.pp && a.edp == b.edp;
    case Group::kExpertData: return a.tp == b.tp && a.pp == b.pp && a.ep == b.ep;
    case Group::kTensorData: return a.pp == b.pp;
    case Group::kTensorExpertData: return a.pp == b.pp && a.ep == b.ep;
    case Group::kWorld: return true;
  }
  return false;
}

std::vector<GridSizes> small_shapes() {
  std::vector<GridSizes> shapes;
  for (int tp = 1; tp <= 4; ++tp)
    for (int dp = 1; dp <= 6; ++dp)
      for (int pp = 1; pp <= 3; ++pp)
        for (int ep = 1; ep <= dp; ++ep)
          if (dp % ep == 0) shapes.push_back({tp, dp, pp, ep});
  return shapes;
}

TEST(GridLayoutTest, CoordinatesRoundTripInMegatronOrder) {
  for (const GridSizes& s : small_shapes()) {
    const GridLayout layout(s);
    SCOPED_TRACE(layout.describe());
    ASSERT_EQ(layout.world_size(), s.tp * s.dp * s.pp);
    for (int r = 0; r < layout.world_size(); ++r) {
      const GridCoord c = layout.coord(r);
      EXPECT_TRUE(0 <= c.tp && c.tp < s.tp && 0 <= c.dp && c.dp < s.dp && 0 <= c.pp && c.pp < s.pp);
      EXPECT_TRUE(0 <= c.ep && c.ep < s.ep && 0 <= c.edp && c.edp < s.dp / s.ep);
      EXPECT_EQ(c.tp + s.tp * (c.dp + s.dp * c.pp), r);  // TP fastest, then DP, then PP
      EXPECT_EQ(c.ep + s.ep * c.edp, c.dp);              // EP fastest inside DP
      EXPECT_EQ(layout.rank_of(c), r);
    }
  }
}

TEST(GridLayoutTest, GroupsPartitionTheWorldAndListMembersByCoordinate) {
  for (const GridSizes& s : small_shapes()) {
    const GridLayout layout(s);
    SCOPED_TRACE(layout.describe());
    const int world = layout.world_size();
    for (Group g : kAllGroups) {
      SCOPED_TRACE(std::string(group_name(g)));
      const auto groups = layout.all_groups(g);
      ASSERT_EQ(static_cast<int>(groups.size()), layout.num_groups(g));
      ASSERT_EQ(layout.num_groups(g) * layout.size(g), world);
      std::vector<int> seen(static_cast<size_t>(world), 0);
      for (const auto& grp : groups) {
        ASSERT_EQ(static_cast<int>(grp.size()), layout.size(g));
        for (int m : grp) ++seen[static_cast<size_t>(m)];
      }
      for (int count : seen) EXPECT_EQ(count, 1);  // every rank exactly once
      for (int r = 0; r < world; ++r) {
        const GridCoord c = layout.coord(r);
        const std::vector<int> members = layout.members(g, r);
        EXPECT_EQ(members, groups[static_cast<size_t>(layout.group_id(g, r))]);
        const int index = layout.index_in(g, r);
        ASSERT_TRUE(0 <= index && index < layout.size(g));
        EXPECT_EQ(members[static_cast<size_t>(index)], r);
        for (size_t i = 0; i < members.size(); ++i) {
          const int m = members[i];
          const GridCoord mc = layout.coord(m);
          EXPECT_TRUE(same_group(g, c, mc)) << "rank " << m << " in the group of rank " << r;
          EXPECT_EQ(varying(g, mc, m, s), static_cast<int>(i));  // ordered by the coordinate
          EXPECT_EQ(layout.group_id(g, m), layout.group_id(g, r));
          EXPECT_EQ(layout.index_in(g, m), static_cast<int>(i));
        }
      }
    }
  }
}

TEST(GridLayoutTest, ExpertGroupsSplitTheDataParallelGroup) {
  for (const GridSizes& s : small_shapes()) {
    const GridLayout layout(s);
    SCOPED_TRACE(layout.describe());
    for (int r = 0; r < layout.world_size(); ++r) {
      const auto dp = layout.members(Group::kData, r);
      const auto ep = layout.members(Group::kExpert, r);
      const auto edp = layout.members(Group::kExpertData, r);
      const std::set<int> dp_set(dp.begin(), dp.end());
      for (int m : ep) EXPECT_TRUE(dp_set.count(m));
      for (int m : edp) EXPECT_TRUE(dp_set.count(m));
      std::vector<int> both;
      std::set_intersection(ep.begin(), ep.end(), edp.begin(), edp.end(), std::back_inserter(both));
      EXPECT_EQ(both, std::vector<int>{r});
      EXPECT_EQ(ep.size() * edp.size(), dp.size());
      // The EP group is a run of consecutive DP indices.
      const GridCoord c = layout.coord(r);
      for (size_t i = 0; i < ep.size(); ++i)
        EXPECT_EQ(layout.coord(ep[i]).dp, c.edp * s.ep + static_cast<int>(i));
    }
  }
}

TEST(GridLayoutTest, PipelineNeighboursAreTheAdjacentStagesOfTheSameSlice) {
  for (const GridSizes& s : small_shapes()) {
    const GridLayout layout(s);
    SCOPED_TRACE(layout.describe());
    for (int r = 0; r < layout.world_size(); ++r) {
      const GridCoord c = layout.coord(r);
      const auto prev = layout.pipeline_prev(r), next = layout.pipeline_next(r);
      EXPECT_EQ(prev.has_value(), c.pp > 0);
      EXPECT_EQ(next.has_value(), c.pp + 1 < s.pp);
      const auto stages = layout.members(Group::kPipeline, r);
      if (prev) {
        EXPECT_EQ(*prev, stages[static_cast<size_t>(c.pp - 1)]);
        EXPECT_EQ(layout.pipeline_next(*prev), r);
      }
      if (next) {
        EXPECT_EQ(*next, stages[static_cast<size_t>(c.pp + 1)]);
        EXPECT_EQ(layout.pipeline_prev(*next), r);
      }
    }
  }
}

// Megatron-LM's initialize_model_parallel docstring: 16 GPUs, tensor 2, pipeline 4 (so data 2).
TEST(GridLayoutTest, MatchesMegatronsDocumentedExample) {
  const GridLayout layout = GridLayout::for_world(16, 2, 4);
  EXPECT_EQ(layout.sizes().dp, 2);
  using Groups = std::vector<std::vector<int>>;
  EXPECT_EQ(layout.all_groups(Group::kTensor),
            (Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}, {8, 9}, {10, 11}, {12, 13}, {14, 15}}));
  EXPECT_EQ(layout.all_groups(Group::kData),
            (Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}, {8, 10}, {9, 11}, {12, 14}, {13, 15}}));
  EXPECT_EQ(layout.all_groups(Group::kPipeline),
            (Groups{{0, 4, 8, 12}, {1, 5, 9, 13}, {2, 6, 10, 14}, {3, 7, 11, 15}}));
}

TEST(GridLayoutTest, ExpertGroupsOfAnEightRankExample) {
  // tp 2, dp 4 split as ep 2 × edp 2: DP index = ep + 2·edp.
  const GridLayout layout(GridSizes{2, 4, 1, 2});
  using Groups = std::vector<std::vector<int>>;
  EXPECT_EQ(layout.all_groups(Group::kData), (Groups{{0, 2, 4, 6}, {1, 3, 5, 7}}));
  EXPECT_EQ(layout.all_groups(Group::kExpert), (Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}}));
  EXPECT_EQ(layout.all_groups(Group::kExpertData), (Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}}));
  EXPECT_EQ(layout.describe(), "tp 2 × dp 4 (ep 2 × edp 2) × pp 1 = 8 ranks");
}

TEST(GridLayoutTest, ForWorldDerivesTheDataParallelSize) {
  const GridLayout layout = GridLayout::for_world(12, 2, 3, 2);
  EXPECT_EQ(layout.sizes().tp, 2);
  EXPECT_EQ(layout.sizes().dp, 2);
  EXPECT_EQ(layout.sizes().pp, 3);
  EXPECT_EQ(layout.sizes().ep, 2);
  EXPECT_EQ(layout.size(Group::kExpertData), 1);
  EXPECT_NO_THROW(layout.check_world_size(12));
}

TEST(GridLayoutTest, ErrorsNameTheConfigKeys) {
  EXPECT_NE(error_of([] {
              GridLayout(GridSizes{0, 1, 1, 1});
            }).find("parallel.tensor_model_parallel_size is 0; it must be >= 1"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              GridLayout(GridSizes{1, 1, -2, 1});
            }).find("parallel.pipeline_model_parallel_size is -2"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              GridLayout(GridSizes{1, 1, 1, 0});
            }).find("parallel.expert_model_parallel_size is 0"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              GridLayout(GridSizes{1, 6, 1, 4});
            })
                .find("parallel.expert_model_parallel_size (4) must divide the data-parallel "
                      "size (6)"),
            std::string::npos);

  const std::string not_multiple = error_of([] { GridLayout::for_world(6, 4, 1); });
  EXPECT_NE(not_multiple.find("the world size 6 is not a multiple of "
                              "parallel.tensor_model_parallel_size (4) × "
                              "parallel.pipeline_model_parallel_size (1) = 4"),
            std::string::npos)
      << not_multiple;
  const std::string ep = error_of([] { GridLayout::for_world(8, 2, 1, 3); });
  EXPECT_NE(ep.find("parallel.expert_model_parallel_size (3) must divide the data-parallel size 4 "
                    "(= world size 8 / (parallel.tensor_model_parallel_size 2 × "
                    "parallel.pipeline_model_parallel_size 1))"),
            std::string::npos)
      << ep;
  const std::string mismatch = error_of([] {
    GridLayout(GridSizes{2, 2, 2, 1}).check_world_size(6);
  });
  EXPECT_NE(mismatch.find("the job has 6 ranks but the grid needs 2 × 2 × 2 = 8: "
                          "parallel.tensor_model_parallel_size (2) × data-parallel size (2) × "
                          "parallel.pipeline_model_parallel_size (2)"),
            std::string::npos)
      << mismatch;
}

TEST(GridLayoutTest, RanksAndCoordinatesOutsideTheGridAreErrors) {
  const GridLayout layout(GridSizes{2, 2, 2, 1});
  EXPECT_THROW(layout.coord(-1), Error);
  EXPECT_THROW(layout.coord(8), Error);
  EXPECT_THROW(layout.members(Group::kData, 8), Error);
  EXPECT_THROW(layout.rank_of(GridCoord{2, 0, 0, 0, 0}), Error);
  EXPECT_THROW(layout.rank_of(GridCoord{0, 0, 2, 0, 0}), Error);
}

}  // namespace
}  // namespace keel::parallel
