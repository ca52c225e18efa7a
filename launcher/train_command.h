// `keel train CONFIG.yaml [--resume CKPT] [--set ...]` on every rank of a job: the MPI world, the
// run lock, hang detection, rank 0's control server, the trainer, and what a failure ends.
#pragma once

#include <string>
#include <vector>

namespace keel::launcher {

// Returns the exit code; throws UsageError (launcher/command_line.h) for a command-line mistake.
int run_train(const std::vector<std::string>& args, int* argc, char*** argv);

}  // namespace keel::launcher
