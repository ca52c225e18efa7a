#include "parallel/unit_grads.h"

#include <algorithm>
#include <chrono>

#include "kernels/error.h"
#include "kernels/ops.h"

namespace keel::parallel {

namespace {

std::vector<MemoryPlan::Slot> declare(MemoryPlan& plan, const std::vector<ZeroUnit>& units,
                                      int live_units) {
  KEEL_CHECK(!units.empty(), "unit gradients: the model has no units");
  KEEL_CHECK(live_units >= 1 && live_units <= 3,
             "unit gradients: live_units must be 1, 2 or 3, got {}", live_units);
  int64_t widest = 0;
  for (const ZeroUnit& u : units) widest = std::max(widest, u.elems);
  std::vector<MemoryPlan::Slot> slots;
  for (int i = 0; i < live_units; ++i)
    slots.push_back(plan.add("unit gradients " + std::to_string(i), DType::F32, {widest}));
  return slots;
}

}  // namespace

UnitGrads::UnitGrads(const std::vector<ZeroUnit>& units, Communicator& dp, int live_units,
                     Communicator* expert_dp)
    : units_(units), dp_(dp), expert_dp_(expert_dp ? *expert_dp : dp), live_units_(live_units) {
  experts_ = std::any_of(units_.begin(), units_.end(),
                         [](const ZeroUnit& u) { return u.group == ZeroUnit::kExpertGroup; });
  KEEL_CHECK(!experts_ || live_units >= 2,
             "unit gradients: a model with experts holds a layer's and its experts' gradients "
             "at once, but live_units is {} (internal error)",
             live_units);
  slots_ = declare(plan_, units_, live_units);
  plan_.allocate();
  owner_.assign(slots_.size(), -1);
  handed_.assign(units_.size(), false);
}

size_t UnitGrads::plan_bytes(const std::vector<ZeroUnit>& units, int live_units) {
  MemoryPlan plan("unit gradients");
  declare(plan, units, live_units);
  return plan.bytes();
}

// A fixed buffer per unit: an MoE layer's experts (held beside their layer) keep the second,
// unit 0 (the tied embedding, held across every other unit's backward) the last when one is
// left for it; all other units share the first (they are held one at a time).
int UnitGrads::slot_of(int unit) const {
  const ZeroUnit& u = units_[static_cast<size_t>(unit)];
  if (u.group == ZeroUnit::kExpertGroup) return 1;
  return unit == 0 && live_units_ > (experts_ ? 2 : 1) ? live_units_ - 1 : 0;
}

const float* UnitGrads::grads(int unit) const {
  return plan_[slots_[static_cast<size_t>(slot_of(unit))]].f32();
}

void UnitGrads::begin_step() {
  KEEL_CHECK(ready_, "unit gradients: set_unit_ready first");
  std::fill(handed_.begin(), handed_.end(), false);
}

void UnitGrads::end_step() {
  const auto n = std::count(handed_.begin(), handed_.end(), true);
  KEEL_CHECK(static_cast<size_t>(n) == units_.size(),
             "the per-layer update stepped {} of the {} units this step; every unit's backward "
             "must release its gradients once (internal error)",
             n, units_.size());
}

float* UnitGrads::acquire_weights(int unit) {
  KEEL_FAIL("unit gradients: the model asked for the weights of unit '{}', but it holds its own",
            units_[static_cast<size_t>(unit)].name);
}

void UnitGrads::release_weights(int unit) {
  KEEL_FAIL("unit gradients: the model released the weights of unit '{}', but it holds its own",
            units_[static_cast<size_t>(unit)].name);
}

float* UnitGrads::acquire_grads(int unit) {
  const size_t u = static_cast<size_t>(unit);
  const size_t s = static_cast<size_t>(slot_of(unit));
  KEEL_CHECK(owner_[s] < 0,
             "unit gradients: unit '{}' asked for its gradients while unit '{}' holds their "
             "buffer (internal error)",
             units_[u].name, owner_[s] < 0 ? "" : units_[static_cast<size_t>(owner_[s])].name);
  // The step has already been taken from a gradient released before: a second release would be
  // a second micro-batch.
  KEEL_CHECK(!handed_[u],
             "unit gradients: unit '{}' asked for its gradients twice in a step; a per-layer "
             "update steps a unit when it releases them, so once per step (one micro-batch)",
             units_[u].name);
  owner_[s] = unit;
  float* g = plan_[slots_[s]].f32();
  std::fill_n(g, units_[u].elems, 0.0f);
  return g;
}

void UnitGrads::release_grads(int unit) {
  const size_t u = static_cast<size_t>(unit);
  const size_t s = static_cast<size_t>(slot_of(unit));
  KEEL_CHECK(owner_[s] == unit, "unit gradients: unit '{}' released but not held", units_[u].name);
  const Tensor buffer = plan_[slots_[s]];
  float* g = buffer.f32();
  Communicator& group = units_[u].group == ZeroUnit::kExpertGroup ? expert_dp_ : dp_;
  if (group.size() > 1) {
    // Blocking: the buffer is stepped and reused right after, and ZeRO 0 keeps no second one to
    // overlap with.
    const auto t0 = std::chrono::steady_clock::now();
    group.all_reduce(Tensor(g, DType::F32, {units_[u].elems}));
    wait_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  const ZeroUnit& whole = units_[u];
  ready_(unit,
         counted_sum_squares(
             whole.params, g, whole.elems,
             [&](size_t i) {
               return std::pair{whole.offsets[i], whole.params[i].rows * whole.params[i].cols};
             },
             buffer.device()));
  handed_[u] = true;
  owner_[s] = -1;
}

}  // namespace keel::parallel
