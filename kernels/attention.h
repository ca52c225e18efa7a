// Causal self-attention with grouped-query heads, memory-lean: the forward keeps only the output
// and the log-sum-exp of each query's scores; the backward recomputes the probabilities.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/device.h"

namespace keel::kernels::cpu {

// qkv (B, T, (H + 2·Hkv)·D): per token the H query heads, then Hkv key heads, then Hkv value heads
// (rope already applied). Query head h attends with kv head h / (H / Hkv). Scale 1/sqrt(D).
// out (B, T, H·D); lse (B, H, T) = log Σ_{s ≤ t} exp(q_t·k_s·scale).
// workspace: attention_workspace_floats(...) floats, reused across calls.
void attention_forward(float* out, float* lse, const float* qkv, int64_t B, int64_t T, int64_t H,
                       int64_t Hkv, int64_t D, float* workspace, Stream stream = {});

// dqkv (B, T, (H + 2·Hkv)·D) overwritten (activation gradient), from dout (B, T, H·D) and the
// forward's qkv, out and lse.
void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D,
                        float* workspace, Stream stream = {});

// Floats of workspace both passes need for these sizes with max_threads OpenMP threads.
size_t attention_workspace_floats(int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D,
                                  int max_threads);

}  // namespace keel::kernels::cpu

// CUDA twins (kernels/cuda/attention.cu): device pointers, work on the stream; D ≤ 256. The
// workspace (device memory) holds the backward's (B, H, T) row sums; max_threads is ignored.
namespace keel::kernels::cuda {

void attention_forward(float* out, float* lse, const float* qkv, int64_t B, int64_t T, int64_t H,
                       int64_t Hkv, int64_t D, float* workspace, Stream stream = {});

void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D,
                        float* workspace, Stream stream = {});

size_t attention_workspace_floats(int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D,
                                  int max_threads);

}  // namespace keel::kernels::cuda
