#include "runtime/store/hf_config.h"

#include <cstring>
#include <fstream>

#include "kernels/error.h"

namespace keel::runtime {

using Json = nlohmann::ordered_json;

namespace {

// Keys by which another family's config.json says it has experts.
constexpr const char* kExpertKeys[] = {"num_local_experts",   "num_experts",
                                       "n_routed_experts",    "moe_num_experts",
                                       "num_experts_per_tok", "ffn_config"};

// transformers' default rope_theta of each architecture (a config.json may leave it out).
constexpr double kLlamaTheta = 10000.0, kMixtralTheta = 1000000.0;

template <class T>
T field(const Json& j, const char* key, const std::string& path) {
  KEEL_CHECK(j.contains(key) && !j[key].is_null(), "{} has no '{}'", path, key);
  try {
    return j[key].get<T>();
  } catch (const nlohmann::json::exception&) {
    KEEL_FAIL("{}: '{}' is of the wrong type", path, key);
  }
}

// key's value, or fallback when it is missing or null (transformers writes null for unset keys,
// "head_dim": null, "sliding_window": null).
template <class T>
T value_or(const Json& j, const char* key, const T& fallback, const std::string& path) {
  return j.contains(key) && !j[key].is_null() ? field<T>(j, key, path) : fallback;
}

// Mixtral has experts in every layer and routes every token: a model it cannot hold is refused,
// one trained with capacity exported with a note.
void check_mixtral(const ModelConfig& m, std::ostream& notes) {
  std::string dense;
  for (int64_t l = 0; l < m.num_hidden_layers; ++l)
    if (!m.moe_layer(l)) dense += (dense.empty() ? "" : ", ") + std::to_string(l);
  const std::string key = m.moe_layers.empty()
                              ? format("model.moe_layer_freq is {}", m.moe_layer_freq)
                              : format("model.moe_layers is '{}'", m.moe_layers);
  KEEL_CHECK(dense.empty(),
             "{}, so layers {} are dense, and Hugging Face's Mixtral (the format of a model with "
             "experts) has experts in every layer; only a model trained with "
             "model.moe_layer_freq 1 and no model.moe_layers can be exported",
             key, dense);
  if (m.moe_token_dropping)
    notes << "keel: note: the model was trained with model.moe_token_dropping (capacity factor "
          << m.moe_expert_capacity_factor
          << "); transformers' Mixtral routes every token to its experts (dropless), as keel "
             "generate does, so its logits differ from keel eval's where an expert overflows\n";
}

double rope_theta(const Json& hf, const std::string& path, double fallback) {
  if (!hf.contains("rope_parameters") || hf["rope_parameters"].is_null())
    return value_or(hf, "rope_theta", fallback, path);
  // transformers 5 writes {"rope_type": "default", "rope_theta": θ} in place of rope_theta.
  const Json& r = hf["rope_parameters"];
  KEEL_CHECK(r.is_object() && r.contains("rope_theta"),
             "{}: rope_parameters is {}; keel reads {\"rope_type\": \"default\", \"rope_theta\": "
             "...}",
             path, r.dump());
  const auto type = value_or<std::string>(r, "rope_type", "default", path);
  KEEL_CHECK(type == "default",
             "{}: rope_parameters.rope_type is '{}'; keel implements plain RoPE "
             "only ('default')",
             path, type);
  return field<double>(r, "rope_theta", path);
}

}  // namespace

Json hf_config(const ModelConfig& m, const Tokenizer& t, std::ostream& notes) {
  const bool moe = m.moe();
  if (moe) check_mixtral(m, notes);
  const int64_t kv = m.num_key_value_heads > 0 ? m.num_key_value_heads : m.num_attention_heads;
  auto id_or_null = [](int32_t id) { return id >= 0 ? Json(id) : Json(nullptr); };
  Json j = {{"architectures", {moe ? "MixtralForCausalLM" : "LlamaForCausalLM"}},
            {"model_type", moe ? "mixtral" : "llama"},
            {"vocab_size", m.vocab_size},
            {"hidden_size", m.hidden_size},
            {"intermediate_size", m.intermediate_size},
            {"num_hidden_layers", m.num_hidden_layers},
            {"num_attention_heads", m.num_attention_heads},
            {"num_key_value_heads", kv},
            {"head_dim", m.head_dim()},
            {"max_position_embeddings", m.max_position_embeddings},
            {"rope_theta", m.rope_theta},
            {"rope_scaling", nullptr},
            {"rms_norm_eps", m.rms_norm_eps},
            {"tie_word_embeddings", m.tie_word_embeddings},
            {"hidden_act", "silu"},
            {"attention_bias", false},
            {"attention_dropout", 0.0},
            {"mlp_bias", false},
            {"initializer_range", m.initializer_range},
            {"bos_token_id", id_or_null(t.bos_id())},
            {"eos_token_id", id_or_null(t.eos_id())},
            {"pad_token_id", id_or_null(t.pad_id())},
            {"torch_dtype", "float32"},
            {"use_cache", true}};
  if (!moe) return j;
  j["num_local_experts"] = m.num_local_experts;
  j["num_experts_per_tok"] = m.num_experts_per_tok;
  j["output_router_logits"] = m.output_router_logits;
  j["router_aux_loss_coef"] = m.router_aux_loss_coef;
  j["router_jitter_noise"] = 0.0;
  j["sliding_window"] = nullptr;
  // Not Mixtral's (transformers keeps an unknown key as is): there for keel import to read back.
  if (m.router_z_loss_coef > 0) j["router_z_loss_coef"] = m.router_z_loss_coef;
  return j;
}

ModelConfig read_hf_config(const std::string& config_path) {
  const Json hf = read_json_file(config_path);
  const std::string type = value_or<std::string>(hf, "model_type", "", config_path);
  const bool mixtral = type == "mixtral";
  if (type != "llama" && !mixtral) {
    for (const char* key : kExpertKeys)
      KEEL_CHECK(!hf.contains(key),
                 "{}: model_type is '{}', a mixture of experts other than Mixtral ('{}' is set); "
                 "keel imports LLaMA ('llama') and Mixtral ('mixtral') models, its experts being "
                 "Mixtral's (softmax, top-k, renormalised; every layer; no shared experts)",
                 config_path, type, key);
    KEEL_FAIL("{}: model_type is '{}'; keel imports LLaMA ('llama') and Mixtral ('mixtral') models",
              config_path, type);
  }
  const auto act = value_or<std::string>(hf, "hidden_act", "silu", config_path);
  KEEL_CHECK(act == "silu", "{}: hidden_act '{}'; LLaMA's is silu", config_path, act);
  KEEL_CHECK(!hf.contains("rope_scaling") || hf["rope_scaling"].is_null(),
             "{}: rope_scaling is set; keel implements plain RoPE only", config_path);
  KEEL_CHECK(!value_or(hf, "attention_bias", false, config_path) &&
                 !value_or(hf, "mlp_bias", false, config_path),
             "{}: attention or MLP biases are not part of keel's LLaMA", config_path);

  ModelConfig m;
  m.vocab_size = field<int64_t>(hf, "vocab_size", config_path);
  m.hidden_size = field<int64_t>(hf, "hidden_size", config_path);
  m.intermediate_size = field<int64_t>(hf, "intermediate_size", config_path);
  m.num_hidden_layers = field<int64_t>(hf, "num_hidden_layers", config_path);
  m.num_attention_heads = field<int64_t>(hf, "num_attention_heads", config_path);
  m.num_key_value_heads = value_or(hf, "num_key_value_heads", m.num_attention_heads, config_path);
  m.max_position_embeddings = field<int64_t>(hf, "max_position_embeddings", config_path);
  m.rope_theta = rope_theta(hf, config_path, mixtral ? kMixtralTheta : kLlamaTheta);
  m.rms_norm_eps = value_or(hf, "rms_norm_eps", 1e-6, config_path);
  m.tie_word_embeddings = value_or(hf, "tie_word_embeddings", false, config_path);
  m.initializer_range = value_or(hf, "initializer_range", 0.02, config_path);
  KEEL_CHECK(m.num_attention_heads >= 1 && m.hidden_size >= 1,
             "{}: hidden_size and num_attention_heads must be positive", config_path);
  const auto head_dim = value_or<int64_t>(hf, "head_dim", m.head_dim(), config_path);
  KEEL_CHECK(head_dim == m.head_dim(),
             "{}: head_dim {} is not hidden_size / num_attention_heads = {}; keel derives it",
             config_path, head_dim, m.head_dim());
  if (!mixtral) return m;

  // Mixtral: every layer a mixture of experts (keel's moe_layer_freq 1), dropless.
  // Defaults are transformers' MixtralConfig's.
  m.num_local_experts = value_or<int64_t>(hf, "num_local_experts", 8, config_path);
  m.num_experts_per_tok = value_or<int64_t>(hf, "num_experts_per_tok", 2, config_path);
  m.output_router_logits = value_or(hf, "output_router_logits", false, config_path);
  m.router_aux_loss_coef = value_or(hf, "router_aux_loss_coef", 0.001, config_path);
  m.router_z_loss_coef = value_or(hf, "router_z_loss_coef", 0.0, config_path);
  KEEL_CHECK(m.num_local_experts >= 1 && m.num_experts_per_tok >= 1 &&
                 m.num_experts_per_tok <= m.num_local_experts,
             "{}: num_experts_per_tok {} of num_local_experts {}; a token takes 1 to {} experts",
             config_path, m.num_experts_per_tok, m.num_local_experts, m.num_local_experts);
  const auto jitter = value_or(hf, "router_jitter_noise", 0.0, config_path);
  KEEL_CHECK(jitter == 0.0,
             "{}: router_jitter_noise is {}; keel's router adds no noise to its inputs (set it to "
             "0 in config.json to import the model: jitter only perturbs training)",
             config_path, jitter);
  const auto window = value_or<int64_t>(hf, "sliding_window", 0, config_path);
  KEEL_CHECK(window == 0 || window >= m.max_position_embeddings,
             "{}: sliding_window is {}, below max_position_embeddings {}; keel's attention sees "
             "every earlier position, so a model that attends over a window cannot be imported",
             config_path, window, m.max_position_embeddings);
  return m;
}

Json read_json_file(const std::string& path) {
  std::ifstream f(path);
  KEEL_CHECK(f.good(), "cannot open {}: {}", path, std::strerror(errno));
  try {
    return Json::parse(f);
  } catch (const nlohmann::json::exception& e) {
    KEEL_FAIL("{} is not valid JSON ({})", path, e.what());
  }
}

}  // namespace keel::runtime
