// GaLore (Zhao et al., 2024; optimizer.galore): a targeted matrix's gradient G (m × n) is
// projected to rank r, the optimizer of optimizer.type steps the small projected gradient R, and
// its update is projected back and scaled by α. Which side is projected follows the reference rule
// (proj_type std: the shorter one; reverse_std: the longer; left: rows; right: columns).
//
// On a matrix split over ranks (ZeRO's shards along its longer side, tensor parallelism's slices
// along its own split, or both along one side) nothing is ever gathered. S is the side every rank
// of the tensor's group holds whole, L the side split across them:
//   - projecting S, each rank projects its own slice (R is sliced the same way) and the projector
//     is the same on every rank;
//   - projecting L, each rank holds the rows of the projector for its slice, the partial products
//     are reduce-scattered (each rank keeps R's block of S positions: R is the same matrix, held
//     in other parts, whatever the layout, so checkpoints reshard and an inner Adafactor factors
//     it as one rank does) and the update is all-gathered before the back-projection.
// The projector is refreshed every update_proj_gap steps from the Gram matrix of S (Σ over ranks
// of the slices' Gram matrices, one all-reduce): exact takes its top-r eigenvectors (LAPACK
// dsyevr), randomized all-reduces a range sketch (r + oversample vectors, power iterations) and
// decomposes only its small projection. L's singular vectors follow: U = G V Σ⁻¹, computed on each
// rank's own rows. Each pair is signed by its short side's vector's largest entry, found over the
// group when the short side is L (TP splitting a matrix's short side), so the exact projector is
// the one a single rank holding the whole matrix computes, up to rounding (and for directions
// the gradient spans: with r above its rank, those with σ ≈ 0 stay zero on the split side, where
// one rank gets the eigen-solver's null-space vectors); the randomized one is then drawn over the
// other side (the same distribution, other numbers).
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
  // The inner optimizer (config.type) steps the projected gradients of targeted matrices and the
  // other tensors as they are. Each tensor's parts are spread over its ParamRef::group.
  GaLore(std::vector<ParamRef> params, const OptimizerConfig& config);
  ~GaLore() override;
  // What such an optimizer allocates over these tensors (each over ParamRef::parts ranks).
  static OptimizerBytes plan_bytes(const OptimizerConfig& config,
                                   const std::vector<ParamRef>& params);

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
  // The split side's vectors on this rank's part, U = G V Σ⁻¹ (r × Lk), into out.
  void split_vectors(size_t i, const double* basis, const double* values, float* out);
  // When the split side is the short one: signs each singular pair (basis's rows) as one rank
  // holding the whole matrix does, by the short side's vector's largest entry, found over the
  // group (two all-reduces of r doubles).
  void sign_by_split_side(size_t i, double* basis, const double* values);
  // Tensor i's group, or nullptr when it is whole here (or the group is one rank).
  parallel::Communicator* group_of(size_t i) const;
  // x (n values) ← its sum over tensor i's group (a part this rank does not count adds zeros).
  template <class T>
  void sum_over_group(size_t i, T* x, int64_t n);
  // The sketch (q × S) applied to this rank's G: G Qᵀ (Lk × q) or Q G (q × Lk), in the workspace.
  float* sketch_product(size_t i, const double* sketch, int64_t q);
  // sketch (q × S) ← sketch · (the whole side's Gram matrix), summed over the group.
  void apply_gram(size_t i, double* sketch, int64_t q);
  void project(size_t i);
  void project_back(size_t i, double lr);

  std::vector<ParamRef> params_;
  OptimizerConfig config_;
  std::vector<detail::GaloreLayout> layouts_;  // one per tensor
  std::unique_ptr<detail::GaloreSlots> slots_;
  std::unique_ptr<Optimizer> inner_;
  MemoryPlan state_{"GaLore projectors"};
  MemoryPlan work_{"GaLore workspace"};
  double refresh_seconds_ = 0;
};

}  // namespace keel::optim
