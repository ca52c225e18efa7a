// cuBLAS GEMM and the linear layer on the GPU against the CPU (OpenBLAS) versions: every transpose
// variant with padded leading dimensions, beta = 0 over NaN, the empty reduction, the default
// handle's math staying fp32 (a TF32 product would miss the tolerance by 100×), and the RAII
// handle.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/cuda/cublas_handle.h"
#include "kernels/error.h"
#include "kernels/matmul.h"
#include "tests/kernels/cuda/cuda_test_util.h"
#include "tests/kernels/op_test_util.h"

namespace keel::kernels::cuda {
namespace {

using keel::testing::CudaParamTest;
using keel::testing::CudaTest;
using keel::testing::DeviceBuffer;
using keel::testing::random_floats;
using keel::testing::rel_error;
using keel::testing::to_double;

constexpr double kTol = 1e-5;
constexpr float kSentinel = -12345.0f;  // written in padding; must survive

// The (M, N) block of a row-major matrix with leading dimension ld.
std::vector<float> unpad(const std::vector<float>& x, int64_t M, int64_t N, int64_t ld) {
  std::vector<float> out(M * N);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) out[i * N + j] = x[i * ld + j];
  return out;
}

using CudaGemm = CudaTest;

TEST_F(CudaGemm, AllTransposeVariantsWithPaddedStridesMatchCpu) {
  CublasHandle blas(GemmMath::kPedantic);
  const int64_t M = 7, N = 13, K = 37;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "trans_a=" << ta << " trans_b=" << tb);
      const int64_t a_rows = ta ? K : M, a_cols = ta ? M : K;
      const int64_t b_rows = tb ? N : K, b_cols = tb ? K : N;
      const int64_t lda = a_cols + 3, ldb = b_cols + 5, ldc = N + 2;
      const auto A = random_floats(a_rows * lda, 1);
      const auto B = random_floats(b_rows * ldb, 2);
      auto C = random_floats(M * ldc, 3);
      for (int64_t i = 0; i < M; ++i) C[i * ldc + N] = C[i * ldc + N + 1] = kSentinel;
      DeviceBuffer<float> dA(A), dB(B), dC(C);
      gemm(ta, tb, M, N, K, 0.5f, dA.get(), lda, dB.get(), ldb, 0.25f, dC.get(), ldc, blas,
           stream());
      cpu::gemm(ta, tb, M, N, K, 0.5f, A.data(), lda, B.data(), ldb, 0.25f, C.data(), ldc);
      const auto got = dC.download();
      EXPECT_LE(rel_error(unpad(got, M, N, ldc), to_double(unpad(C, M, N, ldc))), kTol);
      for (int64_t i = 0; i < M; ++i) {
        EXPECT_EQ(got[i * ldc + N], kSentinel);
        EXPECT_EQ(got[i * ldc + N + 1], kSentinel);
      }
    }
  }
}

TEST_F(CudaGemm, BetaZeroIgnoresNaNInC) {
  CublasHandle blas(GemmMath::kPedantic);
  const int64_t M = 5, N = 9, K = 11;
  const auto A = random_floats(M * K, 4), B = random_floats(K * N, 5);
  std::vector<float> want(M * N, NAN);
  cpu::gemm(false, false, M, N, K, 1.0f, A.data(), K, B.data(), N, 0.0f, want.data(), N);
  DeviceBuffer<float> dA(A), dB(B), dC(M * N);  // dC poisoned with NaN
  gemm(false, false, M, N, K, 1.0f, dA.get(), K, dB.get(), N, 0.0f, dC.get(), N, blas, stream());
  EXPECT_LE(rel_error(dC.download(), to_double(want)), kTol);
}

TEST_F(CudaGemm, EmptyReductionScalesCAndBetaZeroClearsNaN) {
  CublasHandle blas(GemmMath::kPedantic);
  const int64_t M = 4, N = 6, ldc = 8;
  auto C = random_floats(M * ldc, 6);
  for (int64_t i = 0; i < M; ++i) C[i * ldc + N] = C[i * ldc + N + 1] = kSentinel;
  DeviceBuffer<float> dC(C), dNaN(M * N);
  gemm(false, false, M, N, 0, 1.0f, nullptr, 1, nullptr, N, 0.5f, dC.get(), ldc, blas, stream());
  gemm(false, false, M, N, 0, 1.0f, nullptr, 1, nullptr, N, 0.0f, dNaN.get(), N, blas, stream());
  const auto got = dC.download();
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) EXPECT_EQ(got[i * ldc + j], 0.5f * C[i * ldc + j]);
    EXPECT_EQ(got[i * ldc + N], kSentinel);
  }
  EXPECT_EQ(dNaN.download(), std::vector<float>(M * N, 0.0f));
}

TEST_F(CudaGemm, EmptyOutputTouchesNothing) {
  CublasHandle blas(GemmMath::kPedantic);
  DeviceBuffer<float> dC(std::vector<float>{kSentinel});
  gemm(false, false, 0, 1, 3, 1.0f, nullptr, 3, nullptr, 1, 0.0f, dC.get(), 1, blas, stream());
  gemm(false, false, 1, 0, 3, 1.0f, nullptr, 3, nullptr, 1, 0.0f, dC.get(), 1, blas, stream());
  EXPECT_EQ(dC.download()[0], kSentinel);
}

TEST_F(CudaGemm, RejectsShortLeadingDimension) {
  CublasHandle blas(GemmMath::kPedantic);
  DeviceBuffer<float> d(64);
  EXPECT_THROW(
      gemm(false, false, 4, 4, 4, 1.0f, d.get(), 3, d.get(), 4, 0.0f, d.get(), 4, blas, stream()),
      Error);
  EXPECT_THROW(
      gemm(false, true, 4, 4, 4, 1.0f, d.get(), 4, d.get(), 3, 0.0f, d.get(), 4, blas, stream()),
      Error);
  EXPECT_THROW(
      gemm(false, false, 4, 4, 4, 1.0f, d.get(), 4, d.get(), 4, 0.0f, d.get(), 3, blas, stream()),
      Error);
}

// The default handle must not fall back to TF32: over K = 1536 its 10-bit mantissa costs ~1e-3.
TEST_F(CudaGemm, DefaultMathIsFullFp32) {
  CublasHandle blas;
  EXPECT_EQ(blas.math(), GemmMath::kFp32);
  const int64_t M = 96, N = 80, K = 1536;
  const auto A = random_floats(M * K, 7), B = random_floats(K * N, 8);
  std::vector<float> want(M * N);
  cpu::gemm(false, false, M, N, K, 1.0f, A.data(), K, B.data(), N, 0.0f, want.data(), N);
  DeviceBuffer<float> dA(A), dB(B), dC(M * N);
  gemm(false, false, M, N, K, 1.0f, dA.get(), K, dB.get(), N, 0.0f, dC.get(), N, blas, stream());
  EXPECT_LE(rel_error(dC.download(), to_double(want)), kTol);
}

TEST_F(CudaGemm, HandleIsMoveOnlyAndMovesOwnership) {
  CublasHandle a(GemmMath::kTf32);
  const cublasHandle_t raw = a.get();
  ASSERT_NE(raw, nullptr);
  CublasHandle b(std::move(a));
  EXPECT_EQ(a.get(), nullptr);  // NOLINT(bugprone-use-after-move): checking the moved-from state
  EXPECT_EQ(b.get(), raw);
  EXPECT_EQ(b.math(), GemmMath::kTf32);
  CublasHandle c;
  c = std::move(b);
  EXPECT_EQ(c.get(), raw);
  EXPECT_EQ(b.get(), nullptr);  // NOLINT(bugprone-use-after-move)
}

// (N, C, OC)
class CudaMatmul : public CudaParamTest<std::tuple<int64_t, int64_t, int64_t>> {};

TEST_P(CudaMatmul, ForwardMatchesCpu) {
  const auto [N, C, OC] = GetParam();
  CublasHandle blas(GemmMath::kPedantic);
  const auto inp = random_floats(N * C, 11), weight = random_floats(OC * C, 12);
  std::vector<float> want(N * OC, NAN);
  cpu::matmul_forward(want.data(), inp.data(), weight.data(), N, C, OC);
  DeviceBuffer<float> d_inp(inp), d_weight(weight), d_out(N * OC);
  matmul_forward(d_out.get(), d_inp.get(), d_weight.get(), N, C, OC, blas, stream());
  EXPECT_LE(rel_error(d_out.download(), to_double(want)), kTol);
}

TEST_P(CudaMatmul, BackwardOverwritesOrAccumulatesDinpAndAccumulatesDweight) {
  const auto [N, C, OC] = GetParam();
  CublasHandle blas(GemmMath::kPedantic);
  const auto inp = random_floats(N * C, 13), weight = random_floats(OC * C, 14);
  const auto dout = random_floats(N * OC, 15);
  const auto dinp0 = random_floats(N * C, 16), dweight0 = random_floats(OC * C, 17);
  DeviceBuffer<float> d_inp(inp), d_weight(weight), d_dout(dout);
  for (bool accumulate : {false, true}) {
    SCOPED_TRACE(::testing::Message() << "accumulate_dinp=" << accumulate);
    std::vector<float> want_dinp = accumulate ? dinp0 : std::vector<float>(N * C, NAN);
    std::vector<float> want_dweight = dweight0;
    cpu::matmul_backward(want_dinp.data(), want_dweight.data(), dout.data(), inp.data(),
                         weight.data(), N, C, OC, accumulate);
    DeviceBuffer<float> d_dweight(dweight0);
    DeviceBuffer<float> d_dinp(N * C);  // poisoned: must be overwritten
    if (accumulate) d_dinp.upload(dinp0);
    matmul_backward(d_dinp.get(), d_dweight.get(), d_dout.get(), d_inp.get(), d_weight.get(), N, C,
                    OC, accumulate, blas, stream());
    EXPECT_LE(rel_error(d_dinp.download(), to_double(want_dinp)), kTol);
    EXPECT_LE(rel_error(d_dweight.download(), to_double(want_dweight)), kTol);
  }
}

TEST_P(CudaMatmul, BackwardSkipsNullOutputs) {
  const auto [N, C, OC] = GetParam();
  CublasHandle blas(GemmMath::kPedantic);
  const auto inp = random_floats(N * C, 18), weight = random_floats(OC * C, 19);
  const auto dout = random_floats(N * OC, 20), dweight0 = random_floats(OC * C, 21);
  std::vector<float> want_dinp(N * C, NAN), want_dweight = dweight0;
  cpu::matmul_backward(want_dinp.data(), nullptr, dout.data(), inp.data(), weight.data(), N, C, OC,
                       false);
  cpu::matmul_backward(nullptr, want_dweight.data(), dout.data(), inp.data(), weight.data(), N, C,
                       OC, false);
  DeviceBuffer<float> d_inp(inp), d_weight(weight), d_dout(dout), d_dinp(N * C),
      d_dweight(dweight0);
  matmul_backward(d_dinp.get(), nullptr, d_dout.get(), d_inp.get(), d_weight.get(), N, C, OC, false,
                  blas, stream());
  matmul_backward(nullptr, d_dweight.get(), d_dout.get(), d_inp.get(), d_weight.get(), N, C, OC,
                  false, blas, stream());
  EXPECT_LE(rel_error(d_dinp.download(), to_double(want_dinp)), kTol);
  EXPECT_LE(rel_error(d_dweight.download(), to_double(want_dweight)), kTol);
}

INSTANTIATE_TEST_SUITE_P(Sizes, CudaMatmul,
                         ::testing::Values(std::make_tuple(1, 1, 1), std::make_tuple(3, 5, 7),
                                           std::make_tuple(33, 65, 17),
                                           std::make_tuple(129, 257, 31),
                                           std::make_tuple(64, 288, 768)),
                         [](const auto& test) {
                           const auto& p = test.param;
                           return keel::testing::name_of("N", std::get<0>(p), "_C", std::get<1>(p),
                                                         "_OC", std::get<2>(p));
                         });

}  // namespace
}  // namespace keel::kernels::cuda
