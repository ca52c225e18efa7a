// The optimizers behind optim::make_optimizer: which tensors 8-bit AdamW quantizes, the bytes its
// state takes (against bitsandbytes' 2 bytes + 8 bytes per block per element), the checkpoint view
// of its state, and that its step moves every tensor as its kernel does.
#include <gtest/gtest.h>

#include <vector>

#include "kernels/error.h"
#include "optim/adafactor.h"
#include "optim/adamw.h"
#include "optim/adamw_8bit.h"

namespace keel::optim {
namespace {

struct Tensors {
  explicit Tensors(const std::vector<int64_t>& sizes) {
    for (int64_t n : sizes) {
      values.emplace_back(static_cast<size_t>(n), 0.5f);
      grads.emplace_back(static_cast<size_t>(n), 0.25f);
    }
    for (size_t i = 0; i < sizes.size(); ++i)
      refs.push_back({std::to_string(i), values[i].data(), grads[i].data(), sizes[i], true});
  }
  std::vector<std::vector<float>> values, grads;
  std::vector<ParamRef> refs;
};

TEST(AdamW8bitState, QuantizesLargeTensorsAndCountsItsBytes) {
  const std::vector<int64_t> sizes = {100, 4095, 4096, 10000, 1 << 20};
  OptimizerConfig c;
  c.type = "adamw_8bit";
  Tensors t(sizes);
  AdamW8bit opt(t.refs, c);
  double want = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    const bool q = sizes[i] >= 4096;
    EXPECT_EQ(opt.quantized(i), q) << sizes[i];
    // 2 code bytes and 8 absmax bytes per 256 elements, or two fp32 moments.
    want += q ? 2.0 * sizes[i] + 8.0 * ((sizes[i] + 255) / 256) : 8.0 * sizes[i];
    const std::vector<StateTensor> s = opt.state(i);
    ASSERT_EQ(s.size(), q ? 4u : 2u);
    EXPECT_EQ(s[0].name, "exp_avg");
    EXPECT_EQ(s[0].bytes != nullptr, q);
    if (q) {
      EXPECT_EQ(s[3].elems, (sizes[i] + 255) / 256);
    }
  }
  EXPECT_EQ(opt.state_bytes(), optimizer_plan_bytes(c, t.refs).state);
  // Every buffer starts on a 64-byte boundary: at most 63 bytes of padding each.
  EXPECT_GE(static_cast<double>(opt.state_bytes()), want);
  EXPECT_LE(static_cast<double>(opt.state_bytes()), want + 63.0 * 14);
  // The largest tensor alone: 2.03 bytes per parameter, a quarter of AdamW's 8 (plus 1/32).
  const Tensors big({1 << 20});
  EXPECT_NEAR(AdamW8bit::plan_bytes(c, big.refs) / double(1 << 20), 2.03125, 1e-4);
  // A tensor not marked for quantization keeps fp32 moments whatever its size.
  Tensors kept({1 << 20});
  kept.refs[0].quantize = false;
  EXPECT_EQ(AdamW8bit::plan_bytes(c, kept.refs), size_t{8} << 20);
  EXPECT_EQ(AdamW::plan_bytes({1 << 20}), size_t{8} << 20);
}

TEST(AdamW8bitState, FreshMomentsDequantizeToZeroAndAStepMovesEveryTensor) {
  OptimizerConfig c;
  c.type = "adamw_8bit";
  c.min_8bit_size = 1000;
  Tensors t({500, 3000});
  std::unique_ptr<Optimizer> opt = make_optimizer(t.refs, c);
  for (size_t i = 0; i < 2; ++i)
    for (const StateTensor& s : opt->state(i))
      if (s.data) {
        for (int64_t j = 0; j < s.elems; ++j) ASSERT_EQ(s.data[j], 0.0f) << s.name;
      }
  opt->step(1e-2, 1.0);
  EXPECT_EQ(opt->steps_taken(), 1);
  // The first AdamW step moves every element by lr (the gradient's sign), decay aside.
  for (size_t i = 0; i < 2; ++i)
    for (float v : t.values[i]) EXPECT_NEAR(v, 0.5f * (1 - 1e-2f * 0.0f) - 1e-2f, 1e-5f);
}

TEST(AdafactorState, FactorsMatricesOnly) {
  Tensors t({12 * 20, 20});
  t.refs[0].rows = 12, t.refs[0].cols = 20;  // a matrix; the second stays a vector
  OptimizerConfig c;
  c.type = "adafactor";
  auto names = [](const std::vector<StateTensor>& s) {
    std::vector<std::string> out;
    for (const StateTensor& x : s)
      out.push_back(x.name + (x.layout == StateLayout::kOwnRect ? "/own" : ""));
    return out;
  };
  {
    const auto opt = make_optimizer(t.refs, c);
    EXPECT_EQ(names(opt->state(0)),
              (std::vector<std::string>{"exp_avg_sq_row/own", "exp_avg_sq_col/own"}));
    // A whole matrix holds all of its (rows × 1) row means and (cols × 1) column means.
    const std::vector<StateTensor> means = opt->state(0);
    EXPECT_EQ(means[0].rows, 12);
    EXPECT_EQ(means[0].rect.rows, 12);
    EXPECT_EQ(means[1].rows, 20);
    EXPECT_EQ(means[1].rect.rows, 20);
    EXPECT_EQ(means[1].cols, 1);
    EXPECT_EQ(names(opt->state(1)), (std::vector<std::string>{"exp_avg_sq"}));
    EXPECT_EQ(opt->state_bytes(), optimizer_plan_bytes(c, t.refs).state);
    EXPECT_LE(opt->state_bytes(), 4u * (12 + 20 + 20) + 3 * 63);  // rows + cols, and the vector
  }
  c.adafactor_beta1 = 0.9;
  const auto with_m = make_optimizer(t.refs, c);
  EXPECT_EQ(names(with_m->state(0)).back(), "exp_avg");
  EXPECT_GE(with_m->state_bytes(), 4u * (12 + 20 + 20 + 240 + 20));
}

TEST(Optimizers, UnknownTypeIsAnError) {
  Tensors t({10});
  OptimizerConfig c;
  c.type = "sgd";
  EXPECT_THROW(make_optimizer(t.refs, c), Error);
}

}  // namespace
}  // namespace keel::optim
