// A training run's control server as the launcher starts it (rank 0, launcher/main.cpp): the
// options drawn from the config, and what the status says about the run and its ranks.
#pragma once

#include <memory>
#include <ostream>
#include <string>

#include "launcher/control/control_server.h"
#include "runtime/config/config.h"

namespace keel::launcher {

// The server for this config (control.address), or null when it says none or the build has no
// gRPC. Its status lists rank 0 alone until the launcher gives it the heartbeats' table.
std::unique_ptr<ControlServer> serve_control(const runtime::Config& config, int world_size,
                                             std::ostream& console);

// "6 layers × 288 hidden, 6 heads (6 kv), vocab 32000, seq 256 | dp 2 × tp 1 | ...": the run in a
// line.
std::string config_summary(const runtime::Config& config, int world_size);

// This process as a rank of the status: its host, resident and peak memory.
RankReport own_rank_report(int rank, int64_t step);

}  // namespace keel::launcher
