#include "optim/adamw.h"

#include "kernels/adamw.h"

namespace keel::optim {

AdamW::AdamW(std::vector<ParamRef> params, const AdamWConfig& config)
    : params_(std::move(params)), config_(config) {
  for (const ParamRef& p : params_) {
    m_.push_back(state_.add("exp_avg." + p.name, DType::F32, {p.n}));
    v_.push_back(state_.add("exp_avg_sq." + p.name, DType::F32, {p.n}));
  }
  state_.allocate();
}

void AdamW::step(double lr, double grad_scale) {
  ++t_;
  kernels::cpu::AdamWHyper h;
  h.lr = static_cast<float>(lr);
  h.beta1 = static_cast<float>(config_.beta1);
  h.beta2 = static_cast<float>(config_.beta2);
  h.eps = static_cast<float>(config_.eps);
  h.step = t_;
  h.grad_scale = static_cast<float>(grad_scale);
  for (size_t i = 0; i < params_.size(); ++i) {
    const ParamRef& p = params_[i];
    h.weight_decay = p.weight_decay ? static_cast<float>(config_.weight_decay) : 0.0f;
    kernels::cpu::adamw_step(p.value, state_[m_[i]].f32(), state_[v_[i]].f32(), p.grad, p.n, h);
  }
}

}  // namespace keel::optim
