#include "runtime/train/grad_sync.h"

#include <chrono>
#include <cstring>

#include "kernels/ops.h"
#include "parallel/unit_grads.h"
#include "runtime/train/memory_report.h"

namespace keel::runtime {
namespace {

using Clock = std::chrono::steady_clock;

// The groups an optimizer tensor's parts may be spread over (null in a plan, which has only sizes).
// (An expert's ZeRO shards are spread over the expert-data-parallel group instead of dp.)
struct TensorGroups {
  parallel::Communicator* tp = nullptr;
  parallel::Communicator* dp = nullptr;
  parallel::Communicator* tp_dp = nullptr;
  parallel::Communicator* edp = nullptr;
  parallel::Communicator* tp_edp = nullptr;
  int tp_size = 1, dp_size = 1, edp_size = 1;
};

TensorGroups groups_of(const parallel::ProcessGrid& grid) {
  return {&grid.tp(),     &grid.dp(),       &grid.tp_dp(),    &grid.edp(),
          &grid.tp_edp(), grid.tp().size(), grid.dp().size(), grid.edp().size()};
}

// Names the group holding the parts of p's optimizer tensor r: TP's slices (the TP group), ZeRO's
// shards (the DP group, or for an expert the expert-data-parallel one), or ZeRO's shards of TP's
// slices (tp_dp, tp_edp); a part held alike by several TP ranks is counted by one
// (Parameter::tp_counted).
optim::ParamRef grouped(optim::ParamRef r, const Parameter& p, const TensorGroups& g, bool zero) {
  const bool split = !p.shard.whole();
  parallel::Communicator* dp = p.expert ? g.edp : g.dp;
  parallel::Communicator* tp_dp = p.expert ? g.tp_edp : g.tp_dp;
  const int dp_size = p.expert ? g.edp_size : g.dp_size;
  if (split && zero) {
    r.group = tp_dp, r.parts = g.tp_size * dp_size;
  } else if (split) {
    r.group = g.tp, r.parts = g.tp_size;
  } else if (zero) {
    r.group = dp, r.parts = dp_size;
  }
  r.counted = !split || p.tp_counted;
  return r;
}

// ZeRO 0: every rank holds the whole model; the optimizer steps the parameters themselves, with
// the gradients `grads` point at (the model's plan, or the buffer of each parameter's unit).
class WholeModelSync : public GradSync {
 public:
  WholeModelSync(LlamaModel& model, const std::vector<const float*>& grads,
                 const TensorGroups& groups)
      : model_(model) {
    for (Parameter& p : model.parameters())
      tensors_.push_back(
          grouped(optimizer_tensor(p, p.value.f32(), grads[tensors_.size()], p.value.numel()), p,
                  groups, false));
  }
  const std::vector<optim::ParamRef>& tensors() const override { return tensors_; }
  parallel::Communicator* shard_group() override { return nullptr; }
  bool model_holds_weights() const override { return true; }
  void gather_unit(int u, float* out) override {
    std::memcpy(out, model_.own_weights(u),
                static_cast<size_t>(model_.units()[static_cast<size_t>(u)].elems) * sizeof(float));
  }

 protected:
  LlamaModel& model_;

 private:
  std::vector<optim::ParamRef> tensors_;
};

// The model's own gradient of each parameter.
std::vector<const float*> model_grads(LlamaModel& model) {
  std::vector<const float*> grads;
  for (const Parameter& p : model.parameters()) grads.push_back(p.grad.f32());
  return grads;
}

// ZeRO 0: the model's whole gradient plan all-reduced after the backward. Under expert
// parallelism the experts' units are summed over the expert-data-parallel group instead, each run
// of units of one group in one call.
class AllReduceSync final : public WholeModelSync {
 public:
  AllReduceSync(LlamaModel& model, const parallel::ProcessGrid& grid)
      : WholeModelSync(model, model_grads(model), groups_of(grid)),
        dp_(grid.dp()),
        edp_(grid.edp()),
        ep_(grid.ep()) {}
  void set_unit_ready(parallel::UnitReady) override {
    KEEL_FAIL("the whole-plan all-reduce hands no unit over (internal error)");
  }
  void begin_step() override {}
  double reduce(const std::function<double()>&) override {
    const auto t0 = Clock::now();
    if (ep_.size() == 1) {
      dp_.all_reduce(model_.grad_storage());
    } else {
      const std::vector<parallel::ZeroUnit>& units = model_.units();
      for (size_t u = 0; u < units.size();) {
        size_t end = u + 1;
        while (end < units.size() && units[end].group == units[u].group) ++end;
        float* first = model_.own_grads(static_cast<int>(u));
        const float* last = model_.own_grads(static_cast<int>(end - 1)) + units[end - 1].elems;
        (units[u].group == parallel::ZeroUnit::kExpertGroup ? edp_ : dp_)
            .all_reduce(Tensor(first, DType::F32, {last - first}));
        u = end;
      }
    }
    sum_tied_gradient();
    wait_ += std::chrono::duration<double>(Clock::now() - t0).count();
    // Every rank holds the whole dense gradient, and its own experts': those sum over ep.
    double sq[2] = {0.0, 0.0};
    for (const Parameter& p : model_.parameters())
      if (p.tp_counted && !p.tied_copy)
        sq[p.expert] += kernels::ops(p.grad.device()).sum_squares(p.grad.f32(), p.grad.numel(), {});
    if (ep_.size() > 1) ep_.all_reduce(parallel::host_view(&sq[1], 1));
    return sq[0] + sq[1];
  }
  parallel::ZeroTimers timers() const override { return {wait_, 0.0}; }
  parallel::ZeroBytes bytes() const override { return {}; }

 private:
  parallel::Communicator& dp_;
  parallel::Communicator& edp_;
  parallel::Communicator& ep_;
  double wait_ = 0.0;
};

// ZeRO 0 with a per-layer update: the model holds no gradient plan; parallel::UnitGrads hands it
// one unit's buffer at a time and all-reduces it on release, then hands it over to be stepped.
class UnitAllReduceSync final : public WholeModelSync {
 public:
  UnitAllReduceSync(LlamaModel& model, std::unique_ptr<parallel::UnitGrads> grads,
                    const TensorGroups& groups)
      : WholeModelSync(model, unit_grads(model, *grads), groups), grads_(std::move(grads)) {
    model.set_hooks(grads_.get());
  }
  void set_unit_ready(parallel::UnitReady ready) override {
    grads_->set_unit_ready(std::move(ready));
  }
  void begin_step() override { grads_->begin_step(); }
  // Every unit was stepped already; each rank summed the whole gradient.
  double reduce(const std::function<double()>& stepped) override {
    grads_->end_step();
    return stepped();
  }
  parallel::ZeroTimers timers() const override { return {grads_->wait_seconds(), 0.0}; }
  parallel::ZeroBytes bytes() const override {
    parallel::ZeroBytes z;
    z.unit_grads = grads_->bytes();
    return z;
  }

 private:
  // Each parameter's gradient in the buffer of its unit; the parameters are the units' in order
  // (the per-layer update checks the names).
  static std::vector<const float*> unit_grads(const LlamaModel& model,
                                              const parallel::UnitGrads& grads) {
    std::vector<const float*> out;
    for (size_t u = 0; u < model.units().size(); ++u)
      for (int64_t offset : model.units()[u].offsets)
        out.push_back(grads.grads(static_cast<int>(u)) + offset);
    return out;
  }
  std::unique_ptr<parallel::UnitGrads> grads_;
};

// ZeRO 1-3 (parallel/zero.h): this rank keeps the fp32 master copy of its shard of every
// parameter; the model keeps full weights (stages 1, 2) and gradients (stage 1), or asks the Zero
// object for them unit by unit.
class ZeroSync final : public GradSync {
 public:
  ZeroSync(const Config& config, LlamaModel& model, const parallel::ProcessGrid& grid)
      : dp_(grid.dp()),
        stage_(static_cast<int>(config.parallel.zero_stage)),
        per_layer_(config.optimizer.per_layer_update),
        zero_(model.units(), stage_, dp_, model.live_units(), per_layer_, &grid.edp()) {
    const uint64_t seed = config.training.seed;
    const int n = static_cast<int>(model.units().size());
    if (stage_ < 3) {
      model.init_weights(seed);
      std::vector<float*> weights, grads;
      for (int u = 0; u < n; ++u) {
        weights.push_back(model.own_weights(u));
        if (stage_ == 1) grads.push_back(model.own_grads(u));
      }
      zero_.attach_model(std::move(weights), std::move(grads));
      zero_.init_master([&](int u, float*) { return model.own_weights(u); });
    } else {
      // Each unit initialised in full in a scratch buffer, one at a time, its shard kept.
      zero_.init_master([&](int u, float* scratch) {
        model.init_unit(u, seed, scratch);
        return scratch;
      });
      zero_.set_weight_orders(model.weight_orders());
    }
    if (stage_ >= 2) model.set_hooks(&zero_);
    zero_.set_overlap(config.parallel.overlap_comm);
    for (const parallel::ZeroShardRef& s : zero_.shards()) {  // (a vector's rect: rows of n × 1)
      const Parameter& p = model.parameter_by_name(s.spec->name);
      tensors_.push_back(grouped(optimizer_tensor(p, s.master, s.grad, s.elems, &s.rect), p,
                                 groups_of(grid), true));
    }
  }
  const std::vector<optim::ParamRef>& tensors() const override { return tensors_; }
  parallel::Communicator* shard_group() override { return &dp_; }
  bool model_holds_weights() const override { return stage_ < 3; }
  void set_unit_ready(parallel::UnitReady ready) override {
    zero_.set_unit_ready(std::move(ready));
  }
  void begin_step() override { zero_.begin_step(); }
  // This rank's gradient shards, summed over the group; the norm² is summed over the shards.
  double reduce(const std::function<double()>& stepped) override {
    zero_.reduce_gradients();  // per-layer update: hands the last unit over
    if (!per_layer_) sum_tied_gradient();
    sum_squares_ = per_layer_ ? stepped() : zero_.grad_sum_squares();
    dp_.all_reduce(parallel::host_view(&sum_squares_, 1));
    return sum_squares_;
  }
  void publish() override { zero_.publish_weights(); }
  void gather_unit(int u, float* out) override { zero_.gather_unit(u, out); }
  parallel::ZeroTimers timers() const override { return zero_.timers(); }
  parallel::ZeroBytes bytes() const override { return zero_.bytes(); }

 private:
  parallel::Communicator& dp_;
  int stage_;
  bool per_layer_;
  parallel::Zero zero_;
  std::vector<optim::ParamRef> tensors_;
  double sum_squares_ = 0.0;  // reduced in place over the group
};

}  // namespace

void GradSync::sum_tied_gradient() {
  if (!tied_) return;
  for (const optim::ParamRef& r : tensors())
    if (r.name == "model.embed_tokens.weight" && r.n > 0)
      tied_->all_reduce(Tensor(const_cast<float*>(r.grad), DType::F32, Shape{r.n}));
}

ModelHolds model_holds(const Config& config, bool allocate) {
  const int64_t stage = config.parallel.zero_stage;
  return {stage < 3, stage < 2 && !config.optimizer.per_layer_update, allocate};
}

GradSyncPlan plan_grad_sync(const Config& config, const LlamaModel& model, int dp) {
  const int stage = static_cast<int>(config.parallel.zero_stage);
  const bool per_layer = config.optimizer.per_layer_update;
  TensorGroups sizes;
  const int ep = static_cast<int>(config.parallel.expert_model_parallel_size);
  sizes.tp_size = model.tp_split().size, sizes.dp_size = dp, sizes.edp_size = dp / ep;
  GradSyncPlan plan;
  if (stage == 0) {
    if (per_layer)
      plan.bytes.unit_grads = parallel::UnitGrads::plan_bytes(model.units(), model.live_units());
    for (const Parameter& p : model.parameters())
      plan.tensors.push_back(
          grouped(optimizer_tensor(p, nullptr, nullptr, p.value.numel()), p, sizes, false));
    return plan;
  }
  plan.bytes =
      parallel::Zero::plan(model.units(), stage, dp, model.live_units(), per_layer, dp / ep);
  for (const parallel::ZeroUnit& u : model.units()) {
    const parallel::ZeroLayout layout(u.params,
                                      u.group == parallel::ZeroUnit::kExpertGroup ? dp / ep : dp);
    for (size_t i = 0; i < u.params.size(); ++i) {
      const parallel::ShardRect rect = layout.rect(i, 0);
      const Parameter& p = model.parameter_by_name(u.params[i].name);
      plan.tensors.push_back(grouped(
          optimizer_tensor(p, nullptr, nullptr, layout.shard(i).elems, &rect), p, sizes, true));
    }
  }
  return plan;
}

std::unique_ptr<GradSync> make_grad_sync(const Config& config, LlamaModel& model,
                                         const parallel::ProcessGrid& grid) {
  if (config.parallel.zero_stage > 0) return std::make_unique<ZeroSync>(config, model, grid);
  model.init_weights(config.training.seed);
  if (config.optimizer.per_layer_update)
    return std::make_unique<UnitAllReduceSync>(
        model,
        std::make_unique<parallel::UnitGrads>(model.units(), grid.dp(), model.live_units(),
                                              &grid.edp()),
        groups_of(grid));
  return std::make_unique<AllReduceSync>(model, grid);
}

}  // namespace keel::runtime
