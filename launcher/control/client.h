// keel status|watch|pause|resume|checkpoint|stop: the control plane's client (launcher/control/).
#pragma once

#include <string>
#include <vector>

namespace keel::launcher {

inline constexpr const char* kControlUsage =
    R"(usage: keel status|watch|pause|resume|checkpoint|stop [RUN_DIR|HOST:PORT] [options]

Talks to a running job's control server (rank 0 serves it; docs/CONTROL.md). RUN_DIR is the run's
training.output_dir (default: the current directory), where the run wrote control.json (address,
pid, run id) and, beyond loopback, control.token; HOST:PORT names a server directly.

commands:
  status        the run's state, step, loss, learning rate, tokens/s, MFU, ETA, last checkpoint and
                every rank's liveness (--json: one JSON object)
  watch         a live progress line until the run ends (--json: one JSON object per step)
  pause         hold every rank at the next step boundary (answers once they hold)
  resume        let a paused run go on
  checkpoint    write a checkpoint at the next step boundary (answers with its step and path)
  stop          checkpoint at the next step boundary and end the run, exit status 0
                (--no-checkpoint: end without one)

options:
  --json              machine-readable output (status, watch)
  --token-file FILE   the bearer token (default: the run's control.token; or KEEL_CONTROL_TOKEN)
  --ca FILE           PEM certificate to trust for TLS (default: the one control.json names)
  --timeout SECONDS   how long to wait for an answer (status 10, commands 3600; watch: none)
  --request-id ID     a command's id; a retry with the same id never acts twice (default: new)
  --no-checkpoint     stop: end without writing a checkpoint
  -h, --help          show this help
)";

inline bool is_control_command(const std::string& c) {
  return c == "status" || c == "watch" || c == "pause" || c == "resume" || c == "checkpoint" ||
         c == "stop";
}
// Runs one of them; returns the process's exit status (0: done, 1: refused or unreachable).
int run_control_client(const std::string& command, const std::vector<std::string>& args);

}  // namespace keel::launcher
