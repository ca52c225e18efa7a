#include "launcher/control/control_state.h"

#include <algorithm>

namespace keel::launcher {

using runtime::RunCommand;
using runtime::RunState;

namespace {

const char* command_name(RunCommand c) {
  switch (c) {
    case RunCommand::kNone: return "nothing";
    case RunCommand::kPause: return "pause";
    case RunCommand::kResume: return "resume";
    case RunCommand::kCheckpoint: return "checkpoint";
    case RunCommand::kStop:
    case RunCommand::kStopNoCheckpoint: return "stop";
  }
  return "unknown";
}

}  // namespace

bool run_ended(RunState s) { return s == RunState::kDone || s == RunState::kFailed; }

ControlState::ControlState(int64_t max_steps) { run_.progress.max_steps = max_steps; }

RunCommand ControlState::next_command(double wait_seconds) {
  std::unique_lock lock(mu_);
  if (queue_.empty() && wait_seconds > 0)
    cv_.wait_for(lock, std::chrono::duration<double>(wait_seconds),
                 [&] { return !queue_.empty(); });
  if (queue_.empty()) return RunCommand::kNone;
  taken_ = queue_.front();
  queue_.pop_front();
  return taken_->command;
}

void ControlState::command_done(RunCommand command, int64_t step, const std::string& checkpoint) {
  std::lock_guard lock(mu_);
  if (command == RunCommand::kPause) boundary_state_ = RunState::kPaused;
  if (command == RunCommand::kResume) boundary_state_ = RunState::kRunning;
  if (!taken_) return;
  CommandOutcome& o = taken_->outcome;
  o.state = run_.state;
  o.step = step;
  o.checkpoint = checkpoint;
  o.checkpoint_step = checkpoint.empty() ? 0 : step;
  taken_->done = true;
  taken_.reset();
  changed();
}

void ControlState::command_failed(RunCommand, int64_t step, const std::string& why) {
  std::lock_guard lock(mu_);
  if (!taken_) return;
  CommandOutcome& o = taken_->outcome;
  o.code = CommandOutcome::Code::kAborted;
  o.message = why;
  o.state = run_.state;
  o.step = step;
  taken_->done = true;
  taken_.reset();
  changed();
}

size_t ControlState::queued() const {
  std::lock_guard lock(mu_);
  return queue_.size();
}

void ControlState::set_state(RunState state) {
  std::lock_guard lock(mu_);
  if (run_ended(run_.state)) return;  // a failure is final
  run_.state = state;
  if (listener_) listener_(state);
  if (run_ended(state))
    answer_all_pending("the run ended at step " + std::to_string(run_.progress.step) +
                       " before the command took effect");
  changed();
}

void ControlState::on_step(const runtime::RunProgress& progress) {
  std::lock_guard lock(mu_);
  run_.progress = progress;
  changed();
}

void ControlState::on_checkpoint(int64_t step, const std::string& dir) {
  std::lock_guard lock(mu_);
  run_.checkpoint_step = step;
  run_.checkpoint = dir;
  changed();
}

void ControlState::set_state_listener(std::function<void(RunState)> listener) {
  std::lock_guard lock(mu_);
  listener_ = std::move(listener);
}

void ControlState::set_resumed_from(int64_t step, const std::string& dir) {
  std::lock_guard lock(mu_);
  run_.checkpoint_step = step;
  run_.checkpoint = dir;
  run_.progress.step = step;
  changed();
}

void ControlState::fail(const std::string& why) {
  std::lock_guard lock(mu_);
  if (run_ended(run_.state)) return;
  run_.state = RunState::kFailed;
  run_.failure = why;
  if (listener_) listener_(run_.state);
  answer_all_pending("the run failed: " + why);
  changed();
}

void ControlState::answer_all_pending(const std::string& why) {
  if (taken_) queue_.push_front(taken_);
  taken_.reset();
  for (const std::shared_ptr<Request>& r : queue_) {
    r->done = true;
    r->outcome.state = run_.state;
    r->outcome.step = run_.progress.step;
    // A stop the run made anyway (a signal at the same boundary, max_steps) is what was asked.
    const bool stopped =
        run_.state == RunState::kDone &&
        (r->command == RunCommand::kStop || r->command == RunCommand::kStopNoCheckpoint);
    r->outcome.code =
        stopped ? CommandOutcome::Code::kOk : CommandOutcome::Code::kFailedPrecondition;
    r->outcome.message = stopped ? "" : why;
    if (stopped && r->command == RunCommand::kStop && run_.checkpoint_step >= 0) {
      r->outcome.checkpoint = run_.checkpoint;
      r->outcome.checkpoint_step = run_.checkpoint_step;
    }
  }
  queue_.clear();
}

void ControlState::changed() {
  ++run_.version;
  cv_.notify_all();
}

RunState ControlState::projected_state() const {
  RunState s = run_.state == RunState::kStopping ? RunState::kStopping : boundary_state_;
  const auto apply = [&](RunCommand c) {
    if (c == RunCommand::kPause) s = RunState::kPaused;
    if (c == RunCommand::kResume) s = RunState::kRunning;
    if (c == RunCommand::kStop || c == RunCommand::kStopNoCheckpoint) s = RunState::kStopping;
  };
  if (taken_) apply(taken_->command);  // handed to the trainer, not done: it comes first
  for (const std::shared_ptr<Request>& r : queue_) apply(r->command);
  return s;
}

std::string ControlState::refusal(RunCommand command) const {
  if (run_ended(run_.state))
    return std::string("the run has ended (") + runtime::run_state_name(run_.state) + ")";
  const RunState s = projected_state();
  if (s == RunState::kStopping) return "the run is stopping";
  if (command == RunCommand::kPause && s == RunState::kPaused)
    return "the run is already paused (keel resume continues it)";
  if (command == RunCommand::kResume && s != RunState::kPaused) return "the run is not paused";
  return "";
}

CommandOutcome ControlState::submit(RunCommand command, const std::string& request_id,
                                    Clock::time_point deadline,
                                    const std::function<bool()>& cancelled) {
  std::unique_lock lock(mu_);
  CommandOutcome refused;
  refused.state = run_.state;
  refused.step = run_.progress.step;
  if (request_id.empty() || request_id.size() > 128) {
    refused.code = CommandOutcome::Code::kInvalidArgument;
    refused.message = "request_id must be 1 to 128 characters (a retry reuses the first call's)";
    return refused;
  }
  std::shared_ptr<Request> request;
  if (auto it = requests_.find(request_id); it != requests_.end()) {
    request = it->second;
    if (request->command != command) {
      refused.code = CommandOutcome::Code::kInvalidArgument;
      refused.message = "request_id '" + request_id + "' was used for a " +
                        command_name(request->command) + " command; choose a new id";
      return refused;
    }
  } else {
    if (std::string why = refusal(command); !why.empty()) {
      refused.code = CommandOutcome::Code::kFailedPrecondition;
      refused.message = std::string("cannot ") + command_name(command) + ": " + why;
      return refused;
    }
    // A checkpoint asked for while another waits for the boundary is that one.
    for (const std::shared_ptr<Request>& r : queue_)
      if (command == RunCommand::kCheckpoint && r->command == command) request = r;
    if (!request) {
      if (queue_.size() >= kMaxQueued) {
        refused.code = CommandOutcome::Code::kResourceExhausted;
        refused.message = "cannot " + std::string(command_name(command)) + ": " +
                          std::to_string(queue_.size()) +
                          " commands already wait for the next step boundary";
        return refused;
      }
      request = std::make_shared<Request>();
      request->command = command;
      queue_.push_back(request);
      cv_.notify_all();  // a paused trainer waits in next_command
    }
    // At the cap, forget the oldest answered id (ids of commands still waiting are kept).
    if (requests_.size() >= kMaxRememberedRequests) {
      const auto done = std::find_if(request_order_.begin(), request_order_.end(),
                                     [&](const std::string& id) { return requests_[id]->done; });
      if (done == request_order_.end()) {
        refused.code = CommandOutcome::Code::kResourceExhausted;
        refused.message = "too many requests wait for the next step boundary";
        return refused;
      }
      requests_.erase(*done);
      request_order_.erase(done);
    }
    requests_[request_id] = request;
    request_order_.push_back(request_id);
  }
  // Woken by every change; a caller that left is noticed within 0.1 s.
  while (!request->done) {
    if (Clock::now() >= deadline) {
      refused.code = CommandOutcome::Code::kDeadlineExceeded;
      refused.message = std::string("the ") + command_name(command) +
                        " is queued but has not taken effect yet (a step boundary is still to "
                        "come); call again with the same request_id to wait for it";
      return refused;
    }
    if (cancelled && cancelled()) {
      refused.code = CommandOutcome::Code::kCancelled;
      refused.message = "the caller left; the command stays queued";
      return refused;
    }
    cv_.wait_until(lock, std::min(deadline, Clock::now() + std::chrono::milliseconds(100)));
  }
  return request->outcome;
}

RunSnapshot ControlState::snapshot() const {
  std::lock_guard lock(mu_);
  return run_;
}

RunSnapshot ControlState::wait_newer(uint64_t seen, Clock::time_point until) const {
  std::unique_lock lock(mu_);
  cv_.wait_until(lock, until, [&] { return run_.version > seen || watchers_stopped_; });
  return run_;
}

void ControlState::stop_watchers() {
  std::lock_guard lock(mu_);
  watchers_stopped_ = true;
  cv_.notify_all();
}

bool ControlState::watchers_stopped() const {
  std::lock_guard lock(mu_);
  return watchers_stopped_;
}

}  // namespace keel::launcher
