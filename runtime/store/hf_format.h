// Hugging Face LLaMA directories in and out: `keel export --format hf` writes a checkpoint's
// weights as config.json + model.safetensors (HF's names and layouts, which keel's already are,
// rotary pairs in HF's rotate_half order) with the tokenizer files transformers loads; `keel
// import` turns such a directory into a keel run directory whose step-0 checkpoint holds its
// weights (AdamW moments zero, as a fresh optimizer's), ready to train on.
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include "runtime/config/config.h"

namespace keel::runtime {

// The model keys of a Hugging Face LLaMA config.json; anything keel's LLaMA is not (another
// model_type or activation, RoPE scaling, biases, an odd head_dim) is an error naming the field.
ModelConfig read_hf_config(const std::string& config_json);

// checkpoint: a checkpoint directory, a store or a run directory (its latest). tokenizer: a
// tokenizer.json, or "" for the run's own (<run>/tokenizer.json, else data.tokenizer).
void export_hf(const std::string& checkpoint, const std::string& out_dir,
               const std::string& tokenizer, std::ostream& log);

// hf_dir holds config.json, model.safetensors (or model.safetensors.index.json and its shards;
// F32, BF16 or F16) and optionally tokenizer.json. Writes out_dir/config.yaml (HF's model keys,
// keel's defaults elsewhere, then overrides), out_dir/tokenizer.json and
// out_dir/checkpoints/step_00000000.
void import_hf(const std::string& hf_dir, const std::string& out_dir,
               const std::vector<std::string>& overrides, std::ostream& log);

}  // namespace keel::runtime
