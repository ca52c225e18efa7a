// The keel program: parses the command line, runs a subcommand, and turns any keel::Error into one
// line on stderr and a non-zero exit code.
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "launcher/command_line.h"
#include "launcher/control/client.h"
#include "launcher/hf_commands.h"
#include "launcher/inference_commands.h"
#include "launcher/launch.h"
#include "launcher/prepare.h"
#include "launcher/train_command.h"
#include "launcher/verify.h"
#include "parallel/process_grid.h"
#include "runtime/config/config.h"
#include "runtime/config/pipeline_layout.h"
#include "runtime/train/memory_fit.h"
#include "runtime/train/memory_report.h"
#include "runtime/train/moe_params.h"

namespace {

using keel::launcher::UsageError;

constexpr const char* kUsage = R"(usage: keel <command> [options]

Pretrain LLaMA-family language models.

commands:
  train CONFIG.yaml [--resume CKPT] [--set ...]     train as the config describes (every rank)
  prepare INPUT... --out DIR --vocab-size N         train a tokenizer, write token shards
  launch -n N CONFIG.yaml [--set ...]               train on N ranks of this machine (mpirun)
  plan CONFIG.yaml [--world-size N] [--fit SIZE]   print each rank's memory plan, train nothing
  export --format hf CKPT OUT                       write a checkpoint as Hugging Face LLaMA/Mixtral
  import HF_DIR --out DIR --set data.train=PATH     start a run from Hugging Face LLaMA/Mixtral
  generate CKPT --prompt TEXT                       continue a text with a checkpoint's model
  eval CKPT [--data PATH]                           validation loss and perplexity
  verify CKPT [--all]                               check a checkpoint's checksums, train nothing
  status|watch [RUN_DIR] [--json]                   a running job's state and progress (live)
  pause|resume|checkpoint|stop [RUN_DIR]            steer a running job at its next step boundary

Run 'keel <command> --help' for a command's options. Config keys: docs/CONFIG.md.
)";

constexpr const char* kPlanUsage =
    R"(usage: keel plan CONFIG.yaml [--world-size N] [--fit SIZE] [--set section.key=value ...]

Prints the memory one rank of an N-rank run of CONFIG.yaml would plan (parameters, gradients,
optimizer state, activations, buffers) under its parallel.zero_stage, then the same total under
every ZeRO stage for comparison. Allocates nothing, reads no data, starts no MPI. A run checks
the same plan against the memory each rank can have before it allocates (training.memory_limit).

With a pipeline (parallel.pipeline_model_parallel_size > 1) it prints the plan of each stage's
ranks: its layers, and the activations of the micro-batches the schedule keeps alive on it at
its peak (GPipe: all m on every stage; 1F1B: min(m, p-s) on stage s; ZB-H1: min(m, p); interleaved:
each chunk's); and the schedule's bubble, (p-1)/(m+p-1) of the step for GPipe and 1F1B or
(p-1)/(v*m+p-1) interleaved, beside the schedule's simulation. --fit and the ZeRO comparison take
the largest stage's plan.

With experts (model.num_local_experts > 0) it prints the parameters in total and those active per
token (what a token passes through: attention, routers, num_experts_per_tok experts of each MoE
layer, dense MLPs, embedding and head, norms), and per rank (of each stage) the experts it holds
and their bytes in the plan's categories: weights the model holds (none under ZeRO 3, which
gathers a layer at a time), gradients (with ZeRO's gradient shards) and optimizer state (with
ZeRO's fp32 master shards).

options:
  --world-size N            ranks of the run (default 1); must factor as dp x tp x pp
  --fit SIZE                whether the plan (the largest stage's) fits SIZE per rank (12GiB,
                            512MiB, 24GB, bytes), and if not, the cheapest settings that would
                            (ZeRO stage, 8-bit AdamW, per-layer update, gradient checkpointing,
                            smaller micro-batches with the same global batch)
  --set section.key=value   override one config key (repeatable)
  -h, --help                show this help
)";

int run_plan(const std::vector<std::string>& args) {
  std::string path;
  std::vector<std::string> overrides;
  std::string fit;  // --fit SIZE, or "" for none
  int world = 1;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "-h" || a == "--help") {
      std::cout << kPlanUsage;
      return 0;
    }
    if (a == "--set" || a == "--world-size" || a == "-n" || a == "--fit") {
      if (i + 1 >= args.size()) throw UsageError{a + " needs a value"};
      const std::string& v = args[++i];
      if (a == "--set") {
        overrides.push_back(v);
        continue;
      }
      if (a == "--fit") {
        fit = v;
        continue;
      }
      size_t used = 0;
      try {
        world = std::stoi(v, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != v.size() || world < 1)
        throw UsageError{"--world-size takes a positive number of ranks, got '" + v + "'"};
    } else if (!a.empty() && a[0] == '-') {
      throw UsageError{"unknown option '" + a + "' for 'keel plan'"};
    } else if (path.empty()) {
      path = a;
    } else {
      throw UsageError{"'keel plan' takes one config file, got '" + path + "' and '" + a + "'"};
    }
  }
  if (path.empty()) throw UsageError{"'keel plan' needs a config file: keel plan CONFIG.yaml"};
  keel::runtime::Config config = keel::runtime::load_config(path, overrides);
  const keel::parallel::GridLayout layout = keel::parallel::GridLayout::for_world(
      world, static_cast<int>(config.parallel.tensor_model_parallel_size),
      static_cast<int>(config.parallel.pipeline_model_parallel_size),
      static_cast<int>(config.parallel.expert_model_parallel_size));
  const int dp = layout.size(keel::parallel::Group::kData);
  const keel::runtime::PipelineLayout pipeline = keel::runtime::pipeline_layout(config);
  // Every stage's plan; each rank holds its stage's, and the largest is what every rank needs.
  const std::vector<keel::runtime::RankMemory> stages =
      keel::runtime::plan_stage_memory(config, dp);
  std::cout << keel::runtime::describe_layout(config, dp);
  size_t largest = 0;
  std::vector<size_t> totals;
  for (size_t s = 0; s < stages.size(); ++s) {
    if (stages[s].total() > stages[largest].total()) largest = s;
    totals.push_back(stages[s].total());
    std::cout << (pipeline.pipelined() ? keel::runtime::describe_stage_memory(
                                             pipeline, static_cast<int>(s), stages[s])
                                       : keel::runtime::describe_memory(stages[s]));
  }
  std::cout << keel::runtime::describe_moe(config, dp, totals);  // nothing without experts
  const uint64_t peak = stages[largest].total();
  const std::string whose =
      pipeline.pipelined() ? " of the largest stage (" + std::to_string(largest) + ")" : "";
  std::string fit_line;  // printed last, searched before the loop below changes the config
  if (!fit.empty()) {
    const uint64_t limit = keel::runtime::parse_memory_size(fit, "--fit");
    fit_line = "keel: the plan" + whose + (peak <= limit ? " fits in " : " does not fit in ") +
               keel::runtime::format_memory(limit) + " per rank";
    if (peak > limit)
      fit_line +=
          "; " + keel::runtime::describe_fits(keel::runtime::search_fits(config, dp, limit), limit);
    fit_line += "\n";
  }
  std::cout << "keel: per rank" << (pipeline.pipelined() ? " of the largest stage" : "")
            << " by ZeRO stage:";
  for (int stage = 0; stage <= 3; ++stage) {
    config.parallel.zero_stage = stage;
    std::cout << (stage ? ", " : " ") << stage << ": ";
    if (stage == 1 && config.optimizer.per_layer_update)  // refused (config_check.cpp)
      std::cout << "none (not with optimizer.per_layer_update)";
    else
      std::cout << keel::format_mib(keel::runtime::plan_peak_bytes(config, dp));
  }
  std::cout << "\n" << fit_line;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  try {
    if (args.empty() || args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
      std::cout << kUsage;
      return args.empty() ? 2 : 0;
    }
    const std::string command = args[0];
    const std::vector<std::string> rest(args.begin() + 1, args.end());
    if (command == "train") return keel::launcher::run_train(rest, &argc, &argv);
    if (command == "launch") return keel::launcher::run_launch(rest);
    if (command == "plan") return run_plan(rest);
    if (command == "prepare") return keel::launcher::run_prepare(rest);
    if (command == "export") return keel::launcher::run_export(rest);
    if (command == "import") return keel::launcher::run_import(rest);
    if (command == "generate") return keel::launcher::run_generate(rest);
    if (command == "eval") return keel::launcher::run_eval(rest);
    if (command == "verify") return keel::launcher::run_verify(rest);
    if (keel::launcher::is_control_command(command))
      return keel::launcher::run_control_client(command, rest);
    throw UsageError{"unknown command '" + command +
                     "'; commands: prepare, train, launch, plan, export, import, generate, eval, "
                     "verify, status, watch, pause, resume, checkpoint, stop"};
  } catch (const UsageError& e) {
    std::cerr << "keel: error: " << e.message << "\n(run 'keel --help' for usage)\n";
    return 2;
  } catch (const std::exception& e) {  // keel::Error and anything else: one line
    std::cerr << "keel: error: " << e.what() << "\n";
    return 1;
  }
}
