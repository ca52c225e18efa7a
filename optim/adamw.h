// AdamW over a set of parameter tensors (or, under ZeRO, parameter shards): owns the first and
// second moments in one memory plan and steps every tensor with the op table's adamw_step.
#pragma once

#include <string>
#include <vector>

#include "kernels/memory_plan.h"
#include "optim/optimizer.h"

namespace keel::optim {

class AdamW final : public Optimizer {
 public:
  AdamW(std::vector<ParamRef> params, const OptimizerConfig& config);
  // state_bytes() of an AdamW over tensors of these sizes, without allocating.
  static size_t plan_bytes(const std::vector<int64_t>& sizes);

  void step_tensors(size_t first, size_t last, double lr, double grad_scale) override;
  size_t num_tensors() const override { return params_.size(); }
  // exp_avg and exp_avg_sq, params[i].n floats each.
  std::vector<StateTensor> state(size_t i) override;
  size_t state_bytes() const override { return state_.bytes(); }
  std::string describe_memory() const override { return state_.describe(); }
  std::string describe() const override { return "adamw: fp32 moments"; }

 private:
  std::vector<ParamRef> params_;
  OptimizerConfig config_;
  // Declares the two moments of every tensor in plan.
  static void declare(MemoryPlan& plan, const std::vector<ParamRef>& params,
                      std::vector<MemoryPlan::Slot>& m, std::vector<MemoryPlan::Slot>& v);
  MemoryPlan state_{"optimizer state"};
  std::vector<MemoryPlan::Slot> m_, v_;
};

}  // namespace keel::optim
