// Token embedding on the GPU: the forward gathers rows one element per thread; the backward gives
// each thread one column of the table and walks the tokens in order, so repeated tokens add up in
// the same order as on the CPU (bitwise the same result) with no atomics.
#include "kernels/cuda/check.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/embedding.h"

namespace keel::kernels::cuda {

namespace {

// Token ids live on the device; they are copied back and checked as the CPU checks them.
void check_tokens(const int32_t* tokens, int64_t N, int64_t V, cudaStream_t stream) {
  const std::vector<int32_t> host = copy_ids_to_host(tokens, N, stream);
  for (int64_t n = 0; n < N; ++n) {
    KEEL_CHECK(host[n] >= 0 && host[n] < V,
               "embedding: token {} at position {} is outside the vocabulary [0, {}); check the "
               "tokenizer's vocab_size against the model's",
               host[n], n, V);
  }
}

__global__ void embedding_forward_kernel(float* out, const int32_t* tokens, const float* table,
                                         int64_t N, int64_t C) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < N * C;
       i += stride) {
    const int64_t n = i / C, c = i % C;
    out[i] = table[static_cast<int64_t>(tokens[n]) * C + c];
  }
}

// Thread c owns column c of dtable: consecutive threads touch consecutive addresses of a row.
__global__ void embedding_backward_kernel(float* dtable, const float* dout, const int32_t* tokens,
                                          int64_t N, int64_t C) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < C;
       c += stride) {
    for (int64_t n = 0; n < N; ++n) {
      dtable[static_cast<int64_t>(tokens[n]) * C + c] += dout[n * C + c];
    }
  }
}

}  // namespace

void embedding_forward(float* out, const int32_t* tokens, const float* table, int64_t N, int64_t C,
                       int64_t V, Stream stream) {
  const cudaStream_t s = to_cuda(stream);
  check_tokens(tokens, N, V, s);
  if (N == 0 || C == 0) return;
  embedding_forward_kernel<<<grid_for(N * C), kBlock, 0, s>>>(out, tokens, table, N, C);
  KEEL_CUDA_CHECK_LAUNCH();
}

void embedding_backward(float* dtable, const float* dout, const int32_t* tokens, int64_t N,
                        int64_t C, int64_t V, Stream stream) {
  const cudaStream_t s = to_cuda(stream);
  check_tokens(tokens, N, V, s);
  if (N == 0 || C == 0) return;
  embedding_backward_kernel<<<grid_for(C), kBlock, 0, s>>>(dtable, dout, tokens, N, C);
  KEEL_CUDA_CHECK_LAUNCH();
}

}  // namespace keel::kernels::cuda
