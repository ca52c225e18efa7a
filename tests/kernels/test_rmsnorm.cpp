// RMSNorm forward and backward against double-precision references (the backward reference
// itself checked by central differences), the accumulate semantics, and the weight gradient's
// independence from the thread count.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "kernels/rmsnorm.h"
#include "op_test_util.h"

namespace keel::kernels::cpu {
namespace {

using testing::random_floats;
using testing::rel_error;
using testing::to_double;

template <class F>
void with_threads(int threads, F&& f) {
  const int before = omp_get_max_threads();
  omp_set_num_threads(threads);
  f();
  omp_set_num_threads(before);
}

// Hugging Face LlamaRMSNorm in double: y = x / sqrt(mean(x²) + eps) · w.
struct Forward {
  std::vector<double> out, rstd;
};

Forward reference_forward(const std::vector<double>& x, const std::vector<double>& w, int64_t N,
                          int64_t C, double eps) {
  Forward f{std::vector<double>(N * C), std::vector<double>(N)};
  for (int64_t n = 0; n < N; ++n) {
    double ss = 0.0;
    for (int64_t c = 0; c < C; ++c) ss += x[n * C + c] * x[n * C + c];
    f.rstd[n] = 1.0 / std::sqrt(ss / C + eps);
    for (int64_t c = 0; c < C; ++c) f.out[n * C + c] = x[n * C + c] * f.rstd[n] * w[c];
  }
  return f;
}

// dx_j = r·w_j·dy_j − r³/C · x_j · Σ_k dy_k·w_k·x_k;  dw_c = Σ_n dy·x·r.
struct Backward {
  std::vector<double> dx, dw;
};

Backward reference_backward(const std::vector<double>& dy, const std::vector<double>& x,
                            const std::vector<double>& w, int64_t N, int64_t C, double eps) {
  const Forward f = reference_forward(x, w, N, C, eps);
  Backward b{std::vector<double>(N * C), std::vector<double>(C, 0.0)};
  for (int64_t n = 0; n < N; ++n) {
    const double r = f.rstd[n];
    double dot = 0.0;
    for (int64_t c = 0; c < C; ++c) dot += dy[n * C + c] * w[c] * x[n * C + c];
    for (int64_t c = 0; c < C; ++c) {
      b.dx[n * C + c] = r * w[c] * dy[n * C + c] - r * r * r / C * x[n * C + c] * dot;
      b.dw[c] += dy[n * C + c] * x[n * C + c] * r;
    }
  }
  return b;
}

TEST(RmsNormTest, ForwardMatchesDoubleReference) {
  const float eps = 1e-5f;
  for (const int64_t C : {37, 1000}) {
    const int64_t N = 7;
    // An offset mean and a spread of scales, so the rows' statistics differ.
    auto x = random_floats(N * C, 11, 2.0f);
    for (int64_t i = 0; i < N * C; ++i) x[i] += 0.5f * static_cast<float>(i / C);
    const auto w = random_floats(C, 12);
    std::vector<float> out(N * C), rstd(N);
    rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, eps);
    const Forward want = reference_forward(to_double(x), to_double(w), N, C, eps);
    const double err_out = rel_error(out, want.out);
    const double err_rstd = rel_error(rstd, want.rstd);
    EXPECT_LE(err_out, 1e-5) << "C=" << C;
    EXPECT_LE(err_rstd, 1e-5) << "C=" << C;
    RecordProperty("rel_error_out_C" + std::to_string(C), ::testing::PrintToString(err_out));
    RecordProperty("rel_error_rstd_C" + std::to_string(C), ::testing::PrintToString(err_rstd));
  }
}

TEST(RmsNormTest, ReferenceBackwardMatchesFiniteDifferences) {
  // L(x, w) = Σ dy · y(x, w) in double; its gradient is what reference_backward claims.
  const int64_t N = 2, C = 5;
  const double eps = 1e-5, h = 1e-6;
  auto x = to_double(random_floats(N * C, 13));
  auto w = to_double(random_floats(C, 14));
  const auto dy = to_double(random_floats(N * C, 15));
  const auto loss = [&] {
    const Forward f = reference_forward(x, w, N, C, eps);
    double l = 0.0;
    for (int64_t i = 0; i < N * C; ++i) l += dy[i] * f.out[i];
    return l;
  };
  const auto central = [&](double& v) { return keel::testing::central_difference(v, h, loss); };
  std::vector<double> fd_dx(N * C), fd_dw(C);
  for (int64_t i = 0; i < N * C; ++i) fd_dx[i] = central(x[i]);
  for (int64_t c = 0; c < C; ++c) fd_dw[c] = central(w[c]);
  const Backward b = reference_backward(dy, x, w, N, C, eps);
  const auto close = [](const std::vector<double>& got, const std::vector<double>& want) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < got.size(); ++i) {
      num += (got[i] - want[i]) * (got[i] - want[i]);
      den += want[i] * want[i];
    }
    return std::sqrt(num / den);
  };
  const double err_dx = close(b.dx, fd_dx), err_dw = close(b.dw, fd_dw);
  EXPECT_LE(err_dx, 1e-7);
  EXPECT_LE(err_dw, 1e-7);
  RecordProperty("fd_rel_error_dx", ::testing::PrintToString(err_dx));
  RecordProperty("fd_rel_error_dweight", ::testing::PrintToString(err_dw));
}

TEST(RmsNormTest, BackwardMatchesDoubleReference) {
  const int64_t N = 7, C = 37;
  const float eps = 1e-6f;
  const auto x = random_floats(N * C, 16, 1.5f);
  const auto w = random_floats(C, 17);
  const auto dy = random_floats(N * C, 18);
  std::vector<float> out(N * C), rstd(N);
  rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, eps);

  // Overwrite: whatever dx held (NaN here) is gone; dweight starts at zero.
  std::vector<float> dx(N * C, std::numeric_limits<float>::quiet_NaN()), dw(C, 0.0f);
  rmsnorm_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), rstd.data(), N, C,
                   /*accumulate_dx=*/false);
  const Backward want = reference_backward(to_double(dy), to_double(x), to_double(w), N, C, eps);
  const double err_dx = rel_error(dx, want.dx);
  const double err_dw = rel_error(dw, want.dw);
  EXPECT_LE(err_dx, 1e-5);
  EXPECT_LE(err_dw, 1e-5);
  RecordProperty("rel_error_dx", ::testing::PrintToString(err_dx));
  RecordProperty("rel_error_dweight", ::testing::PrintToString(err_dw));
}

TEST(RmsNormTest, BackwardAccumulatesIntoDxWhenAskedAndIntoDweightAlways) {
  const int64_t N = 7, C = 37;
  const float eps = 1e-5f;
  const auto x = random_floats(N * C, 19);
  const auto w = random_floats(C, 20);
  const auto dy = random_floats(N * C, 21);
  const auto dx0 = random_floats(N * C, 22);
  const auto dw0 = random_floats(C, 23);
  std::vector<float> out(N * C), rstd(N);
  rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, eps);
  std::vector<float> dx = dx0, dw = dw0;
  rmsnorm_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), rstd.data(), N, C,
                   /*accumulate_dx=*/true);
  Backward want = reference_backward(to_double(dy), to_double(x), to_double(w), N, C, eps);
  for (int64_t i = 0; i < N * C; ++i) want.dx[i] += dx0[i];
  for (int64_t c = 0; c < C; ++c) want.dw[c] += dw0[c];
  EXPECT_LE(rel_error(dx, want.dx), 1e-5);
  EXPECT_LE(rel_error(dw, want.dw), 1e-5);
}

TEST(RmsNormTest, BackwardIsBitwiseIdenticalForOneAndTwoThreads) {
  const int64_t N = 301, C = 300;
  const float eps = 1e-5f;
  const auto x = random_floats(N * C, 24);
  const auto w = random_floats(C, 25);
  const auto dy = random_floats(N * C, 26);
  const auto dw0 = random_floats(C, 27);
  std::vector<float> out(N * C), rstd(N);
  rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, eps);
  std::vector<float> dx1(N * C), dx2(N * C), dw1 = dw0, dw2 = dw0;
  const auto run = [&](std::vector<float>& dx, std::vector<float>& dw) {
    rmsnorm_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), rstd.data(), N, C, false);
  };
  with_threads(1, [&] { run(dx1, dw1); });
  with_threads(2, [&] { run(dx2, dw2); });
  EXPECT_EQ(std::memcmp(dw1.data(), dw2.data(), C * sizeof(float)), 0);
  EXPECT_EQ(std::memcmp(dx1.data(), dx2.data(), N * C * sizeof(float)), 0);
}

}  // namespace
}  // namespace keel::kernels::cpu
