// Small elementwise and reduction helpers the model and engine need between the big ops.
#pragma once

#include <cstdint>

#include "kernels/device.h"

namespace keel::kernels::cpu {

// y[i] += x[i].
void add_inplace(float* y, const float* x, int64_t n, Stream stream = {});
// y[i] = a[i] + b[i].
void add(float* y, const float* a, const float* b, int64_t n, Stream stream = {});
// x[i] *= s.
void scale_inplace(float* x, float s, int64_t n, Stream stream = {});
// Σ x[i]², accumulated in double, deterministic for a given thread count.
double sum_squares(const float* x, int64_t n, Stream stream = {});
// How many x[i] are NaN or ±inf (the divergence guard's test of weights and gradients).
int64_t count_nonfinite(const float* x, int64_t n, Stream stream = {});

}  // namespace keel::kernels::cpu

// CUDA twins (kernels/cuda/elementwise.cu): device pointers, work on the stream. sum_squares
// and count_nonfinite return their result to the host, so they synchronise the stream;
// sum_squares is deterministic.
namespace keel::kernels::cuda {

void add_inplace(float* y, const float* x, int64_t n, Stream stream = {});
void add(float* y, const float* a, const float* b, int64_t n, Stream stream = {});
void scale_inplace(float* x, float s, int64_t n, Stream stream = {});
double sum_squares(const float* x, int64_t n, Stream stream = {});
int64_t count_nonfinite(const float* x, int64_t n, Stream stream = {});

}  // namespace keel::kernels::cuda
