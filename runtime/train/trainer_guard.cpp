// The divergence guard of the Trainer (runtime/train/trainer.h): a step whose loss or gradient norm
// is not finite, or whose loss spikes (training.loss_spike_factor), never reaches the weights, and
// weights that an update took past the float range are never evaluated, saved or exported. What
// the run does then is training.on_nonfinite's: stop naming the last good checkpoint, skip the
// batch, or roll back to the last good checkpoint and pass over the batch from there.
#include <cmath>
#include <limits>
#include <numeric>
#include <sstream>

#include "kernels/ops.h"
#include "parallel/agree.h"
#include "runtime/train/trainer.h"

namespace keel::runtime {
namespace {

// Good steps whose mean the spike guard compares a loss with, and how many it needs first.
constexpr size_t kSpikeWindow = 20;
constexpr size_t kSpikeWarmup = 10;

// "nan", "inf" or "-inf" (a NaN's sign bit says nothing), or the number.
std::string value_text(double v) {
  if (std::isnan(v)) return "nan";
  std::ostringstream text;
  text << v;
  return text.str();
}

}  // namespace

std::string Trainer::judge(double loss, double grad_sum_squares) {
  const TrainingConfig& t = config_.training;
  if (!std::isfinite(loss) || !std::isfinite(grad_sum_squares)) {
    std::ostringstream why;
    if (!std::isfinite(loss)) why << "the loss is " << value_text(loss);
    if (!std::isfinite(grad_sum_squares))
      why << (std::isfinite(loss) ? "" : " and ") << "the gradient norm is "
          << value_text(std::sqrt(grad_sum_squares));
    const std::string tensor = first_nonfinite_gradient();
    if (!tensor.empty()) why << " (first non-finite gradient: " << tensor << ")";
    return why.str();
  }
  if (t.loss_spike_factor > 0 && recent_losses_.size() >= kSpikeWarmup) {
    const double mean = std::accumulate(recent_losses_.begin(), recent_losses_.end(), 0.0) /
                        static_cast<double>(recent_losses_.size());
    if (loss > t.loss_spike_factor * mean) {
      std::ostringstream why;
      why << "the loss " << loss << " is " << loss / mean << " times the mean " << mean
          << " of the last " << recent_losses_.size() << " steps (training.loss_spike_factor "
          << t.loss_spike_factor << ")";
      return why.str();
    }
  }
  recent_losses_.push_back(loss);
  if (recent_losses_.size() > kSpikeWindow) recent_losses_.pop_front();
  return "";
}

std::string Trainer::first_nonfinite_gradient() {
  int64_t first = unit_bad_tensor_;  // per-layer update: found as the units were stepped
  if (!config_.optimizer.per_layer_update) {
    const kernels::Ops& k = kernels::ops(Device::cpu());  // gradient views are host memory
    for (size_t i = 0; i < grads_.size() && first < 0; ++i)
      if (k.count_nonfinite(grads_[i].grad, grads_[i].n, {}) > 0) first = static_cast<int64_t>(i);
  }
  // Under ZeRO and TP each rank holds shards or slices: the first over the world (every rank
  // judges the step alike). Without them every rank holds the same summed gradient, and the
  // reduction changes nothing.
  std::vector<std::string> names;
  for (const GradView& g : grads_) names.push_back(g.name);
  return first_over_world(first, names);
}

std::string Trainer::first_nonfinite_weight() {
  int64_t first = -1;
  std::vector<std::string> names;
  const kernels::Ops& k = kernels::ops(Device::cpu());  // weights and master shards: host memory
  for_each_tensor([&](const TensorSlot& t) {
    if (first < 0 && k.count_nonfinite(t.value, t.elems, {}) > 0)
      first = static_cast<int64_t>(names.size());
    names.push_back(t.name);
  });
  return first_over_world(first, names);
}

// Each rank's first bad tensor by name, gathered over the world: by name, not by index, since
// the ranks of one stage may hold different tensors (other experts under expert parallelism).
// Global ranks run stage by stage, so an earlier stage's is reported first.
std::string Trainer::first_over_world(int64_t first, const std::vector<std::string>& names) {
  const std::string mine = first < 0 ? "" : names[static_cast<size_t>(first)];
  for (const std::string& name : parallel::all_gather_text(grid_.world(), mine))
    if (!name.empty()) return name;
  return "";
}

std::string Trainer::last_good_checkpoint() const {
  const std::string latest = CheckpointStore(config_.training.output_dir + "/checkpoints").latest();
  return latest.empty() ? resumed_from_ : latest;
}

void Trainer::handle_rejected(StepStats s, int64_t batch, bool undoable, MetricsLog* log) {
  const TrainingConfig& t = config_.training;
  ++rejected_;
  std::string action = t.on_nonfinite;
  std::string why_stop;
  if (action == "skip_step" && !undoable) {
    action = "stop";
    why_stop = "; skipping the batch cannot undo an update that has reached the weights (" +
               std::string("training.on_nonfinite: rollback can)");
  }
  if (action != "stop" && rejected_ > t.max_skipped_steps) {
    action = "stop";
    why_stop = "; that is " + std::to_string(rejected_) +
               " rejected steps, more than training.max_skipped_steps " +
               std::to_string(t.max_skipped_steps);
  }
  const std::string good = last_good_checkpoint();
  if (action == "rollback" && good.empty()) {
    action = "stop";
    why_stop = "; there is no checkpoint to roll back to yet";
  }
  std::ostringstream line;
  line << "keel: step " << s.step << ": " << s.rejected << "; ";
  if (action == "stop") {
    if (log) log->write(s, action);
    // Every rank stops here alike (the verdict is the same everywhere), after the line is
    // written: one message, from rank 0, and no rank aborts the others.
    grid_.world().barrier();
    throw parallel::AgreedError(
        0, format("step {}: {}; the weights were not updated from it{}. The last good checkpoint "
                  "is {}. Lower training.learning_rate or training.max_grad_norm and resume from "
                  "it (--resume {}), or set training.on_nonfinite to skip_step or rollback",
                  s.step, s.rejected, why_stop, good.empty() ? "none (training.save_steps)" : good,
                  good.empty() ? "none" : good));
  }
  if (action == "skip_step") {
    if (log) log->write(s, action);
    line << "the batch is skipped (" << rejected_ << " of training.max_skipped_steps "
         << t.max_skipped_steps << ")";
  } else {  // rollback
    skip_batches_.insert(batch);
    load_checkpoint(good);
    // The steps after the checkpoint are trained again: their lines go, this one stays.
    if (log) log->rewind(step_);
    if (log) log->write(s, action);
    line << "rolled back to " << good << " (step " << step_ << "); the batch at sample " << batch
         << " will be passed over (" << rejected_ << " of training.max_skipped_steps "
         << t.max_skipped_steps << ")";
  }
  console_ << line.str() << "\n" << std::flush;
}

}  // namespace keel::runtime
