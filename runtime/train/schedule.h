// Learning-rate schedules, with Hugging Face's semantics: the rate for optimizer step k (0-based)
// is learning_rate · λ(k), linear warmup from 0 over warmup_steps, then the named decay to 0 at
// max_steps.
#pragma once

#include <cstdint>

#include "runtime/config/config.h"

namespace keel::runtime {

// λ(k) · learning_rate for step k = 0, 1, ... (the first optimizer step is k = 0).
double learning_rate_at(const TrainingConfig& t, int64_t k);

// Hugging Face Trainer's lengths, resolved once the data is known: max_steps -1 becomes
// ceil(num_train_epochs × steps per epoch), an epoch being floor(num_sequences / global batch)
// steps (at least 1; the order wraps into the next epoch mid-batch); warmup_steps 0 becomes
// ceil(warmup_ratio × max_steps).
void resolve_schedule_lengths(TrainingConfig& t, int64_t num_sequences, int64_t dp_size);

}  // namespace keel::runtime
