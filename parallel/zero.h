// ZeRO stages 1, 2 and 3 over a model cut into units: the parameters that one part of the step
// uses together (the embedding, each block, the head). Every parameter is sharded along its longer
// dimension (ZeroLayout, one per unit); this rank keeps the fp32 master copy of its shards and the
// summed gradient of those shards, and the optimizer steps them. What differs by stage is what the
// model holds in full and when the collectives run:
//   1: the model keeps full weights and gradients; after the backward, each unit's gradients are
//      reduce-scattered to the shards; after the step, the shards are all-gathered into the
//      weights.
//   2: as 1, but the model keeps no gradients: each unit gets a fresh buffer for its backward and
//      hands it back at once; its reduce-scatter starts then and runs while earlier units compute.
//   3: as 2, and the model keeps no weights either: a unit's weights are all-gathered when the
//      model asks for them (the next unit's gather is started then, so it overlaps compute) and the
//      buffer is reused as soon as the model releases them.
// With a per-layer update (stages 2 and 3), each unit's gradient shard is handed to the caller,
// who steps that unit's parameters, as soon as its reduce-scatter completes during the backward;
// then only the shards of the units in flight exist, not one per unit.
#pragma once

#include <array>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kernels/memory_plan.h"
#include "parallel/communicator.h"
#include "parallel/zero_layout.h"

namespace keel::parallel {

// A unit as the model lays it out: its parameters lie in one buffer at the given float offsets.
struct ZeroUnit {
  std::string name;                   // "embed_tokens", "layers.3", "head", "layers.3.experts"
  std::vector<ZeroParamSpec> params;  // global shapes, Hugging Face names
  std::vector<int64_t> offsets;       // float offset of each parameter in the unit's buffer
  int64_t elems = 0;                  // floats of the unit's buffer
  // The group the unit is sharded and its gradients reduced over: kDataGroup (the data-parallel
  // ranks), or kExpertGroup for an MoE layer's experts, which only the ranks holding the same
  // experts share (the expert-data-parallel group).
  static constexpr int kDataGroup = 0, kExpertGroup = 1;
  int group = kDataGroup;
};

// What a model calls around each unit it runs. A model that holds all of itself needs none; under
// ZeRO 2 and 3 these hand out buffers per unit. Pointers stay valid until the matching release.
class UnitHooks {
 public:
  virtual ~UnitHooks() = default;
  // A micro-batch's forward and backward through model chunk `chunk` begin (weights are then
  // asked for in that chunk's weight order; one chunk without an interleaved pipeline).
  virtual void begin_micro_batch(int chunk) { (void)chunk; }
  // The unit's full weights in the model's layout.
  virtual float* acquire_weights(int unit) = 0;
  virtual void release_weights(int unit) = 0;
  // A zeroed buffer the unit's backward accumulates its gradients into; on release they are
  // reduced and the buffer is reused.
  virtual float* acquire_grads(int unit) = 0;
  virtual void release_grads(int unit) = 0;
  // Between kernels: lets pending collectives progress (MPI advances them only inside its calls).
  virtual void progress() {}
};

// Called when a unit's gradient (a ZeRO shard, or the whole unit without ZeRO) is complete and
// may be stepped, with Σ g² over it; the gradient's memory is reused once it returns. Every rank
// calls it for the same units in the same order, at the same point of its own program order, so
// it may run collectives on the data-parallel group.
using UnitReady = std::function<void(int unit, double grad_sum_squares)>;

// One parameter's shard as the optimizer sees it.
struct ZeroShardRef {
  const ZeroParamSpec* spec;
  float* master;  // fp32 master shard (padding included, always 0)
  // Summed gradient of the shard (padding 0). With a per-layer update it is there only while the
  // unit is handed over (UnitReady): the units share a few shard buffers.
  const float* grad;
  int64_t elems;
  ShardRect rect;  // the part of the parameter this rank's shard holds
};

// Bytes of ZeRO's buffers on one rank, by what they hold.
struct ZeroBytes {
  size_t master = 0;        // fp32 master shards
  size_t grad_shard = 0;    // summed gradient shards
  size_t staging = 0;       // collective staging buffers
  size_t unit_weights = 0;  // stage 3: gathered weights of the units the model holds
  // stages 2, 3 (and 0 with a per-layer update, UnitGrads): gradient buffers of the units in
  // backward
  size_t unit_grads = 0;
  size_t total() const { return master + grad_shard + staging + unit_weights + unit_grads; }
};

// Time spent blocked on collectives (wait) and in the copies around them (pack/unpack).
struct ZeroTimers {
  double wait_seconds = 0;
  double copy_seconds = 0;
};

class Zero final : public UnitHooks {
 public:
  // stage 1, 2 or 3 over the data-parallel group dp (the expert units over expert_dp, which
  // defaults to dp). live_units: how many units the model holds at once at most (2 when the head
  // needs the tied embedding beside its own weights; one more for an MoE layer's experts).
  // per_layer_update (stages 2 and 3): hand each unit's gradient shard over as soon as it is
  // complete (set_unit_ready), keeping shards for the units in flight only.
  Zero(std::vector<ZeroUnit> units, int stage, Communicator& dp, int live_units,
       bool per_layer_update = false, Communicator* expert_dp = nullptr);
  ~Zero() override;
  // What the constructor would allocate on each of `ranks` ranks, the expert units sharded over
  // expert_ranks (0: ranks) (keel plan).
  static ZeroBytes plan(const std::vector<ZeroUnit>& units, int stage, int ranks, int live_units,
                        bool per_layer_update = false, int expert_ranks = 0);

  int stage() const { return stage_; }
  const std::vector<ZeroUnit>& units() const { return units_; }

  // With overlap off, every collective is waited for as soon as it starts and nothing is
  // prefetched: the same results, and the time it takes when nothing hides it.
  void set_overlap(bool overlap) { overlap_ = overlap; }
  // Stages 1 and 2: the model's own buffer of each unit's weights (and, stage 1, gradients).
  void attach_model(std::vector<float*> weights, std::vector<float*> grads);
  // Stage 3: the order in which the model asks for weights during one micro-batch, per model
  // chunk; a unit's gather is started when the one before it in this order is acquired.
  void set_weight_orders(std::vector<std::vector<int>> orders);
  // Fills this rank's master shards. full(u, scratch) returns unit u's full weights: the model's
  // own buffer, or scratch after writing them there (stage 3: scratch holds one unit).
  void init_master(const std::function<const float*(int, float*)>& full);

  std::vector<ZeroShardRef> shards();
  // Per-layer update: called for every unit once per step, units in the order the model
  // releases their gradients (last unit first). Unit u is handed over when the model releases
  // unit u−1's gradients (its reduce-scatter has had u−1's backward to run) and the last one in
  // reduce_gradients.
  void set_unit_ready(UnitReady ready) { ready_ = std::move(ready); }

  // The step: begin_step, then every micro-batch's forward and backward (with this object as the
  // model's hooks for stages 2 and 3), then reduce_gradients, the optimizer on shards(), and
  // publish_weights.
  void begin_step();
  // Stage 1: reduce-scatters the model's gradients unit by unit. Stages 2 and 3: waits for the
  // reductions still in flight. Afterwards shards() hold the gradient summed over the group
  // (per-layer update: the last unit is handed over instead, and every unit has been).
  void reduce_gradients();
  // Σ g² over this rank's gradient shards of the counted parameters (padding is zero); sum it
  // over the group for the norm. Not with a per-layer update: UnitReady gives each unit's sum.
  double grad_sum_squares() const;
  // Stages 1 and 2: all-gathers the updated master shards into the model's weights.
  void publish_weights();
  // Collective: unit u's full weights, gathered from the master shards, into out (model layout).
  void gather_unit(int u, float* out);

  const ZeroTimers& timers() const { return timers_; }
  const ZeroBytes& bytes() const { return bytes_; }
  std::string describe_memory() const { return plan_.describe(); }

  // UnitHooks (stages 2 and 3).
  void begin_micro_batch(int chunk) override;
  float* acquire_weights(int unit) override;
  void release_weights(int unit) override;
  float* acquire_grads(int unit) override;
  void release_grads(int unit) override;
  void progress() override;

 private:
  struct InFlight;
  int take_staging();
  void start_gather(int unit, int staging);
  void start_reduce(int unit, int staging);
  void reduce_unit(int unit, const float* grads);
  void finish(InFlight& f);
  void finish_oldest();
  void finish_all();
  void hand_over(int unit);
  // Σ g² over the counted parameters' shards in unit's region (ZeroParamSpec::counted).
  double counted_sum_squares(int unit, const float* region, Device device) const;
  int64_t grad_at(int unit) const;
  std::vector<const float*> unit_ptrs(int u, const float* base) const;
  std::vector<float*> unit_ptrs(int u, float* base) const;

  std::vector<ZeroUnit> units_;
  std::vector<ZeroLayout> layouts_;  // one per unit
  std::vector<int64_t> region_at_;   // start of unit u's region in this rank's shard buffers
  int stage_;
  std::array<Communicator*, 2> groups_;  // by ZeroUnit::group
  Communicator& group(int unit) const {
    return *groups_[static_cast<size_t>(units_[static_cast<size_t>(unit)].group)];
  }
  std::vector<float*> model_weights_, model_grads_;

  MemoryPlan plan_{"ZeRO"};
  ZeroBytes bytes_;
  MemoryPlan::Slot master_ = 0, grad_ = 0;
  std::vector<MemoryPlan::Slot> staging_;          // ranks × the largest unit region each
  std::vector<MemoryPlan::Slot> unit_w_, unit_g_;  // stage 3 weights, stage 2/3 gradients
  std::vector<int> staging_owner_;                 // -1 free, else 1 (pending work or a prefetch)
  std::vector<int> w_owner_, g_owner_;             // unit held in each unit buffer, -1 when free
  std::vector<bool> grad_fresh_;  // unit's gradient shard not yet written this step
  // Per-layer update: unit u's shard lives in buffer u % 2 of the gradient shard plan.
  bool per_layer_ = false;
  int64_t widest_region_ = 0;
  UnitReady ready_;
  std::vector<int> grad_slot_owner_;  // unit whose shard is in each buffer until handed over
  int pending_ = -1;                  // released unit not yet handed over
  size_t handed_ = 0;                 // units handed over this step
  std::vector<std::unique_ptr<InFlight>> flights_;  // oldest first
  std::vector<std::vector<int>> orders_;            // per chunk
  std::vector<int> order_;                          // the current micro-batch's chunk's
  size_t order_pos_ = 0;
  bool overlap_ = true;
  ZeroTimers timers_;
};

}  // namespace keel::parallel
