// `keel generate CKPT --prompt TEXT` and `keel eval CKPT`: a trained checkpoint put to use, read
// whole on one process whatever layout trained it (runtime/store/saved_model.h).
#pragma once

#include <string>
#include <vector>

namespace keel::launcher {

// Each returns the exit code; a command-line mistake throws keel::Error.
int run_generate(const std::vector<std::string>& args);
int run_eval(const std::vector<std::string>& args);

}  // namespace keel::launcher
