// Attention of new queries against a key/value cache, for autoregressive decoding: the cache holds
// every earlier position's keys and values, so a new token costs one pass over the cache instead
// of the whole sequence again. Causal GQA, the same arithmetic as attention_forward.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/device.h"

namespace keel::kernels::cpu {

// q (n, H·D): the queries of positions p0 .. p0+n-1 (rope applied). k_cache, v_cache: rows of
// Hkv·D floats for positions 0 .. p0+n-1 (the new positions' rows included, rope applied to the
// keys). out (n, H·D): query i of head h attends to positions ≤ p0+i of kv head h / (H / Hkv),
// scale 1/sqrt(D). workspace: attention_cached_workspace_floats(p0 + n, max_threads) floats.
void attention_cached(float* out, const float* q, const float* k_cache, const float* v_cache,
                      int64_t n, int64_t p0, int64_t H, int64_t Hkv, int64_t D, float* workspace,
                      Stream stream = {});

// Floats of workspace for a cache of up to `positions` with max_threads OpenMP threads.
size_t attention_cached_workspace_floats(int64_t positions, int max_threads);

}  // namespace keel::kernels::cpu

// No CUDA twin yet: keel's decoding (runtime/model/generate.h) runs on the CPU, as the model does.
