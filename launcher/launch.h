// `keel launch -n N CONFIG.yaml [--set ...]`: a single-node job of N ranks without writing the
// mpirun line by hand. Clusters call mpirun (with a hostfile) on `keel train` directly.
#pragma once

#include <string>
#include <vector>

namespace keel::launcher {

extern const char* const kLaunchUsage;

// Replaces this process with mpirun running `keel train ARGS...` on N ranks. Returns only to
// report a usage problem (throws keel::Error for that) or when mpirun cannot be started.
int run_launch(const std::vector<std::string>& args);

}  // namespace keel::launcher
