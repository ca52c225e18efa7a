// A build without gRPC (KEEL_GRPC=OFF, or gRPC not found): no control server, and a client that
// says how to get one. Everything else, signals and hang detection included, works alike.
#include <iostream>
#include <string>

#include "kernels/error.h"
#include "launcher/control/client.h"
#include "launcher/control/control_server.h"

namespace keel::launcher {

namespace {
constexpr const char* kNoGrpc =
    "this keel was built without gRPC, so it has no control plane (install libgrpc++-dev and "
    "protobuf-compiler-grpc, or run scripts/setup.sh --deps, and rebuild)";
}

std::unique_ptr<ControlServer> start_control_server(const ControlServerOptions&) { return nullptr; }

std::string control_plane_missing() { return kNoGrpc; }

int run_control_client(const std::string&, const std::vector<std::string>& args) {
  for (const std::string& a : args)
    if (a == "-h" || a == "--help") {
      std::cout << kControlUsage;
      return 0;
    }
  KEEL_FAIL("{}", kNoGrpc);
}

}  // namespace keel::launcher
