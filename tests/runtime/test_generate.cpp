// Decoding with the key/value cache gives the full forward's logits at every position, however the
// positions arrive (a long prompt in chunks, then one token at a time), and reproduces the greedy
// continuation transformers computed for keel's export (tests/reference/hf_export_ref.py). The
// sampler follows Hugging Face's temperature → top-k → top-p rules and is reproducible by seed.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "runtime/data/tokenizer_json.h"
#include "runtime/model/generate.h"
#include "runtime/store/hf_format.h"
#include "runtime/store/safetensors.h"
#include "tests/kernels/op_test_util.h"

namespace keel::runtime {
namespace {

ModelConfig small_config(bool tied) {
  ModelConfig c;
  c.vocab_size = 97, c.hidden_size = 48, c.intermediate_size = 80, c.num_hidden_layers = 2;
  c.num_attention_heads = 6, c.num_key_value_heads = 2, c.max_position_embeddings = 320;
  c.tie_word_embeddings = tied;
  c.initializer_range = 0.3;  // peaked distributions, so a wrong position shows
  return c;
}

class GeneratorMatchesForward : public ::testing::TestWithParam<bool> {};

// 300 positions: a 200-token prompt (two chunks of the generator's prefill), then 100 single
// tokens; each step's logits against the training forward's row for that position.
TEST_P(GeneratorMatchesForward, AtEveryPosition) {
  const ModelConfig c = small_config(GetParam());
  const int64_t T = 300, V = c.vocab_size;
  const std::vector<int32_t> seq = testing::random_ints(T, 0, static_cast<int32_t>(V), 11);
  LlamaModel full(c, 1, T, false);
  full.init_weights(5);
  std::vector<float> want(static_cast<size_t>(T * V));
  full.forward(seq.data(), nullptr, want.data());

  Generator g(full, T);
  const int64_t prompt = 200;
  const float* got = g.append(seq.data(), prompt);
  auto check = [&](int64_t t, const float* row) {
    std::vector<double> w(want.begin() + t * V, want.begin() + (t + 1) * V);
    EXPECT_LE(testing::rel_error(row, w.data(), static_cast<size_t>(V)), 1e-5) << "position " << t;
  };
  check(prompt - 1, got);
  for (int64_t t = prompt; t < T; ++t) check(t, g.append(&seq[static_cast<size_t>(t)], 1));
  EXPECT_EQ(g.length(), T);
  EXPECT_THROW(g.append(seq.data(), 1), Error);  // the cache is full
  g.reset();
  check(0, g.append(seq.data(), 1));  // and reusable
}

INSTANTIATE_TEST_SUITE_P(Heads, GeneratorMatchesForward, ::testing::Bool(),
                         [](const auto& p) { return p.param ? "tied" : "untied"; });

// A model with experts decodes through its own dropless MoE (sized for a chunk, not the model's
// B·T): the same logits as the full forward at every position, whether every layer has experts
// (Mixtral) or dense layers sit between them. 160 positions: a 140-token prompt (a chunk of 128
// and one of 12), then single tokens.
class GeneratorWithExperts : public ::testing::TestWithParam<int64_t> {};

TEST_P(GeneratorWithExperts, MatchesTheForwardAtEveryPosition) {
  ModelConfig c = small_config(false);
  c.num_hidden_layers = 3;
  c.num_local_experts = 4, c.num_experts_per_tok = 2, c.moe_layer_freq = GetParam();
  const int64_t T = 160, V = c.vocab_size;
  const std::vector<int32_t> seq = testing::random_ints(T, 0, static_cast<int32_t>(V), 12);
  LlamaModel full(c, 1, T, false);
  full.init_weights(6);
  std::vector<float> want(static_cast<size_t>(T * V));
  full.forward(seq.data(), nullptr, want.data());

  // Decoding from a model built for one position, as keel generate builds it.
  LlamaModel one(c, 1, 1, false, ModelHolds{true, false, true});
  for (size_t i = 0; i < one.parameters().size(); ++i)
    std::copy_n(full.parameters()[i].value.f32(), full.parameters()[i].value.numel(),
                one.parameters()[i].value.f32());
  Generator g(one, T);
  auto check = [&](int64_t t, const float* row) {
    std::vector<double> w(want.begin() + t * V, want.begin() + (t + 1) * V);
    EXPECT_LE(testing::rel_error(row, w.data(), static_cast<size_t>(V)), 1e-5) << "position " << t;
  };
  const int64_t prompt = 140;
  check(prompt - 1, g.append(seq.data(), prompt));
  for (int64_t t = prompt; t < T; ++t) check(t, g.append(&seq[static_cast<size_t>(t)], 1));
}

INSTANTIATE_TEST_SUITE_P(Layers, GeneratorWithExperts, ::testing::Values(1, 2),
                         [](const auto& p) { return p.param == 1 ? "every" : "every_other"; });

TEST(Generator, GreedyContinuationIsTransformers) {
  const std::string dir = std::string(KEEL_SOURCE_DIR) + "/tests/reference/golden/";
  std::ifstream f(dir + "hf_export_transformers.json");
  const nlohmann::json golden = nlohmann::json::parse(f);
  const ModelConfig c = read_hf_config(dir + "hf_export/config.json");
  LlamaModel model(c, 1, 1, false, ModelHolds{true, false, true});
  const SafeTensorsReader weights(dir + "hf_export/model.safetensors");
  for (Parameter& p : model.parameters()) {
    const Tensor w = weights.get(p.name);
    ASSERT_EQ(w.numel(), p.value.numel()) << p.name;
    std::copy_n(w.data_as<const float>(), w.numel(), p.value.f32());
  }
  const auto prompt = golden.at("ids").get<std::vector<int32_t>>();
  const auto want = golden.at("greedy_ids").get<std::vector<int32_t>>();
  Generator g(model, c.max_position_embeddings);
  Sampler greedy({.temperature = 0.0}, 0);
  // No stop token: transformers' golden runs its 24 tokens through.
  EXPECT_EQ(generate(g, greedy, prompt, static_cast<int64_t>(want.size()), -1), want);
  // The prompt's last logits are transformers' too.
  g.reset();
  const float* last = g.append(prompt.data(), static_cast<int64_t>(prompt.size()));
  const auto logits = golden.at("logits").get<std::vector<double>>();
  const int64_t V = c.vocab_size;
  EXPECT_LE(testing::rel_error(last, logits.data() + (prompt.size() - 1) * V, V), 1e-5);
  const Tokenizer tok = read_tokenizer_json(dir + "hf_export/tokenizer.json");
  EXPECT_EQ(tok.decode(want), golden.at("greedy_text").get<std::string>());
}

TEST(Generator, StopsAtTheStopToken) {
  const ModelConfig c = small_config(false);
  LlamaModel model(c, 1, 1, false);
  model.init_weights(3);
  Generator g(model, 64);
  Sampler greedy({.temperature = 0.0}, 0);
  const std::vector<int32_t> prompt = {1, 2, 3};
  const std::vector<int32_t> free_run = generate(g, greedy, prompt, 20, -1);
  ASSERT_EQ(free_run.size(), 20u);
  g.reset();
  const std::vector<int32_t> stopped = generate(g, greedy, prompt, 20, free_run[4]);
  const auto first = std::find(free_run.begin(), free_run.end(), free_run[4]);
  EXPECT_EQ(stopped, std::vector<int32_t>(free_run.begin(), first + 1));
  // 10 positions: 7 new tokens after the 3 of the prompt fill them.
  Generator small(model, 10);
  EXPECT_EQ(generate(small, greedy, prompt, 20, -1).size(), 7u);
}

// Draw frequencies of many samples from fixed logits.
std::map<int32_t, double> frequencies(const std::vector<float>& logits, SamplingOptions o,
                                      int n = 40000) {
  Sampler s(o, 1234);
  std::map<int32_t, double> f;
  for (int i = 0; i < n; ++i)
    f[s.next(logits.data(), static_cast<int64_t>(logits.size()))] += 1.0 / n;
  return f;
}

// Probabilities of softmax(logits / T) restricted to `keep`, renormalised.
std::map<int32_t, double> expected(const std::vector<float>& logits, double T,
                                   const std::vector<int32_t>& keep) {
  std::map<int32_t, double> p;
  double z = 0;
  for (int32_t i : keep) z += p[i] = std::exp(logits[static_cast<size_t>(i)] / T);
  for (auto& [i, v] : p) v /= z;
  return p;
}

void expect_close(const std::map<int32_t, double>& got, const std::map<int32_t, double>& want) {
  for (const auto& [i, f] : got) EXPECT_TRUE(want.count(i)) << "token " << i << " was drawn";
  // 40,000 draws: a standard deviation of at most 0.0025; the seed is fixed.
  for (const auto& [i, p] : want) EXPECT_NEAR(got.count(i) ? got.at(i) : 0.0, p, 0.01) << i;
}

TEST(Sampler, FollowsTemperatureTopKAndTopP) {
  // Probabilities at T = 1: 0.084, 0.251, 0.046, 0.457, 0.025, 0.138.
  const std::vector<float> logits = {1.0f, 2.1f, 0.4f, 2.7f, -0.2f, 1.5f};
  expect_close(frequencies(logits, {}), expected(logits, 1.0, {0, 1, 2, 3, 4, 5}));
  expect_close(frequencies(logits, {.temperature = 0.5}),
               expected(logits, 0.5, {0, 1, 2, 3, 4, 5}));
  expect_close(frequencies(logits, {.temperature = 2.0, .top_k = 3}),
               expected(logits, 2.0, {3, 1, 5}));
  // top_p 0.75: 3 (0.457) and 1 (0.251) hold 0.708 < 0.75, so 5 joins; the rest goes.
  expect_close(frequencies(logits, {.top_p = 0.75}), expected(logits, 1.0, {3, 1, 5}));
  // top_p 0.4: the most likely token alone already holds more.
  expect_close(frequencies(logits, {.top_p = 0.4}), expected(logits, 1.0, {3}));
  // top-k then top-p over the renormalised top 2: 3 holds 0.65 ≥ 0.6.
  expect_close(frequencies(logits, {.top_k = 2, .top_p = 0.6}), expected(logits, 1.0, {3}));
  // Ties at the k-th logit are all kept, as Hugging Face's threshold keeps them.
  const std::vector<float> tied = {1.0f, 0.0f, 1.0f, 1.0f};
  expect_close(frequencies(tied, {.top_k = 2}), expected(tied, 1.0, {0, 2, 3}));
}

TEST(Sampler, GreedyAndSeeds) {
  const std::vector<float> logits = {0.1f, 3.0f, 3.0f, -1.0f};
  Sampler greedy({.temperature = 0.0}, 9), top1({.top_k = 1}, 9);
  EXPECT_EQ(greedy.next(logits.data(), 4), 1);  // the first of the tied maxima, as argmax
  EXPECT_EQ(top1.next(logits.data(), 4), 1);
  Sampler a({}, 77), b({}, 77), c({}, 78);
  std::vector<int32_t> da, db, dc;
  for (int i = 0; i < 64; ++i) {
    da.push_back(a.next(logits.data(), 4));
    db.push_back(b.next(logits.data(), 4));
    dc.push_back(c.next(logits.data(), 4));
  }
  EXPECT_EQ(da, db);
  EXPECT_NE(da, dc);
  EXPECT_THROW(Sampler({.temperature = -1.0}, 0), Error);
  EXPECT_THROW(Sampler({.top_k = -2}, 0), Error);
  EXPECT_THROW(Sampler({.top_p = 0.0}, 0), Error);
  EXPECT_THROW(Sampler({.top_p = 1.5}, 0), Error);
}

}  // namespace
}  // namespace keel::runtime
