#include "runtime/memory_report.h"

#include <sstream>

#include "optim/optimizer.h"
#include "runtime/grad_sync.h"

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
  m.buffers = model.workspace_bytes() + zero.staging + optimizer.workspace + batch_bytes;
  return m;
}

bool quantize_state(const std::string& param) { return param != "model.embed_tokens.weight"; }

optim::ParamRef optimizer_tensor(const Parameter& p, float* value, const float* grad, int64_t n,
                                 const parallel::ShardRect* shard) {
  optim::ParamRef r{p.name, value, grad, n, p.weight_decay, quantize_state(p.name)};
  if (p.global_shape.rank() == 2) {
    r.rows = p.global_shape[0], r.cols = p.global_shape[1];
    r.rect = {0, 0, r.rows, r.cols, r.cols};
  }
  if (shard) r.rect = *shard;
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

RankMemory plan_rank_memory(const Config& config, int dp) {
  const TrainingConfig& t = config.training;
  const LlamaModel model(config.model, t.per_device_train_batch_size, config.data.seq_length,
                         t.gradient_checkpointing, model_holds(config, false),
                         ModelSplit{static_cast<int>(config.parallel.tensor_model_parallel_size), 0,
                                    config.parallel.sequence_parallel});
  const GradSyncPlan sync = plan_grad_sync(config, model, dp);
  MemoryPlan batch("batch");
  declare_batch(batch, t, config.data.seq_length);
  return account(model, sync.bytes,
                 optim::optimizer_plan_bytes(optimizer_config(config), sync.tensors, sync.shards),
                 batch.bytes());
}

std::string describe_layout(const Config& config, int dp) {
  const TrainingConfig& t = config.training;
  const int64_t B = t.per_device_train_batch_size, A = t.gradient_accumulation_steps;
  std::ostringstream os;
  os << "keel: " << dp << (dp == 1 ? " rank" : " data-parallel ranks") << ", ZeRO stage "
     << config.parallel.zero_stage << ", global batch " << dp * A * B << " sequences (" << B
     << " per micro-batch x " << A << " accumulation steps x " << dp << " ranks)\n";
  return os.str();
}

std::string describe_memory(const RankMemory& m) {
  std::ostringstream os;
  os << "keel: memory plan per rank " << format_mib(m.total()) << ": parameters "
     << format_mib(m.parameters) << ", gradients " << format_mib(m.gradients)
     << ", optimizer state " << format_mib(m.optimizer) << ", activations "
     << format_mib(m.activations) << ", buffers " << format_mib(m.buffers) << "\n";
  return os.str();
}

}  // namespace keel::runtime
