// The model against PyTorch: tests/reference/llama_ref.py builds the same LLaMA in float64 from the
// same weights and writes goldens (logits, loss, every gradient, three clipped AdamW steps with a
// warmup schedule). keel in fp32 must match each tensor to 1e-5 relative (L2 norm).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "kernels/op_test_util.h"
#include "optim/adamw.h"
#include "runtime/model/llama.h"
#include "runtime/store/safetensors.h"
#include "runtime/train/schedule.h"

namespace keel::runtime {
namespace {

constexpr double kTol = 1e-5;

std::string golden_path(const std::string& name) {
  return std::string(KEEL_SOURCE_DIR) + "/tests/reference/golden/" + name + ".safetensors";
}

double meta(const SafeTensorsReader& f, const std::string& key) {
  return std::stod(f.metadata().at(key));
}

ModelConfig model_config(const SafeTensorsReader& f) {
  ModelConfig c;
  c.vocab_size = static_cast<int64_t>(meta(f, "vocab_size"));
  c.hidden_size = static_cast<int64_t>(meta(f, "hidden_size"));
  c.intermediate_size = static_cast<int64_t>(meta(f, "intermediate_size"));
  c.num_hidden_layers = static_cast<int64_t>(meta(f, "num_hidden_layers"));
  c.num_attention_heads = static_cast<int64_t>(meta(f, "num_attention_heads"));
  c.num_key_value_heads = static_cast<int64_t>(meta(f, "num_key_value_heads"));
  c.rms_norm_eps = meta(f, "rms_norm_eps");
  c.rope_theta = meta(f, "rope_theta");
  const std::string tied = f.metadata().at("tie_word_embeddings");
  c.tie_word_embeddings = tied == "true" || tied == "True" || tied == "1";
  c.max_position_embeddings = f.get("input_ids").size(1);
  return c;
}

TrainingConfig training_config(const SafeTensorsReader& f) {
  TrainingConfig t;
  t.learning_rate = meta(f, "learning_rate");
  t.adam_beta1 = meta(f, "adam_beta1");
  t.adam_beta2 = meta(f, "adam_beta2");
  t.adam_epsilon = meta(f, "adam_epsilon");
  t.weight_decay = meta(f, "weight_decay");
  t.max_grad_norm = meta(f, "max_grad_norm");
  t.warmup_steps = static_cast<int64_t>(meta(f, "warmup_steps"));
  t.max_steps = static_cast<int64_t>(meta(f, "max_steps"));
  t.lr_scheduler_type = f.metadata().at("lr_scheduler_type");
  return t;
}

std::vector<double> as_double(const Tensor& t) {
  EXPECT_EQ(t.dtype(), DType::F64);
  const double* p = t.data_as<const double>();
  return std::vector<double>(p, p + t.numel());
}

double scalar(const SafeTensorsReader& f, const std::string& name) {
  return f.get(name).data_as<const double>()[0];
}

// Golden inputs and weights loaded into a model built for them.
struct Case {
  explicit Case(const std::string& name, bool checkpointing = false)
      : file(golden_path(name)),
        B(file.get("input_ids").size(0)),
        T(file.get("input_ids").size(1)),
        model(model_config(file), B, T, checkpointing) {
    const Tensor ids = file.get("input_ids"), tg = file.get("targets");
    tokens.assign(ids.data_as<const int32_t>(), ids.data_as<const int32_t>() + ids.numel());
    targets.assign(tg.data_as<const int32_t>(), tg.data_as<const int32_t>() + tg.numel());
    for (int32_t t : targets) valid += t >= 0;
    for (Parameter& p : model.parameters()) {
      const Tensor w = file.get(p.name);
      EXPECT_EQ(w.shape(), p.value.shape()) << p.name;
      std::copy_n(w.data_as<const float>(), w.numel(), p.value.f32());
    }
  }
  SafeTensorsReader file;
  int64_t B, T;
  LlamaModel model;
  std::vector<int32_t> tokens, targets;
  int64_t valid = 0;
};

class LlamaGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(LlamaGolden, LogitsAndLoss) {
  Case c(GetParam());
  std::vector<float> logits(static_cast<size_t>(c.B * c.T * c.model.config().vocab_size));
  const double loss = c.model.forward(c.tokens.data(), c.targets.data(), logits.data()) /
                      static_cast<double>(c.valid);
  EXPECT_LE(testing::rel_error(logits, as_double(c.file.get("logits"))), kTol);
  EXPECT_NEAR(loss, scalar(c.file, "loss"), kTol * std::abs(scalar(c.file, "loss")));
}

TEST_P(LlamaGolden, EveryGradient) {
  Case c(GetParam());
  c.model.zero_grad();
  const double loss = c.model.forward_backward(c.tokens.data(), c.targets.data(),
                                               1.0f / static_cast<float>(c.valid)) /
                      static_cast<double>(c.valid);
  EXPECT_NEAR(loss, scalar(c.file, "loss"), kTol * std::abs(scalar(c.file, "loss")));
  for (const Parameter& p : c.model.parameters()) {
    const std::vector<float> got(p.grad.f32(), p.grad.f32() + p.grad.numel());
    const double err = testing::rel_error(got, as_double(c.file.get("grad." + p.name)));
    EXPECT_LE(err, kTol) << p.name;
  }
}

// Checkpointing recomputes each block in the backward: the gradients must be bit-identical.
TEST_P(LlamaGolden, CheckpointingChangesNothing) {
  Case plain(GetParam()), ckpt(GetParam(), /*checkpointing=*/true);
  for (Case* c : {&plain, &ckpt}) {
    c->model.zero_grad();
    c->model.forward_backward(c->tokens.data(), c->targets.data(),
                              1.0f / static_cast<float>(c->valid));
  }
  for (size_t i = 0; i < plain.model.parameters().size(); ++i) {
    const Parameter& a = plain.model.parameters()[i];
    const Parameter& b = ckpt.model.parameters()[i];
    EXPECT_EQ(0, std::memcmp(a.grad.data(), b.grad.data(), a.grad.nbytes())) << a.name;
  }
}

// Three AdamW steps with global-norm clipping and the warmup-cosine schedule, as the reference
// takes them (the loss before each step, the rate used, the norm before clipping, the weights
// after).
TEST_P(LlamaGolden, ThreeClippedAdamWSteps) {
  Case c(GetParam());
  const TrainingConfig t = training_config(c.file);
  std::vector<optim::ParamRef> refs;
  for (Parameter& p : c.model.parameters())
    refs.push_back({p.name, p.value.f32(), p.grad.f32(), p.value.numel(), p.weight_decay});
  optim::AdamW adamw(refs, {"adamw", t.adam_beta1, t.adam_beta2, t.adam_epsilon, t.weight_decay});
  const int steps = static_cast<int>(meta(c.file, "steps"));
  bool clipped = false;
  for (int k = 0; k < steps; ++k) {
    const std::string s = "step" + std::to_string(k + 1) + ".";
    c.model.zero_grad();
    const double loss = c.model.forward_backward(c.tokens.data(), c.targets.data(),
                                                 1.0f / static_cast<float>(c.valid)) /
                        static_cast<double>(c.valid);
    EXPECT_NEAR(loss, scalar(c.file, s + "loss"), kTol * std::abs(loss)) << s;
    double sq = 0;
    for (const Parameter& p : c.model.parameters())
      for (int64_t i = 0; i < p.grad.numel(); ++i) sq += double(p.grad.f32()[i]) * p.grad.f32()[i];
    const double norm = std::sqrt(sq);
    EXPECT_NEAR(norm, scalar(c.file, s + "grad_norm"), kTol * norm) << s;
    const double lr = learning_rate_at(t, k);
    EXPECT_NEAR(lr, scalar(c.file, s + "lr"), 1e-12) << s;
    const double clip = std::min(1.0, t.max_grad_norm / (norm + 1e-6));
    clipped |= clip < 1.0;
    adamw.step(lr, clip);
  }
  EXPECT_TRUE(clipped) << "the golden should exercise clipping";
  for (const Parameter& p : c.model.parameters()) {
    const std::vector<float> got(p.value.f32(), p.value.f32() + p.value.numel());
    EXPECT_LE(testing::rel_error(got, as_double(c.file.get("final." + p.name))), kTol) << p.name;
  }
}

INSTANTIATE_TEST_SUITE_P(Goldens, LlamaGolden, ::testing::Values("gqa_untied", "mqa_tied"));

}  // namespace
}  // namespace keel::runtime
