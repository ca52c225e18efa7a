#include "runtime/train/schedule.h"

#include <algorithm>
#include <cmath>

#include "kernels/error.h"

namespace keel::runtime {

double learning_rate_at(const TrainingConfig& t, int64_t k) {
  const auto kd = static_cast<double>(k);
  const auto warm = static_cast<double>(t.warmup_steps);
  const std::string& type = t.lr_scheduler_type;
  if (type == "constant") return t.learning_rate;
  if (k < t.warmup_steps) return t.learning_rate * kd / std::max(1.0, warm);
  const double span = std::max(1.0, static_cast<double>(t.max_steps - t.warmup_steps));
  const double progress = (kd - warm) / span;
  if (type == "constant_with_warmup") return t.learning_rate;
  if (type == "linear")
    return t.learning_rate * std::max(0.0, static_cast<double>(t.max_steps - k) / span);
  if (type == "cosine")
    return t.learning_rate * std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * progress)));
  KEEL_FAIL("unknown training.lr_scheduler_type '{}'", type);
}

void resolve_schedule_lengths(TrainingConfig& t, int64_t num_sequences, int64_t dp_size) {
  if (t.max_steps < 0) {
    const int64_t global = t.per_device_train_batch_size * t.gradient_accumulation_steps * dp_size;
    const int64_t per_epoch = std::max<int64_t>(1, num_sequences / global);
    t.max_steps = std::max<int64_t>(
        1, static_cast<int64_t>(std::ceil(t.num_train_epochs * static_cast<double>(per_epoch))));
  }
  if (t.warmup_steps == 0 && t.warmup_ratio > 0)
    t.warmup_steps =
        static_cast<int64_t>(std::ceil(t.warmup_ratio * static_cast<double>(t.max_steps)));
}

}  // namespace keel::runtime
