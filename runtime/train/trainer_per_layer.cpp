// optimizer.per_layer_update: the optimizer steps each unit (embedding, block, head) from inside
// the backward, as soon as the unit's gradient is complete, and that gradient's memory then
// serves the next unit. The gradient synchronisation (runtime/train/grad_sync.h) hands the units
// over; this file maps a unit to its optimizer tensors and steps them.
#include <cmath>

#include "kernels/ops.h"
#include "runtime/train/trainer.h"

namespace keel::runtime {

// The optimizer's tensors are the units' parameters, unit after unit (ZeRO 0: the model's
// parameter order; ZeRO 2, 3: Zero::shards()), so each unit steps one contiguous range. Checked
// by name, since a unit stepped with another's range would train silently wrong.
void Trainer::build_per_layer(const std::vector<optim::ParamRef>& refs) {
  unit_first_ = {0};
  size_t i = 0;
  for (const parallel::ZeroUnit& u : model_->units()) {
    for (const parallel::ZeroParamSpec& p : u.params) {
      KEEL_CHECK(i < refs.size() && refs[i].name == p.name,
                 "per-layer update: the optimizer's tensor {} is '{}', but unit '{}' expects '{}' "
                 "there (internal error)",
                 i, i < refs.size() ? refs[i].name : "none", u.name, p.name);
      ++i;
    }
    unit_first_.push_back(i);
  }
  KEEL_CHECK(i == refs.size(),
             "per-layer update: the units hold {} tensors, the optimizer {} (internal error)",
             unit_first_.back(), refs.size());
  sync_->set_unit_ready([this](int u, double sq) { step_unit(u, sq); });
}

// Called by the hooks during the backward (the same units in the same order on every rank).
// No clipping (the config refuses max_grad_norm with a per-layer update). A gradient that is not
// finite steps nothing from its unit on (the divergence guard then rejects the whole step, since
// the norm it adds up is not finite either); its first tensor is kept for the report.
void Trainer::step_unit(int unit, double grad_sum_squares) {
  const size_t u = static_cast<size_t>(unit);
  unit_sum_squares_ += grad_sum_squares;
  // Each rank holds other parts of the unit (TP's slices; under ZeRO its shards): the ranks
  // holding them decide alike, so that all step the same units (the optimizer's collectives over
  // a unit's group need every part; the hooks run in step on every rank).
  parallel::Communicator& parts = sync_->shard_group() ? grid_.tp_dp() : grid_.tp();
  if (unit_bad_tensor_ < 0 && !std::isfinite(group_sum(parts, grad_sum_squares))) {
    const kernels::Ops& k = kernels::ops(Device::cpu());  // gradient views are host memory
    for (size_t i = unit_first_[u]; i < unit_first_[u + 1] && unit_bad_tensor_ < 0; ++i)
      if (k.count_nonfinite(grads_[i].grad, grads_[i].n, {}) > 0)
        unit_bad_tensor_ = static_cast<int64_t>(i);
    if (unit_bad_tensor_ < 0) unit_bad_tensor_ = static_cast<int64_t>(unit_first_[u]);
  }
  if (unit_bad_tensor_ >= 0) return;
  optimizer_->step_tensors(unit_first_[u], unit_first_[u + 1], unit_lr_, 1.0);
}

}  // namespace keel::runtime
