// Token embedding lookup and its backward (a scatter-add into the table's gradient).
#pragma once

#include <cstdint>

#include "kernels/device.h"

namespace keel::kernels::cpu {

// out (N, C) = table (V, C)[tokens[n]]. Every token must lie in [0, V) (checked).
void embedding_forward(float* out, const int32_t* tokens, const float* table, int64_t N, int64_t C,
                       int64_t V, Stream stream = {});

// dtable (V, C) += Σ over n with tokens[n] == v of dout[n] (parameter gradient: accumulates).
// Deterministic: the sum over n runs in order whatever the thread count.
void embedding_backward(float* dtable, const float* dout, const int32_t* tokens, int64_t N,
                        int64_t C, int64_t V, Stream stream = {});

}  // namespace keel::kernels::cpu

// CUDA twins (kernels/cuda/embedding.cu): device pointers, work on the stream. The token check
// copies the tokens to the host, so each call synchronises the stream once.
namespace keel::kernels::cuda {

void embedding_forward(float* out, const int32_t* tokens, const float* table, int64_t N, int64_t C,
                       int64_t V, Stream stream = {});

void embedding_backward(float* dtable, const float* dout, const int32_t* tokens, int64_t N,
                        int64_t C, int64_t V, Stream stream = {});

}  // namespace keel::kernels::cuda
