// The control plane's state, shared by the gRPC handlers (any thread) and the trainer (rank 0's
// main thread, through runtime::RunControl): the run's state and latest step, the commands waiting
// for a step boundary, and the outcome of each request id. Free of gRPC, so it is tested alone.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "runtime/train/run_control.h"

namespace keel::launcher {

// What a mutating call answers.
struct CommandOutcome {
  enum class Code {
    kOk,
    kInvalidArgument,
    kFailedPrecondition,
    kResourceExhausted,
    kAborted,  // the command was carried out and failed (a checkpoint that could not be written)
    kDeadlineExceeded,
    kCancelled
  };
  Code code = Code::kOk;
  std::string message;  // why, when not kOk
  runtime::RunState state = runtime::RunState::kStarting;
  int64_t step = 0;
  std::string checkpoint;  // Checkpoint and Stop: the committed checkpoint's directory, or ""
  int64_t checkpoint_step = 0;
};

// The run as a status call or a watcher sees it. `version` grows with every change.
struct RunSnapshot {
  uint64_t version = 0;
  runtime::RunState state = runtime::RunState::kStarting;
  runtime::RunProgress progress;
  int64_t checkpoint_step = -1;  // the last committed checkpoint (-1: none yet)
  std::string checkpoint;
  std::string failure;  // kFailed: why
};

bool run_ended(runtime::RunState s);

class ControlState : public runtime::RunControl {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr size_t kMaxQueued = 16;
  static constexpr size_t kMaxRememberedRequests = 4096;
  explicit ControlState(int64_t max_steps);

  // The trainer's side.
  runtime::RunCommand next_command(double wait_seconds) override;
  void command_done(runtime::RunCommand command, int64_t step,
                    const std::string& checkpoint) override;
  void command_failed(runtime::RunCommand command, int64_t step, const std::string& why) override;
  void set_state(runtime::RunState state) override;
  void on_step(const runtime::RunProgress& progress) override;
  void on_checkpoint(int64_t step, const std::string& dir) override;
  // The run failed (an error, a hung rank): the state says why, and every waiting call returns.
  void fail(const std::string& why);
  // Called (under the state's lock: it must not call back) whenever the state changes.
  void set_state_listener(std::function<void(runtime::RunState)> listener);
  // The first committed checkpoint known (a resumed run's), before any step.
  void set_resumed_from(int64_t step, const std::string& dir);

  // The client's side. Queues `command` under `request_id` (the same id again finds the first
  // call's command instead of queueing another) and blocks until it has taken effect at a step
  // boundary, the run has ended, `deadline` has passed or `cancelled()` says the caller left. A
  // command the run's state (with the commands queued before it) does not allow is refused at once;
  // so is one beyond kMaxQueued. A checkpoint while another is queued waits for that one.
  CommandOutcome submit(runtime::RunCommand command, const std::string& request_id,
                        Clock::time_point deadline, const std::function<bool()>& cancelled);
  RunSnapshot snapshot() const;
  // The snapshot once its version is above `seen`, or at `until`, or once stop_watchers() is
  // called.
  RunSnapshot wait_newer(uint64_t seen, Clock::time_point until) const;
  // Commands queued and not yet handed to the trainer.
  size_t queued() const;
  // Server shutdown: every watcher waiting in wait_newer returns now.
  void stop_watchers();
  bool watchers_stopped() const;

 private:
  struct Request {
    runtime::RunCommand command;
    bool done = false;
    CommandOutcome outcome;
  };
  // The state the run will be in at a boundary once the queued commands are carried out.
  runtime::RunState projected_state() const;
  std::string refusal(runtime::RunCommand command) const;  // "" when allowed
  void changed();                                          // under mu_: version up, wake all
  void answer_all_pending(const std::string& why);         // under mu_

  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  RunSnapshot run_;
  // What the run does at boundaries, between commands: running or paused (starting counts as
  // running).
  runtime::RunState boundary_state_ = runtime::RunState::kRunning;
  std::deque<std::shared_ptr<Request>> queue_;
  std::shared_ptr<Request> taken_;  // handed to the trainer, not done yet
  std::map<std::string, std::shared_ptr<Request>> requests_;
  std::deque<std::string> request_order_;  // ids in requests_, oldest first
  bool watchers_stopped_ = false;
  std::function<void(runtime::RunState)> listener_;
};

}  // namespace keel::launcher
