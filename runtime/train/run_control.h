// How a control plane steers a run from outside (launcher/control/ serves it over gRPC): the
// trainer asks it, on rank 0, for the command to take at each step boundary, and tells it what the
// run is doing. Every rank takes the command rank 0 read, agreed through the world communicator
// (Trainer::agreed_order), so a command takes effect at the same boundary everywhere.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace keel::runtime {

// The commands, as the ranks agree on them (an int all-reduced with max: rank 0 alone sends one).
enum class RunCommand : int32_t {
  kNone = 0,
  kPause = 1,  // hold at this boundary until kResume (or a stop)
  kResume = 2,
  kCheckpoint = 3,  // write a checkpoint here and go on
  kStop = 4,        // write a checkpoint here and end the run (exit 0)
  kStopNoCheckpoint = 5,
};

enum class RunState { kStarting, kRunning, kPaused, kCheckpointing, kStopping, kFailed, kDone };

// "starting", "running", ...
const char* run_state_name(RunState s);

// One MoE layer's routing in a step: the share of the token choices each expert got.
struct ExpertShare {
  int layer = 0;                 // the model's layer index
  std::vector<double> fraction;  // per expert, summing to 1
};

// One step's numbers, as the progress line shows them (and, with MoE layers, their routing).
struct RunProgress {
  int64_t step = 0;
  int64_t max_steps = 0;
  double loss = 0, learning_rate = 0, grad_norm = 0;
  double tokens_per_second = 0, mfu = 0;
  double eta_seconds = 0, step_seconds = 0;
  double aux_loss = 0, load_imbalance = 0, dropped_fraction = 0;
  std::vector<ExpertShare> expert_load = {};  // empty without MoE layers
};

class RunControl {
 public:
  virtual ~RunControl() = default;
  // The command to take at this boundary, or kNone. While the run is paused the trainer asks
  // again and again; `wait_seconds` is how long this call may block for a command to arrive.
  virtual RunCommand next_command(double wait_seconds) = 0;
  // `command` has taken effect at the boundary after `step` (checkpoint: the directory written or
  // found for this step, "" when none was written).
  virtual void command_done(RunCommand command, int64_t step, const std::string& checkpoint) = 0;
  // `command` was carried out at the boundary after `step` and failed on every rank alike (a
  // checkpoint that could not be written); the run goes on.
  virtual void command_failed(RunCommand command, int64_t step, const std::string& why) = 0;
  virtual void set_state(RunState state) = 0;
  virtual void on_step(const RunProgress& progress) = 0;
  // Every committed checkpoint, the interval's too.
  virtual void on_checkpoint(int64_t step, const std::string& dir) = 0;
};

}  // namespace keel::runtime
