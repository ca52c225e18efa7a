#include "runtime/train/memory_report.h"

#include <algorithm>
#include <sstream>

#include "kernels/error.h"
#include "optim/optimizer.h"
#include "runtime/train/grad_sync.h"
#include "runtime/train/pipeline_runner.h"

namespace keel::runtime {

BatchSlots declare_batch(MemoryPlan& plan, const TrainingConfig& t, int64_t seq_length) {
  const int64_t A = t.gradient_accumulation_steps, B = t.per_device_train_batch_size;
  BatchSlots slots;
  slots.tokens = plan.add("tokens", DType::I32, {A, B, seq_length});
  slots.targets = plan.add("targets", DType::I32, {A, B, seq_length});
  slots.totals = plan.add("totals", DType::F64, {3});
  return slots;
}

RankMemory account(const LlamaModel& model, const parallel::ZeroBytes& zero,
                   const optim::OptimizerBytes& optimizer, size_t batch_bytes) {
  RankMemory m;
  m.parameters = model.weight_bytes() + zero.unit_weights;
  m.gradients = model.grad_bytes() + zero.unit_grads + zero.grad_shard;
  m.optimizer = optimizer.state + zero.master;
  m.activations = model.activation_bytes();
  m.activation_slots = model.activation_slots();
  m.activation_slot_bytes = model.activation_slot_bytes();
  m.activation_own_bytes = model.activation_own_bytes();
  m.buffers = model.workspace_bytes() + zero.staging + optimizer.workspace + batch_bytes;
  // A pipeline stage (never the first and the last at once) receives into a runner's buffers.
  if (!(model.first_stage() && model.last_stage()))
    m.buffers += PipelineRunner::buffer_bytes(model);
  return m;
}

bool quantize_state(const std::string& param) { return param != "model.embed_tokens.weight"; }

optim::ParamRef optimizer_tensor(const Parameter& p, float* value, const float* grad, int64_t n,
                                 const parallel::ShardRect* shard) {
  optim::ParamRef r{p.name, value, grad, n, p.weight_decay, quantize_state(p.name)};
  if (p.global_shape.rank() == 2) {
    r.rows = p.global_shape[0], r.cols = p.global_shape[1];
    const int64_t rows = p.value.shape()[0], cols = p.value.shape()[1];
    r.rect = {0, 0, rows, cols, cols};  // the local tensor: all of it, or TP's slice
  }
  if (shard) r.rect = *shard;  // ZeRO's rectangle of the local tensor
  // TP's slice then ZeRO's slice of that: the rectangle in the global tensor.
  if (r.rect.ld > 0) r.rect.row0 += p.shard.row0(), r.rect.col0 += p.shard.col0();
  return r;
}

optim::OptimizerConfig optimizer_config(const Config& config) {
  const TrainingConfig& t = config.training;
  optim::OptimizerConfig o;
  o.type = config.optimizer.type;
  o.beta1 = t.adam_beta1, o.beta2 = t.adam_beta2, o.eps = t.adam_epsilon;
  o.weight_decay = t.weight_decay;
  o.block_size = config.optimizer.block_size;
  o.min_8bit_size = config.optimizer.min_8bit_size;
  o.relative_step = config.optimizer.relative_step;
  o.scale_parameter = config.optimizer.scale_parameter;
  o.warmup_init = config.optimizer.warmup_init;
  o.decay_rate = config.optimizer.decay_rate;
  o.clip_threshold = config.optimizer.clip_threshold;
  o.adafactor_beta1 = config.optimizer.adafactor_beta1;
  o.galore = config.optimizer.galore;
  o.seed = t.seed;
  return o;
}

ModelSplit stage_split(const Config& config, const PipelineLayout& layout, int stage, int tp_rank,
                       int ep_rank) {
  const std::vector<parallel::StageRange> chunks = layout.chunks(stage);
  ModelSplit split{.tp_size = static_cast<int>(config.parallel.tensor_model_parallel_size),
                   .tp_rank = tp_rank,
                   .sequence_parallel = config.parallel.sequence_parallel,
                   .first_layer = chunks.front().first_layer,
                   .last_layer = chunks.front().last_layer,
                   .pipeline_stage = stage,
                   .pipeline_stages = layout.shape.stages,
                   .activation_slots = layout.activation_slots(stage),
                   .split_backward = layout.split_backward(),
                   .ep_size = static_cast<int>(config.parallel.expert_model_parallel_size),
                   .ep_rank = ep_rank};
  if (chunks.size() > 1) {  // interleaved: the rank's chunks, each with its own slots
    for (const parallel::StageRange& r : chunks)
      split.chunk_layers.emplace_back(r.first_layer, r.last_layer);
    split.chunk_slots = layout.chunk_slots(stage);
  }
  return split;
}

namespace {

// The model one rank of stage `stage` of the config's layout holds (TP rank 0's slice), in sizes
// only: the trainer's ModelSplit for that stage, with `activation_slots` (0: the schedule's peak).
LlamaModel plan_model(const Config& config, const PipelineLayout& layout, int stage,
                      int activation_slots = 0) {
  KEEL_CHECK(stage >= 0 && stage < layout.shape.stages,
             "pipeline stage {} planned, but the config has {} (stages 0 to {})", stage,
             layout.shape.stages, layout.shape.stages - 1);
  const TrainingConfig& t = config.training;
  ModelSplit split = stage_split(config, layout, stage, 0);
  if (activation_slots > 0) split.activation_slots = activation_slots;
  return LlamaModel(config.model, t.per_device_train_batch_size, config.data.seq_length,
                    t.gradient_checkpointing, model_holds(config, false), split);
}

RankMemory plan_stage(const Config& config, int dp, const PipelineLayout& layout, int stage,
                      int activation_slots = 0) {
  const LlamaModel model = plan_model(config, layout, stage, activation_slots);
  const GradSyncPlan sync = plan_grad_sync(config, model, dp);
  MemoryPlan batch("batch");
  declare_batch(batch, config.training, config.data.seq_length);
  return account(model, sync.bytes,
                 optim::optimizer_plan_bytes(optimizer_config(config), sync.tensors),
                 batch.bytes());
}

// describe_memory's line from the total on: "12.0 MiB: parameters ..., buffers ...\n".
std::string memory_figures(const RankMemory& m) {
  std::ostringstream os;
  os << format_mib(m.total()) << ": parameters " << format_mib(m.parameters) << ", gradients "
     << format_mib(m.gradients) << ", optimizer state " << format_mib(m.optimizer)
     << ", activations " << format_mib(m.activations);
  if (m.activation_slots > 1 &&
      m.activation_own_bytes == m.activation_slots * m.activation_slot_bytes)
    os << " (" << m.activation_slots << " micro-batches in flight x "
       << format_mib(m.activation_slot_bytes) << ", and "
       << format_mib(m.activations - m.activation_own_bytes) << " shared)";
  else if (m.activation_slots > 1)  // interleaved chunks of different depths
    os << " (" << m.activation_slots << " micro-batch chunks in flight, "
       << format_mib(m.activation_own_bytes) << " of their own, and "
       << format_mib(m.activations - m.activation_own_bytes) << " shared)";
  os << ", buffers " << format_mib(m.buffers) << "\n";
  return os.str();
}

}  // namespace

RankMemory plan_rank_memory(const Config& config, int dp, int stage, int activation_slots) {
  return plan_stage(config, dp, pipeline_layout(config), stage, activation_slots);
}

std::vector<RankMemory> plan_stage_memory(const Config& config, int dp) {
  const PipelineLayout layout = pipeline_layout(config);
  std::vector<RankMemory> out;
  for (int s = 0; s < layout.shape.stages; ++s) out.push_back(plan_stage(config, dp, layout, s));
  return out;
}

uint64_t plan_peak_bytes(const Config& config, int dp) {
  uint64_t peak = 0;
  for (const RankMemory& m : plan_stage_memory(config, dp))
    peak = std::max<uint64_t>(peak, m.total());
  return peak;
}

uint64_t tp_bytes_per_step(const Config& config, const LlamaModel& model) {
  const int tp = model.tp_split().size;
  if (tp == 1) return 0;
  const TrainingConfig& t = config.training;
  // Every micro-batch's activations, then the gradient norm's sum (one double); with a per-layer
  // update also each unit's verdict on its gradient's finiteness, which the TP group takes
  // without ZeRO (under ZeRO the tp_dp group does, every shard's holder).
  const uint64_t one = parallel::all_reduce_bytes(8, tp);
  const bool verdicts = config.optimizer.per_layer_update && config.parallel.zero_stage == 0;
  const uint64_t units = verdicts ? model.units().size() : 0;
  return static_cast<uint64_t>(t.gradient_accumulation_steps) * model.tp_bytes_per_micro_batch() +
         one * (1 + units);
}

std::string describe_layout(const Config& config, int dp) {
  const TrainingConfig& t = config.training;
  const int64_t B = t.per_device_train_batch_size, A = t.gradient_accumulation_steps;
  const int64_t tp = config.parallel.tensor_model_parallel_size;
  const PipelineLayout layout = pipeline_layout(config);
  const int pp = layout.shape.stages;
  std::ostringstream os;
  os << "keel: " << dp << (dp == 1 ? " rank" : " data-parallel ranks");
  if (tp > 1) os << " x " << tp << " tensor-parallel ranks";
  if (pp > 1) os << " x " << pp << " pipeline stages";
  os << ", ZeRO stage " << config.parallel.zero_stage << ", global batch " << dp * A * B
     << " sequences (" << B << " per micro-batch x " << A << " accumulation steps x " << dp
     << " ranks)\n";
  if (tp > 1) {
    os << "keel: tensor parallelism: each rank holds 1/" << tp
       << " of every layer's heads, MLP and vocabulary; its TP group moves ";
    for (int s = 0; s < pp; ++s) {  // each stage's group moves its own layers' activations
      const uint64_t bytes = tp_bytes_per_step(config, plan_model(config, layout, s));
      os << (s ? ", " : "") << format_mib(bytes) << " (" << bytes << " bytes)"
         << (pp > 1 ? " on stage " + std::to_string(s) : "");
    }
    os << " per rank per step (2 all-reduces of the activations per layer forward, 2 backward"
       << (config.parallel.sequence_parallel ? ", each as an all-gather and a reduce-scatter" : "")
       << ")\n";
  }
  if (pp > 1) os << describe_bubble(layout);
  return os.str();
}

std::string describe_memory(const RankMemory& m) {
  return "keel: memory plan per rank " + memory_figures(m);
}

std::string describe_bubble(const PipelineLayout& layout) {
  const int p = layout.shape.stages, m = layout.shape.micro_batches;
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(1);
  os << "keel: pipeline " << parallel::pipeline_schedule_name(layout.schedule) << ", " << m
     << " micro-batch" << (m == 1 ? "" : "es") << " a step over " << p << " stages: bubble ";
  // GPipe and 1F1B leave each stage idle for p − 1 of the m + p − 1 forward-and-backward times
  // a step takes; the other schedules have no such closed form here, only their simulation.
  // Interleaving divides that by v: each of the v·m chunk passes takes 1/v of a stage's time.
  const int v = layout.shape.virtual_stages;
  if (layout.schedule == parallel::PipelineSchedule::kGPipe ||
      layout.schedule == parallel::PipelineSchedule::kOneFOneB)
    os << "(p-1)/(m+p-1) = " << p - 1 << "/(" << m << "+" << p - 1
       << ") = " << 100.0 * (p - 1) / (m + p - 1) << " % of the step, ";
  if (layout.schedule == parallel::PipelineSchedule::kInterleaved)
    os << "(p-1)/(v*m+p-1) = " << p - 1 << "/(" << v << "*" << m << "+" << p - 1
       << ") = " << 100.0 * (p - 1) / (v * m + p - 1) << " % of the step, ";
  os << 100.0 * layout.plan.bubble_fraction << " % as simulated; activations kept at the peak:";
  for (int s = 0; s < p; ++s) {
    const int k = layout.activation_slots(s);
    const char* what = v > 1 ? (k == 1 ? " micro-batch chunk" : " micro-batch chunks")
                             : (k == 1 ? " micro-batch" : " micro-batches");
    os << (s ? ", " : " ") << k << what << " on stage " << s;
  }
  os << "\n";
  return os.str();
}

std::string describe_stage_memory(const PipelineLayout& layout, int stage, const RankMemory& m) {
  return "keel: pipeline stage " + std::to_string(stage) + " (" + layout.describe_stage(stage) +
         "): memory plan per rank " + memory_figures(m);
}

}  // namespace keel::runtime
