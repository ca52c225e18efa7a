// GaLore (Zhao et al., 2024; optimizer.galore): a targeted matrix's gradient G (m × n) is
// projected to rank r, the optimizer of optimizer.type steps the small projected gradient R, and
// its update is projected back and scaled by α. Which side is projected follows the reference rule
// (proj_type std: the shorter one; reverse_std: the longer; left: rows; right: columns).
//
// On ZeRO shards (each rank holds a slice of every matrix along its longer side) nothing is ever
// gathered:
//   - projecting the short side, each rank projects its own slice (R is sliced the same way) and
//     the projector is the same on every rank;
//   - projecting the long side, each rank holds the rows of the projector for its slice, the
//     partial products are reduce-scattered (R is split evenly over the ranks) and the update is
//     all-gathered before the back-projection.
// The projector is refreshed every update_proj_gap steps from the Gram matrix of the short side
// (Σ over ranks of the slices' Gram matrices, one all-reduce): exact takes its top-r eigenvectors
// (LAPACK dsyevr), randomized all-reduces a range sketch (r + oversample vectors, power
// iterations) and decomposes only its small projection. The long side's singular vectors follow
// from the short side's: U = G V Σ⁻¹, computed on each rank's own rows.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kernels/memory_plan.h"
#include "optim/optimizer.h"

namespace keel::optim {

namespace detail {
struct GaloreLayout;  // how one tensor is projected (galore.cpp)
struct GaloreSlots;   // the workspace's slots
}  // namespace detail

class GaLore final : public Optimizer {
 public:
  // shards: as make_optimizer's. The inner optimizer (config.type) steps the projected gradients
  // of targeted matrices and the other tensors as they are.
  GaLore(std::vector<ParamRef> params, const OptimizerConfig& config,
         parallel::Communicator* shards);
  ~GaLore() override;
  // What such an optimizer allocates over these tensors on `shards` ranks.
  static OptimizerBytes plan_bytes(const OptimizerConfig& config,
                                   const std::vector<ParamRef>& params, int shards);

  void step_tensors(size_t first, size_t last, double lr, double grad_scale) override;
  size_t num_tensors() const override { return params_.size(); }
  // Targeted tensors: galore_projector and the inner optimizer's state of the projected
  // gradient (galore.exp_avg, ...), each a rectangle of a global tensor of its own shape.
  std::vector<StateTensor> state(size_t i) override;
  void load_state(size_t i, const std::string& name, const float* values) override;
  size_t state_bytes() const override;
  size_t workspace_bytes() const override;
  std::string describe_memory() const override;
  std::string describe() const override;

  bool projected(size_t i) const;
  // Seconds spent refreshing projectors so far (collectives included).
  double refresh_seconds() const { return refresh_seconds_; }

 private:
  void refresh(size_t i);
  // The Gram matrix's top vectors (basis, r × S doubles) and values become tensor i's projector.
  void set_projector(size_t i, const double* basis, const double* values);
  // The sketch (q × S) applied to this rank's G: G Qᵀ (Lk × q) or Q G (q × Lk), in the workspace.
  float* sketch_product(size_t i, const double* sketch, int64_t q);
  // sketch (q × S) ← sketch · (the short side's Gram matrix), summed over the shards.
  void apply_gram(size_t i, double* sketch, int64_t q);
  void project(size_t i);
  void project_back(size_t i, double lr);

  std::vector<ParamRef> params_;
  OptimizerConfig config_;
  parallel::Communicator* shards_;
  std::vector<detail::GaloreLayout> layouts_;  // one per tensor
  std::unique_ptr<detail::GaloreSlots> slots_;
  std::unique_ptr<Optimizer> inner_;
  MemoryPlan state_{"GaLore projectors"};
  MemoryPlan work_{"GaLore workspace"};
  double refresh_seconds_ = 0;
};

}  // namespace keel::optim
