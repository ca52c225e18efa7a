// The GEMM wrapper and the linear layer against naive double-precision products, on sizes that
// are no multiple of any vector width, with padded leading dimensions to catch stride mistakes.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/error.h"
#include "kernels/matmul.h"
#include "tests/kernels/op_test_util.h"

namespace keel::kernels::cpu {
namespace {

using keel::testing::random_floats;
using keel::testing::rel_error;

constexpr double kTol = 1e-5;
constexpr float kSentinel = -12345.0f;  // written in padding; must survive

// C (M, N) = alpha · op(A) · op(B) + beta · C, row-major, in double.
std::vector<double> gemm_ref(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha,
                             const std::vector<float>& A, int64_t lda, const std::vector<float>& B,
                             int64_t ldb, double beta, const std::vector<float>& C, int64_t ldc) {
  std::vector<double> out(M * N);
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      double acc = 0.0;
      for (int64_t k = 0; k < K; ++k) {
        const double a = ta ? A[k * lda + i] : A[i * lda + k];
        const double b = tb ? B[j * ldb + k] : B[k * ldb + j];
        acc += a * b;
      }
      out[i * N + j] = alpha * acc + beta * C[i * ldc + j];
    }
  }
  return out;
}

// The (M, N) block of a row-major matrix with leading dimension ld.
std::vector<float> unpad(const std::vector<float>& x, int64_t M, int64_t N, int64_t ld) {
  std::vector<float> out(M * N);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) out[i * N + j] = x[i * ld + j];
  return out;
}

TEST(GemmTest, AllTransposeVariantsWithPaddedStrides) {
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
      const auto want = gemm_ref(ta, tb, M, N, K, 0.5, A, lda, B, ldb, 0.25, C, ldc);
      gemm(ta, tb, M, N, K, 0.5f, A.data(), lda, B.data(), ldb, 0.25f, C.data(), ldc);
      EXPECT_LE(rel_error(unpad(C, M, N, ldc), want), kTol);
      for (int64_t i = 0; i < M; ++i) {
        EXPECT_EQ(C[i * ldc + N], kSentinel);
        EXPECT_EQ(C[i * ldc + N + 1], kSentinel);
      }
    }
  }
}

TEST(GemmTest, BetaZeroIgnoresGarbageInC) {
  const int64_t M = 5, N = 9, K = 11;
  const auto A = random_floats(M * K, 4), B = random_floats(K * N, 5);
  std::vector<float> C(M * N, NAN);
  const auto want =
      gemm_ref(false, false, M, N, K, 1.0, A, K, B, N, 0.0, std::vector<float>(M * N, 0.0f), N);
  gemm(false, false, M, N, K, 1.0f, A.data(), K, B.data(), N, 0.0f, C.data(), N);
  EXPECT_LE(rel_error(C, want), kTol);
}

TEST(GemmTest, EmptyReductionScalesC) {
  std::vector<float> C = {1.0f, 2.0f, 3.0f, 4.0f};
  const float dummy = 0.0f;
  gemm(false, false, 2, 2, 0, 1.0f, &dummy, 1, &dummy, 2, 0.5f, C.data(), 2);
  EXPECT_EQ(C, (std::vector<float>{0.5f, 1.0f, 1.5f, 2.0f}));
}

TEST(GemmTest, RejectsShortLeadingDimension) {
  std::vector<float> A(6 * 6), B(6 * 6), C(6 * 6);
  EXPECT_THROW(gemm(false, false, 4, 4, 5, 1.0f, A.data(), 4, B.data(), 4, 0.0f, C.data(), 4),
               keel::Error);
  EXPECT_THROW(gemm(false, false, 4, 4, 4, 1.0f, A.data(), 4, B.data(), 4, 0.0f, C.data(), 3),
               keel::Error);
}

struct Linear {
  int64_t N, C, OC;
};

class MatmulTest : public ::testing::TestWithParam<Linear> {};

TEST_P(MatmulTest, Forward) {
  const auto [N, C, OC] = GetParam();
  const auto inp = random_floats(N * C, 10), weight = random_floats(OC * C, 11);
  std::vector<float> out(N * OC, NAN);
  matmul_forward(out.data(), inp.data(), weight.data(), N, C, OC);
  std::vector<double> want(N * OC, 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < OC; ++o)
      for (int64_t c = 0; c < C; ++c)
        want[n * OC + o] += double(inp[n * C + c]) * weight[o * C + c];
  EXPECT_LE(rel_error(out, want), kTol);
}

TEST_P(MatmulTest, Backward) {
  const auto [N, C, OC] = GetParam();
  const auto inp = random_floats(N * C, 20), weight = random_floats(OC * C, 21);
  const auto dout = random_floats(N * OC, 22);
  const auto dinp0 = random_floats(N * C, 23), dweight0 = random_floats(OC * C, 24);
  std::vector<double> dinp_want(N * C, 0.0), dweight_want(dweight0.begin(), dweight0.end());
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t o = 0; o < OC; ++o) {
      for (int64_t c = 0; c < C; ++c) {
        dinp_want[n * C + c] += double(dout[n * OC + o]) * weight[o * C + c];
        dweight_want[o * C + c] += double(dout[n * OC + o]) * inp[n * C + c];
      }
    }
  }
  std::vector<double> dinp_acc_want(dinp0.begin(), dinp0.end());
  for (size_t i = 0; i < dinp_acc_want.size(); ++i) dinp_acc_want[i] += dinp_want[i];

  {  // overwrite dinp; dweight accumulates onto its nonzero start
    std::vector<float> dinp(N * C, NAN), dweight = dweight0;
    matmul_backward(dinp.data(), dweight.data(), dout.data(), inp.data(), weight.data(), N, C, OC,
                    false);
    EXPECT_LE(rel_error(dinp, dinp_want), kTol);
    EXPECT_LE(rel_error(dweight, dweight_want), kTol);
  }
  {  // accumulate dinp
    std::vector<float> dinp = dinp0, dweight = dweight0;
    matmul_backward(dinp.data(), dweight.data(), dout.data(), inp.data(), weight.data(), N, C, OC,
                    true);
    EXPECT_LE(rel_error(dinp, dinp_acc_want), kTol);
    EXPECT_LE(rel_error(dweight, dweight_want), kTol);
  }
  {  // null outputs are skipped
    std::vector<float> dweight = dweight0;
    matmul_backward(nullptr, dweight.data(), dout.data(), inp.data(), weight.data(), N, C, OC,
                    false);
    EXPECT_LE(rel_error(dweight, dweight_want), kTol);
    std::vector<float> dinp(N * C, NAN);
    matmul_backward(dinp.data(), nullptr, dout.data(), inp.data(), weight.data(), N, C, OC, false);
    EXPECT_LE(rel_error(dinp, dinp_want), kTol);
  }
}

// Awkward sizes, and one large enough for OpenBLAS to split it across threads.
INSTANTIATE_TEST_SUITE_P(Sizes, MatmulTest,
                         ::testing::Values(Linear{7, 37, 13}, Linear{1, 5, 3}, Linear{13, 1, 7},
                                           Linear{197, 259, 129}),
                         [](const auto& test) {
                           std::string name = "N";  // appended: GCC 12's -Wrestrict misfires
                           name += std::to_string(test.param.N);  // on "N" + string + ...
                           name += "_C";
                           name += std::to_string(test.param.C);
                           name += "_OC";
                           return name + std::to_string(test.param.OC);
                         });

}  // namespace
}  // namespace keel::kernels::cpu
