// The CUDA and cuBLAS check macros, which need no device: a failing status becomes a keel::Error
// naming the error, the expression and the call site; success passes silently. Also the skip
// reason the GPU tests print, which must say something useful on a machine without a GPU.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "kernels/cuda/check.cuh"
#include "kernels/error.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace keel::kernels::cuda {
namespace {

cudaError_t cuda_returns(cudaError_t err) { return err; }
cublasStatus_t cublas_returns(cublasStatus_t status) { return status; }

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST(CudaCheck, CudaFailureThrowsWithErrorExpressionAndPlace) {
  try {
    KEEL_CUDA(cuda_returns(cudaErrorInvalidValue));
    FAIL() << "KEEL_CUDA did not throw";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_TRUE(contains(what, "CUDA error cudaErrorInvalidValue")) << what;
    EXPECT_TRUE(contains(what, "cuda_returns(cudaErrorInvalidValue)")) << what;
    EXPECT_TRUE(contains(e.where(), "test_check.cpp:")) << e.where();
  }
}

TEST(CudaCheck, CublasFailureThrowsWithStatusExpressionAndPlace) {
  try {
    KEEL_CUBLAS(cublas_returns(CUBLAS_STATUS_NOT_INITIALIZED));
    FAIL() << "KEEL_CUBLAS did not throw";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_TRUE(contains(what, "cuBLAS error CUBLAS_STATUS_NOT_INITIALIZED")) << what;
    EXPECT_TRUE(contains(what, "cublas_returns(CUBLAS_STATUS_NOT_INITIALIZED)")) << what;
    EXPECT_TRUE(contains(e.where(), "test_check.cpp:")) << e.where();
  }
}

TEST(CudaCheck, SuccessDoesNotThrowAndEvaluatesOnce) {
  int calls = 0;
  auto succeed = [&calls] {
    ++calls;
    return cudaSuccess;
  };
  EXPECT_NO_THROW(KEEL_CUDA(succeed()));
  EXPECT_NO_THROW(KEEL_CUBLAS(cublas_returns(CUBLAS_STATUS_SUCCESS)));
  EXPECT_EQ(calls, 1);
}

// Whatever this machine has, the answer is consistent: a reason exactly when no device is usable.
TEST(CudaCheck, UnavailableReasonAgreesWithDeviceCount) {
  int count = 0;
  const bool usable = cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
  (void)cudaGetLastError();
  const std::string reason = keel::testing::cuda_unavailable_reason();
  EXPECT_EQ(reason.empty(), usable) << reason;
  if (!usable) std::printf("CUDA unavailable here: %s\n", reason.c_str());
}

}  // namespace
}  // namespace keel::kernels::cuda
