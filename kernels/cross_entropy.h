// Softmax cross-entropy over the vocabulary. The model calls it on chunks of rows so the logits of
// the whole batch never exist at once; forward and backward are fused so a chunk's logits are
// read twice and overwritten with their gradient.
#pragma once

#include <cstdint>

#include "kernels/device.h"

namespace keel::kernels::cpu {

// Rows whose target is negative (kIgnoreIndex) are ignored: loss 0, gradient 0.
inline constexpr int32_t kIgnoreIndex = -100;

// losses (N): logsumexp(logits[n]) − logits[n][targets[n]]. logits (N, V) are left unchanged.
void cross_entropy_forward(float* losses, const float* logits, const int32_t* targets, int64_t N,
                           int64_t V, Stream stream = {});

// losses (N) as above; then logits (N, V) are overwritten in place by
// grad_scale · (softmax(logits[n]) − onehot(targets[n])) (zero rows for ignored targets).
void cross_entropy_forward_backward(float* losses, float* logits, const int32_t* targets, int64_t N,
                                    int64_t V, float grad_scale, Stream stream = {});

}  // namespace keel::kernels::cpu

// CUDA twins (kernels/cuda/cross_entropy.cu): device pointers, work on the stream. The target
// check copies the targets to the host, so each call synchronises the stream once.
namespace keel::kernels::cuda {

using cpu::kIgnoreIndex;

void cross_entropy_forward(float* losses, const float* logits, const int32_t* targets, int64_t N,
                           int64_t V, Stream stream = {});

void cross_entropy_forward_backward(float* losses, float* logits, const int32_t* targets, int64_t N,
                                    int64_t V, float grad_scale, Stream stream = {});

}  // namespace keel::kernels::cuda
