// Matrix products on the GPU through cuBLAS sgemm, fp32 in and out. cuBLAS is column-major: the
// row-major (M, N) matrix C is the column-major (N, M) matrix Cᵀ, so C = op(A)·op(B) runs as
// Cᵀ = op(B)ᵀ·op(A)ᵀ — the operands swap places and keep their transpose flags.
#include <algorithm>
#include <limits>

#include "kernels/cuda/check.cuh"
#include "kernels/cuda/cublas_handle.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/matmul.h"

namespace keel::kernels::cuda {

namespace {

// The cuBLAS interface takes 32-bit ints; larger sizes would silently wrap.
int to_blas_int(int64_t v, const char* what) {
  KEEL_CHECK(v >= 0 && v <= std::numeric_limits<int>::max(),
             "gemm: {} = {} is negative or too large for 32-bit cuBLAS", what, v);
  return static_cast<int>(v);
}

// C (M, N) = beta · C for an empty reduction (K = 0); beta = 0 ignores what C held (BLAS rule).
// cuBLAS does not document what it does with k = 0, so keel does not ask it.
__global__ void scale_matrix_kernel(float* C, int64_t M, int64_t N, int64_t ldc, float beta) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < M * N;
       i += stride) {
    float* c = C + (i / N) * ldc + i % N;
    *c = beta == 0.0f ? 0.0f : beta * *c;
  }
}

}  // namespace

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc,
          CublasHandle& blas, Stream stream) {
  const int m = to_blas_int(M, "M"), n = to_blas_int(N, "N"), k = to_blas_int(K, "K");
  // The same leading-dimension rules as the CPU gemm; they are also cuBLAS's for the swapped call.
  KEEL_CHECK(lda >= std::max<int64_t>(1, trans_a ? M : K), "gemm: lda {} too small", lda);
  KEEL_CHECK(ldb >= std::max<int64_t>(1, trans_b ? K : N), "gemm: ldb {} too small", ldb);
  KEEL_CHECK(ldc >= std::max<int64_t>(1, N), "gemm: ldc {} too small for N = {}", ldc, N);
  if (m == 0 || n == 0) return;
  const cudaStream_t s = to_cuda(stream);
  if (k == 0) {
    scale_matrix_kernel<<<grid_for(M * N), kBlock, 0, s>>>(C, M, N, ldc, beta);
    KEEL_CUDA_CHECK_LAUNCH();
    return;
  }
  KEEL_CUBLAS(cublasSetStream(blas.get(), s));
  KEEL_CUBLAS(cublasSgemm(blas.get(), trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                          trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, n, m, k, &alpha, B,
                          to_blas_int(ldb, "ldb"), A, to_blas_int(lda, "lda"), &beta, C,
                          to_blas_int(ldc, "ldc")));
}

void matmul_forward(float* out, const float* inp, const float* weight, int64_t N, int64_t C,
                    int64_t OC, CublasHandle& blas, Stream stream) {
  // out (N, OC) = inp (N, C) · weight (OC, C)ᵀ
  gemm(false, true, N, OC, C, 1.0f, inp, C, weight, C, 0.0f, out, OC, blas, stream);
}

void matmul_backward(float* dinp, float* dweight, const float* dout, const float* inp,
                     const float* weight, int64_t N, int64_t C, int64_t OC, bool accumulate_dinp,
                     CublasHandle& blas, Stream stream) {
  if (dinp != nullptr) {
    // dinp (N, C) = dout (N, OC) · weight (OC, C)
    gemm(false, false, N, C, OC, 1.0f, dout, OC, weight, C, accumulate_dinp ? 1.0f : 0.0f, dinp, C,
         blas, stream);
  }
  if (dweight != nullptr) {
    // dweight (OC, C) += dout (N, OC)ᵀ · inp (N, C)
    gemm(true, false, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dweight, C, blas, stream);
  }
}

}  // namespace keel::kernels::cuda
