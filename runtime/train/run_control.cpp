#include "runtime/train/run_control.h"

namespace keel::runtime {

const char* run_state_name(RunState s) {
  switch (s) {
    case RunState::kStarting: return "starting";
    case RunState::kRunning: return "running";
    case RunState::kPaused: return "paused";
    case RunState::kCheckpointing: return "checkpointing";
    case RunState::kStopping: return "stopping";
    case RunState::kFailed: return "failed";
    case RunState::kDone: return "done";
  }
  return "unknown";
}

}  // namespace keel::runtime
