#include "launcher/hf_commands.h"

#include <iostream>

#include "kernels/error.h"
#include "runtime/hf_format.h"

namespace keel::launcher {

namespace {

constexpr const char* kExportUsage =
    R"(usage: keel export --format hf CKPT OUT [--tokenizer PATH]

Writes the weights of a checkpoint (a checkpoint directory, a run's checkpoints/ or the run
directory: its latest) as a Hugging Face LLaMA directory: config.json, model.safetensors (fp32,
HF names and layouts), tokenizer.json, tokenizer_config.json, special_tokens_map.json and
generation_config.json. transformers loads it with LlamaForCausalLM.from_pretrained(OUT) and
AutoTokenizer.from_pretrained(OUT).

options:
  --format hf         the output format (hf is the one there is)
  --tokenizer PATH    the tokenizer.json to ship (default: the run's own, <run>/tokenizer.json)
  -h, --help          show this help
)";

constexpr const char* kImportUsage =
    R"(usage: keel import HF_DIR --out DIR --set data.train=PATH [--set section.key=value ...]

Turns a Hugging Face LLaMA directory (config.json, model.safetensors or a sharded
model.safetensors.index.json, in F32, BF16 or F16; tokenizer.json if present) into a keel run
directory: DIR/config.yaml (the model keys from config.json, the overrides, keel's defaults for
the rest; training.output_dir is DIR), DIR/tokenizer.json and DIR/checkpoints/step_00000000 with
the weights and zero AdamW moments. Then `keel train DIR/config.yaml` continues from those weights.

options:
  --out DIR                 the run directory to create
  --set section.key=value   a key of the run's config (repeatable); data.train is required
  -h, --help                show this help
)";

}  // namespace

int run_export(const std::vector<std::string>& args) {
  std::string format, tokenizer;
  std::vector<std::string> positional;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "-h" || a == "--help") {
      std::cout << kExportUsage;
      return 0;
    }
    if (a == "--format" || a == "--tokenizer") {
      KEEL_CHECK(i + 1 < args.size(), "{} needs a value (keel export --help)", a);
      (a == "--format" ? format : tokenizer) = args[++i];
    } else {
      KEEL_CHECK(a.empty() || a[0] != '-', "unknown option '{}' for 'keel export'", a);
      positional.push_back(a);
    }
  }
  KEEL_CHECK(format == "hf", "keel export needs --format hf (the Hugging Face LLaMA layout){}",
             format.empty() ? "" : "; got '" + format + "'");
  KEEL_CHECK(positional.size() == 2, "usage: keel export --format hf CKPT OUT");
  runtime::export_hf(positional[0], positional[1], tokenizer, std::cout);
  return 0;
}

int run_import(const std::vector<std::string>& args) {
  std::string out;
  std::vector<std::string> positional, overrides;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "-h" || a == "--help") {
      std::cout << kImportUsage;
      return 0;
    }
    if (a == "--out" || a == "--set") {
      KEEL_CHECK(i + 1 < args.size(), "{} needs a value (keel import --help)", a);
      (a == "--out" ? out : overrides.emplace_back()) = args[++i];
    } else {
      KEEL_CHECK(a.empty() || a[0] != '-', "unknown option '{}' for 'keel import'", a);
      positional.push_back(a);
    }
  }
  KEEL_CHECK(positional.size() == 1 && !out.empty(),
             "usage: keel import HF_DIR --out DIR --set data.train=PATH");
  runtime::import_hf(positional[0], out, overrides, std::cout);
  return 0;
}

}  // namespace keel::launcher
