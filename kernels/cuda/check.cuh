// Check macros of the CUDA backend: KEEL_CUDA and KEEL_CUBLAS turn a failed CUDA runtime or cuBLAS
// call into a keel::Error naming the error, the expression and where it was made. Host code only,
// so plain C++ (tests, the engine) can include it too.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "kernels/error.h"

namespace keel::kernels::cuda::detail {

[[noreturn]] inline void raise_cuda_error(cudaError_t err, const char* expr, const char* file,
                                          int line) {
  ::keel::raise_error(file, line,
                      ::keel::format("CUDA error {} ({}) in {}", cudaGetErrorName(err),
                                     cudaGetErrorString(err), expr));
}

[[noreturn]] inline void raise_cublas_error(cublasStatus_t status, const char* expr,
                                            const char* file, int line) {
  ::keel::raise_error(file, line,
                      ::keel::format("cuBLAS error {} ({}) in {}", cublasGetStatusName(status),
                                     cublasGetStatusString(status), expr));
}

}  // namespace keel::kernels::cuda::detail

// KEEL_CUDA(cudaMemcpyAsync(...)): throws keel::Error unless the call returns cudaSuccess.
#define KEEL_CUDA(expr)                                                                           \
  do {                                                                                            \
    const cudaError_t keel_cuda_err_ = (expr);                                                    \
    if (keel_cuda_err_ != cudaSuccess)                                                            \
      ::keel::kernels::cuda::detail::raise_cuda_error(keel_cuda_err_, #expr, __FILE__, __LINE__); \
  } while (0)

// KEEL_CUBLAS(cublasSgemm(...)): throws keel::Error unless the call returns CUBLAS_STATUS_SUCCESS.
#define KEEL_CUBLAS(expr)                                                                     \
  do {                                                                                        \
    const cublasStatus_t keel_cublas_status_ = (expr);                                        \
    if (keel_cublas_status_ != CUBLAS_STATUS_SUCCESS)                                         \
      ::keel::kernels::cuda::detail::raise_cublas_error(keel_cublas_status_, #expr, __FILE__, \
                                                        __LINE__);                            \
  } while (0)

// After every kernel launch: a bad launch configuration is reported at the launch, not at some
// later synchronising call. (Faults inside the kernel surface at the next synchronisation.)
#define KEEL_CUDA_CHECK_LAUNCH() KEEL_CUDA(cudaGetLastError())
