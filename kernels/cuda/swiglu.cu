// SwiGLU on the GPU, one thread per output element; the sigmoid is the CPU version's overflow-free
// form.
#include "kernels/cuda/check.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/swiglu.h"

namespace keel::kernels::cuda {

namespace {

// σ(g) from e = e^(−|g|) ≤ 1: 1/(1+e) for g ≥ 0, e/(1+e) for g < 0, |g| capped at 87 (NaN and
// ±inf become ±87 too; a NaN gate still poisons the product) — as kernels/cpu/swiglu.cpp.
__device__ __forceinline__ float sigmoid(float g) {
  const int abs_bits = min(__float_as_int(g) & 0x7fffffff, __float_as_int(87.0f));
  const float e = expf(-__int_as_float(abs_bits));
  const float q = 1.0f / (1.0f + e);
  return __float_as_int(g) < 0 ? e * q : q;
}

__global__ void swiglu_forward_kernel(float* out, const float* gate_up, int64_t N, int64_t I) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < N * I;
       idx += stride) {
    const int64_t n = idx / I, i = idx % I;
    const float g = gate_up[n * 2 * I + i];
    const float u = gate_up[n * 2 * I + I + i];
    out[idx] = g * sigmoid(g) * u;
  }
}

// silu'(g) = σ(g)·(1 + g·(1 − σ(g))).
__global__ void swiglu_backward_kernel(float* dgate_up, const float* dout, const float* gate_up,
                                       int64_t N, int64_t I) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < N * I;
       idx += stride) {
    const int64_t n = idx / I, i = idx % I;
    const float g = gate_up[n * 2 * I + i];
    const float u = gate_up[n * 2 * I + I + i];
    const float dy = dout[idx];
    const float s = sigmoid(g);
    dgate_up[n * 2 * I + i] = dy * u * (s * (1.0f + g * (1.0f - s)));
    dgate_up[n * 2 * I + I + i] = dy * (g * s);
  }
}

}  // namespace

void swiglu_forward(float* out, const float* gate_up, int64_t N, int64_t I, Stream stream) {
  if (N * I == 0) return;
  swiglu_forward_kernel<<<grid_for(N * I), kBlock, 0, to_cuda(stream)>>>(out, gate_up, N, I);
  KEEL_CUDA_CHECK_LAUNCH();
}

void swiglu_backward(float* dgate_up, const float* dout, const float* gate_up, int64_t N, int64_t I,
                     Stream stream) {
  if (N * I == 0) return;
  swiglu_backward_kernel<<<grid_for(N * I), kBlock, 0, to_cuda(stream)>>>(dgate_up, dout, gate_up,
                                                                          N, I);
  KEEL_CUDA_CHECK_LAUNCH();
}

}  // namespace keel::kernels::cuda
