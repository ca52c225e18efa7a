#include "runtime/store/saved_model.h"

#include <algorithm>
#include <filesystem>

#include "kernels/error.h"
#include "runtime/data/data.h"
#include "runtime/data/tokenizer_json.h"
#include "runtime/store/safetensors.h"

namespace keel::runtime {

namespace fs = std::filesystem;

namespace {

// The tokenizer asked for, the run's own copy in run_dir, or the config's data.tokenizer (or the
// one beside data.train); not_found: the config's paths that locate_data found nowhere.
ResolvedTokenizer saved_tokenizer(const std::string& asked, const fs::path& run_dir,
                                  const Config& config, const std::string& what,
                                  const std::map<std::string, std::string>& not_found) {
  if (!asked.empty()) return {load_tokenizer(asked), asked};
  const fs::path own = run_dir / "tokenizer.json";
  if (fs::exists(own)) return {read_tokenizer_json(own.string()), own.string()};
  try {
    return resolve_tokenizer(config.data.tokenizer, config.data.train);
  } catch (const Error& e) {
    std::string where;
    for (const char* key : {"data.tokenizer", "data.train"})
      if (not_found.count(key)) where += format("; {} {}", key, not_found.at(key));
    KEEL_FAIL("cannot find the tokenizer of {} ({}{}); give it with --tokenizer PATH", what,
              e.what(), where);
  }
}

// Where the relative data paths of a run in run_dir may be relative to, in the order tried.
std::vector<fs::path> data_bases(const fs::path& run_dir, const Config& config) {
  std::vector<fs::path> bases = {fs::current_path()};
  fs::path run = fs::absolute(run_dir).lexically_normal();
  if (run.filename().empty()) run = run.parent_path();  // "runs/x/"
  const fs::path out = fs::path(config.training.output_dir).lexically_normal();
  if (out.is_relative()) {
    // The training run's working directory: the run directory less output_dir's components.
    fs::path base = run;
    std::vector<fs::path> parts(out.begin(), out.end());
    bool matches = true;
    for (auto it = parts.rbegin(); it != parts.rend() && matches; ++it) {
      if (it->empty()) continue;
      matches = base.filename() == *it;
      base = base.parent_path();
    }
    if (matches) bases.push_back(base);
  }
  for (fs::path p = run.parent_path(); !p.empty(); p = p.parent_path()) {
    bases.push_back(p);
    if (p == p.root_path()) break;
  }
  std::vector<fs::path> unique;
  for (const fs::path& b : bases)
    if (std::find(unique.begin(), unique.end(), b) == unique.end()) unique.push_back(b);
  return unique;
}

// Makes the config's data paths readable from this working directory (open_saved_model).
void locate_data(Config& config, const fs::path& run_dir,
                 std::map<std::string, std::string>& not_found) {
  const std::vector<fs::path> bases = data_bases(run_dir, config);
  auto locate = [&](const char* key, std::string& value) {
    if (value.empty() || value == "auto" || value == "none" || value == "bytes") return;
    const fs::path given(value);
    if (fs::exists(given)) return;
    std::string looked = given.is_absolute() ? "as given" : "";
    if (given.is_relative()) {
      for (const fs::path& base : bases) {
        if (fs::exists(base / given)) {
          value = (base / given).string();
          return;
        }
        looked += (looked.empty() ? "" : ", ") + base.string();
      }
    }
    not_found[key] = format("'{}' (looked in {})", value, looked);
  };
  locate("data.train", config.data.train);
  locate("data.validation", config.data.validation);
  locate("data.tokenizer", config.data.tokenizer);
}

}  // namespace

SavedModel open_saved_model(const std::string& spec, const std::string& tokenizer) {
  std::string checkpoint, weights, what;
  CheckpointInfo info;
  Config config;
  fs::path run_dir;
  if (holds_checkpoint(spec)) {
    checkpoint = find_checkpoint(spec, spec);
    info = read_checkpoint_info(checkpoint);
    config = parse_config(info.config_yaml, {}, checkpoint + "/meta.json");
    what = "step " + std::to_string(info.step) + " of " + checkpoint;
    run_dir = fs::path(checkpoint).parent_path().parent_path();  // <run>/checkpoints/step_N
  } else {
    weights = spec + "/model.safetensors";
    KEEL_CHECK(fs::exists(weights) && fs::exists(spec + "/config.yaml"),
               "{} holds no checkpoint and no trained model: give a checkpoint directory (with "
               "meta.json), a run's checkpoints/ (with latest) or a run directory (its latest "
               "checkpoint, else the model.safetensors and config.yaml it wrote at its end)",
               spec);
    config = load_config(spec + "/config.yaml");
    const SafeTensorsReader file(weights);
    for (const std::string& name : file.names()) {
      const Shape s = file.get(name).shape();
      info.shapes[name] = {s[0], s.numel() / s[0]};
    }
    what = "the final weights of " + spec;
    run_dir = spec;
  }
  std::map<std::string, std::string> not_found;
  locate_data(config, run_dir, not_found);
  ResolvedTokenizer t = saved_tokenizer(tokenizer, run_dir, config, what, not_found);
  KEEL_CHECK(t.tokenizer.vocab_size() <= config.model.vocab_size,
             "the tokenizer ({}) has {} tokens, more than the model's vocabulary of {}", t.path,
             t.tokenizer.vocab_size(), config.model.vocab_size);
  return {std::move(what),   std::move(checkpoint),  std::move(weights), std::move(info),
          std::move(config), std::move(t.tokenizer), std::move(t.path),  std::move(not_found)};
}

void read_parameters(const SavedModel& saved, const std::vector<StatePiece>& pieces) {
  if (!saved.checkpoint.empty()) return read_state(saved.checkpoint, saved.info, pieces);
  const SafeTensorsReader file(saved.weights);
  for (const StatePiece& p : pieces) {
    const Tensor t = file.get(p.name);
    KEEL_CHECK(t.dtype() == DType::F32 && t.numel() == p.rows * p.cols,
               "{}: tensor '{}' is not {} x {} fp32 values", saved.weights, p.name, p.rows, p.cols);
    std::copy_n(t.data_as<const float>(), t.numel(), p.data);
  }
}

void load_parameters(const SavedModel& saved, LlamaModel& model) {
  std::vector<StatePiece> pieces;
  for (Parameter& p : model.parameters()) {
    KEEL_CHECK(p.value.f32(), "cannot load '{}': the model does not hold its weights", p.name);
    const int64_t rows = p.global_shape[0], cols = p.global_shape.numel() / rows;
    pieces.push_back({p.name, rows, cols, {0, 0, rows, cols, cols}, p.value.f32(), rows * cols});
  }
  read_parameters(saved, pieces);
}

}  // namespace keel::runtime
