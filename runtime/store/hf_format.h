// Hugging Face LLaMA and Mixtral directories in and out: `keel export --format hf` writes a
// checkpoint's weights as config.json + model.safetensors (HF's names and layouts, which keel's
// already are, rotary pairs in HF's rotate_half order; a model with experts as Mixtral, each
// expert's w1/w3/w2 under block_sparse_moe) with the tokenizer files transformers loads; `keel
// import` turns such a directory into a keel run directory whose step-0 checkpoint holds its
// weights (AdamW moments zero, as a fresh optimizer's), ready to train on.
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include "runtime/config/config.h"
#include "runtime/store/hf_config.h"

namespace keel::runtime {

// checkpoint: a checkpoint directory, a store or a run directory (its latest). tokenizer: a
// tokenizer.json, or "" for the run's own (<run>/tokenizer.json, else data.tokenizer). log: what
// was written; notes: what the reader should know about the format's reading of the model.
void export_hf(const std::string& checkpoint, const std::string& out_dir,
               const std::string& tokenizer, std::ostream& log, std::ostream& notes);

// hf_dir holds config.json, model.safetensors (or model.safetensors.index.json and its shards;
// F32, BF16 or F16) and optionally tokenizer.json. Writes out_dir/config.yaml (HF's model keys,
// keel's defaults elsewhere, then overrides), out_dir/tokenizer.json and
// out_dir/checkpoints/step_00000000.
void import_hf(const std::string& hf_dir, const std::string& out_dir,
               const std::vector<std::string>& overrides, std::ostream& log);

}  // namespace keel::runtime
