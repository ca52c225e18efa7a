// What a user watches of a mixture of experts: each step's routing (tokens per expert as a
// load-imbalance figure, the auxiliary and z-losses, dropped choices, router entropy), summed
// over every rank's share of the global batch.
#pragma once

#include "parallel/process_grid.h"
#include "runtime/model/llama.h"
#include "runtime/train/metrics.h"

namespace keel::runtime {

// The model's routing since its last clear_moe_stats, over the whole job: collective over the
// world (each pipeline stage adds its layers, each data-parallel rank its sequences, one rank of
// each tensor-parallel group, whose ranks route alike). Empty without MoE layers.
MoeStepStats gather_moe_stats(const LlamaModel& model, const parallel::ProcessGrid& grid);

}  // namespace keel::runtime
