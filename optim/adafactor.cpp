#include "optim/adafactor.h"

#include "kernels/adafactor.h"
#include "kernels/error.h"

namespace keel::optim {

void Adafactor::declare(MemoryPlan& plan, const std::vector<ParamRef>& params,
                        const OptimizerConfig& config, std::vector<Slots>& slots) {
  for (const ParamRef& p : params) {
    Slots s{};
    s.factored = p.matrix();
    if (s.factored) {
      KEEL_CHECK(p.rows * p.cols == p.n, "adafactor: '{}' is {}x{} but holds {} values", p.name,
                 p.rows, p.cols, p.n);
      s.row = plan.add("exp_avg_sq_row." + p.name, DType::F32, {p.rows});
      s.col = plan.add("exp_avg_sq_col." + p.name, DType::F32, {p.cols});
    } else {
      s.sq = plan.add("exp_avg_sq." + p.name, DType::F32, {p.n});
    }
    if (config.adafactor_beta1 > 0) s.m = plan.add("exp_avg." + p.name, DType::F32, {p.n});
    slots.push_back(s);
  }
}

Adafactor::Adafactor(std::vector<ParamRef> params, const OptimizerConfig& config)
    : params_(std::move(params)), config_(config) {
  declare(state_, params_, config_, slots_);
  state_.allocate();
}

size_t Adafactor::plan_bytes(const OptimizerConfig& config, const std::vector<ParamRef>& params) {
  MemoryPlan plan("optimizer state");
  std::vector<Slots> slots;
  declare(plan, params, config, slots);
  return plan.bytes();
}

std::vector<StateTensor> Adafactor::state(size_t i) {
  const Slots& s = slots_[i];
  const ParamRef& p = params_[i];
  std::vector<StateTensor> out;
  if (s.factored) {
    out.push_back({"exp_avg_sq_row", state_[s.row].f32(), nullptr, p.rows, StateLayout::kPerBlock});
    out.push_back({"exp_avg_sq_col", state_[s.col].f32(), nullptr, p.cols, StateLayout::kPerBlock});
  } else {
    out.push_back({"exp_avg_sq", state_[s.sq].f32(), nullptr, p.n});
  }
  if (config_.adafactor_beta1 > 0) out.push_back({"exp_avg", state_[s.m].f32(), nullptr, p.n});
  return out;
}

void Adafactor::step_tensors(size_t first, size_t last, double lr, double grad_scale) {
  kernels::cpu::AdafactorHyper h;
  h.lr = lr;
  h.relative_step = config_.relative_step;
  h.scale_parameter = config_.scale_parameter;
  h.warmup_init = config_.warmup_init;
  h.decay_rate = config_.decay_rate;
  h.clip_threshold = config_.clip_threshold;
  h.beta1 = config_.adafactor_beta1;
  h.step = t_;
  h.grad_scale = static_cast<float>(grad_scale);
  for (size_t i = first; i < last; ++i) {
    const ParamRef& p = params_[i];
    const Slots& s = slots_[i];
    h.weight_decay = p.weight_decay ? config_.weight_decay : 0.0;
    float* m = config_.adafactor_beta1 > 0 ? state_[s.m].f32() : nullptr;
    if (s.factored) {
      kernels::cpu::adafactor_step(p.value, p.grad, state_[s.row].f32(), state_[s.col].f32(),
                                   nullptr, m, p.rows, p.cols, true, h);
    } else {
      kernels::cpu::adafactor_step(p.value, p.grad, nullptr, nullptr, state_[s.sq].f32(), m, p.n, 1,
                                   false, h);
    }
  }
}

}  // namespace keel::optim
