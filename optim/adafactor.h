// Adafactor (optimizer.type adafactor; kernels/adafactor.h): a matrix keeps a running mean of g²
// per row and per column instead of a full second moment (rows + cols floats instead of
// rows · cols), a vector keeps it whole; a first moment only with a positive beta1. The step size
// is the trainer's learning rate, or the paper's relative step (relative_step).
//
// On a tensor split over ranks (ZeRO's shards, tensor parallelism's slices, or both, each rank
// holding whole rows or whole columns of a matrix, a slice of a vector) the sums that span the
// whole tensor are reduced across the tensor's group (ParamRef::group), so every rank steps its
// part exactly as one rank would step the whole, up to summation order: a row-split matrix's
// column sums of g², a column-split one's row sums, and the sums of squares behind RMS(param) and
// RMS(update). A range of tensors costs two all-reduces per group, one per phase.
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "kernels/adafactor.h"
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
  // Matrices: exp_avg_sq_row (rows × 1) and exp_avg_sq_col (cols × 1), each the rank's part of
  // the split side or the whole of the other; vectors: exp_avg_sq; with beta1, exp_avg.
  std::vector<StateTensor> state(size_t i) override;
  size_t state_bytes() const override { return state_.bytes(); }
  std::string describe_memory() const override { return state_.describe(); }
  std::string describe() const override;

 private:
  struct Slots {
    bool factored;
    // A matrix whose part spans whole rows (ZeRO split its rows, or it is whole): its row sums
    // are complete here and its column sums are the ones to reduce; else the other way round.
    bool row_split;
    parallel::ShardRect rect;          // the part held (a vector: rect.rows of n × 1)
    int64_t row_len, col_len;          // floats of the row and column means held (padding included)
    size_t sums_at;                    // where the tensor's phase-1 sums start in sums_
    MemoryPlan::Slot row, col, sq, m;  // those the tensor uses
  };
  static void declare(MemoryPlan& plan, const std::vector<ParamRef>& params,
                      const OptimizerConfig& config, std::vector<Slots>& slots);
  kernels::cpu::AdafactorHyper hyper(size_t i, double lr, double grad_scale) const;
  // Sums each tensor's values (segment(i): its [from, to) in values) over the tensor's group, one
  // all-reduce per group among tensors [first, last); a part this rank does not count adds zeros.
  using Segment = std::pair<size_t, size_t>;
  void reduce(std::vector<double>& values, size_t first, size_t last,
              const std::function<Segment(size_t)>& segment);
  // Phase 1: this part's sums into sums_, and the running means whose sums are complete here.
  void gather_sums(size_t i, const kernels::cpu::AdafactorHyper& h);
  // After the reduction: the other means, the factors; returns the part's Σ u².
  double measure_update(size_t i, const kernels::cpu::AdafactorHyper& h);
  kernels::cpu::AdafactorScale scale_of(size_t i);

  std::vector<ParamRef> params_;
  OptimizerConfig config_;
  MemoryPlan state_{"optimizer state"};
  std::vector<Slots> slots_;
  // Per tensor, for each step: [Σ param², values held, then Σ row means and the column sums
  // (row split) or the row sums (column split)], summed over each tensor's group.
  std::vector<double> sums_;
  std::vector<double> update_sq_;   // Σ u² per tensor, the second all-reduce
  std::vector<double> packed_;      // one group's values, side by side, for its all-reduce
  std::vector<float> row_mean_;     // per tensor: the mean of its row means
  std::vector<double> local_sums_;  // the sums that stay here (max(rows, cols))
  std::vector<float> row_factor_, col_factor_;
};

}  // namespace keel::optim
