// How a config's pipeline runs: the schedule, the shape (stages, micro-batches, virtual stages),
// each stage's layers and the activation slots each stage needs (the schedule's peak of
// micro-batches between their forward and their backward). Pure arithmetic on the config, so that
// config checks, `keel plan` and the trainer agree on one layout and every error comes before any
// work.
#pragma once

#include <string>
#include <vector>

#include "parallel/pipeline_schedule.h"
#include "parallel/pipeline_sim.h"
#include "parallel/pipeline_split.h"
#include "runtime/config/config.h"

namespace keel::runtime {

struct PipelineLayout {
  parallel::PipelineSchedule schedule = parallel::PipelineSchedule::kOneFOneB;
  parallel::PipelineShape shape;  // p = parallel.pipeline_model_parallel_size
  // [virtual stage]: its blocks. Virtual stage c·p + s is chunk c of pipeline rank s (v = 1:
  // the stages themselves).
  std::vector<parallel::StageRange> split;
  parallel::PipelinePlan plan;  // the schedule simulated with costs F = 1, B = W = 1
  // Activation slots of stage s: its peak of live micro-batches (all its chunks').
  int activation_slots(int stage) const;
  // Stage s's model chunks: their layers, and the activation slots each needs (the most of the
  // chunk's micro-batches its action list keeps between forward and backward at once).
  std::vector<parallel::StageRange> chunks(int stage) const;
  std::vector<int> chunk_slots(int stage) const;
  bool pipelined() const { return shape.stages > 1; }
  // Whether the stages run their backwards in two passes (ZB-H1; ModelSplit::split_backward).
  bool split_backward() const {
    return pipelined() && schedule == parallel::PipelineSchedule::kZeroBubbleH1;
  }
  // What stage s holds: "embedding, layers 0-1", "layer 2", "head".
  std::string describe_stage(int stage) const;
};

// The per-token cost of the model's units (forward + backward FLOPs) that balances the stages.
parallel::StageCosts unit_costs(const ModelConfig& model, int64_t seq_length);

// The blocks per stage of parallel.pipeline_layers ("3,4,4,3"), or one error naming the key.
std::vector<int64_t> parse_pipeline_layers(const std::string& text);

// The layout of config (p = 1: one stage holding everything, slots 1). Throws one line naming the
// key and the fix for what cannot run: more stages than blocks, a list that does not add up, a
// schedule unknown or short of micro-batches, virtual stages without interleaving, and what this
// build does not execute yet.
PipelineLayout pipeline_layout(const Config& config);

}  // namespace keel::runtime
