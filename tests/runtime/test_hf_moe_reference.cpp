// keel's Mixtral against Hugging Face transformers' (tests/reference/hf_moe_ref.py): a model with
// experts that keel trained and exported, read by keel as transformers reads it, gives
// transformers' prompt ids, logits and greedy continuation (decoded through keel generate's
// cache); a Mixtral that transformers wrote with save_pretrained, through keel import, gives
// transformers' logits.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "file_test_util.h"
#include "kernels/op_test_util.h"
#include "runtime/data/tokenizer_json.h"
#include "runtime/model/generate.h"
#include "runtime/model/llama.h"
#include "runtime/store/hf_format.h"
#include "runtime/store/safetensors.h"
#include "runtime/store/saved_model.h"

namespace keel::runtime {
namespace {

const std::string kGolden = std::string(KEEL_SOURCE_DIR) + "/tests/reference/golden/";

nlohmann::json golden(const char* part) {
  std::ifstream f(kGolden + "hf_moe_transformers.json");
  return nlohmann::json::parse(f).at(part);
}

using HfMoeReference = testing::FileTest;

TEST_F(HfMoeReference, TransformersReadsKeelsMixtralAsKeelDoes) {
  const std::string dir = kGolden + "hf_moe_export";
  const nlohmann::json g = golden("export");
  const Tokenizer tokenizer = read_tokenizer_json(dir + "/tokenizer.json");
  std::vector<int32_t> ids = {tokenizer.bos_id()};
  tokenizer.encode(g.at("prompt").get<std::string>(), ids);
  ASSERT_EQ(ids, g.at("ids").get<std::vector<int32_t>>());

  const ModelConfig c = read_hf_config(dir + "/config.json");
  ASSERT_EQ(c.num_local_experts, 4);
  ASSERT_EQ(c.num_experts_per_tok, 2);
  const auto T = static_cast<int64_t>(ids.size());
  LlamaModel model(c, 1, T, false);
  const SafeTensorsReader file(dir + "/model.safetensors");
  for (Parameter& p : model.parameters()) {
    const Tensor w = file.get(p.name);
    ASSERT_EQ(w.shape(), p.global_shape) << p.name;
    std::copy_n(w.data_as<const float>(), w.numel(), p.value.f32());
  }
  const int64_t V = c.vocab_size;
  std::vector<float> logits(static_cast<size_t>(T * V));
  model.forward(ids.data(), nullptr, logits.data());
  const auto want = g.at("logits").get<std::vector<double>>();
  EXPECT_LE(testing::rel_error(logits, want), 1e-5);

  // Greedy decoding through the key/value cache, as keel generate decodes.
  const auto greedy = g.at("greedy_ids").get<std::vector<int32_t>>();
  Generator gen(model, c.max_position_embeddings);
  Sampler argmax({.temperature = 0.0}, 0);
  EXPECT_EQ(generate(gen, argmax, ids, static_cast<int64_t>(greedy.size()), -1), greedy);
  gen.reset();
  EXPECT_LE(testing::rel_error(gen.append(ids.data(), T), want.data() + (T - 1) * V, V), 1e-5);
  EXPECT_EQ(tokenizer.decode(greedy), g.at("greedy_text").get<std::string>());
}

TEST_F(HfMoeReference, KeelImportsTheMixtralTransformersWrote) {
  const nlohmann::json g = golden("saved");
  const std::string out = path("imported");
  std::ostringstream log;
  import_hf(
      kGolden + "hf_moe_saved", out,
      {"data.train=" + std::string(KEEL_SOURCE_DIR) + "/data/kjv.txt.gz", "data.seq_length=16"},
      log);
  const SavedModel saved = open_saved_model(out);
  const ModelConfig& c = saved.config.model;
  EXPECT_EQ(c.num_local_experts, 4);
  EXPECT_EQ(c.rope_theta, 500.0);  // from transformers' rope_parameters
  const auto ids = g.at("ids").get<std::vector<int32_t>>();
  const auto T = static_cast<int64_t>(ids.size());
  LlamaModel model(c, 1, T, false, ModelHolds{true, false, true});
  load_parameters(saved, model);
  std::vector<float> logits(static_cast<size_t>(T * c.vocab_size));
  model.forward(ids.data(), nullptr, logits.data());
  EXPECT_LE(testing::rel_error(logits, g.at("logits").get<std::vector<double>>()), 1e-5);
}

}  // namespace
}  // namespace keel::runtime
