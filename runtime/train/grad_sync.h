// Gradient synchronisation: how a step's gradients become the gradient summed over the
// data-parallel group, and which tensors the optimizer steps with it. One interface, chosen once
// at start-up from parallel.zero_stage and optimizer.per_layer_update (make_grad_sync), so the
// trainer calls it and never branches on the stage:
//   ZeRO 0:                  the model's whole gradient plan all-reduced after the backward;
//   ZeRO 0, per-layer update: each unit's gradient all-reduced as its backward ends
//                            (parallel::UnitGrads), the unit stepped at once;
//   ZeRO 1-3:                this rank's shards of every parameter (parallel::Zero).
// The group each unit reduces over is the data-parallel one today (the expert group later).
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "optim/optimizer.h"
#include "parallel/communicator.h"
#include "parallel/process_grid.h"
#include "parallel/zero.h"
#include "runtime/config/config.h"
#include "runtime/model/llama.h"

namespace keel::runtime {

class GradSync {
 public:
  virtual ~GradSync() = default;

  // The optimizer's tensors, unit after unit in the model's parameter order: whole parameters
  // (weights and the model's gradients), or this rank's shards (fp32 master and summed gradient
  // shard), each with its rectangle of the global tensor and the group holding its other parts
  // (TP's slices, ZeRO's shards, or both). The same list every call.
  virtual const std::vector<optim::ParamRef>& tensors() const = 0;
  // ZeRO's group, which the tensors are sharded over, or nullptr without ZeRO.
  virtual parallel::Communicator* shard_group() = 0;
  // Whether the model holds every unit's full weights between steps (not under ZeRO 3).
  virtual bool model_holds_weights() const = 0;

  // Per-layer update: `ready` is called as each unit's gradient is complete, in the backward.
  virtual void set_unit_ready(parallel::UnitReady ready) = 0;
  // Before the step's first forward.
  virtual void begin_step() = 0;
  // After every micro-batch's backward: the tensors' gradients hold the sum over the group.
  // Returns Σ g² of the whole summed gradient, the same on every rank. With a per-layer update
  // that sum is what the units reported as they were handed over (this rank's part of it under
  // ZeRO): stepped() gives it, asked only once every unit has been (the last may be handed over
  // inside this call).
  virtual double reduce(const std::function<double()>& stepped) = 0;
  // After the optimizer stepped the tensors, or a checkpoint was read into them: the model's
  // weights follow (ZeRO 1, 2 all-gather the shards).
  virtual void publish() {}
  // Collective: unit u's full weights, in the model's layout, into out (ZeRO 3 gathers them).
  virtual void gather_unit(int u, float* out) = 0;

  // Seconds blocked on the gradient and weight collectives so far; ZeRO's copies too.
  virtual parallel::ZeroTimers timers() const = 0;
  // The bytes of its buffers (keel plan's categories).
  virtual parallel::ZeroBytes bytes() const = 0;

  // A pipeline whose head is tied to the embedding: the group of the first and the last stage
  // (the same TP and DP place; Megatron's embedding group). reduce() then sums the embedding's
  // gradient (the first stage's, and the last stage's copy) over it after the data-parallel sum,
  // so that both step one tensor alike. Not with a per-layer update (the config refuses it).
  void set_tied_group(parallel::Communicator* group) { tied_ = group; }

 protected:
  // The tied sum above, over this rank's part of the embedding's gradient (none: nothing).
  void sum_tied_gradient();

 private:
  parallel::Communicator* tied_ = nullptr;
};

// What the model keeps itself under the config's synchronisation (the rest the hooks hand out
// unit by unit): weights unless ZeRO 3, gradients unless ZeRO 2, 3 or a per-layer update.
ModelHolds model_holds(const Config& config, bool allocate = true);

// What make_grad_sync would build on one of dp ranks, in sizes only (keel plan, the memory
// admission): its buffers, and the optimizer's tensors (rank 0's shards: every rank's are the
// same size, the last padded) with no data, each spread over ParamRef::parts ranks.
struct GradSyncPlan {
  parallel::ZeroBytes bytes;
  std::vector<optim::ParamRef> tensors;
};
GradSyncPlan plan_grad_sync(const Config& config, const LlamaModel& model, int dp);

// The synchronisation the config asks for, over the grid's data-parallel group: initialises the
// model's weights (or, under ZeRO 3, each unit's shards) from training.seed, and hooks itself
// into the model where it hands out buffers per unit.
std::unique_ptr<GradSync> make_grad_sync(const Config& config, LlamaModel& model,
                                         const parallel::ProcessGrid& grid);

}  // namespace keel::runtime
