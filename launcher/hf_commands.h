// `keel export --format hf CKPT OUT` and `keel import HF_DIR --out DIR`: the command lines of
// runtime/store/hf_format.h.
#pragma once

#include <string>
#include <vector>

namespace keel::launcher {

// Each returns the exit code; a command-line mistake throws keel::Error.
int run_export(const std::vector<std::string>& args);
int run_import(const std::vector<std::string>& args);

}  // namespace keel::launcher
