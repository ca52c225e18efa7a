// The keel program: parses the command line, runs a subcommand, and turns any keel::Error into one
// line on stderr and a non-zero exit code.
#include <cstring>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "launcher/control/client.h"
#include "launcher/control/serve.h"
#include "launcher/hf_commands.h"
#include "launcher/inference_commands.h"
#include "launcher/launch.h"
#include "launcher/prepare.h"
#include "launcher/verify.h"
#include "launcher/world.h"
#include "parallel/agree.h"
#include "parallel/heartbeat.h"
#include "runtime/config/config.h"
#include "runtime/store/run_lock.h"
#include "runtime/train/memory_fit.h"
#include "runtime/train/memory_report.h"
#include "runtime/train/trainer.h"

namespace {

constexpr const char* kUsage = R"(usage: keel <command> [options]

Pretrain LLaMA-family language models.

commands:
  train CONFIG.yaml [--resume CKPT] [--set ...]     train as the config describes (every rank)
  prepare INPUT... --out DIR --vocab-size N         train a tokenizer, write token shards
  launch -n N CONFIG.yaml [--set ...]               train on N ranks of this machine (mpirun)
  plan CONFIG.yaml [--world-size N] [--fit SIZE]   print each rank's memory plan, train nothing
  export --format hf CKPT OUT                       write a checkpoint as a Hugging Face LLaMA
  import HF_DIR --out DIR --set data.train=PATH     start a run from a Hugging Face LLaMA
  generate CKPT --prompt TEXT                       continue a text with a checkpoint's model
  eval CKPT [--data PATH]                           validation loss and perplexity
  verify CKPT [--all]                               check a checkpoint's checksums, train nothing
  status|watch [RUN_DIR] [--json]                   a running job's state and progress (live)
  pause|resume|checkpoint|stop [RUN_DIR]            steer a running job at its next step boundary

Run 'keel <command> --help' for a command's options. Config keys: docs/CONFIG.md.
)";

constexpr const char* kTrainUsage =
    R"(usage: keel train CONFIG.yaml [--resume CKPT] [--set section.key=value ...]

Trains the model that CONFIG.yaml describes and writes <training.output_dir>/metrics.jsonl (one
JSON object per logged step), config.yaml (the resolved config) and model.safetensors. With
training.save_steps, checkpoints go to <training.output_dir>/checkpoints; a run whose output_dir
holds one resumes from its latest (training.resume_from_checkpoint: auto). One run at a time per
output_dir: a run holds <training.output_dir>/.keel.lock, and a second one there is refused,
naming the first (pid, host, start).

options:
  --resume CKPT             resume from this checkpoint (a step_* directory, a checkpoints
                            directory or a run's output_dir), on any number of ranks; 'none'
                            starts afresh (same as --set training.resume_from_checkpoint=CKPT)
  --set section.key=value   override one config key (repeatable), e.g.
                            --set training.max_steps=50 --set model.hidden_size=128
  -h, --help                show this help

Ranks: run under mpirun for data parallelism, e.g.
  mpirun -np 2 keel train configs/tiny.yaml     (or: keel launch -n 2 configs/tiny.yaml)
every rank takes its slice of each global batch (per_device_train_batch_size x
gradient_accumulation_steps x ranks sequences); rank 0 prints and writes the files.
Threads: OMP_NUM_THREADS per rank (default: all cores). Memory: before it allocates, every rank
checks its plan (keel plan) against what it can have, the host's memory or cgroup limit shared by
the ranks on it, or training.memory_limit / KEEL_MEMORY_LIMIT=12GiB ('none': no check); a plan
that does not fit stops the run with the settings that would fit. Config keys: docs/CONFIG.md.
)";

constexpr const char* kPlanUsage =
    R"(usage: keel plan CONFIG.yaml [--world-size N] [--fit SIZE] [--set section.key=value ...]

Prints the memory one rank of an N-rank run of CONFIG.yaml would plan (parameters, gradients,
optimizer state, activations, buffers) under its parallel.zero_stage, then the same total under
every ZeRO stage for comparison. Allocates nothing, reads no data, starts no MPI. A run checks
the same plan against the memory each rank can have before it allocates (training.memory_limit).

options:
  --world-size N            ranks of the run (default 1); must factor as dp x tp x pp
  --fit SIZE                whether the plan fits SIZE per rank (12GiB, 512MiB, 24GB, bytes),
                            and if not, the cheapest settings that would (ZeRO stage, 8-bit
                            AdamW, per-layer update, gradient checkpointing, smaller
                            micro-batches with the same global batch)
  --set section.key=value   override one config key (repeatable)
  -h, --help                show this help
)";

// Thrown for command-line mistakes: printed with the usage hint, exit code 2.
struct UsageError {
  std::string message;
};

// Trains on every rank of the job. Rank 0 prints and writes the run's files, and holds the lock
// of training.output_dir (runtime/store/run_lock.h) while it trains. A mistake that every rank
// finds before training (the config, the output directory) is printed once and every rank exits 1;
// a failure after that ends the whole job (MPI_Abort), since the other ranks may be waiting in a
// collective.
int train(const std::string& path, const std::vector<std::string>& overrides, int* argc,
          char*** argv) {
  std::unique_ptr<keel::launcher::World> world = keel::launcher::open_world(argc, argv);
  keel::parallel::Communicator& comm = world->comm();
  // Hang detection (parallel/heartbeat.h): the communicators record the collective each rank is
  // in, the trainer its step; every rank beats to rank 0, and a rank silent or stuck for
  // control.hang_timeout is reported and the job ended. Declared before the control server,
  // whose status reads the heartbeats' table, so that they outlive it.
  // The lock goes last: with the control server's files gone, a run that failed at start leaves
  // no trace of itself (the lock removes the output directory it created).
  std::optional<keel::runtime::RunLock> lock;
  keel::parallel::Activity activity;
  std::optional<keel::parallel::Heartbeat> heartbeat;
  std::unique_ptr<keel::launcher::ControlServer> control;  // rank 0's; outlives the trainer
  try {
    keel::runtime::Config config;
    keel::parallel::GridLayout layout({});
    keel::parallel::agree(comm, [&] {
      config = keel::runtime::load_config(path, overrides);
      layout = keel::parallel::GridLayout::for_world(
          comm.size(), static_cast<int>(config.parallel.tensor_model_parallel_size),
          static_cast<int>(config.parallel.pipeline_model_parallel_size),
          static_cast<int>(config.parallel.expert_model_parallel_size));
      // Rank 0 alone: the others may run on other hosts, beside another copy of the directory.
      if (comm.rank() == 0)
        lock.emplace(config.training.output_dir,
                     keel::runtime::RunLockUse{"being trained", "training.output_dir",
                                               "set training.output_dir to another directory"});
    });
    // The grid's groups inherit the world's Activity.
    const bool watch = comm.size() > 1 && config.control.hang_timeout > 0;
    if (watch) comm.set_activity(&activity);
    keel::parallel::ProcessGrid grid(comm, layout);
    // Rank 0 serves the control plane from before the trainer loads anything, so a status call
    // already answers "starting" (launcher/control/).
    if (comm.rank() == 0) control = keel::launcher::serve_control(config, comm.size());
    if (watch) {
      keel::parallel::HeartbeatOptions options;
      options.hang_timeout = config.control.hang_timeout;
      options.log_path =
          keel::format("{}/logs/rank_{}.log", config.training.output_dir, comm.rank());
      // The status shows the report (rank 0) until the job is gone.
      options.on_hang = [server = control.get()](const std::string& report) {
        if (server) server->state().fail(report);
      };
      options.end_job = [w = world.get()](const std::string& report) { w->abort(1, report); };
      heartbeat.emplace(comm, activity, std::move(options));
      if (control) control->set_rank_source([&heartbeat] { return heartbeat->ranks(); });
    }
    std::ostream quiet(nullptr);
    keel::runtime::Trainer trainer(config, comm.rank() == 0 ? std::cout : quiet, grid);
    if (comm.rank() == 0) std::cout << keel::launcher::control_banner(control.get(), config);
    if (control) {
      if (!trainer.resumed_from().empty())
        control->state().set_resumed_from(trainer.steps_done(), trainer.resumed_from());
      trainer.set_control(&control->state());
    }
    trainer.set_before_step([&activity](int64_t step) { activity.set_step(step); });
    trainer.run();
    if (heartbeat) heartbeat->finish();  // no rank takes another's normal exit for a hang
  } catch (const keel::parallel::AgreedError& e) {
    if (control) control->state().fail(e.what());
    if (comm.rank() == e.reporter())
      std::cerr << "keel: error: "
                << (e.reporter() > 0 ? keel::format("rank {} of {}: ", e.reporter(), comm.size())
                                     : "")
                << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    // Caught here, inside the MPI session: one rank alone reports and exits cleanly; with several
    // the job is ended, since the others may be waiting in a collective.
    if (control) control->state().fail(e.what());
    control.reset();  // control.json goes with the server: abort below ends the process
    if (comm.size() > 1) world->abort(1, e.what());
    std::cerr << "keel: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}

int run_train(const std::vector<std::string>& args, int* argc, char*** argv) {
  std::string path;
  std::vector<std::string> overrides;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "-h" || a == "--help") {
      std::cout << kTrainUsage;
      return 0;
    }
    if (a == "--set") {
      if (i + 1 >= args.size()) throw UsageError{"--set needs a value: --set section.key=value"};
      overrides.push_back(args[++i]);
    } else if (a == "--resume") {
      if (i + 1 >= args.size()) throw UsageError{"--resume needs a checkpoint: --resume CKPT"};
      // Single-quoted (a quote doubled), so that any path reads back as the same YAML string.
      std::string quoted = "'";
      for (const char c : args[++i]) quoted += c == '\'' ? std::string("''") : std::string(1, c);
      overrides.push_back("training.resume_from_checkpoint=" + quoted + "'");
    } else if (a.rfind("--set=", 0) == 0) {
      overrides.push_back(a.substr(6));
    } else if (!a.empty() && a[0] == '-') {
      throw UsageError{"unknown option '" + a + "' for 'keel train'"};
    } else if (path.empty()) {
      path = a;
    } else {
      throw UsageError{"'keel train' takes one config file, got '" + path + "' and '" + a + "'"};
    }
  }
  if (path.empty()) throw UsageError{"'keel train' needs a config file: keel train CONFIG.yaml"};
  return train(path, overrides, argc, argv);
}

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
  const keel::runtime::RankMemory plan = keel::runtime::plan_rank_memory(config, dp);
  std::cout << keel::runtime::describe_layout(config, dp) << keel::runtime::describe_memory(plan);
  std::string fit_line;  // printed last, searched before the loop below changes the config
  if (!fit.empty()) {
    const uint64_t limit = keel::runtime::parse_memory_size(fit, "--fit");
    fit_line = "keel: the plan " +
               std::string(plan.total() <= limit ? "fits in " : "does not fit in ") +
               keel::runtime::format_memory(limit) + " per rank";
    if (plan.total() > limit)
      fit_line +=
          "; " + keel::runtime::describe_fits(keel::runtime::search_fits(config, dp, limit), limit);
    fit_line += "\n";
  }
  std::cout << "keel: per rank by ZeRO stage:";
  for (int stage = 0; stage <= 3; ++stage) {
    config.parallel.zero_stage = stage;
    std::cout << (stage ? ", " : " ") << stage << ": ";
    if (stage == 1 && config.optimizer.per_layer_update)  // refused (config_check.cpp)
      std::cout << "none (not with optimizer.per_layer_update)";
    else
      std::cout << keel::format_mib(keel::runtime::plan_rank_memory(config, dp).total());
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
    if (command == "train") return run_train(rest, &argc, &argv);
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
