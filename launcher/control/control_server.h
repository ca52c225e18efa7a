// Rank 0's control server: keel.control.v1.Control over gRPC (launcher/control/control.proto) with
// the standard health and reflection services beside it, bound to control.address. It writes
// <output_dir>/control.json (the bound address, pid, host, run id) for the client, and beyond
// loopback a bearer token to <output_dir>/control.token (mode 0600) that every call must carry.
// In a build without gRPC, start_control_server says so once and returns null.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "launcher/control/control_state.h"

namespace keel::launcher {

// One rank's liveness as the status shows it (from the heartbeats).
struct RankReport {
  int rank = 0;
  std::string host;
  int64_t step = 0;
  double seconds_since_heartbeat = 0;
  std::string activity;
  uint64_t rss_bytes = 0, peak_rss_bytes = 0;
};

struct ControlServerOptions {
  std::string address;  // control.address (not "none")
  std::string output_dir;
  std::string tls_cert, tls_key;  // PEM paths, both or neither
  std::string run_id;
  std::string config_summary;
  int world_size = 1;
  int64_t max_steps = 0;
};

using RankSource = std::function<std::vector<RankReport>()>;

class ControlServer {
 public:
  // Health NOT_SERVING, watchers ended, calls in flight given a moment, control.json removed.
  virtual ~ControlServer() = default;
  // What the trainer steers and reports through.
  virtual ControlState& state() = 0;
  // Where the status finds every rank's liveness (the heartbeats); called from the server's
  // threads. Until set, the status lists no ranks.
  virtual void set_rank_source(RankSource source) = 0;
  // "127.0.0.1:40123": the address bound.
  virtual const std::string& address() const = 0;
};

// Starts serving; throws keel::Error naming the fix when the address cannot be bound or the TLS
// files cannot be read. Null in a build without gRPC (after one line on `console`).
std::unique_ptr<ControlServer> start_control_server(const ControlServerOptions& options,
                                                    std::ostream& console);

}  // namespace keel::launcher
