// Launch helpers shared by the CUDA kernels: the stream of a keel::Stream, grid sizes for
// grid-stride and one-block-per-row kernels, and a checked copy of small index arrays to the host.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels/cuda/check.cuh"
#include "kernels/device.h"

namespace keel::kernels::cuda {

// Threads per block of every elementwise and row kernel: a multiple of the warp size, which the
// block reductions in reduce.cuh rely on.
inline constexpr int kBlock = 256;
// Grids are capped (kernels loop with a grid stride beyond it), and depend on the sizes only,
// never on the device, so reductions that follow the grid give the same bits on every GPU.
inline constexpr int64_t kMaxGrid = 4096;
inline constexpr int64_t kMaxRowGrid = 65535;

inline cudaStream_t to_cuda(Stream stream) { return static_cast<cudaStream_t>(stream.handle); }

// Blocks of kBlock threads for a grid-stride loop over n > 0 elements.
inline unsigned grid_for(int64_t n) {
  return static_cast<unsigned>(std::clamp<int64_t>((n + kBlock - 1) / kBlock, 1, kMaxGrid));
}

// Blocks for a one-block-per-row kernel over rows > 0 rows (rows beyond the grid loop).
inline unsigned grid_for_rows(int64_t rows) {
  return static_cast<unsigned>(std::clamp<int64_t>(rows, 1, kMaxRowGrid));
}

// The n int32 values at ids (device or host memory), copied to the host once the stream has
// reached this point. Used to check token ids and targets the way the CPU kernels do, at the cost
// of one small copy and a stream synchronisation.
inline std::vector<int32_t> copy_ids_to_host(const int32_t* ids, int64_t n, cudaStream_t stream) {
  std::vector<int32_t> host(static_cast<size_t>(n));
  if (n == 0) return host;
  KEEL_CUDA(
      cudaMemcpyAsync(host.data(), ids, host.size() * sizeof(int32_t), cudaMemcpyDefault, stream));
  KEEL_CUDA(cudaStreamSynchronize(stream));
  return host;
}

}  // namespace keel::kernels::cuda
