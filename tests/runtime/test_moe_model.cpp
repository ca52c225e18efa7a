// The model with mixture-of-experts layers (runtime/model/moe_mlp.h inside LlamaModel): what
// must equal what. One expert chosen by every token is the dense MLP of the same weights; a
// capacity no sequence can fill is dropless; Mixtral's parameter names, each expert under its
// index.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "kernels/error.h"
#include "runtime/model/llama.h"
#include "runtime/model_test_util.h"

namespace keel::runtime {
namespace {

using test::batch;
using test::kB;
using test::kT;
using test::small_model;

ModelConfig moe_model(int64_t experts, int64_t k) {
  ModelConfig c = small_model();
  c.num_local_experts = experts;
  c.num_experts_per_tok = k;
  c.output_router_logits = true;
  c.router_aux_loss_coef = 0.05;
  return c;
}

std::vector<float> values(const Tensor& t) {
  return std::vector<float>(t.f32(), t.f32() + t.numel());
}

void copy(Parameter& to, const Parameter& from) {
  ASSERT_EQ(to.value.numel(), from.value.numel()) << to.name;
  std::memcpy(to.value.data(), from.value.data(), from.value.numel() * sizeof(float));
}

// The Mixtral name of a dense MLP parameter's twin in a one-expert layer ("" if none).
std::string expert_twin(const std::string& name) {
  const std::pair<const char*, const char*> names[] = {
      {"mlp.gate_proj.", "w1."}, {"mlp.up_proj.", "w3."}, {"mlp.down_proj.", "w2."}};
  for (const auto& [dense, expert] : names) {
    const size_t at = name.find(dense);
    if (at != std::string::npos)
      return name.substr(0, at) + "block_sparse_moe.experts.0." + expert +
             name.substr(at + std::strlen(dense));
  }
  return name;
}

TEST(MoeModel, OneExpertForEveryTokenIsTheDenseMlp) {
  std::vector<int32_t> tokens, targets;
  batch(tokens, targets);
  const float scale = 1.0f / 29.0f;
  LlamaModel dense(small_model(), kB, kT, false);
  dense.init_weights(7);
  dense.zero_grad();
  const double want = dense.forward_backward(tokens.data(), targets.data(), scale);

  // One expert, the only choice of every token with weight 1: the load-balancing loss is the
  // constant 1 and moves nothing. (The z-loss would: it pushes the lone logit towards 0.)
  LlamaModel moe(moe_model(1, 1), kB, kT, false);
  moe.init_weights(3);
  for (const Parameter& p : dense.parameters()) copy(moe.parameter(expert_twin(p.name)), p);
  moe.zero_grad();
  const double got = moe.forward_backward(tokens.data(), targets.data(), scale);
  EXPECT_EQ(got, want);
  for (const Parameter& p : dense.parameters())
    EXPECT_EQ(values(moe.parameter(expert_twin(p.name)).grad), values(p.grad)) << p.name;
  for (int l = 0; l < 4; ++l) {
    const Parameter& router =
        moe.parameter("model.layers." + std::to_string(l) + ".block_sparse_moe.gate.weight");
    EXPECT_EQ(values(router.grad), std::vector<float>(router.grad.numel(), 0.0f));
  }
}

// Twenty steps of plain gradient descent (p −= 0.05·g) on two models, each step's micro-batch
// another, the same for both; each step's loss, with `twin` naming b's parameter for a's.
std::vector<std::pair<double, double>> train_together(
    LlamaModel& a, LlamaModel& b, const std::function<std::string(const std::string&)>& twin) {
  std::vector<std::pair<double, double>> losses;
  for (int step = 0; step < 20; ++step) {
    std::vector<int32_t> tokens, targets;
    batch(tokens, targets, step);
    a.zero_grad();
    b.zero_grad();
    const double la = a.forward_backward(tokens.data(), targets.data(), 1.0f / 29.0f);
    const double lb = b.forward_backward(tokens.data(), targets.data(), 1.0f / 29.0f);
    losses.emplace_back(la, lb);
    auto descend = [](Parameter& p) {
      for (int64_t i = 0; i < p.value.numel(); ++i) p.value.f32()[i] -= 0.05f * p.grad.f32()[i];
    };
    for (Parameter& p : a.parameters()) descend(p);
    for (Parameter& p : b.parameters()) descend(p);
    for (const Parameter& p : a.parameters())
      EXPECT_EQ(values(b.parameter(twin(p.name)).value), values(p.value)) << p.name;
  }
  return losses;
}

// Over 20 steps too: one expert for every token trains as the dense MLP does, bit for bit.
TEST(MoeModel, OneExpertTrainsAsTheDenseMlpOverTwentySteps) {
  LlamaModel dense(small_model(), kB, kT, false);
  dense.init_weights(7);
  LlamaModel moe(moe_model(1, 1), kB, kT, false);
  moe.init_weights(3);
  for (const Parameter& p : dense.parameters()) copy(moe.parameter(expert_twin(p.name)), p);
  for (const auto& [want, got] : train_together(dense, moe, expert_twin)) EXPECT_EQ(got, want);
}

// And a capacity no sequence fills trains as dropless does.
TEST(MoeModel, ACapacityNoSequenceFillsTrainsAsDroplessOverTwentySteps) {
  ModelConfig config = moe_model(4, 2);
  config.router_z_loss_coef = 0.01;
  LlamaModel dropless(config, kB, kT, false);
  dropless.init_weights(11);
  config.moe_token_dropping = true;
  config.moe_expert_capacity_factor = 2.0;  // 2·T·k/E = T
  LlamaModel capped(config, kB, kT, false);
  capped.init_weights(11);
  const auto same = [](const std::string& name) { return name; };
  for (const auto& [want, got] : train_together(dropless, capped, same)) EXPECT_EQ(got, want);
}

// Loss and every gradient of a model with MoE layers after one micro-batch.
struct Result {
  double loss;
  std::vector<std::vector<float>> grads;
  std::vector<MoeStats> stats;
};
Result run(const ModelConfig& config, bool checkpointing = false) {
  std::vector<int32_t> tokens, targets;
  batch(tokens, targets);
  LlamaModel model(config, kB, kT, checkpointing);
  model.init_weights(11);
  model.zero_grad();
  Result r{model.forward_backward(tokens.data(), targets.data(), 1.0f / 29.0f), {}, {}};
  for (const Parameter& p : model.parameters()) r.grads.push_back(values(p.grad));
  r.stats = model.moe_stats();
  return r;
}

TEST(MoeModel, ACapacityNoSequenceFillsIsDropless) {
  ModelConfig config = moe_model(4, 2);
  config.router_z_loss_coef = 0.01;
  const Result dropless = run(config);
  config.moe_token_dropping = true;
  config.moe_expert_capacity_factor = 2.0;  // 2·T·k/E = T: every token may pick any expert
  const Result capped = run(config);
  EXPECT_EQ(capped.loss, dropless.loss);
  EXPECT_EQ(capped.grads, dropless.grads);
  EXPECT_EQ(capped.stats[0].dropped, 0.0);

  config.moe_expert_capacity_factor = 0.5;  // half of an even share: tokens are dropped
  const Result dropping = run(config);
  EXPECT_NE(dropping.loss, dropless.loss);
  for (const MoeStats& s : dropping.stats) {
    EXPECT_GT(s.dropped, 0.0);
    // Kept per expert per sequence: at most the capacity, ceil(0.5·16·2/4) = 4.
    for (double kept : s.tokens) EXPECT_LE(kept, 4.0 * kB);
  }
}

TEST(MoeModel, CheckpointingRecomputesTheSameGradients) {
  ModelConfig config = moe_model(4, 2);
  config.router_z_loss_coef = 0.01;
  config.moe_layer_freq = 2;  // dense and MoE layers share the recomputed insides
  const Result plain = run(config), recomputed = run(config, true);
  EXPECT_EQ(recomputed.loss, plain.loss);
  EXPECT_EQ(recomputed.grads, plain.grads);
  // The recompute's routing is not counted twice.
  EXPECT_EQ(recomputed.stats[0].slots, plain.stats[0].slots);
}

TEST(MoeModel, ParametersUnderMixtralNames) {
  ModelConfig config = moe_model(4, 2);
  config.moe_layers = "1,3";
  LlamaModel model(config, kB, kT, false, ModelHolds{.allocate = false});
  std::vector<std::string> names;
  for (const Parameter& p : model.parameters()) names.push_back(p.name);
  auto has = [&](const std::string& n) {
    return std::find(names.begin(), names.end(), n) != names.end();
  };
  EXPECT_TRUE(has("model.layers.0.mlp.gate_proj.weight"));
  EXPECT_FALSE(has("model.layers.1.mlp.gate_proj.weight"));
  EXPECT_TRUE(has("model.layers.1.block_sparse_moe.gate.weight"));
  EXPECT_TRUE(has("model.layers.3.block_sparse_moe.experts.3.w2.weight"));
  const Parameter& w2 =
      model.parameter_by_name("model.layers.1.block_sparse_moe.experts.2.w2.weight");
  EXPECT_EQ(w2.global_shape, (Shape{32, 48}));
  const Parameter& router = model.parameter_by_name("model.layers.1.block_sparse_moe.gate.weight");
  EXPECT_EQ(router.global_shape, (Shape{4, 32}));
  // Two dense and two MoE layers: 4 experts of 3·32·48 and a router of 4·32 in place of one MLP.
  LlamaModel dense(small_model(), kB, kT, false, ModelHolds{.allocate = false});
  EXPECT_EQ(model.num_parameters() - dense.num_parameters(), 2 * (3 * 3 * 32 * 48 + 4 * 32));
}

}  // namespace
}  // namespace keel::runtime
