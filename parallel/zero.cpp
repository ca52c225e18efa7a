#include "parallel/zero.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "kernels/error.h"
#include "kernels/ops.h"

namespace keel::parallel {

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Reduce-scatters in flight at once (each holds a staging buffer), plus one prefetched gather.
constexpr int kReducesInFlight = 2;
// Per-layer update: gradient shard buffers. A unit's reduce-scatter starts while the unit
// released before it waits to be handed over; the one before that has been.
constexpr int kGradSlots = 2;

}  // namespace

// One collective in flight on a staging buffer: a unit's gradient reduce-scatter or its gather.
struct Zero::InFlight {
  bool reduce;
  int unit;
  int staging;
  Work work;
  bool direct = false;  // a reduce whose result lands in the gradient shard itself
};

namespace {

// The buffers of ZeRO on one rank of `ranks`, declared in plan: the shards of every unit side by
// side (master and gradient; with a per-layer update, gradient shards of kGradSlots units only),
// staging buffers of ranks × the widest unit region, and the unit buffers stages 2 and 3 hand to
// the model.
struct Declared {
  MemoryPlan::Slot master = 0, grad = 0;
  std::vector<MemoryPlan::Slot> staging, unit_w, unit_g;
  ZeroBytes bytes;
};

// Ranks of each group a unit may be sharded over (ZeroUnit::group).
using GroupRanks = std::array<int, 2>;

Declared declare(MemoryPlan& plan, const std::vector<ZeroLayout>& layouts,
                 const std::vector<ZeroUnit>& units, int stage, GroupRanks ranks, int live_units,
                 bool per_layer) {
  int64_t region_total = 0, widest_region = 0, widest_unit = 0, widest_staging = 0;
  for (size_t u = 0; u < units.size(); ++u) {
    region_total += layouts[u].region_elems();
    widest_region = std::max(widest_region, layouts[u].region_elems());
    widest_unit = std::max(widest_unit, units[u].elems);
    widest_staging = std::max(
        widest_staging, layouts[u].region_elems() * ranks[static_cast<size_t>(units[u].group)]);
  }
  Declared d;
  d.master = plan.add("master shard", DType::F32, {region_total});
  const int64_t grad_total = per_layer ? kGradSlots * widest_region : region_total;
  d.grad = plan.add(per_layer ? "gradient shards in flight" : "gradient shard", DType::F32,
                    {grad_total});
  const int staging = kReducesInFlight + (stage == 3 ? 1 : 0);
  for (int i = 0; i < staging; ++i)
    d.staging.push_back(plan.add("staging " + std::to_string(i), DType::F32, {widest_staging}));
  if (stage == 3)
    for (int i = 0; i < live_units; ++i)
      d.unit_w.push_back(plan.add("unit weights " + std::to_string(i), DType::F32, {widest_unit}));
  if (stage >= 2)
    for (int i = 0; i < live_units; ++i)
      d.unit_g.push_back(
          plan.add("unit gradients " + std::to_string(i), DType::F32, {widest_unit}));
  auto bytes = [&](const std::vector<MemoryPlan::Slot>& slots) {
    size_t n = 0;
    for (MemoryPlan::Slot s : slots) n += static_cast<size_t>(plan.shape(s).numel()) * 4;
    return n;
  };
  d.bytes.master = static_cast<size_t>(region_total) * 4;
  d.bytes.grad_shard = static_cast<size_t>(grad_total) * 4;
  d.bytes.staging = bytes(d.staging);
  d.bytes.unit_weights = bytes(d.unit_w);
  d.bytes.unit_grads = bytes(d.unit_g);
  return d;
}

std::vector<ZeroLayout> make_layouts(const std::vector<ZeroUnit>& units, int stage,
                                     GroupRanks ranks, int live_units, bool per_layer) {
  KEEL_CHECK(stage >= 1 && stage <= 3, "ZeRO stage must be 1, 2 or 3, got {}", stage);
  KEEL_CHECK(!per_layer || stage >= 2,
             "ZeRO {}: a per-layer update needs stage 2 or 3 (stage 1 reduces the gradients only "
             "after the backward)",
             stage);
  KEEL_CHECK(!units.empty(), "ZeRO needs at least one unit of parameters");
  KEEL_CHECK(live_units >= 1, "ZeRO: live_units must be at least 1, got {}", live_units);
  std::vector<ZeroLayout> layouts;
  for (const ZeroUnit& u : units) {
    KEEL_CHECK(u.params.size() == u.offsets.size(), "ZeRO unit '{}': {} parameters, {} offsets",
               u.name, u.params.size(), u.offsets.size());
    for (size_t i = 0; i < u.params.size(); ++i)
      KEEL_CHECK(u.offsets[i] >= 0 && u.offsets[i] + u.params[i].rows * u.params[i].cols <= u.elems,
                 "ZeRO unit '{}': parameter '{}' lies outside the unit's {} floats", u.name,
                 u.params[i].name, u.elems);
    KEEL_CHECK(u.group == ZeroUnit::kDataGroup || u.group == ZeroUnit::kExpertGroup,
               "ZeRO unit '{}' names group {} (internal error)", u.name, u.group);
    layouts.emplace_back(u.params, ranks[static_cast<size_t>(u.group)]);
  }
  return layouts;
}

}  // namespace

ZeroBytes Zero::plan(const std::vector<ZeroUnit>& units, int stage, int ranks, int live_units,
                     bool per_layer_update, int expert_ranks) {
  MemoryPlan plan("ZeRO");
  const GroupRanks groups = {ranks, expert_ranks > 0 ? expert_ranks : ranks};
  return declare(plan, make_layouts(units, stage, groups, live_units, per_layer_update), units,
                 stage, groups, live_units, per_layer_update)
      .bytes;
}

Zero::Zero(std::vector<ZeroUnit> units, int stage, Communicator& dp, int live_units,
           bool per_layer_update, Communicator* expert_dp)
    : units_(std::move(units)),
      layouts_(make_layouts(units_, stage, {dp.size(), expert_dp ? expert_dp->size() : dp.size()},
                            live_units, per_layer_update)),
      stage_(stage),
      groups_{&dp, expert_dp ? expert_dp : &dp},
      per_layer_(per_layer_update) {
  int64_t at = 0;
  for (const ZeroLayout& l : layouts_) {
    region_at_.push_back(at);
    at += l.region_elems();
    widest_region_ = std::max(widest_region_, l.region_elems());
  }
  Declared d = declare(plan_, layouts_, units_, stage, {groups_[0]->size(), groups_[1]->size()},
                       live_units, per_layer_);
  master_ = d.master;
  grad_ = d.grad;
  staging_ = std::move(d.staging);
  unit_w_ = std::move(d.unit_w);
  unit_g_ = std::move(d.unit_g);
  bytes_ = d.bytes;
  plan_.allocate();
  staging_owner_.assign(staging_.size(), -1);
  w_owner_.assign(unit_w_.size(), -1);
  g_owner_.assign(unit_g_.size(), -1);
  grad_fresh_.assign(units_.size(), true);
  grad_slot_owner_.assign(kGradSlots, -1);
}

Zero::~Zero() {
  // Pending work waits in its handle's destructor; the buffers it names are still alive here.
  flights_.clear();
}

void Zero::attach_model(std::vector<float*> weights, std::vector<float*> grads) {
  KEEL_CHECK(stage_ <= 2 && weights.size() == units_.size(),
             "ZeRO {}: attach_model takes the weights of all {} units (stages 1 and 2 only)",
             stage_, units_.size());
  KEEL_CHECK(stage_ == 1 ? grads.size() == units_.size() : grads.empty(),
             "ZeRO {}: the model keeps gradients in stage 1 only", stage_);
  model_weights_ = std::move(weights);
  model_grads_ = std::move(grads);
}

void Zero::set_weight_orders(std::vector<std::vector<int>> orders) {
  for (const std::vector<int>& order : orders)
    for (int u : order)
      KEEL_CHECK(u >= 0 && u < static_cast<int>(units_.size()), "ZeRO weight order names unit {}",
                 u);
  orders_ = std::move(orders);
  order_ = orders_.empty() ? std::vector<int>{} : orders_.front();
}

std::vector<const float*> Zero::unit_ptrs(int u, const float* base) const {
  std::vector<const float*> out;
  for (int64_t off : units_[static_cast<size_t>(u)].offsets) out.push_back(base + off);
  return out;
}

std::vector<float*> Zero::unit_ptrs(int u, float* base) const {
  std::vector<float*> out;
  for (int64_t off : units_[static_cast<size_t>(u)].offsets) out.push_back(base + off);
  return out;
}

void Zero::init_master(const std::function<const float*(int, float*)>& full) {
  float* scratch = unit_w_.empty() ? nullptr : plan_[unit_w_[0]].f32();
  KEEL_CHECK(stage_ < 3 || w_owner_[0] < 0, "ZeRO: init_master while unit weights are held");
  float* master = plan_[master_].f32();
  for (size_t u = 0; u < units_.size(); ++u) {
    const float* w = full(static_cast<int>(u), scratch);
    layouts_[u].pack(master + region_at_[u], group(static_cast<int>(u)).rank(),
                     unit_ptrs(static_cast<int>(u), w));
  }
}

std::vector<ZeroShardRef> Zero::shards() {
  std::vector<ZeroShardRef> out;
  float* master = plan_[master_].f32();
  const float* grad = plan_[grad_].f32();
  for (size_t u = 0; u < units_.size(); ++u)
    for (size_t i = 0; i < units_[u].params.size(); ++i) {
      const ZeroShard& s = layouts_[u].shard(i);
      const int64_t at = region_at_[u] + s.offset;
      const int64_t g = grad_at(static_cast<int>(u)) + s.offset;
      out.push_back({&units_[u].params[i], master + at, grad + g, s.elems,
                     layouts_[u].rect(i, group(static_cast<int>(u)).rank())});
    }
  return out;
}

// Where unit u's gradient shard starts in the gradient shard plan.
int64_t Zero::grad_at(int unit) const {
  const size_t u = static_cast<size_t>(unit);
  return per_layer_ ? (unit % kGradSlots) * widest_region_ : region_at_[u];
}

// --- Staging buffers and the collectives on them --------------------------------------------

int Zero::take_staging() {
  for (;;) {
    for (size_t i = 0; i < staging_owner_.size(); ++i)
      if (staging_owner_[i] < 0) {
        staging_owner_[i] = 1;
        return static_cast<int>(i);
      }
    finish_oldest();
  }
}

void Zero::start_gather(int unit, int staging) {
  const int64_t region = layouts_[static_cast<size_t>(unit)].region_elems();
  Communicator& g = group(unit);
  Tensor out = plan_[staging_[static_cast<size_t>(staging)]].slice0(0, region * g.size());
  Tensor in = plan_[master_].slice0(region_at_[static_cast<size_t>(unit)],
                                    region_at_[static_cast<size_t>(unit)] + region);
  flights_.push_back(
      std::make_unique<InFlight>(InFlight{false, unit, staging, g.all_gather_async(out, in)}));
}

// The first reduction of a unit in a step writes the gradient shard directly; later ones (more
// micro-batches) land in the staging buffer and are added when they retire, in order.
void Zero::start_reduce(int unit, int staging) {
  const size_t u = static_cast<size_t>(unit);
  const int64_t region = layouts_[u].region_elems();
  Communicator& g = group(unit);
  Tensor in = plan_[staging_[static_cast<size_t>(staging)]].slice0(0, region * g.size());
  const bool direct = grad_fresh_[u];
  grad_fresh_[u] = false;
  Tensor out = direct ? plan_[grad_].slice0(grad_at(unit), grad_at(unit) + region)
                      : in.slice0(g.rank() * region, (g.rank() + 1) * region);
  flights_.push_back(std::make_unique<InFlight>(
      InFlight{true, unit, staging, g.reduce_scatter_async(out, in), direct}));
  if (!overlap_) finish_all();
}

// A finished reduce-scatter that did not write the shard directly adds this rank's chunk into it.
// Reduces finish in the order they started, so micro-batches add up in order.
void Zero::finish(InFlight& f) {
  if (f.work.pending()) {
    const auto t0 = Clock::now();
    f.work.wait();
    timers_.wait_seconds += since(t0);
  }
  if (!f.reduce) return;  // a gather's buffer is unpacked by whoever asked for it
  if (!f.direct) {
    const size_t u = static_cast<size_t>(f.unit);
    const int64_t region = layouts_[u].region_elems();
    const float* chunk =
        plan_[staging_[static_cast<size_t>(f.staging)]].f32() + group(f.unit).rank() * region;
    const auto t0 = Clock::now();
    const Tensor grads = plan_[grad_];
    kernels::ops(grads.device()).add_inplace(grads.f32() + grad_at(f.unit), chunk, region, {});
    timers_.copy_seconds += since(t0);
  }
  staging_owner_[static_cast<size_t>(f.staging)] = -1;
}

void Zero::finish_oldest() {
  for (auto it = flights_.begin(); it != flights_.end(); ++it)
    if ((*it)->reduce) {
      finish(**it);
      flights_.erase(it);
      return;
    }
  KEEL_FAIL("ZeRO: every staging buffer is held by a gather nobody asked for (internal error)");
}

void Zero::finish_all() {
  while (!flights_.empty()) {
    InFlight& f = *flights_.front();
    finish(f);
    if (!f.reduce) staging_owner_[static_cast<size_t>(f.staging)] = -1;  // an unused prefetch
    flights_.erase(flights_.begin());
  }
}

void Zero::progress() {
  // Test every pending collective (that is what moves MPI's), but retire reduces only in order.
  bool in_order = true;
  for (auto it = flights_.begin(); it != flights_.end();) {
    InFlight& f = **it;
    const bool done = !f.work.pending() || f.work.test();
    if (f.reduce && done && in_order) {
      finish(f);
      it = flights_.erase(it);
      continue;
    }
    if (f.reduce) in_order = false;
    ++it;
  }
}

// --- The step ----------------------------------------------------------------------------------

void Zero::begin_step() {
  finish_all();
  KEEL_CHECK(!per_layer_ || ready_, "ZeRO: a per-layer update needs set_unit_ready first");
  std::fill(grad_fresh_.begin(), grad_fresh_.end(), true);
  std::fill(grad_slot_owner_.begin(), grad_slot_owner_.end(), -1);
  pending_ = -1;
  handed_ = 0;
  order_pos_ = 0;
}

void Zero::begin_micro_batch(int chunk) {
  if (static_cast<size_t>(chunk) < orders_.size()) order_ = orders_[static_cast<size_t>(chunk)];
  // A prefetch left over from a pass that stopped early (forward only) is dropped.
  for (auto it = flights_.begin(); it != flights_.end();) {
    if ((*it)->reduce) {
      ++it;
      continue;
    }
    finish(**it);
    staging_owner_[static_cast<size_t>((*it)->staging)] = -1;
    it = flights_.erase(it);
  }
  order_pos_ = 0;
}

void Zero::reduce_gradients() {
  if (stage_ == 1) {
    // Last unit first, as a backward would produce them; two reductions in flight.
    for (int u = static_cast<int>(units_.size()) - 1; u >= 0; --u)
      reduce_unit(u, model_grads_[static_cast<size_t>(u)]);
  }
  finish_all();
  if (per_layer_) {
    if (pending_ >= 0) hand_over(pending_);
    pending_ = -1;
    KEEL_CHECK(handed_ == units_.size(),
               "ZeRO: the per-layer update stepped {} of the {} units this step; every unit's "
               "backward must release its gradients once (internal error)",
               handed_, units_.size());
    return;
  }
  for (size_t u = 0; u < units_.size(); ++u)
    if (grad_fresh_[u]) {  // no gradient reached this unit in the step
      std::fill_n(plan_[grad_].f32() + region_at_[u], layouts_[u].region_elems(), 0.0f);
      grad_fresh_[u] = false;
    }
}

// The unit's reduce-scatter (and every older one) retires first: the handed-over shard is summed.
void Zero::hand_over(int unit) {
  while (std::any_of(flights_.begin(), flights_.end(),
                     [&](const auto& f) { return f->reduce && f->unit == unit; }))
    finish_oldest();
  const Tensor grads = plan_[grad_];
  ready_(unit, counted_sum_squares(unit, grads.f32() + grad_at(unit), grads.device()));
  grad_slot_owner_[static_cast<size_t>(unit % kGradSlots)] = -1;
  ++handed_;
}

double Zero::grad_sum_squares() const {
  KEEL_CHECK(!per_layer_,
             "ZeRO: with a per-layer update the units share gradient shard buffers; each unit's "
             "Σ g² comes with its hand-over");
  const Tensor g = plan_[grad_];
  double sum = 0.0;
  for (size_t u = 0; u < units_.size(); ++u)
    sum += counted_sum_squares(static_cast<int>(u), g.f32() + region_at_[u], g.device());
  return sum;
}

double Zero::counted_sum_squares(int unit, const float* region, Device device) const {
  const ZeroLayout& layout = layouts_[static_cast<size_t>(unit)];
  return parallel::counted_sum_squares(
      layout.params(), region, layout.region_elems(),
      [&](size_t i) {
        return std::pair{layout.shard(i).offset, layout.shard(i).elems};
      },
      device);
}

void Zero::publish_weights() {
  if (stage_ == 3) return;
  finish_all();
  if (groups_[0]->size() == 1 && groups_[1]->size() == 1) {  // the shards are the parameters
    const auto t0 = Clock::now();
    for (size_t u = 0; u < units_.size(); ++u)
      layouts_[u].unpack(plan_[master_].f32() + region_at_[u], 0,
                         unit_ptrs(static_cast<int>(u), model_weights_[u]));
    timers_.copy_seconds += since(t0);
    return;
  }
  // Gather unit u+1 while unit u is unpacked.
  const int n = static_cast<int>(units_.size());
  int prev = -1;
  for (int u = 0; u <= n; ++u) {
    if (u < n) start_gather(u, take_staging());
    if (prev >= 0) {
      InFlight& f = *flights_.front();
      finish(f);
      const auto t0 = Clock::now();
      layouts_[static_cast<size_t>(prev)].unpack_all(
          plan_[staging_[static_cast<size_t>(f.staging)]].f32(),
          unit_ptrs(prev, model_weights_[static_cast<size_t>(prev)]));
      timers_.copy_seconds += since(t0);
      staging_owner_[static_cast<size_t>(f.staging)] = -1;
      flights_.erase(flights_.begin());
    }
    prev = u;
  }
}

void Zero::gather_unit(int u, float* out) {
  finish_all();
  const int s = take_staging();
  start_gather(u, s);
  finish(*flights_.back());
  layouts_[static_cast<size_t>(u)].unpack_all(plan_[staging_[static_cast<size_t>(s)]].f32(),
                                              unit_ptrs(u, out));
  staging_owner_[static_cast<size_t>(s)] = -1;
  flights_.pop_back();
}

// --- Hooks -------------------------------------------------------------------------------------

float* Zero::acquire_weights(int unit) {
  KEEL_CHECK(stage_ == 3, "ZeRO {}: the model keeps its own weights", stage_);
  const size_t u = static_cast<size_t>(unit);
  const auto slot = std::find(w_owner_.begin(), w_owner_.end(), -1);
  KEEL_CHECK(slot != w_owner_.end(),
             "ZeRO 3: unit '{}' asked for while {} others are held (internal error)",
             units_[u].name, w_owner_.size());
  *slot = unit;
  float* w = plan_[unit_w_[static_cast<size_t>(slot - w_owner_.begin())]].f32();
  if (group(unit).size() == 1) {  // the master shards are the whole parameters
    const auto t0 = Clock::now();
    layouts_[u].unpack(plan_[master_].f32() + region_at_[u], 0, unit_ptrs(unit, w));
    timers_.copy_seconds += since(t0);
    return w;
  }

  // The prefetched gather of this unit, or a gather started now.
  auto it = std::find_if(flights_.begin(), flights_.end(),
                         [&](const auto& f) { return !f->reduce && f->unit == unit; });
  if (it == flights_.end()) {
    start_gather(unit, take_staging());
    it = std::prev(flights_.end());
  }
  InFlight& f = **it;
  finish(f);
  const int staging = f.staging;
  flights_.erase(it);
  const auto t0 = Clock::now();
  layouts_[u].unpack_all(plan_[staging_[static_cast<size_t>(staging)]].f32(), unit_ptrs(unit, w));
  timers_.copy_seconds += since(t0);
  staging_owner_[static_cast<size_t>(staging)] = -1;

  // Prefetch the unit that comes next in the model's order.
  if (order_pos_ < order_.size() && order_[order_pos_] == unit) {
    ++order_pos_;
    if (order_pos_ < order_.size() && overlap_) start_gather(order_[order_pos_], take_staging());
  }
  return w;
}

void Zero::release_weights(int unit) {
  const auto slot = std::find(w_owner_.begin(), w_owner_.end(), unit);
  KEEL_CHECK(slot != w_owner_.end(), "ZeRO 3: unit '{}' released but not held",
             units_[static_cast<size_t>(unit)].name);
  *slot = -1;
}

float* Zero::acquire_grads(int unit) {
  KEEL_CHECK(stage_ >= 2, "ZeRO {}: the model keeps its own gradients", stage_);
  const auto slot = std::find(g_owner_.begin(), g_owner_.end(), -1);
  KEEL_CHECK(slot != g_owner_.end(),
             "ZeRO: gradients of unit '{}' asked for while {} others are held (internal error)",
             units_[static_cast<size_t>(unit)].name, g_owner_.size());
  *slot = unit;
  float* g = plan_[unit_g_[static_cast<size_t>(slot - g_owner_.begin())]].f32();
  std::fill_n(g, units_[static_cast<size_t>(unit)].elems, 0.0f);
  return g;
}

void Zero::release_grads(int unit) {
  const auto slot = std::find(g_owner_.begin(), g_owner_.end(), unit);
  KEEL_CHECK(slot != g_owner_.end(), "ZeRO: gradients of unit '{}' released but not held",
             units_[static_cast<size_t>(unit)].name);
  // A second release in a step would add to a shard that a per-layer update has stepped already.
  KEEL_CHECK(!per_layer_ || grad_fresh_[static_cast<size_t>(unit)],
             "ZeRO: gradients of unit '{}' released twice in a step; a per-layer update steps a "
             "unit when it releases them, so once per step (one micro-batch)",
             units_[static_cast<size_t>(unit)].name);
  reduce_unit(unit, plan_[unit_g_[static_cast<size_t>(slot - g_owner_.begin())]].f32());
  *slot = -1;
  if (!per_layer_) return;
  // Unit u's reduce-scatter now runs behind the step of the unit released before it.
  if (pending_ >= 0) hand_over(pending_);
  pending_ = unit;
}

// Packs a unit's full gradients into a staging buffer and starts their reduce-scatter. On one
// rank there is nothing to reduce: the first gradient of a step is packed straight into the shard.
void Zero::reduce_unit(int unit, const float* grads) {
  const size_t u = static_cast<size_t>(unit);
  if (per_layer_) {
    int& owner = grad_slot_owner_[static_cast<size_t>(unit % kGradSlots)];
    KEEL_CHECK(owner < 0,
               "ZeRO: unit '{}' would reduce into the gradient shard of unit '{}', not yet "
               "stepped; a per-layer update needs the units' gradients released last unit first "
               "(internal error)",
               units_[u].name, owner < 0 ? "" : units_[static_cast<size_t>(owner)].name);
    owner = unit;
  }
  const auto t0 = Clock::now();
  if (group(unit).size() == 1 && grad_fresh_[u]) {
    layouts_[u].pack(plan_[grad_].f32() + grad_at(unit), 0, unit_ptrs(unit, grads));
    grad_fresh_[u] = false;
    timers_.copy_seconds += since(t0);
    return;
  }
  const int s = take_staging();
  layouts_[u].pack_all(plan_[staging_[static_cast<size_t>(s)]].f32(), unit_ptrs(unit, grads));
  timers_.copy_seconds += since(t0);
  start_reduce(unit, s);
}

}  // namespace keel::parallel
