// Matrix products on the CPU through OpenBLAS. Called outside an OpenMP parallel region, the
// OpenMP build of OpenBLAS uses all of keel's threads; inside one, it runs single-threaded.
#include "kernels/matmul.h"

#include <cblas.h>

#include <algorithm>
#include <limits>

#include "kernels/error.h"

namespace keel::kernels::cpu {

namespace {

// OpenBLAS's CBLAS interface takes 32-bit ints (blasint); larger sizes would silently wrap.
int to_blas_int(int64_t v, const char* what) {
  KEEL_CHECK(v >= 0 && v <= std::numeric_limits<int>::max(),
             "gemm: {} = {} is negative or too large for 32-bit BLAS", what, v);
  return static_cast<int>(v);
}

}  // namespace

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc, Stream) {
  const int m = to_blas_int(M, "M"), n = to_blas_int(N, "N"), k = to_blas_int(K, "K");
  // Row-major leading dimensions must cover a stored row: op(A) is (M, K), so A is stored as
  // (K, M) when transposed.
  KEEL_CHECK(lda >= std::max<int64_t>(1, trans_a ? M : K), "gemm: lda {} too small", lda);
  KEEL_CHECK(ldb >= std::max<int64_t>(1, trans_b ? K : N), "gemm: ldb {} too small", ldb);
  KEEL_CHECK(ldc >= std::max<int64_t>(1, N), "gemm: ldc {} too small for N = {}", ldc, N);
  if (m == 0 || n == 0) return;
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, A, to_blas_int(lda, "lda"), B,
              to_blas_int(ldb, "ldb"), beta, C, to_blas_int(ldc, "ldc"));
}

void matmul_forward(float* out, const float* inp, const float* weight, int64_t N, int64_t C,
                    int64_t OC, Stream stream) {
  // out (N, OC) = inp (N, C) · weight (OC, C)ᵀ
  gemm(false, true, N, OC, C, 1.0f, inp, C, weight, C, 0.0f, out, OC, stream);
}

void matmul_backward(float* dinp, float* dweight, const float* dout, const float* inp,
                     const float* weight, int64_t N, int64_t C, int64_t OC, bool accumulate_dinp,
                     Stream stream) {
  if (dinp != nullptr) {
    // dinp (N, C) = dout (N, OC) · weight (OC, C)
    gemm(false, false, N, C, OC, 1.0f, dout, OC, weight, C, accumulate_dinp ? 1.0f : 0.0f, dinp, C,
         stream);
  }
  if (dweight != nullptr) {
    // dweight (OC, C) += dout (N, OC)ᵀ · inp (N, C)
    gemm(true, false, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dweight, C, stream);
  }
}

}  // namespace keel::kernels::cpu
