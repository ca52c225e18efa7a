// A trained model read back for inference (keel generate, keel eval, keel export): its config and
// tokenizer, and its parameters whole, from a checkpoint whatever layout wrote it or from the
// model.safetensors a run writes at its end.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "runtime/config/config.h"
#include "runtime/data/tokenizer.h"
#include "runtime/model/llama.h"
#include "runtime/store/checkpoint.h"

namespace keel::runtime {

struct SavedModel {
  std::string what;        // for messages: "step 12 of runs/x/checkpoints/step_00000012"
  std::string checkpoint;  // the checkpoint directory, or "" for a run's final weights
  std::string weights;     // the run's model.safetensors when there is no checkpoint
  CheckpointInfo info;     // of the checkpoint; for final weights, their tensors' shapes only
  Config config;           // the config the model was trained with
  Tokenizer tokenizer;
  std::string tokenizer_path;  // where the tokenizer came from, for messages
  // The config's data paths that were found nowhere (see open_saved_model), by key
  // ("data.validation"), as "'val.txt' (looked in /here, /runs/..., ...)" for messages.
  std::map<std::string, std::string> not_found;
};

// spec: a checkpoint directory, a run's checkpoints/ (its latest), or a run directory: its latest
// checkpoint, else the model.safetensors and config.yaml it wrote at its end. tokenizer: a
// tokenizer.json or "bytes", or "" for the run's own (<run>/tokenizer.json, else the config's
// data.tokenizer). The tokenizer must fit the model's vocabulary.
// The config's relative data paths (data.train, data.validation, data.tokenizer) are relative to
// the directory the run was trained from; from another working directory each is looked for as
// given, then in that training directory (the run directory less its relative
// training.output_dir), then in each directory above the run directory (a run moved with its
// data), and replaced by the first that exists. Those found nowhere stay as they are, listed in
// not_found.
SavedModel open_saved_model(const std::string& spec, const std::string& tokenizer = "");

// Fills whole parameters (pieces covering their tensors) from the saved model. Errors name the
// file and the tensor it lacks or has in another shape.
void read_parameters(const SavedModel& saved, const std::vector<StatePiece>& pieces);

// Reads every parameter into model, which holds its weights and was built with
// saved.config.model.
void load_parameters(const SavedModel& saved, LlamaModel& model);

}  // namespace keel::runtime
