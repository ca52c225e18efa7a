#include "runtime/config/pipeline_layout.h"

#include <algorithm>
#include <cmath>
#include <string_view>

#include "kernels/error.h"
#include "runtime/config/int_list.h"

namespace keel::runtime {

int PipelineLayout::activation_slots(int stage) const {
  const std::vector<int> slots = chunk_slots(stage);
  int total = 0;
  for (int k : slots) total += k;
  return total;
}

std::vector<parallel::StageRange> PipelineLayout::chunks(int stage) const {
  std::vector<parallel::StageRange> out;
  for (int c = 0; c < shape.virtual_stages; ++c)
    out.push_back(split.at(static_cast<size_t>(parallel::virtual_stage(stage, c, shape.stages))));
  return out;
}

std::vector<int> PipelineLayout::chunk_slots(int stage) const {
  if (!pipelined()) return {1};
  // Walk the stage's list as the runtime executes it: a chunk's micro-batch is alive from its
  // forward to the end of its backward (to its weight pass when the backward is split).
  std::vector<int> live(static_cast<size_t>(shape.virtual_stages), 0), peak = live;
  for (const parallel::PipelineAction& a : parallel::pipeline_actions(schedule, shape, stage)) {
    int& n = live[static_cast<size_t>(a.chunk)];
    if (a.op == parallel::PipelineOp::kForward) {
      ++n;
      peak[static_cast<size_t>(a.chunk)] = std::max(peak[static_cast<size_t>(a.chunk)], n);
    }
    if (a.op == parallel::PipelineOp::kBackward || a.op == parallel::PipelineOp::kBackwardWeight)
      --n;
  }
  return peak;
}

std::string PipelineLayout::describe_stage(int stage) const {
  std::string out = stage == 0 ? "embedding" : "";
  const auto add = [&out](const std::string& what) { out += (out.empty() ? "" : ", ") + what; };
  for (const parallel::StageRange& r : chunks(stage)) {
    if (r.layers() == 1) add("layer " + std::to_string(r.first_layer));
    if (r.layers() > 1)
      add("layers " + std::to_string(r.first_layer) + "-" + std::to_string(r.last_layer - 1));
  }
  if (stage == shape.stages - 1) add("head");
  return out;
}

parallel::StageCosts unit_costs(const ModelConfig& m, int64_t T) {
  const double C = static_cast<double>(m.hidden_size);
  const double I = static_cast<double>(m.intermediate_size);
  const double V = static_cast<double>(m.vocab_size);
  const double H = static_cast<double>(m.num_attention_heads);
  const double Hkv =
      static_cast<double>(m.num_key_value_heads ? m.num_key_value_heads : m.num_attention_heads);
  const double kv = 2.0 * C * C * Hkv / H;  // k and v projections
  // Forward + backward = 3 × the forward's 2 FLOPs per weight; causal attention at half of T.
  const double attention = 6.0 * (2.0 * C * C + kv) + 6.0 * static_cast<double>(T) * C;
  const double mlp = 6.0 * 3.0 * C * I;
  parallel::StageCosts costs{.embedding = 2.0 * C, .block = attention + mlp, .head = 6.0 * C * V};
  // A mixture-of-experts layer: its router and the k experts a token passes through.
  if (m.moe())
    for (int64_t l = 0; l < m.num_hidden_layers; ++l)
      costs.layers.push_back(m.moe_layer(l)
                                 ? attention + 6.0 * C * static_cast<double>(m.num_local_experts) +
                                       static_cast<double>(m.num_experts_per_tok) * mlp
                                 : attention + mlp);
  return costs;
}

std::vector<int64_t> parse_pipeline_layers(const std::string& text) {
  const std::optional<std::vector<int64_t>> layers = parse_int_list(text);
  KEEL_CHECK(layers.has_value(),
             "parallel.pipeline_layers is '{}'; list each stage's number of layers, e.g. "
             "[3, 4, 4, 3] (or leave it empty to balance the stages by cost)",
             text);
  return *layers;
}

PipelineLayout pipeline_layout(const Config& config) {
  const ParallelConfig& par = config.parallel;
  PipelineLayout layout;
  layout.schedule = parallel::parse_pipeline_schedule(par.pipeline_schedule);
  const int p = static_cast<int>(par.pipeline_model_parallel_size);
  const int v = static_cast<int>(par.virtual_pipeline_model_parallel_size);
  const int L = static_cast<int>(config.model.num_hidden_layers);
  layout.shape = {p, static_cast<int>(config.training.gradient_accumulation_steps), v};
  if (p == 1) {
    KEEL_CHECK(par.pipeline_layers.empty(),
               "parallel.pipeline_layers is '{}', but parallel.pipeline_model_parallel_size is 1 "
               "(one stage holds every layer); remove parallel.pipeline_layers or set "
               "parallel.pipeline_model_parallel_size",
               par.pipeline_layers);
    KEEL_CHECK(v == 1,
               "parallel.virtual_pipeline_model_parallel_size is {}, but there is no pipeline "
               "(parallel.pipeline_model_parallel_size is 1); set it to 1",
               v);
    layout.split = {{0, L}};
    return layout;
  }
  parallel::check_pipeline_shape(layout.schedule, layout.shape);
  if (layout.split_backward()) {
    KEEL_CHECK(!config.training.gradient_checkpointing,
               "parallel.pipeline_schedule zb_h1 keeps each block's insides from its input-"
               "gradient pass to its weight-gradient pass, which training.gradient_checkpointing "
               "recomputes and drops; set training.gradient_checkpointing: false, or the schedule "
               "to 1f1b");
    KEEL_CHECK(!config.optimizer.per_layer_update,
               "optimizer.per_layer_update steps a unit when its backward ends, but "
               "parallel.pipeline_schedule zb_h1 splits the backward in two; set "
               "optimizer.per_layer_update: false, or the schedule to 1f1b");
  }
  KEEL_CHECK(!config.model.tie_word_embeddings || !config.optimizer.per_layer_update,
             "optimizer.per_layer_update steps the embedding in the backward, but with "
             "model.tie_word_embeddings its gradient comes from the first and the last pipeline "
             "stage and is complete only after both backwards; set optimizer.per_layer_update: "
             "false, or model.tie_word_embeddings: false");
  // Interleaving cuts the layers into v·p chunks, virtual stage c·p + s on rank s.
  const int chunks = p * v;
  const std::vector<int64_t> listed = parse_pipeline_layers(par.pipeline_layers);
  if (v > 1) {
    KEEL_CHECK(chunks <= L || !listed.empty(),
               "parallel.pipeline_model_parallel_size x parallel.virtual_pipeline_model_parallel_"
               "size is {} x {} = {} model chunks, but the model has {} layers "
               "(model.num_hidden_layers) and every chunk needs at least one; lower either",
               p, v, chunks, L);
    KEEL_CHECK(listed.empty() || static_cast<int>(listed.size()) == chunks,
               "parallel.pipeline_layers lists {} counts, but interleaving cuts the model into {} "
               "chunks (parallel.pipeline_model_parallel_size x virtual_pipeline_model_parallel_"
               "size = {} x {}); list one number of layers per chunk, virtual stage by virtual "
               "stage",
               listed.size(), chunks, p, v);
  }
  layout.split = listed.empty() ? parallel::balanced_stages(
                                      L, chunks, unit_costs(config.model, config.data.seq_length))
                                : parallel::listed_stages(listed, L, chunks);
  layout.plan = parallel::plan_pipeline(layout.schedule, layout.shape);
  return layout;
}

}  // namespace keel::runtime
