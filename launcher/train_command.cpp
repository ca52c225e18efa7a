#include "launcher/train_command.h"

#include <chrono>
#include <functional>
#include <iostream>
#include <optional>
#include <thread>

#include "launcher/command_line.h"
#include "launcher/control/serve.h"
#include "launcher/world.h"
#include "parallel/agree.h"
#include "parallel/heartbeat.h"
#include "runtime/config/config.h"
#include "runtime/store/run_lock.h"
#include "runtime/train/trainer.h"

namespace keel::launcher {

namespace {

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

// Trains on every rank of the job. Rank 0 prints and writes the run's files, and holds the lock
// of training.output_dir (runtime/store/run_lock.h) while it trains. A mistake that every rank
// finds before training (the config, the output directory) is printed once and every rank exits 1;
// a failure after that ends the whole job (MPI_Abort), since the other ranks may be waiting in a
// collective.
int train(const std::string& path, const std::vector<std::string>& overrides, int* argc,
          char*** argv) {
  std::unique_ptr<World> world = open_world(argc, argv);
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
  std::unique_ptr<ControlServer> control;  // rank 0's; outlives the trainer
  // The one safe order, on every path: the status stops reading the heartbeats' table, the
  // heartbeat (whose hang report goes to the server) ends, then the server (control.json).
  const auto end_watching = [&] {
    if (control) control->set_rank_source({});
    heartbeat.reset();
    control.reset();
  };
  struct AtExit {
    const std::function<void()> f;
    ~AtExit() { f(); }
  } at_exit{end_watching};
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
    if (comm.rank() == 0) control = serve_control(config, comm.size());
    if (watch) {
      keel::parallel::HeartbeatOptions options;
      options.hang_timeout = config.control.hang_timeout;
      options.log_path =
          keel::format("{}/logs/rank_{}.log", config.training.output_dir, comm.rank());
      // The status shows the report (rank 0) before the job is ended; the job is stuck anyway,
      // so when clients are watching it gives their streams a second to carry it.
      options.on_hang = [server = control.get()](const std::string& report) {
        if (!server) return;
        server->state().fail(report);
        if (server->watchers() > 0) std::this_thread::sleep_for(std::chrono::seconds(1));
      };
      options.end_job = [w = world.get()](const std::string& report) { w->abort(1, report); };
      heartbeat.emplace(comm, activity, std::move(options));
      if (control) control->set_rank_source([&heartbeat] { return heartbeat->ranks(); });
    }
    std::ostream quiet(nullptr);
    keel::runtime::Trainer trainer(config, comm.rank() == 0 ? std::cout : quiet, grid);
    if (comm.rank() == 0) std::cout << control_banner(control.get(), config);
    if (control) {
      if (!trainer.resumed_from().empty())
        control->state().set_resumed_from(trainer.steps_done(), trainer.resumed_from());
      trainer.set_control(&control->state());
    }
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
    end_watching();  // control.json goes with the server: abort below ends the process
    if (comm.size() > 1) world->abort(1, e.what());
    std::cerr << "keel: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace

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

}  // namespace keel::launcher
