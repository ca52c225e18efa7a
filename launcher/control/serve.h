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
std::unique_ptr<ControlServer> serve_control(const runtime::Config& config, int world_size);

// The line that says where the run serves (or, in a build without gRPC, that it does not), for
// the console once the run has started; "" with control.address: none.
std::string control_banner(const ControlServer* server, const runtime::Config& config);

// "6 layers × 288 hidden, 6 heads (6 kv), vocab 32000, seq 256 | dp 2 × tp 1 | ...": the run in a
// line.
std::string config_summary(const runtime::Config& config, int world_size);

// A job of one rank (no heartbeats) as the status lists it: its host, step, memory.
parallel::RankLiveness own_liveness(int64_t step, const std::string& activity);

}  // namespace keel::launcher
