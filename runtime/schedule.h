// Learning-rate schedules, with Hugging Face's semantics: the rate for optimizer step k (0-based)
// is learning_rate · λ(k), linear warmup from 0 over warmup_steps, then the named decay to 0 at
// max_steps.
#pragma once

#include <cstdint>

#include "runtime/config.h"

namespace keel::runtime {

// λ(k) · learning_rate for step k = 0, 1, ... (the first optimizer step is k = 0).
double learning_rate_at(const TrainingConfig& t, int64_t k);

}  // namespace keel::runtime
