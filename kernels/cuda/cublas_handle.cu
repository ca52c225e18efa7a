// The RAII cuBLAS handle: create with an explicit math mode, destroy without throwing.
#include <cstdio>
#include <utility>

#include "kernels/cuda/check.cuh"
#include "kernels/cuda/cublas_handle.h"

namespace keel::kernels::cuda {

namespace {

cublasMath_t to_cublas(GemmMath math) {
  switch (math) {
    case GemmMath::kFp32: return CUBLAS_DEFAULT_MATH;
    case GemmMath::kTf32: return CUBLAS_TF32_TENSOR_OP_MATH;
    case GemmMath::kPedantic: return CUBLAS_PEDANTIC_MATH;
  }
  return CUBLAS_DEFAULT_MATH;
}

}  // namespace

CublasHandle::CublasHandle(GemmMath math) : math_(math) {
  KEEL_CUBLAS(cublasCreate(&handle_));
  try {
    KEEL_CUBLAS(cublasSetMathMode(handle_, to_cublas(math)));
    KEEL_CUBLAS(cublasSetPointerMode(handle_, CUBLAS_POINTER_MODE_HOST));
  } catch (...) {
    release();
    throw;
  }
}

CublasHandle::~CublasHandle() { release(); }

CublasHandle::CublasHandle(CublasHandle&& other) noexcept
    : handle_(std::exchange(other.handle_, nullptr)), math_(other.math_) {}

CublasHandle& CublasHandle::operator=(CublasHandle&& other) noexcept {
  if (this != &other) {
    release();
    handle_ = std::exchange(other.handle_, nullptr);
    math_ = other.math_;
  }
  return *this;
}

void CublasHandle::release() noexcept {
  if (handle_ == nullptr) return;
  const cublasStatus_t status = cublasDestroy(handle_);
  if (status != CUBLAS_STATUS_SUCCESS) {
    std::fprintf(stderr, "keel: warning: cublasDestroy failed: %s\n", cublasGetStatusName(status));
  }
  handle_ = nullptr;
}

}  // namespace keel::kernels::cuda
