// AdamW over a set of parameter tensors (or, under ZeRO, parameter shards): owns the first and
// second moments in one memory plan and steps every tensor with kernels::cpu::adamw_step.
#pragma once

#include <string>
#include <vector>

#include "kernels/memory_plan.h"

namespace keel::optim {

// One tensor the optimizer updates: n floats of value and gradient.
struct ParamRef {
  std::string name;
  float* value;
  const float* grad;
  int64_t n;
  bool weight_decay;
};

struct AdamWConfig {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
};

class AdamW {
 public:
  AdamW(std::vector<ParamRef> params, const AdamWConfig& config);
  // state_bytes() of an AdamW over tensors of these sizes, without allocating.
  static size_t plan_bytes(const std::vector<int64_t>& sizes);

  // One update of every tensor with learning rate lr, gradients multiplied by grad_scale first.
  void step(double lr, double grad_scale);
  int64_t steps_taken() const { return t_; }
  // A checkpoint's step count (the bias correction depends on it).
  void set_steps_taken(int64_t t) { t_ = t; }
  // The first and second moments of tensor i (params[i].n floats each), for checkpoints.
  float* exp_avg(size_t i) { return state_[m_[i]].f32(); }
  float* exp_avg_sq(size_t i) { return state_[v_[i]].f32(); }
  size_t state_bytes() const { return state_.bytes(); }
  std::string describe_memory() const { return state_.describe(); }

 private:
  std::vector<ParamRef> params_;
  AdamWConfig config_;
  // Declares the two moments of every tensor in plan.
  static void declare(MemoryPlan& plan, const std::vector<ParamRef>& params,
                      std::vector<MemoryPlan::Slot>& m, std::vector<MemoryPlan::Slot>& v);
  MemoryPlan state_{"optimizer state"};
  std::vector<MemoryPlan::Slot> m_, v_;
  int64_t t_ = 0;
};

}  // namespace keel::optim
