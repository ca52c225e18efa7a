#include "runtime/train/memory_report.h"

#include <sstream>

#include "optim/optimizer.h"
#include "runtime/train/grad_sync.h"

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
  m.buffers = model.workspace_bytes() + zero.staging + optimizer.workspace + batch_bytes;
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

namespace {

// The model one rank of the config's layout holds (TP rank 0's slice), in sizes only.
LlamaModel plan_model(const Config& config, int activation_slots = 1) {
  const TrainingConfig& t = config.training;
  return LlamaModel(
      config.model, t.per_device_train_batch_size, config.data.seq_length, t.gradient_checkpointing,
      model_holds(config, false),
      ModelSplit{.tp_size = static_cast<int>(config.parallel.tensor_model_parallel_size),
                 .sequence_parallel = config.parallel.sequence_parallel,
                 .activation_slots = activation_slots});
}

}  // namespace

RankMemory plan_rank_memory(const Config& config, int dp, int activation_slots) {
  const TrainingConfig& t = config.training;
  const LlamaModel model = plan_model(config, activation_slots);
  const GradSyncPlan sync = plan_grad_sync(config, model, dp);
  MemoryPlan batch("batch");
  declare_batch(batch, t, config.data.seq_length);
  return account(model, sync.bytes,
                 optim::optimizer_plan_bytes(optimizer_config(config), sync.tensors),
                 batch.bytes());
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
  std::ostringstream os;
  os << "keel: " << dp << (dp == 1 ? " rank" : " data-parallel ranks");
  if (tp > 1) os << " x " << tp << " tensor-parallel ranks";
  os << ", ZeRO stage " << config.parallel.zero_stage << ", global batch " << dp * A * B
     << " sequences (" << B << " per micro-batch x " << A << " accumulation steps x " << dp
     << " ranks)\n";
  if (tp > 1) {
    const uint64_t bytes = tp_bytes_per_step(config, plan_model(config));
    os << "keel: tensor parallelism: each rank holds 1/" << tp
       << " of every layer's heads, MLP and vocabulary; its TP group moves " << format_mib(bytes)
       << " (" << bytes << " bytes)"
       << " per rank per step (2 all-reduces of the activations per layer forward, 2 backward"
       << (config.parallel.sequence_parallel ? ", each as an all-gather and a reduce-scatter" : "")
       << ")\n";
  }
  return os.str();
}

std::string describe_memory(const RankMemory& m) {
  std::ostringstream os;
  os << "keel: memory plan per rank " << format_mib(m.total()) << ": parameters "
     << format_mib(m.parameters) << ", gradients " << format_mib(m.gradients)
     << ", optimizer state " << format_mib(m.optimizer) << ", activations "
     << format_mib(m.activations);
  if (m.activation_slots > 1)
    os << " (" << m.activation_slots << " micro-batches in flight x "
       << format_mib(m.activation_slot_bytes) << ", and "
       << format_mib(m.activations - m.activation_slots * m.activation_slot_bytes) << " shared)";
  os << ", buffers " << format_mib(m.buffers) << "\n";
  return os.str();
}

}  // namespace keel::runtime
