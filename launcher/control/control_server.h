// Rank 0's control server: keel.control.v1.Control over gRPC (launcher/control/control.proto) with
// the standard health and reflection services beside it, bound to control.address. It writes
// <output_dir>/control.json (the bound address, pid, host, run id) for the client, and beyond
// loopback a bearer token to <output_dir>/control.token (mode 0600) that every call must carry.
// In a build without gRPC, start_control_server says so once and returns null.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "launcher/control/control_state.h"
#include "parallel/liveness.h"

namespace keel::launcher {

struct ControlServerOptions {
  std::string address;  // control.address (not "none")
  std::string output_dir;
  std::string tls_cert, tls_key;  // PEM paths, both or neither
  std::string run_id;
  std::string config_summary;
  int world_size = 1;
  int64_t max_steps = 0;
};

// Every rank's liveness now (the heartbeats' table, parallel/heartbeat.h).
using RankSource = std::function<std::vector<parallel::RankLiveness>()>;

class ControlServer {
 public:
  // Health NOT_SERVING, watchers ended, calls in flight given a moment, control.json removed.
  virtual ~ControlServer() = default;
  // What the trainer steers and reports through.
  virtual ControlState& state() = 0;
  // Where the status finds every rank's liveness (the heartbeats); called from the server's
  // threads. Until set, the status lists no ranks.
  virtual void set_rank_source(RankSource source) = 0;
  // Clients following WatchProgress now.
  virtual int watchers() const = 0;
  // "keel: control server on 127.0.0.1:40123: keel status|watch|... DIR", for the console.
  virtual const std::string& banner() const = 0;
  // "127.0.0.1:40123": the address bound.
  virtual const std::string& address() const = 0;
};

// Starts serving; throws keel::Error naming the fix when the address cannot be bound or the TLS
// files cannot be read. Null in a build without gRPC.
std::unique_ptr<ControlServer> start_control_server(const ControlServerOptions& options);

// "" when this build serves the control plane; otherwise why not, and how to get it.
std::string control_plane_missing();

}  // namespace keel::launcher
