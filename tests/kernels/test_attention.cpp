// Causal GQA attention against a naive double-precision reference (itself checked by finite
// differences), on head layouts GQA / MQA / single head and lengths that straddle the kernel's
// query blocks; plus bitwise determinism across thread counts and workspace bounds.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "kernels/error.h"
#include "tests/kernels/op_test_util.h"

namespace keel::kernels::cpu {
namespace {

using keel::testing::random_floats;
using keel::testing::rel_error;

constexpr double kTol = 1e-5;

struct Shape {
  int64_t B, T, H, Hkv, D;
  float input_scale = 1.0f;
  int64_t stride() const { return (H + 2 * Hkv) * D; }
  int64_t qkv_size() const { return B * T * stride(); }
  int64_t out_size() const { return B * T * H * D; }
  int64_t lse_size() const { return B * H * T; }
};

std::string name(const Shape& s) {
  std::string n = "B" + std::to_string(s.B) + "_T" + std::to_string(s.T) + "_H" +
                  std::to_string(s.H) + "_Hkv" + std::to_string(s.Hkv) + "_D" + std::to_string(s.D);
  return s.input_scale == 1.0f ? n : n + "_peaked";
}

// ---- double reference ---------------------------------------------------------------------

struct Reference {
  std::vector<double> out, lse;  // (B, T, H·D), (B, H, T)
};

// Scores of query (b, h, t) against keys 0..t, and the head indices into a qkv row.
template <class Real>
std::vector<double> scores(const std::vector<Real>& qkv, const Shape& s, int64_t b, int64_t h,
                           int64_t t) {
  const int64_t kvh = h / (s.H / s.Hkv);
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.D));
  const Real* q = qkv.data() + (b * s.T + t) * s.stride() + h * s.D;
  std::vector<double> out(t + 1);
  for (int64_t u = 0; u <= t; ++u) {
    const Real* k = qkv.data() + (b * s.T + u) * s.stride() + (s.H + kvh) * s.D;
    double acc = 0.0;
    for (int64_t d = 0; d < s.D; ++d) acc += double(q[d]) * double(k[d]);
    out[u] = acc * scale;
  }
  return out;
}

template <class Real>
Reference reference_forward(const std::vector<Real>& qkv, const Shape& s) {
  Reference r{std::vector<double>(s.out_size(), 0.0), std::vector<double>(s.lse_size())};
  for (int64_t b = 0; b < s.B; ++b) {
    for (int64_t h = 0; h < s.H; ++h) {
      const int64_t kvh = h / (s.H / s.Hkv);
      for (int64_t t = 0; t < s.T; ++t) {
        const auto sc = scores(qkv, s, b, h, t);
        double m = -INFINITY, sum = 0.0;
        for (double x : sc) m = std::max(m, x);
        for (double x : sc) sum += std::exp(x - m);
        r.lse[(b * s.H + h) * s.T + t] = m + std::log(sum);
        double* o = r.out.data() + (b * s.T + t) * s.H * s.D + h * s.D;
        for (int64_t u = 0; u <= t; ++u) {
          const double p = std::exp(sc[u] - m) / sum;
          const Real* v = qkv.data() + (b * s.T + u) * s.stride() + (s.H + s.Hkv + kvh) * s.D;
          for (int64_t d = 0; d < s.D; ++d) o[d] += p * double(v[d]);
        }
      }
    }
  }
  return r;
}

// dqkv from dout by the textbook softmax backward: dS = P ∘ (dP − Σ_u P·dP).
std::vector<double> reference_backward(const std::vector<double>& qkv,
                                       const std::vector<double>& dout, const Shape& s) {
  std::vector<double> dqkv(s.qkv_size(), 0.0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.D));
  for (int64_t b = 0; b < s.B; ++b) {
    for (int64_t h = 0; h < s.H; ++h) {
      const int64_t kvh = h / (s.H / s.Hkv);
      for (int64_t t = 0; t < s.T; ++t) {
        const auto sc = scores(qkv, s, b, h, t);
        double m = -INFINITY, sum = 0.0;
        for (double x : sc) m = std::max(m, x);
        for (double x : sc) sum += std::exp(x - m);
        const double* go = dout.data() + (b * s.T + t) * s.H * s.D + h * s.D;
        std::vector<double> p(t + 1), dp(t + 1);
        double pdp = 0.0;
        for (int64_t u = 0; u <= t; ++u) {
          p[u] = std::exp(sc[u] - m) / sum;
          const double* v = qkv.data() + (b * s.T + u) * s.stride() + (s.H + s.Hkv + kvh) * s.D;
          dp[u] = 0.0;
          for (int64_t d = 0; d < s.D; ++d) dp[u] += go[d] * v[d];
          pdp += p[u] * dp[u];
        }
        const double* q = qkv.data() + (b * s.T + t) * s.stride() + h * s.D;
        double* dq = dqkv.data() + (b * s.T + t) * s.stride() + h * s.D;
        for (int64_t u = 0; u <= t; ++u) {
          const double ds = p[u] * (dp[u] - pdp) * scale;
          const int64_t row = (b * s.T + u) * s.stride();
          const double* k = qkv.data() + row + (s.H + kvh) * s.D;
          double* dk = dqkv.data() + row + (s.H + kvh) * s.D;
          double* dv = dqkv.data() + row + (s.H + s.Hkv + kvh) * s.D;
          for (int64_t d = 0; d < s.D; ++d) {
            dq[d] += ds * k[d];
            dk[d] += ds * q[d];
            dv[d] += p[u] * go[d];
          }
        }
      }
    }
  }
  return dqkv;
}

// ---- helpers --------------------------------------------------------------------------------

// The q, k or v part (part 0, 1, 2) of a qkv-shaped tensor, as a compact vector.
template <class Real>
std::vector<Real> part(const std::vector<Real>& x, const Shape& s, int which) {
  const int64_t begin = which == 0 ? 0 : (which == 1 ? s.H : s.H + s.Hkv) * s.D;
  const int64_t width = (which == 0 ? s.H : s.Hkv) * s.D;
  std::vector<Real> out;
  for (int64_t row = 0; row < s.B * s.T; ++row) {
    out.insert(out.end(), x.begin() + row * s.stride() + begin,
               x.begin() + row * s.stride() + begin + width);
  }
  return out;
}

struct Result {
  std::vector<float> out, lse, dqkv;
};

// Runs forward and backward with a NaN-filled workspace (so reading unwritten scratch shows) and
// a guard band after it that must stay untouched.
Result run_kernels(const std::vector<float>& qkv, const std::vector<float>& dout, const Shape& s,
                   int max_threads) {
  const size_t ws = attention_workspace_floats(s.B, s.T, s.H, s.Hkv, s.D, max_threads);
  constexpr size_t kGuard = 4096;
  constexpr float kGuardValue = 7.25f;
  std::vector<float> workspace(ws + kGuard, NAN);
  std::fill(workspace.begin() + ws, workspace.end(), kGuardValue);
  Result r{std::vector<float>(s.out_size(), NAN), std::vector<float>(s.lse_size(), NAN),
           std::vector<float>(s.qkv_size(), NAN)};
  attention_forward(r.out.data(), r.lse.data(), qkv.data(), s.B, s.T, s.H, s.Hkv, s.D,
                    workspace.data());
  attention_backward(r.dqkv.data(), dout.data(), qkv.data(), r.out.data(), r.lse.data(), s.B, s.T,
                     s.H, s.Hkv, s.D, workspace.data());
  size_t touched = 0;
  for (size_t i = ws; i < workspace.size(); ++i) touched += workspace[i] != kGuardValue;
  EXPECT_EQ(touched, 0u) << "attention wrote past its workspace";
  return r;
}

// ---- tests ----------------------------------------------------------------------------------

class AttentionTest : public ::testing::TestWithParam<Shape> {};

TEST_P(AttentionTest, ForwardAndBackwardMatchDoubleReference) {
  const Shape s = GetParam();
  const auto qkv = random_floats(s.qkv_size(), 100 + s.T, s.input_scale);
  const auto dout = random_floats(s.out_size(), 200 + s.T);
  const Result got = run_kernels(qkv, dout, s, omp_get_max_threads());

  const auto qkv_d = keel::testing::to_double(qkv);
  const Reference want = reference_forward(qkv_d, s);
  const auto dqkv_want = reference_backward(qkv_d, keel::testing::to_double(dout), s);

  EXPECT_LE(rel_error(got.out, want.out), kTol);
  EXPECT_LE(rel_error(got.lse, want.lse), kTol);
  const char* names[] = {"dq", "dk", "dv"};
  for (int which = 0; which < 3; ++which) {
    EXPECT_LE(rel_error(part(got.dqkv, s, which), part(dqkv_want, s, which)), kTol) << names[which];
  }
}

// T = 13, 37 are no multiple of a vector width; T = 130 crosses query blocks (of 64, 42 or 32
// positions by group size), and with few (batch, kv-head) tasks takes the split backward; B=4,
// H=8, Hkv=4 gives 16 tasks and the unsplit one. "peaked" inputs make softmax nearly one-hot.
INSTANTIATE_TEST_SUITE_P(Shapes, AttentionTest,
                         ::testing::Values(Shape{2, 13, 4, 2, 6}, Shape{2, 37, 4, 2, 16},
                                           Shape{2, 13, 3, 1, 6}, Shape{2, 37, 3, 1, 16},
                                           Shape{2, 13, 1, 1, 6}, Shape{2, 37, 1, 1, 16},
                                           Shape{2, 130, 4, 2, 16}, Shape{2, 130, 3, 1, 6},
                                           Shape{1, 130, 1, 1, 16}, Shape{4, 130, 8, 4, 6},
                                           Shape{1, 1, 2, 1, 4}, Shape{2, 37, 4, 2, 16, 4.0f}),
                         [](const auto& test) { return name(test.param); });

// The reference backward is the gradient of Σ out·dout: central differences in double.
TEST(AttentionReferenceTest, BackwardMatchesFiniteDifferences) {
  const Shape s{2, 5, 4, 2, 3};
  const auto qkv = keel::testing::to_double(random_floats(s.qkv_size(), 7));
  const auto dout = keel::testing::to_double(random_floats(s.out_size(), 8));
  const auto grad = reference_backward(qkv, dout, s);
  auto loss = [&](const std::vector<double>& x) {
    const auto out = reference_forward(x, s).out;
    double l = 0.0;
    for (size_t i = 0; i < out.size(); ++i) l += out[i] * dout[i];
    return l;
  };
  const double eps = 1e-5;
  std::vector<double> numeric(qkv.size());
  for (size_t i = 0; i < qkv.size(); ++i) {
    auto x = qkv;
    x[i] = qkv[i] + eps;
    const double up = loss(x);
    x[i] = qkv[i] - eps;
    numeric[i] = (up - loss(x)) / (2 * eps);
  }
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < grad.size(); ++i) {
    num += (grad[i] - numeric[i]) * (grad[i] - numeric[i]);
    den += numeric[i] * numeric[i];
  }
  EXPECT_LE(std::sqrt(num / den), 1e-8);
  EXPECT_GT(den, 0.0);
}

// Bitwise the same results for any thread count, including shapes whose backward splits tasks.
TEST(AttentionTest, DeterministicAcrossThreadCounts) {
  const int saved = omp_get_max_threads();
  for (const Shape s : {Shape{2, 130, 4, 2, 16}, Shape{1, 130, 1, 1, 16}, Shape{4, 70, 8, 4, 8}}) {
    SCOPED_TRACE(name(s));
    const auto qkv = random_floats(s.qkv_size(), 31);
    const auto dout = random_floats(s.out_size(), 32);
    omp_set_num_threads(1);
    const Result one = run_kernels(qkv, dout, s, 3);
    for (int threads : {2, 3}) {
      omp_set_num_threads(threads);
      const Result many = run_kernels(qkv, dout, s, 3);
      EXPECT_EQ(std::memcmp(one.out.data(), many.out.data(), one.out.size() * sizeof(float)), 0);
      EXPECT_EQ(std::memcmp(one.lse.data(), many.lse.data(), one.lse.size() * sizeof(float)), 0);
      EXPECT_EQ(std::memcmp(one.dqkv.data(), many.dqkv.data(), one.dqkv.size() * sizeof(float)), 0);
    }
  }
  omp_set_num_threads(saved);
}

TEST(AttentionTest, RejectsHeadsNotGrouped) {
  EXPECT_THROW(attention_workspace_floats(1, 8, 3, 2, 4, 1), keel::Error);
  EXPECT_THROW(attention_workspace_floats(1, 8, 2, 0, 4, 1), keel::Error);
}

}  // namespace
}  // namespace keel::kernels::cpu
