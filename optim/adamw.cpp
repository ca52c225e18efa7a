#include "optim/adamw.h"

#include "kernels/ops.h"

namespace keel::optim {

void AdamW::declare(MemoryPlan& plan, const std::vector<ParamRef>& params,
                    std::vector<MemoryPlan::Slot>& m, std::vector<MemoryPlan::Slot>& v) {
  for (const ParamRef& p : params) {
    m.push_back(plan.add("exp_avg." + p.name, DType::F32, {p.n}));
    v.push_back(plan.add("exp_avg_sq." + p.name, DType::F32, {p.n}));
  }
}

AdamW::AdamW(std::vector<ParamRef> params, const OptimizerConfig& config)
    : params_(std::move(params)), config_(config) {
  declare(state_, params_, m_, v_);
  state_.allocate();
}

size_t AdamW::plan_bytes(const std::vector<int64_t>& sizes) {
  std::vector<ParamRef> params;
  for (int64_t n : sizes) params.push_back({"", nullptr, nullptr, n, false});
  MemoryPlan plan("optimizer state");
  std::vector<MemoryPlan::Slot> m, v;
  declare(plan, params, m, v);
  return plan.bytes();
}

std::vector<StateTensor> AdamW::state(size_t i) {
  const int64_t n = params_[i].n;
  return {{"exp_avg", state_[m_[i]].f32(), nullptr, n},
          {"exp_avg_sq", state_[v_[i]].f32(), nullptr, n}};
}

void AdamW::step_tensors(size_t first, size_t last, double lr, double grad_scale) {
  kernels::cpu::AdamWHyper h = adamw_hyper(config_, lr, grad_scale, t_);
  for (size_t i = first; i < last; ++i) {
    const ParamRef& p = params_[i];
    h.weight_decay = p.weight_decay ? static_cast<float>(config_.weight_decay) : 0.0f;
    const Tensor m = state_[m_[i]], v = state_[v_[i]];
    kernels::ops(m.device()).adamw_step(p.value, m.f32(), v.f32(), p.grad, p.n, h, {});
  }
}

}  // namespace keel::optim
