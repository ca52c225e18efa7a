// What a model with experts weighs: its parameters in total and those one token passes through
// (the active ones, which set its FLOPs), and the bytes each rank spends on its experts. keel plan
// prints both; the counts come from the model's own parameter list, so they follow its layout.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/config/config.h"
#include "runtime/model/parameter.h"

namespace keel::runtime {

// Parameters by the part of the model they belong to (global shapes, each tensor once).
struct ParamCount {
  int64_t attention = 0;       // q, k, v and o projections
  int64_t routers = 0;         // each MoE layer's gate (block_sparse_moe.gate)
  int64_t experts = 0;         // every expert of every MoE layer
  int64_t active_experts = 0;  // num_experts_per_tok experts of each MoE layer
  int64_t dense_mlps = 0;      // the MLPs of the layers without experts
  int64_t embedding_head = 0;  // embed_tokens and lm_head (one tensor when tied)
  int64_t norms = 0;           // the RMSNorm weights
  int64_t total() const {
    return attention + routers + experts + dense_mlps + embedding_head + norms;
  }
  // What a token passes through: everything but the experts it is not routed to.
  int64_t active() const { return total() - experts + active_experts; }
};

// Counts params (a whole model's, as LlamaModel::parameters() lists them without a split) by
// their Hugging Face names. Each expert of a layer has the same shape, so k of a layer's E experts
// are k/E of its expert parameters.
ParamCount count_parameters(const std::vector<Parameter>& params, const ModelConfig& config);
// The same for the model a config describes, from a sizes-only model that allocates nothing.
ParamCount count_parameters(const ModelConfig& config);

// The bytes one rank spends on its experts under the config's synchronisation, in keel plan's
// categories: weights the model holds (none under ZeRO 3, which gathers a layer at a time into
// buffers the dense layers share), gradients (the model's, and ZeRO's gradient shards), and
// optimizer state (the optimizer's for the expert tensors, and ZeRO's fp32 master shards).
struct ExpertBytes {
  int64_t moe_layers = 0;         // MoE layers on the rank
  int64_t experts_per_layer = 0;  // experts of each of them the rank holds
  int64_t first_expert = 0;       // their indices: first_expert .. first_expert + per_layer - 1
  size_t weights = 0, gradients = 0, optimizer = 0;
  size_t total() const { return weights + gradients + optimizer; }
};

// Per pipeline stage ([stage]; one without a pipeline), a rank of it on dp data-parallel ranks.
std::vector<ExpertBytes> plan_expert_bytes(const Config& config, int dp);

// keel plan's lines for a model with experts ("" without): the total and active parameters and
// their parts, then each stage's expert bytes per rank beside `rank_totals` (the plan's total per
// rank of each stage, [stage]).
std::string describe_moe(const Config& config, int dp, const std::vector<size_t>& rank_totals);

}  // namespace keel::runtime
