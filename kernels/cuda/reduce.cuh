// Warp and block reductions for the CUDA kernels. Every lane, and every thread of the block, gets
// the same bits: the butterfly adds commutative pairs, and the order is fixed by the block size,
// so results are deterministic run to run.
#pragma once

#include <cuda_runtime.h>

namespace keel::kernels::cuda {

inline constexpr unsigned kFullMask = 0xffffffffu;

template <class T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
  }
  return v;
}

// Sum over the block, returned to every thread. blockDim.x must be a multiple of 32 (≤ 1024) and
// every thread of the block must call it (it synchronises).
template <class T>
__device__ T block_sum(T v) {
  __shared__ T partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // an earlier call may still be reading partial
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int warps = blockDim.x >> 5;
  return warp_sum(lane < warps ? partial[lane] : T(0));
}

// Maximum over the block, returned to every thread; same contract as block_sum.
__device__ inline float block_max(float v) {
  __shared__ float partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int warps = blockDim.x >> 5;
  return warp_max(lane < warps ? partial[lane] : -INFINITY);
}

}  // namespace keel::kernels::cuda
