// Matrix products: a row-major GEMM wrapper and the linear layer (weight in PyTorch's (out, in)
// layout) forward and backward. CPU: OpenBLAS sgemm.
#pragma once

#include <cstdint>

#include "kernels/device.h"

namespace keel::kernels::cpu {

// C (M, N) = alpha · op(A) · op(B) + beta · C, all row-major; op(X) is X or Xᵀ.
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc,
          Stream stream = {});

// out (N, OC) = inp (N, C) · weight (OC, C)ᵀ.
void matmul_forward(float* out, const float* inp, const float* weight, int64_t N, int64_t C,
                    int64_t OC, Stream stream = {});

// dinp (N, C) = dout (N, OC) · weight (OC, C): overwritten, or added to when accumulate_dinp.
// dweight (OC, C) += doutᵀ · inp (parameter gradients accumulate). Either output may be null.
void matmul_backward(float* dinp, float* dweight, const float* dout, const float* inp,
                     const float* weight, int64_t N, int64_t C, int64_t OC, bool accumulate_dinp,
                     Stream stream = {});

}  // namespace keel::kernels::cpu

// CUDA twins (kernels/cuda/matmul.cu, built when KEEL_CUDA is on): pointers are device memory and
// the work runs on the stream. A GEMM also needs a cuBLAS handle, and keel keeps no hidden global
// one, so these take the caller's handle (kernels/cuda/cublas_handle.h) just before the stream;
// otherwise the signatures are the CPU ones. Each call binds the handle to the call's stream.
namespace keel::kernels::cuda {

class CublasHandle;

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc,
          CublasHandle& blas, Stream stream = {});

void matmul_forward(float* out, const float* inp, const float* weight, int64_t N, int64_t C,
                    int64_t OC, CublasHandle& blas, Stream stream = {});

void matmul_backward(float* dinp, float* dweight, const float* dout, const float* inp,
                     const float* weight, int64_t N, int64_t C, int64_t OC, bool accumulate_dinp,
                     CublasHandle& blas, Stream stream = {});

}  // namespace keel::kernels::cuda
