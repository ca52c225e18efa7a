#include "runtime/store/hf_format.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "kernels/error.h"
#include "runtime/config/config.h"
#include "runtime/data/data.h"
#include "runtime/data/tokenizer_json.h"
#include "runtime/model/llama.h"
#include "runtime/store/checkpoint.h"
#include "runtime/store/durable_file.h"
#include "runtime/store/hf_config.h"
#include "runtime/store/safetensors.h"
#include "runtime/store/saved_model.h"

namespace keel::runtime {

namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;

namespace {

std::string special_text(const Tokenizer& t, int32_t id) {
  return id >= 0 ? t.decode(std::vector<int32_t>{id}) : std::string();
}

void write_json(const std::string& path, const Json& j) {
  write_text_durably(path, j.dump(2) + "\n");
}

// The tensor as fp32 values.
std::vector<float> to_f32(const Tensor& t, const std::string& name, const std::string& file) {
  const auto n = static_cast<size_t>(t.numel());
  std::vector<float> out(n);
  const auto* bytes = static_cast<const uint8_t*>(t.data());
  switch (t.dtype()) {
    case DType::F32: std::memcpy(out.data(), bytes, n * 4); break;
    case DType::BF16:
    case DType::F16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, bytes + 2 * i, 2);
        out[i] = t.dtype() == DType::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
      }
      break;
    default:
      KEEL_FAIL("{}: tensor {} is {}; keel imports F32, BF16 and F16 weights", file, name,
                dtype_name(t.dtype()));
  }
  return out;
}

// The weights of an HF directory: name → (file, reader).
struct HfWeights {
  std::vector<SafeTensorsReader> files;
  std::map<std::string, size_t> where;
};

HfWeights open_weights(const std::string& dir) {
  HfWeights w;
  const fs::path single = fs::path(dir) / "model.safetensors";
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  std::vector<std::string> names;
  if (fs::exists(single)) {
    names = {single.string()};
  } else {
    KEEL_CHECK(fs::exists(index),
               "{} has neither model.safetensors nor "
               "model.safetensors.index.json; is it a Hugging Face model directory?",
               dir);
    std::set<std::string> files;
    for (const auto& [tensor, file] : read_json_file(index.string()).at("weight_map").items())
      files.insert(file.get<std::string>());
    for (const std::string& f : files) names.push_back((fs::path(dir) / f).string());
  }
  for (const std::string& n : names) {
    w.files.emplace_back(n);
    for (const std::string& t : w.files.back().names()) w.where[t] = w.files.size() - 1;
  }
  return w;
}

}  // namespace

void export_hf(const std::string& checkpoint, const std::string& out_dir,
               const std::string& tokenizer_path, std::ostream& log, std::ostream& notes) {
  const SavedModel saved = open_saved_model(checkpoint, tokenizer_path);
  const CheckpointInfo& info = saved.info;
  const Config& config = saved.config;
  const Tokenizer& tokenizer = saved.tokenizer;
  // First, so that a model the format cannot hold is refused before anything is written.
  const Json hf = hf_config(config.model, tokenizer, notes);

  // Every parameter whole, read from whichever state files hold its parts.
  std::vector<std::string> names;
  int64_t total = 0;
  for (const auto& [name, shape] : info.shapes)
    if (!is_optimizer_state(name)) names.push_back(name), total += shape.first * shape.second;
  std::vector<float> values(static_cast<size_t>(total));
  std::vector<StatePiece> pieces;
  std::vector<std::pair<std::string, Tensor>> tensors;
  int64_t at = 0;
  for (const std::string& name : names) {
    const auto [rows, cols] = info.shapes.at(name);
    float* data = values.data() + at;
    pieces.push_back({name, rows, cols, {0, 0, rows, cols, cols}, data, rows * cols});
    tensors.emplace_back(name,
                         Tensor(data, DType::F32, cols == 1 ? Shape{rows} : Shape{rows, cols}));
    at += rows * cols;
  }
  read_parameters(saved, pieces);

  fs::create_directories(out_dir);
  write_safetensors(out_dir + "/model.safetensors", tensors, {{"format", "pt"}});
  write_json(out_dir + "/config.json", hf);
  write_tokenizer_json(tokenizer, out_dir + "/tokenizer.json");
  Json tc = {{"tokenizer_class", "PreTrainedTokenizerFast"},
             {"model_max_length", config.model.max_position_embeddings},
             {"clean_up_tokenization_spaces", false}};
  Json sm = Json::object();
  for (auto [key, id] : {std::pair{"bos_token", tokenizer.bos_id()},
                         {"eos_token", tokenizer.eos_id()},
                         {"pad_token", tokenizer.pad_id()}})
    if (id >= 0) tc[key] = sm[key] = special_text(tokenizer, id);
  write_json(out_dir + "/tokenizer_config.json", tc);
  write_json(out_dir + "/special_tokens_map.json", sm);
  Json gen = {{"_from_model_config", true}};
  if (tokenizer.bos_id() >= 0) gen["bos_token_id"] = tokenizer.bos_id();
  if (tokenizer.eos_id() >= 0) gen["eos_token_id"] = tokenizer.eos_id();
  write_json(out_dir + "/generation_config.json", gen);
  log << "keel: exported " << saved.what << " (" << names.size() << " tensors, " << total / 1e6
      << " M parameters) to " << out_dir << " as a Hugging Face "
      << (config.model.moe() ? "Mixtral" : "LLaMA")
      << " (config.json, model.safetensors, tokenizer.json)\n";
}

void import_hf(const std::string& hf_dir, const std::string& out_dir,
               const std::vector<std::string>& overrides, std::ostream& log) {
  const std::string config_path = hf_dir + "/config.json";
  const ModelConfig m = read_hf_config(config_path);
  // The run's config: the model from config.json, then the user's overrides.
  Config base;
  base.model = m;
  const bool has_tokenizer = fs::exists(hf_dir + "/tokenizer.json");
  const std::string tokenizer_path = out_dir + "/tokenizer.json";
  base.data.tokenizer = tokenizer_path;
  base.training.output_dir = out_dir;
  std::string yaml = config_to_yaml(base);
  Config config;
  try {
    config = parse_config(yaml, overrides, config_path);
  } catch (const Error& e) {
    KEEL_FAIL(
        "{} (keel import writes a run config: give the data to train on with --set "
        "data.train=PATH, and any other key with --set)",
        e.what());
  }
  KEEL_CHECK(config_differences(base, config, "model").empty(),
             "keel import takes the model keys from {}; do not override them", config_path);

  // The weights of every parameter keel's LLaMA of this shape has (its layout only, nothing
  // allocated), as a step-0 checkpoint with zero AdamW moments.
  const LlamaModel layout(m, 1, 1, false, ModelHolds{false, false, false});
  const HfWeights weights = open_weights(hf_dir);
  std::vector<std::vector<float>> values;
  std::vector<StatePiece> pieces;
  values.reserve(layout.parameters().size() * 3);
  for (const Parameter& p : layout.parameters()) {
    const auto it = weights.where.find(p.name);
    KEEL_CHECK(it != weights.where.end(),
               "{} lacks the tensor {} that a model of this config.json has", hf_dir, p.name);
    const SafeTensorsReader& file = weights.files[it->second];
    const Tensor t = file.get(p.name);
    KEEL_CHECK(t.shape() == p.global_shape, "{}: tensor {} has shape {}; config.json implies {}",
               file.path(), p.name, t.shape().str(), p.global_shape.str());
    const int64_t rows = t.shape()[0], cols = t.numel() / rows;
    values.push_back(to_f32(t, p.name, file.path()));
    values.emplace_back(values.back().size(), 0.0f);
    values.emplace_back(values.back().size(), 0.0f);
    const size_t v = values.size() - 3;
    const parallel::ShardRect all{0, 0, rows, cols, cols};
    pieces.push_back({p.name, rows, cols, all, values[v].data(), rows * cols});
    pieces.push_back({optimizer_state_name("exp_avg", p.name), rows, cols, all,
                      values[v + 1].data(), rows * cols});
    pieces.push_back({optimizer_state_name("exp_avg_sq", p.name), rows, cols, all,
                      values[v + 2].data(), rows * cols});
  }
  fs::create_directories(out_dir);
  const Tokenizer tokenizer =
      has_tokenizer ? read_tokenizer_json(hf_dir + "/tokenizer.json") : Tokenizer::bytes();
  KEEL_CHECK(tokenizer.vocab_size() <= m.vocab_size,
             "{}/tokenizer.json has {} tokens, more than config.json's vocab_size {}", hf_dir,
             tokenizer.vocab_size(), m.vocab_size);
  write_tokenizer_json(tokenizer, tokenizer_path);
  const CheckpointStore store(out_dir + "/checkpoints");
  store.begin(0);
  const StateFileSum sum = write_state_file(store.staging(0) + "/" + state_file_name(0), pieces);
  // The moments written are fp32 AdamW's (zero); a run with optimizer.type adamw_8bit
  // quantizes them when it resumes.
  Config stored = config;
  stored.optimizer.type = "adamw";
  CheckpointInfo info;
  info.seed = config.training.seed;
  info.optimizer = stored.optimizer.type;
  info.config_yaml = config_to_yaml(stored);
  info.files = {state_file_name(0)};
  info.sums = {sum};
  for (const StatePiece& p : pieces) info.shapes[p.name] = {p.rows, p.cols};
  write_checkpoint_info(store.staging(0), info);
  const std::string ckpt = store.commit(0, 0);
  write_text_durably(out_dir + "/config.yaml", config_to_yaml(config));
  log << "keel: imported " << hf_dir << " (" << layout.parameters().size() << " tensors, tokenizer "
      << (has_tokenizer ? "tokenizer.json" : "bytes (the directory has no tokenizer.json)")
      << ") as " << ckpt << "; train it with: keel train " << out_dir << "/config.yaml\n";
}

}  // namespace keel::runtime
