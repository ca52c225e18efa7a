#include "runtime/train/stop_signal.h"

#include <unistd.h>

#include <csignal>

#include "kernels/error.h"

namespace keel::runtime {
namespace {

volatile std::sig_atomic_t g_received = 0;
struct sigaction g_previous_term, g_previous_usr1;

extern "C" void on_stop_signal(int signal) {
  // Async-signal-safe only: a flag, or _exit.
  if (g_received != 0 && signal == SIGTERM) _exit(128 + SIGTERM);
  g_received = signal;
}

}  // namespace

StopSignals::StopSignals() {
  g_received = 0;
  struct sigaction action = {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;  // a blocking read or collective goes on after the mark
  KEEL_CHECK(sigaction(SIGTERM, &action, &g_previous_term) == 0 &&
                 sigaction(SIGUSR1, &action, &g_previous_usr1) == 0,
             "cannot install the handlers of SIGTERM and SIGUSR1 (training.save_on_signal: false "
             "runs without them)");
}

StopSignals::~StopSignals() {
  sigaction(SIGTERM, &g_previous_term, nullptr);
  sigaction(SIGUSR1, &g_previous_usr1, nullptr);
}

int StopSignals::received() { return g_received; }

const char* StopSignals::name(int signal) {
  return signal == SIGTERM ? "SIGTERM" : signal == SIGUSR1 ? "SIGUSR1" : "a signal";
}

}  // namespace keel::runtime
