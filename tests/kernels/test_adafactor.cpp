// Adafactor against Hugging Face transformers' Adafactor (tests/reference/adafactor_ref.py): a
// factored matrix and a whole vector over three steps, with the Trainer's settings (fixed step,
// no first moment, weight decay) and the paper's (relative step scaled by the parameter's RMS, a
// first moment): parameters and every state tensor within 1e-5.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kernels/adafactor.h"
#include "tests/kernels/op_test_util.h"

namespace keel::kernels::cpu {
namespace {

std::vector<float> floats(const nlohmann::json& j) { return j.get<std::vector<float>>(); }

void expect_near(const std::vector<float>& got, const nlohmann::json& want,
                 const std::string& what) {
  EXPECT_LE(testing::rel_error(got, testing::to_double(floats(want))), 1e-5) << what;
}

class AdafactorGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(AdafactorGolden, StepsAsTransformers) {
  std::ifstream f(std::string(KEEL_SOURCE_DIR) +
                  "/tests/reference/golden/adafactor_transformers.json");
  const nlohmann::json run = nlohmann::json::parse(f).at("runs").at(GetParam());
  const nlohmann::json& s = run.at("settings");
  AdafactorHyper h;
  h.relative_step = s.at("relative_step").get<bool>();
  h.scale_parameter = s.at("scale_parameter").get<bool>();
  h.warmup_init = s.at("warmup_init").get<bool>();
  if (!s.at("lr").is_null()) h.lr = s.at("lr").get<double>();
  if (!s.at("beta1").is_null()) h.beta1 = s.at("beta1").get<double>();
  h.weight_decay = s.at("weight_decay").get<double>();
  const int64_t R = 12, C = 20;
  std::vector<float> w = floats(run.at("w0")), b = floats(run.at("b0"));
  std::vector<float> row(R, 0.0f), col(C, 0.0f), b_sq(C, 0.0f), w_avg(R * C, 0.0f), b_avg(C, 0.0f);
  int64_t t = 0;
  for (const nlohmann::json& step : run.at("steps")) {
    h.step = ++t;
    const std::vector<float> wg = floats(step.at("w_grad")), bg = floats(step.at("b_grad"));
    adafactor_step(w.data(), wg.data(), row.data(), col.data(), nullptr, w_avg.data(), R, C, true,
                   h);
    adafactor_step(b.data(), bg.data(), nullptr, nullptr, b_sq.data(), b_avg.data(), C, 1, false,
                   h);
    const std::string at = GetParam() + ", step " + std::to_string(t);
    expect_near(w, step.at("w"), "matrix, " + at);
    expect_near(b, step.at("b"), "vector, " + at);
    expect_near(row, step.at("w_row"), "row means, " + at);
    expect_near(col, step.at("w_col"), "column means, " + at);
    expect_near(b_sq, step.at("b_sq"), "vector second moment, " + at);
    if (step.contains("w_avg")) {
      expect_near(w_avg, step.at("w_avg"), "matrix first moment, " + at);
      expect_near(b_avg, step.at("b_avg"), "vector first moment, " + at);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Settings, AdafactorGolden, ::testing::Values("trainer", "paper"));

}  // namespace
}  // namespace keel::kernels::cpu
