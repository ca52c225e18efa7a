// AdamW against a double-precision transcription of torch.optim.AdamW's update, over several steps
// with weight decay, gradient scaling and both forms of torch's lerp; plus the closed form of the
// first step, which checks that transcription independently.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/adamw.h"
#include "op_test_util.h"

namespace keel::kernels::cpu {
namespace {

using testing::random_floats;
using testing::rel_error;

struct State {
  std::vector<double> param, m, v;
};

// torch.optim.AdamW (single tensor, not capturable), in double.
void reference_step(State& s, const std::vector<float>& grad, const AdamWHyper& h) {
  const double lr = h.lr, b1 = h.beta1, b2 = h.beta2, eps = h.eps, wd = h.weight_decay;
  const double bc1 = 1.0 - std::pow(b1, static_cast<double>(h.step));
  const double bc2 = 1.0 - std::pow(b2, static_cast<double>(h.step));
  for (size_t i = 0; i < grad.size(); ++i) {
    const double g = static_cast<double>(grad[i]) * h.grad_scale;
    s.param[i] *= 1.0 - lr * wd;
    s.m[i] = b1 * s.m[i] + (1.0 - b1) * g;
    s.v[i] = b2 * s.v[i] + (1.0 - b2) * g * g;
    s.param[i] -= lr / bc1 * s.m[i] / (std::sqrt(s.v[i]) / std::sqrt(bc2) + eps);
  }
}

struct Case {
  const char* name;
  AdamWHyper h;
  float param_scale, grad_scale_of_inputs;
};

TEST(AdamWTest, SeveralStepsMatchDoubleReference) {
  const int64_t n = 1037, steps = 6;
  // Parameters of the size of the accumulated updates, so the params' error measures the updates.
  const Case cases[] = {
      {"decay_and_scaled_grads", {1e-2f, 0.9f, 0.999f, 1e-8f, 0.1f, 1, 0.37f}, 0.05f, 1.0f},
      // eps comparable to sqrt(v): a misplaced eps or bias correction shows.
      {"eps_matters", {3e-3f, 0.9f, 0.95f, 1e-3f, 0.01f, 1, 2.5f}, 0.02f, 1e-3f},
      // 1 − β1 ≥ 0.5 takes torch's other lerp branch.
      {"small_beta1", {1e-2f, 0.3f, 0.99f, 1e-8f, 0.2f, 1, 1.0f}, 0.05f, 1.0f},
  };
  for (const Case& c : cases) {
    const auto p0 = random_floats(n, 51, c.param_scale);
    std::vector<float> param = p0, m(n, 0.0f), v(n, 0.0f);
    State want{std::vector<double>(p0.begin(), p0.end()), std::vector<double>(n, 0.0),
               std::vector<double>(n, 0.0)};
    AdamWHyper h = c.h;
    for (int64_t t = 1; t <= steps; ++t) {
      h.step = t;
      const auto grad = random_floats(n, 100 + t, c.grad_scale_of_inputs);
      adamw_step(param.data(), m.data(), v.data(), grad.data(), n, h);
      reference_step(want, grad, h);
    }
    const double err_p = rel_error(param, want.param);
    EXPECT_LE(err_p, 1e-6) << c.name;
    EXPECT_LE(rel_error(m, want.m), 1e-6) << c.name;
    EXPECT_LE(rel_error(v, want.v), 1e-6) << c.name;
    RecordProperty(std::string("rel_error_param_") + c.name, ::testing::PrintToString(err_p));
    // The steps moved the parameters by far more than the tolerance.
    EXPECT_GT(rel_error(p0, want.param), 1e-2) << c.name;
  }
}

TEST(AdamWTest, FirstStepIsSignedLearningRate) {
  // From m = v = 0 at t = 1 the bias corrections cancel: param −= lr · g / (|g| + eps).
  const int64_t n = 37;
  AdamWHyper h;
  h.lr = 1e-2f;
  h.eps = 1e-3f;
  h.grad_scale = 0.5f;
  const auto p0 = random_floats(n, 61, 0.01f);
  const auto grad = random_floats(n, 62, 0.01f);
  std::vector<float> param = p0, m(n, 0.0f), v(n, 0.0f);
  adamw_step(param.data(), m.data(), v.data(), grad.data(), n, h);
  std::vector<double> want(n);
  for (int64_t i = 0; i < n; ++i) {
    const double g = static_cast<double>(grad[i]) * h.grad_scale;
    want[i] = p0[i] - static_cast<double>(h.lr) * g / (std::abs(g) + h.eps);
  }
  EXPECT_LE(rel_error(param, want), 1e-6);
}

TEST(AdamWTest, RejectsStepZero) {
  float p = 1.0f, m = 0.0f, v = 0.0f, g = 1.0f;
  AdamWHyper h;
  h.step = 0;
  EXPECT_ANY_THROW(adamw_step(&p, &m, &v, &g, 1, h));
}

}  // namespace
}  // namespace keel::kernels::cpu
