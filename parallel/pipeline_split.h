// How a model's layers are cut into pipeline stages: contiguous runs of blocks, stage s holding
// layers [first, last). Balanced by cost, the embedding counting on the first stage and the final
// norm, head and loss on the last (so those stages take fewer blocks, as Megatron's uneven
// first/last stages do by hand); or as the config lists them (parallel.pipeline_layers).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace keel::parallel {

// Costs per token in any one unit (FLOPs of forward + backward, say).
struct StageCosts {
  double embedding = 0;  // on the first stage
  double block = 1;      // each layer
  double head = 0;       // final norm, head and loss, on the last stage
  // Per layer where layers differ (a mixture-of-experts layer among dense ones); empty: `block`.
  std::vector<double> layers = {};
  // Layers [first, first + count) together.
  double blocks(int first, int count) const;
};

struct StageRange {
  int first_layer = 0;
  int last_layer = 0;  // one past the last
  int layers() const { return last_layer - first_layer; }
  bool operator==(const StageRange&) const = default;
};

// The split into `stages` stages of at least one block each whose most expensive stage is as
// cheap as can be; among those the most even (least sum of squared stage costs), and among those
// the one with fewer blocks on earlier stages (which hold the most activations under 1F1B).
// Throws (naming the fix) when there are more stages than blocks.
std::vector<StageRange> balanced_stages(int layers, int stages, const StageCosts& costs);

// The split that lists each stage's number of blocks (e.g. {3, 4, 4, 3}); throws unless there is
// one count per stage, they add up to `layers`, and only the first and last stage (which hold the
// embedding and the head) have none.
std::vector<StageRange> listed_stages(const std::vector<int64_t>& layers_per_stage, int layers,
                                      int stages);

// Each stage's cost under `costs`.
std::vector<double> stage_costs(const std::vector<StageRange>& split, const StageCosts& costs);

// "[0, 3) [3, 7) [7, 10)": for plans and errors.
std::string describe_stages(const std::vector<StageRange>& split);

}  // namespace keel::parallel
