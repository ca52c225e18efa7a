// Rotary position embedding in the Hugging Face LLaMA ("rotate half") layout: dimension i pairs
// with i + D/2, and inv_freq_i = theta^(-2i/D). Applied in place to the q and k heads of a row.
#pragma once

#include <cstdint>

#include "kernels/device.h"

namespace keel::kernels::cpu {

// cos, sin (T, D/2) for positions 0..T-1, angles computed in double.
void rope_tables(float* cos, float* sin, int64_t T, int64_t D, double theta);

// x: B·T rows of row_stride floats; each row holds H heads of D at its start, position t = row % T.
// For i < D/2: (a, b) = (x_i, x_{i+D/2}) becomes (a·cos − b·sin, b·cos + a·sin).
void rope_forward(float* x, const float* cos, const float* sin, int64_t B, int64_t T, int64_t H,
                  int64_t D, int64_t row_stride, Stream stream = {});

// The transpose (inverse) rotation, applied in place to the gradient with the same layout.
void rope_backward(float* dx, const float* cos, const float* sin, int64_t B, int64_t T, int64_t H,
                   int64_t D, int64_t row_stride, Stream stream = {});

}  // namespace keel::kernels::cpu

// CUDA twins (kernels/cuda/rope.cu): device pointers, work on the stream. The tables come from
// cpu::rope_tables, copied to the device once.
namespace keel::kernels::cuda {

void rope_forward(float* x, const float* cos, const float* sin, int64_t B, int64_t T, int64_t H,
                  int64_t D, int64_t row_stride, Stream stream = {});

void rope_backward(float* dx, const float* cos, const float* sin, int64_t B, int64_t T, int64_t H,
                   int64_t D, int64_t row_stride, Stream stream = {});

}  // namespace keel::kernels::cuda
