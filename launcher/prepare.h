// `keel prepare INPUT... --out DIR (--vocab-size N | --tokenizer tokenizer.json)`: the command
// line of runtime/data/prepare.h.
#pragma once

#include <string>
#include <vector>

namespace keel::launcher {

// Returns the exit code; throws keel::Error for a command-line mistake.
int run_prepare(const std::vector<std::string>& args);

}  // namespace keel::launcher
