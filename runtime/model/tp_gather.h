// Whole tensors from a tensor-parallel model: each rank's slice put in its place in the global
// tensor and summed over the TP group (a slice held by several ranks alike, such as a norm or a
// shared key/value head, counted by one of them). For what leaves the run whole: the final
// model.safetensors and keel export.
#pragma once

#include "parallel/tensor_parallel.h"
#include "runtime/model/parameter.h"

namespace keel::runtime {

// whole (p.global_shape) ← the sum over the TP group of this rank's slice `local` (p.value's
// shape) placed at p.shard; collective over the group, every rank gets the whole tensor.
void gather_whole(const Parameter& p, const float* local, float* whole,
                  const parallel::TpMappings& tp);

}  // namespace keel::runtime
