// SwiGLU gate of the LLaMA MLP: out = silu(gate) · up, with gate and up side by side in one row
// (the fused gate_proj/up_proj GEMM writes them that way).
#pragma once

#include <cstdint>

#include "kernels/device.h"

namespace keel::kernels::cpu {

// gate_up (N, 2·I): gate in columns [0, I), up in [I, 2·I). out (N, I).
void swiglu_forward(float* out, const float* gate_up, int64_t N, int64_t I, Stream stream = {});

// dgate_up (N, 2·I) overwritten (activation gradient) from dout (N, I).
void swiglu_backward(float* dgate_up, const float* dout, const float* gate_up, int64_t N, int64_t I,
                     Stream stream = {});

}  // namespace keel::kernels::cpu

// CUDA twins (kernels/cuda/swiglu.cu): device pointers, work on the stream.
namespace keel::kernels::cuda {

void swiglu_forward(float* out, const float* gate_up, int64_t N, int64_t I, Stream stream = {});

void swiglu_backward(float* dgate_up, const float* dout, const float* gate_up, int64_t N, int64_t I,
                     Stream stream = {});

}  // namespace keel::kernels::cuda
