// A scheduler's notice before it kills a job (Slurm and Kubernetes send SIGTERM; Slurm's
// --signal often SIGUSR1): while a StopSignals lives, either signal only marks the process, and
// the trainer, which asks at every step boundary, checkpoints there and exits 0. A second SIGTERM
// ends the process at once (exit status 143), for a user who does not want to wait.
#pragma once

namespace keel::runtime {

class StopSignals {
 public:
  StopSignals();  // installs the handlers (the previous ones come back with the destructor)
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  // The signal received since the handlers were installed (SIGTERM or SIGUSR1), or 0.
  static int received();
  // "SIGTERM", "SIGUSR1".
  static const char* name(int signal);
};

}  // namespace keel::runtime
