// CublasHandle: an owned cuBLAS handle (RAII, move-only) that the engine creates once per device
// and thread and passes to the GEMMs, as it passes a Stream. No hidden global handle: each GEMM
// binds the handle to the call's stream, so one handle serves any stream of its thread.
#pragma once

#include <cublas_v2.h>

namespace keel::kernels::cuda {

// The arithmetic cuBLAS may use for fp32 GEMMs.
enum class GemmMath {
  kFp32,      // CUBLAS_DEFAULT_MATH: full fp32 products, no TF32 (the default)
  kTf32,      // CUBLAS_TF32_TENSOR_OP_MATH: inputs rounded to TF32 (10-bit mantissa), faster
  kPedantic,  // CUBLAS_PEDANTIC_MATH: prescribed precision throughout; tests compare with it
};

class CublasHandle {
 public:
  // Creates the handle on the current device (cublasCreate) with host pointer mode.
  explicit CublasHandle(GemmMath math = GemmMath::kFp32);
  ~CublasHandle();  // never throws; a failed cublasDestroy is reported on stderr

  CublasHandle(CublasHandle&& other) noexcept;
  CublasHandle& operator=(CublasHandle&& other) noexcept;
  CublasHandle(const CublasHandle&) = delete;
  CublasHandle& operator=(const CublasHandle&) = delete;

  cublasHandle_t get() const { return handle_; }
  GemmMath math() const { return math_; }

 private:
  void release() noexcept;

  cublasHandle_t handle_ = nullptr;
  GemmMath math_ = GemmMath::kFp32;
};

}  // namespace keel::kernels::cuda
