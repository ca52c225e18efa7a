// Adafactor (optimizer.type adafactor; kernels/adafactor.h): a matrix keeps a running mean of g²
// per row and per column instead of a full second moment (rows + cols floats instead of
// rows · cols), a vector keeps it whole; a first moment only with a positive beta1. The step size
// is the trainer's learning rate, or the paper's relative step (relative_step).
#pragma once

#include <string>
#include <vector>

#include "kernels/memory_plan.h"
#include "optim/optimizer.h"

namespace keel::optim {

class Adafactor final : public Optimizer {
 public:
  // A ParamRef with rows and cols is a matrix (factored); any other tensor is a vector.
  Adafactor(std::vector<ParamRef> params, const OptimizerConfig& config);
  static size_t plan_bytes(const OptimizerConfig& config, const std::vector<ParamRef>& params);

  void step_tensors(size_t first, size_t last, double lr, double grad_scale) override;
  size_t num_tensors() const override { return params_.size(); }
  // Matrices: exp_avg_sq_row and exp_avg_sq_col; vectors: exp_avg_sq; with beta1, exp_avg.
  std::vector<StateTensor> state(size_t i) override;
  size_t state_bytes() const override { return state_.bytes(); }
  std::string describe_memory() const override { return state_.describe(); }

 private:
  struct Slots {
    bool factored;
    MemoryPlan::Slot row, col, sq, m;  // those the tensor uses
  };
  static void declare(MemoryPlan& plan, const std::vector<ParamRef>& params,
                      const OptimizerConfig& config, std::vector<Slots>& slots);

  std::vector<ParamRef> params_;
  OptimizerConfig config_;
  MemoryPlan state_{"optimizer state"};
  std::vector<Slots> slots_;
};

}  // namespace keel::optim
