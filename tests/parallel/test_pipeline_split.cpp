// Cutting layers into pipeline stages (parallel/pipeline_split.h): the balanced split is the
// cheapest possible (checked against every split by brute force), the embedding and head weigh on
// the end stages, and impossible or inconsistent requests are one clear error.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>

#include "kernels/error.h"
#include "parallel/pipeline_split.h"

namespace keel::parallel {
namespace {

// The cheapest most-expensive stage over every split into stages of at least one block.
double brute_force_best(int layers, int stages, const StageCosts& costs) {
  double best = 1e300;
  std::vector<StageRange> split;
  std::function<void(int, int)> go = [&](int s, int first) {
    if (s == stages) {
      if (first == layers) {
        const std::vector<double> c = stage_costs(split, costs);
        best = std::min(best, *std::max_element(c.begin(), c.end()));
      }
      return;
    }
    for (int n = 1; first + n <= layers - (stages - 1 - s); ++n) {
      split.push_back({first, first + n});
      go(s + 1, first + n);
      split.pop_back();
    }
  };
  go(0, 0);
  return best;
}

TEST(PipelineSplit, BalancedIsTheCheapestSplitAndContiguous) {
  for (const StageCosts& costs :
       {StageCosts{0, 1, 0}, StageCosts{0.5, 1, 2.5}, StageCosts{3, 1, 7}, StageCosts{0.1, 1, 0.9}})
    for (int layers = 1; layers <= 12; ++layers)
      for (int stages = 1; stages <= layers; ++stages) {
        const std::vector<StageRange> split = balanced_stages(layers, stages, costs);
        ASSERT_EQ(static_cast<int>(split.size()), stages);
        EXPECT_EQ(split.front().first_layer, 0);
        EXPECT_EQ(split.back().last_layer, layers);
        for (size_t s = 0; s < split.size(); ++s) {
          EXPECT_GE(split[s].layers(), 1) << describe_stages(split);
          if (s > 0) {
            EXPECT_EQ(split[s].first_layer, split[s - 1].last_layer);
          }
        }
        const std::vector<double> c = stage_costs(split, costs);
        EXPECT_DOUBLE_EQ(*std::max_element(c.begin(), c.end()),
                         brute_force_best(layers, stages, costs))
            << layers << " layers, " << stages << " stages: " << describe_stages(split);
      }
}

// Layers of different costs (mixture-of-experts layers among dense ones): still the cheapest
// possible split, and the expensive layers spread over the stages.
TEST(PipelineSplit, LayersOfDifferentCostsBalanceByTheirCosts) {
  for (int layers = 1; layers <= 10; ++layers)
    for (int stages = 1; stages <= layers; ++stages) {
      StageCosts costs{0.5, 1, 2};
      for (int l = 0; l < layers; ++l) costs.layers.push_back(l % 2 == 0 ? 3.0 : 1.0);
      const std::vector<StageRange> split = balanced_stages(layers, stages, costs);
      const std::vector<double> c = stage_costs(split, costs);
      EXPECT_DOUBLE_EQ(*std::max_element(c.begin(), c.end()),
                       brute_force_best(layers, stages, costs))
          << layers << " layers, " << stages << " stages: " << describe_stages(split);
    }
  // Two MoE layers first, each 3 times a dense one: [0, 1) [1, 4) costs 3 and 5, where an even
  // count of layers, [0, 2) [2, 4), would cost 6 and 2.
  StageCosts front{0, 1, 0, {3, 3, 1, 1}};
  EXPECT_EQ(balanced_stages(4, 2, front), (std::vector<StageRange>{{0, 1}, {1, 4}}));
  EXPECT_EQ(balanced_stages(4, 2, StageCosts{0, 1, 0}), (std::vector<StageRange>{{0, 2}, {2, 4}}));
}

TEST(PipelineSplit, TheEndStagesCarryTheEmbeddingAndTheHead) {
  // Uniform blocks: as even as can be, the later stages taking the extra blocks (under 1F1B the
  // earlier ones hold more micro-batches' activations).
  EXPECT_EQ(describe_stages(balanced_stages(10, 4, {0, 1, 0})), "[0, 2) [2, 4) [4, 7) [7, 10)");
  // A head worth two blocks (a large vocabulary): the last stage takes two fewer.
  EXPECT_EQ(describe_stages(balanced_stages(14, 4, {0, 1, 2})), "[0, 4) [4, 8) [8, 12) [12, 14)");
  // An embedding worth one block and a head worth two.
  EXPECT_EQ(describe_stages(balanced_stages(13, 4, {1, 1, 2})), "[0, 3) [3, 7) [7, 11) [11, 13)");
}

TEST(PipelineSplit, ImpossibleOrInconsistentSplitsAreOneClearError) {
  const auto message = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message([] { balanced_stages(3, 4, {}); })
                .find("parallel.pipeline_model_parallel_size is 4, but the model has 3 layers "
                      "(model.num_hidden_layers) and every stage needs at least one; set "
                      "parallel.pipeline_model_parallel_size to 3 or fewer"),
            std::string::npos);
  EXPECT_NE(message([] {
              listed_stages({3, 4}, 7, 3);
            })
                .find("parallel.pipeline_layers lists 2 stages, but "
                      "parallel.pipeline_model_parallel_size is 3"),
            std::string::npos);
  EXPECT_NE(message([] {
              listed_stages({3, 4, 1}, 7, 3);
            }).find("parallel.pipeline_layers adds up to 8 layers, but the model has 7"),
            std::string::npos);
  EXPECT_NE(message([] {
              listed_stages({4, 0, 3}, 7, 3);
            }).find("parallel.pipeline_layers gives stage 1 0 layers"),
            std::string::npos);
  // The end stages may hold nothing but the embedding or the head (Megatron's uneven split).
  EXPECT_EQ(describe_stages(listed_stages({0, 4, 3}, 7, 3)), "[0, 0) [0, 4) [4, 7)");
}

}  // namespace
}  // namespace keel::parallel
