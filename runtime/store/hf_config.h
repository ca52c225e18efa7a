// A Hugging Face config.json and keel's model keys, both ways: LLaMA ("llama",
// LlamaForCausalLM) for dense models, Mixtral ("mixtral", MixtralForCausalLM) for models with
// experts. What keel's model cannot be (another architecture, RoPE scaling, biases, a sliding
// window, a router with jitter) or what the format cannot hold (Mixtral has experts in every
// layer) is one error naming the field or key.
#pragma once

#include <nlohmann/json.hpp>
#include <ostream>
#include <string>

#include "runtime/config/config.h"
#include "runtime/data/tokenizer.h"

namespace keel::runtime {

// The config.json of a model of these keys with this tokenizer's special tokens. Notes that a
// reader should know (the format decodes differently from how keel trained) go to notes, one
// line each.
nlohmann::ordered_json hf_config(const ModelConfig& m, const Tokenizer& t, std::ostream& notes);

// The model keys of a Hugging Face LLaMA or Mixtral config.json (as keel exports it, or as
// transformers' save_pretrained writes it: rope_parameters instead of rope_theta); anything
// keel's model is not is an error naming the field.
ModelConfig read_hf_config(const std::string& config_json);

// A JSON file, or one error naming it.
nlohmann::ordered_json read_json_file(const std::string& path);

}  // namespace keel::runtime
