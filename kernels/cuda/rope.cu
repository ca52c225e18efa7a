// Rotary position embedding on the GPU, in place: one thread per rotated pair (i, i + D/2) of a
// head. The cos/sin tables are built on the CPU (rope_tables, angles in double) and copied once.
#include "kernels/cuda/check.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/rope.h"

namespace keel::kernels::cuda {

namespace {

// sign = +1 rotates by +angle (forward), −1 by −angle (backward: the transpose of a rotation).
__global__ void rope_kernel(float* x, const float* cos, const float* sin, int64_t rows, int64_t T,
                            int64_t H, int64_t half, int64_t row_stride, float sign) {
  const int64_t total = rows * H * half;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += stride) {
    const int64_t i = idx % half;
    const int64_t h = (idx / half) % H;
    const int64_t row = idx / (half * H);
    const int64_t t = row % T;
    float* lo = x + row * row_stride + h * 2 * half + i;
    float* hi = lo + half;
    const float c = cos[t * half + i];
    const float s = sign * sin[t * half + i];
    const float a = *lo, b = *hi;
    *lo = a * c - b * s;
    *hi = b * c + a * s;
  }
}

void rotate(float* x, const float* cos, const float* sin, int64_t B, int64_t T, int64_t H,
            int64_t D, int64_t row_stride, float sign, Stream stream) {
  KEEL_CHECK(D % 2 == 0, "rope: head dimension {} must be even", D);
  KEEL_CHECK(row_stride >= H * D, "rope: row_stride {} is shorter than {} heads of {}", row_stride,
             H, D);
  const int64_t total = B * T * H * (D / 2);
  if (total == 0) return;
  rope_kernel<<<grid_for(total), kBlock, 0, to_cuda(stream)>>>(x, cos, sin, B * T, T, H, D / 2,
                                                               row_stride, sign);
  KEEL_CUDA_CHECK_LAUNCH();
}

}  // namespace

void rope_forward(float* x, const float* cos, const float* sin, int64_t B, int64_t T, int64_t H,
                  int64_t D, int64_t row_stride, Stream stream) {
  rotate(x, cos, sin, B, T, H, D, row_stride, 1.0f, stream);
}

void rope_backward(float* dx, const float* cos, const float* sin, int64_t B, int64_t T, int64_t H,
                   int64_t D, int64_t row_stride, Stream stream) {
  rotate(dx, cos, sin, B, T, H, D, row_stride, -1.0f, stream);
}

}  // namespace keel::kernels::cuda
