// RMSNorm on the GPU, with the CPU version's numerics: row statistics summed in double, the weight
// gradient summed over rows in order by one thread per column (deterministic, no atomics).
#include "kernels/cuda/check.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/reduce.cuh"
#include "kernels/rmsnorm.h"

namespace keel::kernels::cuda {

namespace {

// One block per row.
__global__ void rmsnorm_forward_kernel(float* out, float* rstd, const float* x, const float* weight,
                                       int64_t N, int64_t C, float eps) {
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    const float* xr = x + n * C;
    float* yr = out + n * C;
    double ss = 0.0;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) ss += static_cast<double>(xr[c]) * xr[c];
    ss = block_sum(ss);
    const float r = static_cast<float>(1.0 / sqrt(ss / static_cast<double>(C) + eps));
    if (threadIdx.x == 0) rstd[n] = r;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) yr[c] = (xr[c] * r) * weight[c];
  }
}

// dweight (C) += Σ_n dout·x·rstd: thread c sums column c over rows in order, in double.
__global__ void rmsnorm_dweight_kernel(float* dweight, const float* dout, const float* x,
                                       const float* rstd, int64_t N, int64_t C) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < C;
       c += stride) {
    double acc = 0.0;
    for (int64_t n = 0; n < N; ++n) {
      acc += static_cast<double>(dout[n * C + c]) * x[n * C + c] * static_cast<double>(rstd[n]);
    }
    dweight[c] = static_cast<float>(static_cast<double>(dweight[c]) + acc);
  }
}

// dx_j = r·(w_j·dy_j − x_j · r² · Σ_k dy_k·w_k·x_k / C), one block per row.
__global__ void rmsnorm_dx_kernel(float* dx, const float* dout, const float* x, const float* weight,
                                  const float* rstd, int64_t N, int64_t C, bool accumulate_dx) {
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    const float* xr = x + n * C;
    const float* dyr = dout + n * C;
    float* dxr = dx + n * C;
    double dot = 0.0;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      dot += static_cast<double>(dyr[c]) * weight[c] * xr[c];
    }
    dot = block_sum(dot);
    const float r = rstd[n];
    const float k = static_cast<float>(dot * r * r / static_cast<double>(C));
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      const float g = r * (weight[c] * dyr[c] - xr[c] * k);
      dxr[c] = accumulate_dx ? dxr[c] + g : g;
    }
  }
}

}  // namespace

void rmsnorm_forward(float* out, float* rstd, const float* x, const float* weight, int64_t N,
                     int64_t C, float eps, Stream stream) {
  if (N == 0) return;
  rmsnorm_forward_kernel<<<grid_for_rows(N), kBlock, 0, to_cuda(stream)>>>(out, rstd, x, weight, N,
                                                                           C, eps);
  KEEL_CUDA_CHECK_LAUNCH();
}

void rmsnorm_backward(float* dx, float* dweight, const float* dout, const float* x,
                      const float* weight, const float* rstd, int64_t N, int64_t C,
                      bool accumulate_dx, Stream stream) {
  if (C == 0) return;
  const cudaStream_t s = to_cuda(stream);
  rmsnorm_dweight_kernel<<<grid_for(C), kBlock, 0, s>>>(dweight, dout, x, rstd, N, C);
  KEEL_CUDA_CHECK_LAUNCH();
  if (N == 0) return;
  rmsnorm_dx_kernel<<<grid_for_rows(N), kBlock, 0, s>>>(dx, dout, x, weight, rstd, N, C,
                                                        accumulate_dx);
  KEEL_CUDA_CHECK_LAUNCH();
}

}  // namespace keel::kernels::cuda
