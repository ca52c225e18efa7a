// Softmax cross-entropy on the GPU, one block per row: a pass for the maximum, one for Σ exp
// (summed in double, as on the CPU), and for the fused backward one that writes the gradient over
// the logits.
#include "kernels/cross_entropy.h"
#include "kernels/cuda/check.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/reduce.cuh"

namespace keel::kernels::cuda {

namespace {

// Targets live on the device; they are copied back and checked as the CPU checks them.
void check_targets(const int32_t* targets, int64_t N, int64_t V, cudaStream_t stream) {
  KEEL_CHECK(N >= 0 && V > 0, "cross_entropy: bad sizes N = {}, V = {}", N, V);
  const std::vector<int32_t> host = copy_ids_to_host(targets, N, stream);
  for (int64_t n = 0; n < N; ++n) {
    KEEL_CHECK(host[n] < V, "cross_entropy: target {} of row {} is not below V = {}", host[n], n,
               V);
  }
}

// Row maximum and Σ exp(x − max) in double, for every thread of the block.
__device__ void row_stats(const float* x, int64_t V, float* max_out, double* sum_out) {
  float m = -INFINITY;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) m = fmaxf(m, x[v]);
  m = block_max(m);
  double sum = 0.0;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) sum += static_cast<double>(expf(x[v] - m));
  *max_out = m;
  *sum_out = block_sum(sum);
}

__global__ void cross_entropy_forward_kernel(float* losses, const float* logits,
                                             const int32_t* targets, int64_t N, int64_t V) {
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    const int32_t target = targets[n];
    if (target < 0) {  // uniform across the block: no thread reaches the reductions
      if (threadIdx.x == 0) losses[n] = 0.0f;
      continue;
    }
    const float* x = logits + n * V;
    float m;
    double sum;
    row_stats(x, V, &m, &sum);
    if (threadIdx.x == 0) {
      const double lse = static_cast<double>(m) + log(sum);
      losses[n] = static_cast<float>(lse - static_cast<double>(x[target]));
    }
  }
}

__global__ void cross_entropy_forward_backward_kernel(float* losses, float* logits,
                                                      const int32_t* targets, int64_t N, int64_t V,
                                                      float grad_scale) {
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    float* x = logits + n * V;
    const int32_t target = targets[n];
    if (target < 0) {
      if (threadIdx.x == 0) losses[n] = 0.0f;
      for (int64_t v = threadIdx.x; v < V; v += blockDim.x) x[v] = 0.0f;
      continue;
    }
    // Read before the overwrite below; the reductions in row_stats order it before any write.
    const float x_target = x[target];
    float m;
    double sum;
    row_stats(x, V, &m, &sum);
    if (threadIdx.x == 0) {
      losses[n] =
          static_cast<float>(static_cast<double>(m) + log(sum) - static_cast<double>(x_target));
    }
    const float f = static_cast<float>(static_cast<double>(grad_scale) / sum);
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
      const float g = expf(x[v] - m) * f;
      x[v] = v == target ? g - grad_scale : g;
    }
  }
}

}  // namespace

void cross_entropy_forward(float* losses, const float* logits, const int32_t* targets, int64_t N,
                           int64_t V, Stream stream) {
  const cudaStream_t s = to_cuda(stream);
  check_targets(targets, N, V, s);
  if (N == 0) return;
  cross_entropy_forward_kernel<<<grid_for_rows(N), kBlock, 0, s>>>(losses, logits, targets, N, V);
  KEEL_CUDA_CHECK_LAUNCH();
}

void cross_entropy_forward_backward(float* losses, float* logits, const int32_t* targets, int64_t N,
                                    int64_t V, float grad_scale, Stream stream) {
  const cudaStream_t s = to_cuda(stream);
  check_targets(targets, N, V, s);
  if (N == 0) return;
  cross_entropy_forward_backward_kernel<<<grid_for_rows(N), kBlock, 0, s>>>(losses, logits, targets,
                                                                            N, V, grad_scale);
  KEEL_CUDA_CHECK_LAUNCH();
}

}  // namespace keel::kernels::cuda
