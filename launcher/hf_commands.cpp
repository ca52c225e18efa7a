#include "launcher/hf_commands.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "kernels/error.h"
#include "launcher/command_line.h"
#include "runtime/store/hf_format.h"
#include "runtime/store/run_lock.h"

namespace keel::launcher {

namespace {

constexpr const char* kExportUsage =
    R"(usage: keel export --format hf CKPT OUT [--tokenizer PATH]

Writes the weights of a checkpoint (a checkpoint directory, a run's checkpoints/ or the run
directory: its latest) as a Hugging Face LLaMA directory: config.json, model.safetensors (fp32,
HF names and layouts), tokenizer.json, tokenizer_config.json, special_tokens_map.json and
generation_config.json. transformers loads it with LlamaForCausalLM.from_pretrained(OUT) and
AutoTokenizer.from_pretrained(OUT).

A model with experts (model.num_local_experts > 0) is written as Mixtral (MixtralForCausalLM):
each expert's w1, w3, w2 under model.layers.N.block_sparse_moe.experts.E, the router as
block_sparse_moe.gate. Mixtral has experts in every layer, so a model with dense layers among
them (model.moe_layer_freq > 1, or model.moe_layers naming some) is refused; one trained with
model.moe_token_dropping is written with a note: transformers routes dropless, as keel generate.

options:
  --format hf         the output format (hf is the one there is)
  --tokenizer PATH    the tokenizer.json to ship (default: the run's own, <run>/tokenizer.json)
  --force             write into OUT even when it is not empty (its files of the same names
                      are replaced); without it a non-empty OUT is refused
  -h, --help          show this help
)";

constexpr const char* kImportUsage =
    R"(usage: keel import HF_DIR --out DIR --set data.train=PATH [--set section.key=value ...]

Turns a Hugging Face LLaMA or Mixtral directory (config.json, model.safetensors or a sharded
model.safetensors.index.json, in F32, BF16 or F16; tokenizer.json if present) into a keel run
directory: DIR/config.yaml (the model keys from config.json, the overrides, keel's defaults for
the rest; training.output_dir is DIR), DIR/tokenizer.json and DIR/checkpoints/step_00000000 with
the weights and zero AdamW moments. Then `keel train DIR/config.yaml` continues from those weights.

options:
  --out DIR                 the run directory to create: new or empty, unless --force
  --set section.key=value   a key of the run's config (repeatable); data.train is required
  --force                   import into a DIR that holds files, even a run: its config.yaml is
                            replaced and step 0 becomes its latest checkpoint. A run training
                            in DIR (its lock, DIR/.keel.lock, held) refuses it still
  -h, --help                show this help
)";

// What dir holds (its lock file left out), for refusals: "config.yaml, checkpoints/, ... (9
// entries)"; "" when dir is missing or empty.
std::string contents(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(dir, ec)) return "";
  KEEL_CHECK(fs::is_directory(dir), "{} exists and is not a directory; give a directory", dir);
  std::vector<std::string> names;
  for (const fs::directory_entry& e : fs::directory_iterator(dir))
    if (e.path().filename() != runtime::kRunLockFile)
      names.push_back(e.path().filename().string() + (e.is_directory() ? "/" : ""));
  std::sort(names.begin(), names.end());
  std::string text;
  for (size_t i = 0; i < std::min<size_t>(names.size(), 4); ++i) text += (i ? ", " : "") + names[i];
  if (names.size() > 4) text += format(", ... ({} entries)", names.size());
  return text;
}

}  // namespace

int run_export(const std::vector<std::string>& args) {
  const CommandLine cl(args, "export", {"--format", "--tokenizer"}, {"--force"});
  if (cl.help()) {
    std::cout << kExportUsage;
    return 0;
  }
  const std::string format = cl.text("--format");
  KEEL_CHECK(format == "hf", "keel export needs --format hf (the Hugging Face LLaMA layout){}",
             format.empty() ? "" : "; got '" + format + "'");
  KEEL_CHECK(cl.positional().size() == 2, "usage: keel export --format hf CKPT OUT");
  const std::string& out = cl.positional()[1];
  const std::string there = contents(out);
  KEEL_CHECK(there.empty() || cl.has("--force"),
             "{} is not empty (it holds {}); export into a new or empty directory, or add --force "
             "to write over the files of the same names",
             out, there);
  runtime::export_hf(cl.positional()[0], cl.positional()[1], cl.text("--tokenizer"), std::cout,
                     std::cerr);
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
  const CommandLine cl(rest, "import", {"--out"}, {"--force"});
  if (cl.help()) {
    std::cout << kImportUsage;
    return 0;
  }
  KEEL_CHECK(cl.positional().size() == 1 && cl.has("--out"),
             "usage: keel import HF_DIR --out DIR --set data.train=PATH");
  const std::string out = cl.text("--out");
  // Held while importing, so that no run starts training in DIR meanwhile; refused, even with
  // --force, while a run trains there.
  const runtime::RunLock lock(
      out, {"being imported into", "--out", "import into another directory with --out"});
  const std::string there = contents(out);
  if (!there.empty() && !cl.has("--force")) {
    namespace fs = std::filesystem;
    std::string latest;
    std::getline(std::ifstream(out + "/checkpoints/latest"), latest);
    KEEL_CHECK(!fs::exists(out + "/config.yaml") && !fs::exists(out + "/checkpoints"),
               "--out {} is a run directory (it holds {}{}); importing would replace its "
               "config.yaml and make step 0 its latest checkpoint; give a new or empty --out, or "
               "add --force to import over it",
               out, there, latest.empty() ? "" : "; latest checkpoint: " + latest);
    KEEL_FAIL(
        "--out {} is not empty (it holds {}); give a new or empty --out, or add --force to "
        "import into it",
        out, there);
  }
  runtime::import_hf(cl.positional()[0], out, overrides, std::cout);
  return 0;
}

}  // namespace keel::launcher
