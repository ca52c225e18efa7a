#include "optim/adamw_8bit.h"

#include <cstring>

#include "kernels/error.h"
#include "kernels/ops.h"

namespace keel::optim {

// The 8-bit maps and the block limit are host constants; the ops go through the table.
namespace q = keel::kernels::cpu;

void AdamW8bit::declare(MemoryPlan& plan, const std::vector<ParamRef>& params,
                        const OptimizerConfig& config, std::vector<Slots>& slots) {
  for (const ParamRef& p : params) {
    Slots s{};
    s.quantized = p.quantize && p.n >= config.min_8bit_size;
    const DType t = s.quantized ? DType::U8 : DType::F32;
    s.m = plan.add("exp_avg." + p.name, t, {p.n});
    s.v = plan.add("exp_avg_sq." + p.name, t, {p.n});
    if (s.quantized) {
      const int64_t blocks = (p.n + config.block_size - 1) / config.block_size;
      s.m_absmax = plan.add("exp_avg_absmax." + p.name, DType::F32, {blocks});
      s.v_absmax = plan.add("exp_avg_sq_absmax." + p.name, DType::F32, {blocks});
    }
    slots.push_back(s);
  }
}

AdamW8bit::AdamW8bit(std::vector<ParamRef> params, const OptimizerConfig& config)
    : params_(std::move(params)),
      config_(config),
      signed_(q::dynamic_map(true)),
      unsigned_(q::dynamic_map(false)) {
  KEEL_CHECK(config.block_size > 0 && config.block_size <= q::kMaxQuantBlock,
             "optimizer.block_size is {}; it must be in [1, {}]", config.block_size,
             q::kMaxQuantBlock);
  declare(state_, params_, config_, slots_);
  state_.allocate();
  // Zero moments: absmax 0, and the codes of 0 (what requantizing zeros gives).
  const uint8_t m_zero = signed_.quantize(0.0f), v_zero = unsigned_.quantize(0.0f);
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!slots_[i].quantized) continue;
    std::memset(state_[slots_[i].m].data(), m_zero, static_cast<size_t>(params_[i].n));
    std::memset(state_[slots_[i].v].data(), v_zero, static_cast<size_t>(params_[i].n));
  }
}

size_t AdamW8bit::plan_bytes(const OptimizerConfig& config, const std::vector<ParamRef>& params) {
  MemoryPlan plan("optimizer state");
  std::vector<Slots> slots;
  declare(plan, params, config, slots);
  return plan.bytes();
}

int64_t AdamW8bit::blocks(size_t i) const {
  return (params_[i].n + config_.block_size - 1) / config_.block_size;
}

std::vector<StateTensor> AdamW8bit::state(size_t i) {
  const Slots& s = slots_[i];
  const int64_t n = params_[i].n;
  if (!s.quantized)
    return {{"exp_avg", state_[s.m].f32(), nullptr, n},
            {"exp_avg_sq", state_[s.v].f32(), nullptr, n}};
  const auto per_block = StateLayout::kPerBlock;
  return {{"exp_avg", nullptr, state_[s.m].data_as<uint8_t>(), n},
          {"exp_avg_sq", nullptr, state_[s.v].data_as<uint8_t>(), n},
          {"exp_avg_absmax", state_[s.m_absmax].f32(), nullptr, blocks(i), per_block},
          {"exp_avg_sq_absmax", state_[s.v_absmax].f32(), nullptr, blocks(i), per_block}};
}

std::string AdamW8bit::describe() const {
  return "adamw_8bit: 8-bit moments in blocks of " + std::to_string(config_.block_size) + " for " +
         describe_share(params_, [&](size_t i) { return slots_[i].quantized; }) +
         ", fp32 moments for the rest";
}

void AdamW8bit::load_state(size_t i, const std::string& name, const float* values) {
  const Slots& s = slots_[i];
  if (!s.quantized) return Optimizer::load_state(i, name, values);
  KEEL_CHECK(name == "exp_avg" || name == "exp_avg_sq",
             "the 8-bit optimizer keeps no element-wise state '{}'", name);
  const bool m = name == "exp_avg";
  const Tensor codes = state_[m ? s.m : s.v];
  kernels::ops(codes.device())
      .quantize_blockwise(codes.data_as<uint8_t>(), state_[m ? s.m_absmax : s.v_absmax].f32(),
                          values, params_[i].n, config_.block_size, m ? signed_ : unsigned_, {});
}

void AdamW8bit::step_tensors(size_t first, size_t last, double lr, double grad_scale) {
  q::AdamWHyper h = adamw_hyper(config_, lr, grad_scale, t_);
  for (size_t i = first; i < last; ++i) {
    const ParamRef& p = params_[i];
    const Slots& s = slots_[i];
    h.weight_decay = p.weight_decay ? static_cast<float>(config_.weight_decay) : 0.0f;
    const kernels::Ops& k = kernels::ops(state_[s.m].device());
    if (!s.quantized) {
      k.adamw_step(p.value, state_[s.m].f32(), state_[s.v].f32(), p.grad, p.n, h, {});
      continue;
    }
    k.adamw_8bit_step(p.value, state_[s.m].data_as<uint8_t>(), state_[s.m_absmax].f32(),
                      state_[s.v].data_as<uint8_t>(), state_[s.v_absmax].f32(), p.grad, p.n,
                      config_.block_size, signed_, unsigned_, h, {});
  }
}

}  // namespace keel::optim
