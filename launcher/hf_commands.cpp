#include "launcher/hf_commands.h"

#include <iostream>

#include "kernels/error.h"
#include "launcher/command_line.h"
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
  const CommandLine cl(args, "export", {"--format", "--tokenizer"});
  if (cl.help()) {
    std::cout << kExportUsage;
    return 0;
  }
  const std::string format = cl.text("--format");
  KEEL_CHECK(format == "hf", "keel export needs --format hf (the Hugging Face LLaMA layout){}",
             format.empty() ? "" : "; got '" + format + "'");
  KEEL_CHECK(cl.positional().size() == 2, "usage: keel export --format hf CKPT OUT");
  runtime::export_hf(cl.positional()[0], cl.positional()[1], cl.text("--tokenizer"), std::cout);
  return 0;
}

int run_import(const std::vector<std::string>& args) {
  // --set repeats, so it is gathered here; the rest through CommandLine.
  std::vector<std::string> rest, overrides;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] != "--set") {
      rest.push_back(args[i]);
      continue;
    }
    KEEL_CHECK(i + 1 < args.size(), "--set needs a value (keel import --help)");
    overrides.push_back(args[++i]);
  }
  const CommandLine cl(rest, "import", {"--out"});
  if (cl.help()) {
    std::cout << kImportUsage;
    return 0;
  }
  KEEL_CHECK(cl.positional().size() == 1 && cl.has("--out"),
             "usage: keel import HF_DIR --out DIR --set data.train=PATH");
  runtime::import_hf(cl.positional()[0], cl.text("--out"), overrides, std::cout);
  return 0;
}

}  // namespace keel::launcher
