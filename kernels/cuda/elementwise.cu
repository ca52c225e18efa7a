// Elementwise helpers on the GPU (grid-stride loops) and the sum of squares the gradient clipping
// needs: per-block double partials over a fixed grid, then one block adds them in a fixed order,
// so the result is the same bits on every run and every GPU.
#include "kernels/cuda/check.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/reduce.cuh"
#include "kernels/elementwise.h"

namespace keel::kernels::cuda {

namespace {

// Blocks of the first pass of sum_squares; the second pass is one block of this many threads.
constexpr int kSumBlocks = kBlock;

#define KEEL_GRID_STRIDE(i, n)                                                           \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

__global__ void add_inplace_kernel(float* y, const float* x, int64_t n) {
  KEEL_GRID_STRIDE(i, n) y[i] += x[i];
}

__global__ void add_kernel(float* y, const float* a, const float* b, int64_t n) {
  KEEL_GRID_STRIDE(i, n) y[i] = a[i] + b[i];
}

__global__ void scale_inplace_kernel(float* x, float s, int64_t n) {
  KEEL_GRID_STRIDE(i, n) x[i] *= s;
}

// partial[block] = Σ x[i]² over the block's grid-stride share, in double.
__global__ void sum_squares_partial_kernel(double* partial, const float* x, int64_t n) {
  double acc = 0.0;
  KEEL_GRID_STRIDE(i, n) acc += static_cast<double>(x[i]) * x[i];
  acc = block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// out[0] = Σ partial[0..count), one block.
__global__ void sum_partials_kernel(double* out, const double* partial, int count) {
  double acc = 0.0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
  acc = block_sum(acc);
  if (threadIdx.x == 0) out[0] = acc;
}

// Atomically adds to *count the NaN and ±inf values of the block's grid-stride share.
__global__ void count_nonfinite_kernel(unsigned long long* count, const float* x, int64_t n) {
  unsigned long long acc = 0;
  KEEL_GRID_STRIDE(i, n) acc += !isfinite(x[i]);
  acc = block_sum(acc);
  if (threadIdx.x == 0 && acc != 0) atomicAdd(count, acc);
}

#undef KEEL_GRID_STRIDE

}  // namespace

void add_inplace(float* y, const float* x, int64_t n, Stream stream) {
  if (n == 0) return;
  add_inplace_kernel<<<grid_for(n), kBlock, 0, to_cuda(stream)>>>(y, x, n);
  KEEL_CUDA_CHECK_LAUNCH();
}

void add(float* y, const float* a, const float* b, int64_t n, Stream stream) {
  if (n == 0) return;
  add_kernel<<<grid_for(n), kBlock, 0, to_cuda(stream)>>>(y, a, b, n);
  KEEL_CUDA_CHECK_LAUNCH();
}

void scale_inplace(float* x, float s, int64_t n, Stream stream) {
  if (n == 0) return;
  scale_inplace_kernel<<<grid_for(n), kBlock, 0, to_cuda(stream)>>>(x, s, n);
  KEEL_CUDA_CHECK_LAUNCH();
}

// Synchronises the stream: the result is returned to the host.
double sum_squares(const float* x, int64_t n, Stream stream) {
  if (n == 0) return 0.0;
  const cudaStream_t s = to_cuda(stream);
  // Scratch from the stream-ordered allocator: kSumBlocks partials, then the total.
  double* scratch = nullptr;
  KEEL_CUDA(
      cudaMallocAsync(reinterpret_cast<void**>(&scratch), (kSumBlocks + 1) * sizeof(double), s));
  double total = 0.0;
  try {
    sum_squares_partial_kernel<<<kSumBlocks, kBlock, 0, s>>>(scratch, x, n);
    KEEL_CUDA_CHECK_LAUNCH();
    sum_partials_kernel<<<1, kBlock, 0, s>>>(scratch + kSumBlocks, scratch, kSumBlocks);
    KEEL_CUDA_CHECK_LAUNCH();
    KEEL_CUDA(
        cudaMemcpyAsync(&total, scratch + kSumBlocks, sizeof(double), cudaMemcpyDeviceToHost, s));
    KEEL_CUDA(cudaFreeAsync(scratch, s));
    scratch = nullptr;
    KEEL_CUDA(cudaStreamSynchronize(s));
  } catch (...) {
    if (scratch != nullptr) (void)cudaFreeAsync(scratch, s);  // best effort; the first error wins
    throw;
  }
  return total;
}

// Synchronises the stream: the count is returned to the host.
int64_t count_nonfinite(const float* x, int64_t n, Stream stream) {
  if (n == 0) return 0;
  const cudaStream_t s = to_cuda(stream);
  unsigned long long* count = nullptr;
  KEEL_CUDA(cudaMallocAsync(reinterpret_cast<void**>(&count), sizeof *count, s));
  unsigned long long total = 0;
  try {
    KEEL_CUDA(cudaMemsetAsync(count, 0, sizeof *count, s));
    count_nonfinite_kernel<<<kSumBlocks, kBlock, 0, s>>>(count, x, n);
    KEEL_CUDA_CHECK_LAUNCH();
    KEEL_CUDA(cudaMemcpyAsync(&total, count, sizeof total, cudaMemcpyDeviceToHost, s));
    KEEL_CUDA(cudaFreeAsync(count, s));
    count = nullptr;
    KEEL_CUDA(cudaStreamSynchronize(s));
  } catch (...) {
    if (count != nullptr) (void)cudaFreeAsync(count, s);  // best effort; the first error wins
    throw;
  }
  return static_cast<int64_t>(total);
}

}  // namespace keel::kernels::cuda
