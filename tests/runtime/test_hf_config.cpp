// config.json both ways (runtime/store/hf_config.h): a model with experts is Mixtral, read back as
// the same keys; transformers 5's rope_parameters is read; what keel's model or Mixtral cannot be
// is one error naming the field or the key.
#include <gtest/gtest.h>

#include <sstream>

#include "file_test_util.h"
#include "runtime/store/hf_config.h"

namespace keel::runtime {
namespace {

using HfConfig = testing::FileTest;
using Json = nlohmann::ordered_json;

ModelConfig mixtral() {
  ModelConfig m;
  m.vocab_size = 300, m.hidden_size = 64, m.intermediate_size = 96, m.num_hidden_layers = 3;
  m.num_attention_heads = 4, m.num_key_value_heads = 2, m.rope_theta = 500.0;
  m.num_local_experts = 8, m.num_experts_per_tok = 2, m.output_router_logits = true;
  m.router_aux_loss_coef = 0.02, m.router_z_loss_coef = 0.001;
  return m;
}

TEST_F(HfConfig, ExpertsAreMixtralBothWays) {
  std::ostringstream notes;
  const Json j = hf_config(mixtral(), Tokenizer::bytes(), notes);
  EXPECT_EQ(j.at("architectures"), Json::array({"MixtralForCausalLM"}));
  EXPECT_EQ(j.at("model_type"), "mixtral");
  EXPECT_EQ(j.at("num_local_experts"), 8);
  EXPECT_EQ(j.at("router_jitter_noise"), 0.0);
  EXPECT_TRUE(j.at("sliding_window").is_null());
  EXPECT_EQ(notes.str(), "");
  const ModelConfig back = read_hf_config(write("config.json", j.dump()));
  EXPECT_EQ(back.num_local_experts, 8);
  EXPECT_EQ(back.num_experts_per_tok, 2);
  EXPECT_TRUE(back.output_router_logits);
  EXPECT_EQ(back.router_aux_loss_coef, 0.02);
  EXPECT_EQ(back.router_z_loss_coef, 0.001);
  EXPECT_EQ(back.rope_theta, 500.0);
  EXPECT_EQ(back.num_moe_layers(), 3);
  // A dense model stays a LLaMA, with no expert keys.
  ModelConfig dense = mixtral();
  dense.num_local_experts = 0;
  const Json d = hf_config(dense, Tokenizer::bytes(), notes);
  EXPECT_EQ(d.at("model_type"), "llama");
  EXPECT_FALSE(d.contains("num_local_experts"));
}

TEST_F(HfConfig, MixtralCannotHoldDenseLayers) {
  std::ostringstream notes;
  ModelConfig m = mixtral();
  m.moe_layers = "0, 2";
  testing::expect_error([&] { hf_config(m, Tokenizer::bytes(), notes); },
                        "model.moe_layers is '0, 2', so layers 1 are dense, and Hugging Face's "
                        "Mixtral (the format of a model with experts) has experts in every layer");
  m.moe_layers = "0,1,2";  // every layer listed: Mixtral
  EXPECT_EQ(hf_config(m, Tokenizer::bytes(), notes).at("model_type"), "mixtral");
  m.moe_layers = "", m.moe_token_dropping = true;
  hf_config(m, Tokenizer::bytes(), notes);
  EXPECT_NE(notes.str().find("transformers' Mixtral routes every token to its experts "
                             "(dropless)"),
            std::string::npos)
      << notes.str();
}

// transformers 5's save_pretrained writes rope_parameters, not rope_theta: keel must not fall
// back to a default θ.
TEST_F(HfConfig, ReadsRopeParameters) {
  std::ostringstream notes;
  ModelConfig m = mixtral();
  m.num_local_experts = 0;
  Json j = hf_config(m, Tokenizer::bytes(), notes);
  j.erase("rope_theta");
  j.erase("rope_scaling");
  j["rope_parameters"] = {{"rope_theta", 250000.0}, {"rope_type", "default"}};
  EXPECT_EQ(read_hf_config(write("llama.json", j.dump())).rope_theta, 250000.0);
  j["rope_parameters"]["rope_type"] = "llama3";
  testing::expect_error([&] { read_hf_config(write("llama3.json", j.dump())); },
                        "rope_parameters.rope_type is 'llama3'; keel implements plain RoPE only");
  // Without either, each architecture's default: LLaMA's 10⁴, Mixtral's 10⁶.
  j.erase("rope_parameters");
  EXPECT_EQ(read_hf_config(write("plain.json", j.dump())).rope_theta, 10000.0);
  j["model_type"] = "mixtral";
  EXPECT_EQ(read_hf_config(write("mixtral.json", j.dump())).rope_theta, 1000000.0);
}

TEST_F(HfConfig, RefusesWhatKeelsMixtralIsNot) {
  std::ostringstream notes;
  const Json j = hf_config(mixtral(), Tokenizer::bytes(), notes);
  auto refused = [&](const char* key, const Json& value, const std::string& part) {
    Json k = j;
    k[key] = value;
    testing::expect_error([&] { read_hf_config(write("c.json", k.dump())); }, part);
  };
  refused("model_type", "qwen2_moe",
          "model_type is 'qwen2_moe', a mixture of experts other than Mixtral "
          "('num_local_experts' is set)");
  refused("router_jitter_noise", 0.01, "router_jitter_noise is 0.01; keel's router adds no noise");
  refused("sliding_window", 16, "sliding_window is 16, below max_position_embeddings 256");
  refused("num_experts_per_tok", 9, "num_experts_per_tok 9 of num_local_experts 8");
  ModelConfig dense = mixtral();
  dense.num_local_experts = 0;
  Json gpt2 = hf_config(dense, Tokenizer::bytes(), notes);
  gpt2["model_type"] = "gpt2";
  testing::expect_error([&] { read_hf_config(write("gpt2.json", gpt2.dump())); },
                        "model_type is 'gpt2'; keel imports LLaMA ('llama') and Mixtral");
  Json wide = j;
  wide["sliding_window"] = 4096;  // wider than every position: full attention
  EXPECT_EQ(read_hf_config(write("wide.json", wide.dump())).num_local_experts, 8);
}

}  // namespace
}  // namespace keel::runtime
