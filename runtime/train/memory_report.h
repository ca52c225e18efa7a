// One rank's memory plan by what it holds (parameters, gradients, optimizer state, activations,
// buffers), as the trainer prints it at start-up and `keel plan` prints it without training: both
// go through the same declarations, so the forecast is the plan the run allocates.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "kernels/memory_plan.h"
#include "optim/optimizer.h"
#include "parallel/zero.h"
#include "runtime/config/config.h"
#include "runtime/config/pipeline_layout.h"
#include "runtime/model/llama.h"

namespace keel::runtime {

struct RankMemory {
  size_t parameters = 0;   // weights the rank holds (full, or ZeRO 3's unit buffers)
  size_t gradients = 0;    // full gradients, or ZeRO's unit buffers and gradient shards
  size_t optimizer = 0;    // the optimizer's state, and ZeRO's fp32 master shards
  size_t activations = 0;  // what the forward keeps for the backward, every slot's
  // A pipeline stage keeps activation_slots micro-batches between forward and backward, each
  // holding activation_slot_bytes of its own; the rest of activations is shared (1 without one).
  int activation_slots = 1;
  size_t activation_slot_bytes = 0;
  size_t activation_own_bytes = 0;  // every slot's own together
  size_t buffers = 0;               // model workspace, collective staging, the batch
  size_t total() const { return parameters + gradients + optimizer + activations + buffers; }
};

// The batch buffers of a rank, declared in plan: tokens and targets (A, B, T) and four doubles.
struct BatchSlots {
  MemoryPlan::Slot tokens, targets, totals;
};
BatchSlots declare_batch(MemoryPlan& plan, const TrainingConfig& t, int64_t seq_length);

// A rank's memory by what it holds, from the model's plans, ZeRO's buffers (zero for stage 0),
// the optimizer's state and workspace, and the batch.
RankMemory account(const LlamaModel& model, const parallel::ZeroBytes& zero,
                   const optim::OptimizerBytes& optimizer, size_t batch_bytes);

// Whether an 8-bit optimizer may quantize a parameter's state: every one but the token embedding,
// which keeps fp32 moments as Hugging Face's Trainer keeps them for bitsandbytes' 8-bit optimizers
// (in blocks shared with frequent tokens, a rare token's second moment rounds to zero and its
// update to m / eps).
bool quantize_state(const std::string& param);

// The tensor the optimizer steps for parameter p: n floats at value and grad holding `shard` of
// the local tensor under ZeRO (nullptr: all of it), with p's decay flag, 8-bit rule and, for a
// matrix, its global shape. The ParamRef's rect is in the global tensor: tensor parallelism's
// slice (p.shard), then ZeRO's rectangle of that slice.
optim::ParamRef optimizer_tensor(const Parameter& p, float* value, const float* grad, int64_t n,
                                 const parallel::ShardRect* shard = nullptr);

// The optimizer keel::optim builds for this config (optimizer.* and the training.adam_* keys).
optim::OptimizerConfig optimizer_config(const Config& config);

// The slice of the model that TP rank tp_rank and expert-parallel rank ep_rank of pipeline stage
// `stage` holds (what the trainer builds, and keel plan plans).
ModelSplit stage_split(const Config& config, const PipelineLayout& layout, int stage, int tp_rank,
                       int ep_rank = 0);

// What one rank of pipeline stage `stage` of a run of `config` on `dp` data-parallel ranks plans,
// without allocating it: the stage's layers as pipeline_layout splits them, with the activation
// slots of the micro-batches the schedule keeps alive on the stage at its peak (stage 0 and one
// slot without a pipeline); activation_slots > 0 plans that many slots instead.
RankMemory plan_rank_memory(const Config& config, int dp, int stage = 0, int activation_slots = 0);

// Every stage's plan, [stage] (one without a pipeline).
std::vector<RankMemory> plan_stage_memory(const Config& config, int dp);

// The largest total of any stage's plan: what every rank of the run must be able to hold, and
// what `keel plan --fit` and the search of settings that fit compare with a limit.
uint64_t plan_peak_bytes(const Config& config, int dp);

// The bytes each rank of the TP group moves in one step of `model` (this rank's slice) under
// the config, as the communicator's counters count them; 0 without TP.
uint64_t tp_bytes_per_step(const Config& config, const LlamaModel& model);

// "keel: 2 data-parallel ranks, ZeRO stage 1, global batch ..." (with TP, and the bytes its group
// moves per step; with a pipeline, its schedule and bubble) and "keel: memory plan per rank ...:
// parameters ..., gradients ..." lines.
std::string describe_layout(const Config& config, int dp);
std::string describe_memory(const RankMemory& m);

// "keel: pipeline 1f1b, 4 micro-batches over 4 stages: bubble (p-1)/(m+p-1) = 3/(4+3) = 42.9 %
// of the step, 42.9 % as simulated": the share of each stage's step spent idle, by the textbook
// formula where the schedule has one (GPipe, 1F1B) and as the schedule's simulation measures it.
std::string describe_bubble(const PipelineLayout& layout);

// "keel: pipeline stage 1 (layers 2-3, head): memory plan per rank ...": describe_memory's line
// of stage `stage` of `layout`, naming its layers and whether it holds the embedding or the head.
std::string describe_stage_memory(const PipelineLayout& layout, int stage, const RankMemory& m);

}  // namespace keel::runtime
