// RMSNorm as LLaMA uses it: y = x / sqrt(mean(x²) + eps) · weight, statistics in fp32.
#pragma once

#include <cstdint>

#include "kernels/device.h"

namespace keel::kernels::cpu {

// out (N, C); rstd (N) = 1 / sqrt(mean(x²) + eps), kept for backward.
void rmsnorm_forward(float* out, float* rstd, const float* x, const float* weight, int64_t N,
                     int64_t C, float eps, Stream stream = {});

// dx (N, C): overwritten, or added to when accumulate_dx (activation gradient).
// dweight (C) += Σ_n dout · x · rstd (parameter gradient: accumulates). Deterministic.
void rmsnorm_backward(float* dx, float* dweight, const float* dout, const float* x,
                      const float* weight, const float* rstd, int64_t N, int64_t C,
                      bool accumulate_dx, Stream stream = {});

}  // namespace keel::kernels::cpu

// CUDA twins (kernels/cuda/rmsnorm.cu): device pointers, work on the stream.
namespace keel::kernels::cuda {

void rmsnorm_forward(float* out, float* rstd, const float* x, const float* weight, int64_t N,
                     int64_t C, float eps, Stream stream = {});

void rmsnorm_backward(float* dx, float* dweight, const float* dout, const float* x,
                      const float* weight, const float* rstd, int64_t N, int64_t C,
                      bool accumulate_dx, Stream stream = {});

}  // namespace keel::kernels::cuda
