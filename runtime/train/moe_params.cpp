#include "runtime/train/moe_params.h"

#include <algorithm>
#include <cstdio>
#include <set>
#include <sstream>
#include <utility>

#include "kernels/error.h"
#include "kernels/memory_plan.h"
#include "runtime/config/pipeline_layout.h"
#include "runtime/model/llama.h"
#include "runtime/train/grad_sync.h"
#include "runtime/train/memory_report.h"

namespace keel::runtime {

namespace {

constexpr char kExperts[] = ".block_sparse_moe.experts.";

bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

// (layer, expert) of an expert's parameter ("model.layers.3.block_sparse_moe.experts.5.w1.weight"),
// or (-1, -1) for any other.
std::pair<int64_t, int64_t> expert_of(const std::string& name) {
  const size_t at = name.find(kExperts);
  if (at == std::string::npos) return {-1, -1};
  const size_t layer_at = name.rfind('.', at - 1) + 1;
  return {std::stoll(name.substr(layer_at, at - layer_at)),
          std::stoll(name.substr(at + sizeof kExperts - 1))};
}

// "41.12 M" (or K below a million): parameters as people quote them.
std::string millions(int64_t n) {
  if (n == 0) return "0";
  char buf[32];
  if (n < 1000000)
    std::snprintf(buf, sizeof buf, "%.1f K", static_cast<double>(n) / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%.2f M", static_cast<double>(n) / 1e6);
  return buf;
}

}  // namespace

ParamCount count_parameters(const std::vector<Parameter>& params, const ModelConfig& config) {
  ParamCount c;
  for (const Parameter& p : params) {
    if (p.tied_copy) continue;  // a pipeline's second copy of the tied embedding
    const int64_t n = p.global_shape.numel();
    const std::string& name = p.name;
    if (contains(name, kExperts))
      c.experts += n;
    else if (contains(name, ".block_sparse_moe.gate."))
      c.routers += n;
    else if (contains(name, ".self_attn."))
      c.attention += n;
    else if (contains(name, ".mlp."))
      c.dense_mlps += n;
    else if (name == "model.embed_tokens.weight" || name == "lm_head.weight")
      c.embedding_head += n;
    else if (contains(name, "norm."))
      c.norms += n;
    else
      KEEL_FAIL(
          "parameter '{}' is none of attention, router, expert, MLP, embedding, head or "
          "norm: count_parameters (runtime/train/moe_params.cpp) needs a rule for it",
          name);
  }
  if (c.experts > 0) {
    const int64_t E = config.num_local_experts, layers = config.num_moe_layers();
    KEEL_CHECK(c.experts % (E * layers) == 0,
               "{} expert parameters do not split into {} experts of {} MoE layers alike "
               "(internal error)",
               c.experts, E, layers);
    c.active_experts = c.experts / E * config.num_experts_per_tok;
  }
  return c;
}

ParamCount count_parameters(const ModelConfig& config) {
  // One token of one sequence: the parameters do not depend on the batch.
  const LlamaModel model(config, 1, 1, false, ModelHolds{.allocate = false});
  return count_parameters(model.parameters(), config);
}

std::vector<ExpertBytes> plan_expert_bytes(const Config& config, int dp) {
  const PipelineLayout layout = pipeline_layout(config);
  const bool zero = config.parallel.zero_stage > 0, per_layer = config.optimizer.per_layer_update;
  std::vector<ExpertBytes> out;
  for (int s = 0; s < layout.shape.stages; ++s) {
    // The model a rank of stage s holds, as keel plan's memory plan builds it.
    const LlamaModel model(config.model, config.training.per_device_train_batch_size,
                           config.data.seq_length, config.training.gradient_checkpointing,
                           model_holds(config, false), stage_split(config, layout, s, 0));
    const ModelHolds holds = model_holds(config, false);
    ExpertBytes b;
    std::set<int64_t> layers, experts;
    for (const Parameter& p : model.parameters()) {
      const auto [layer, expert] = expert_of(p.name);
      if (layer < 0) continue;
      layers.insert(layer), experts.insert(expert);
      const size_t bytes = static_cast<size_t>(p.value.numel()) * sizeof(float);
      if (holds.weights) b.weights += bytes;
      if (holds.grads) b.gradients += bytes;
    }
    if (!experts.empty()) {
      b.moe_layers = static_cast<int64_t>(layers.size());
      b.experts_per_layer = static_cast<int64_t>(experts.size());
      b.first_expert = *experts.begin();
    }
    // The optimizer's tensors of the experts: whole, or this rank's ZeRO shards.
    std::vector<optim::ParamRef> tensors;
    for (const optim::ParamRef& r : plan_grad_sync(config, model, dp).tensors)
      if (expert_of(r.name).first >= 0) tensors.push_back(r);
    b.optimizer = optim::optimizer_plan_bytes(optimizer_config(config), tensors).state;
    for (const optim::ParamRef& r : tensors) {
      const size_t shard = static_cast<size_t>(r.n) * sizeof(float);
      if (zero) b.optimizer += shard;  // the fp32 master shard
      // ZeRO's gradient shards; a per-layer update keeps only a few units' in flight, which
      // every layer shares, as the dense ones do.
      if (zero && !per_layer) b.gradients += shard;
    }
    out.push_back(b);
  }
  return out;
}

std::string describe_moe(const Config& config, int dp, const std::vector<size_t>& rank_totals) {
  const ModelConfig& m = config.model;
  if (!m.moe()) return "";
  const ParamCount c = count_parameters(m);
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(1);
  os << "keel: mixture of experts: " << m.num_local_experts << " experts in each of "
     << m.num_moe_layers() << " MoE layers (of " << m.num_hidden_layers << "), "
     << m.num_experts_per_tok << " per token; " << millions(c.total()) << " parameters ("
     << c.total() << "), " << millions(c.active()) << " active per token (" << c.active() << ", "
     << 100.0 * static_cast<double>(c.active()) / static_cast<double>(c.total())
     << " %): attention " << millions(c.attention) << ", routers " << millions(c.routers) << ", "
     << m.num_experts_per_tok << " of " << m.num_local_experts << " experts "
     << millions(c.active_experts) << " (all " << m.num_local_experts << ": " << millions(c.experts)
     << "), dense MLPs " << millions(c.dense_mlps) << ", embedding and head "
     << millions(c.embedding_head) << ", norms " << millions(c.norms) << "\n";
  const std::vector<ExpertBytes> stages = plan_expert_bytes(config, dp);
  const bool pipelined = stages.size() > 1;
  for (size_t s = 0; s < stages.size(); ++s) {
    const ExpertBytes& b = stages[s];
    os << "keel: experts per rank" << (pipelined ? " of stage " + std::to_string(s) : "") << ": ";
    if (b.moe_layers == 0) {
      os << "none (no MoE layer on the stage)\n";
      continue;
    }
    const int64_t last = b.first_expert + b.experts_per_layer - 1;
    os << b.experts_per_layer << " of " << m.num_local_experts;
    if (last == b.first_expert)
      os << " (expert " << last << ")";
    else
      os << " (experts " << b.first_expert << "-" << last << ")";
    os << " in each of " << b.moe_layers << " MoE layers, " << format_mib(b.total())
       << " of the plan's " << format_mib(s < rank_totals.size() ? rank_totals[s] : 0)
       << ": weights " << format_mib(b.weights) << ", gradients " << format_mib(b.gradients)
       << ", optimizer state " << format_mib(b.optimizer) << "\n";
  }
  return os.str();
}

}  // namespace keel::runtime
