// `keel verify CKPT [--all]`: checks checkpoints without training
// (runtime/store/checkpoint_verify.h), printing one line a file and a summary.
#pragma once

#include <string>
#include <vector>

namespace keel::launcher {

// 0 when every checkpoint checked is good, 1 (with every problem named) when one is not; a
// command-line mistake throws keel::Error.
int run_verify(const std::vector<std::string>& args);

}  // namespace keel::launcher
