// Data parallelism without ZeRO (stage 0) under a per-layer update: every rank keeps the whole
// model's weights but not its gradients. The model asks for a unit's gradient buffer as the unit's
// backward begins; on release the buffer is summed over the data-parallel group and handed to the
// caller, who steps the unit from it, and is then reused for the next unit. So one unit's gradient
// exists at a time (one more with tied embeddings: the head adds to the embedding's, which stays
// until the embedding's own backward; one more with experts: an MoE layer's beside its layer's).
#pragma once

#include <string>
#include <vector>

#include "kernels/memory_plan.h"
#include "parallel/communicator.h"
#include "parallel/zero.h"

namespace keel::parallel {

class UnitGrads final : public UnitHooks {
 public:
  // live_units: the model's gradient buffers held at once (LlamaModel::live_units: one more for
  // unit 0, the tied embedding, held across the others' backward, one more for an MoE layer's
  // experts, held beside their layer).
  // The expert units (ZeroUnit::kExpertGroup) are summed over expert_dp (default: dp).
  UnitGrads(const std::vector<ZeroUnit>& units, Communicator& dp, int live_units,
            Communicator* expert_dp = nullptr);
  // What the constructor allocates (keel plan).
  static size_t plan_bytes(const std::vector<ZeroUnit>& units, int live_units);

  // Unit u's gradient buffer in the model's layout: the same one every step, so an optimizer can
  // be given its gradient pointers once. It holds u's gradient only while u is handed over.
  const float* grads(int unit) const;
  // Called for every unit once per step, as its gradient release completes (last unit first).
  void set_unit_ready(UnitReady ready) { ready_ = std::move(ready); }
  void begin_step();
  // Checks that every unit was handed over in the step.
  void end_step();

  size_t bytes() const { return plan_.bytes(); }
  std::string describe_memory() const { return plan_.describe(); }
  // Time blocked in the all-reduces so far.
  double wait_seconds() const { return wait_seconds_; }

  // UnitHooks: gradients only; the model holds its weights.
  float* acquire_weights(int unit) override;
  void release_weights(int unit) override;
  float* acquire_grads(int unit) override;
  void release_grads(int unit) override;

 private:
  int slot_of(int unit) const;

  std::vector<ZeroUnit> units_;
  Communicator& dp_;
  Communicator& expert_dp_;
  int live_units_;
  bool experts_ = false;  // some unit is an MoE layer's experts (ZeroUnit::kExpertGroup)
  MemoryPlan plan_{"unit gradients"};
  std::vector<MemoryPlan::Slot> slots_;  // live_units × the widest unit
  std::vector<int> owner_;               // unit in each buffer, -1 when free
  std::vector<bool> handed_;             // unit handed over this step
  UnitReady ready_;
  double wait_seconds_ = 0;
};

}  // namespace keel::parallel
