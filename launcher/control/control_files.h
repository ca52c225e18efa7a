// The files a run's control server leaves in its output directory for the client:
// control.json (where and how to connect) and, beyond loopback, control.token (owner-only).
#pragma once

#include <string>

namespace keel::launcher {

struct ControlEndpoint {
  std::string address;  // host:port as bound
  int pid = 0;          // rank 0's
  std::string host;     // rank 0's hostname
  std::string run_id;
  std::string tls_ca;      // TLS: the certificate to trust (absolute path); "" for plaintext
  std::string token_file;  // absolute path, or "" when no token is needed
};

// <dir>/control.json, written whole or not at all (a temporary file renamed over it).
void write_control_json(const std::string& dir, const ControlEndpoint& endpoint);
// Reads <dir>/control.json; throws keel::Error naming what is missing.
ControlEndpoint read_control_json(const std::string& dir);
// A fresh 256-bit token (hex) written to path with mode 0600 (created so: never readable by
// others, not even for a moment).
std::string write_token_file(const std::string& path);
// The first line of a token file.
std::string read_token_file(const std::string& path);
// Whether a host:port names this machine's loopback (127.0.0.0/8, localhost, [::1]).
bool is_loopback_address(const std::string& address);
// "20261207-181503-3fa2c1d9": when the run started and 32 random bits.
std::string make_run_id();

}  // namespace keel::launcher
