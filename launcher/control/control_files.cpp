#include "launcher/control/control_files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "kernels/error.h"

namespace keel::launcher {

namespace {

std::string random_hex(int bytes) {
  std::random_device device;  // /dev/urandom
  std::string out;
  char buf[3];
  for (int i = 0; i < bytes; ++i) {
    std::snprintf(buf, sizeof buf, "%02x", static_cast<unsigned>(device() & 0xff));
    out += buf;
  }
  return out;
}

}  // namespace

void write_control_json(const std::string& dir, const ControlEndpoint& e) {
  const nlohmann::json j = {{"address", e.address}, {"pid", e.pid},
                            {"host", e.host},       {"run_id", e.run_id},
                            {"tls_ca", e.tls_ca},   {"token_file", e.token_file}};
  const std::string path = dir + "/control.json", tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    f << j.dump(2) << "\n";
    KEEL_CHECK(f.good(), "cannot write '{}'", tmp);
  }
  std::filesystem::rename(tmp, path);
}

ControlEndpoint read_control_json(const std::string& dir) {
  const std::string path = dir + "/control.json";
  std::ifstream f(path);
  KEEL_CHECK(f.good(),
             "no keel run is serving from '{}' (no control.json there: the run has ended, has not "
             "started its control server yet, or runs with control.address: none)",
             dir);
  nlohmann::json j;
  try {
    f >> j;
    ControlEndpoint e;
    e.address = j.at("address").get<std::string>();
    e.pid = j.at("pid").get<int>();
    e.host = j.at("host").get<std::string>();
    e.run_id = j.at("run_id").get<std::string>();
    e.tls_ca = j.value("tls_ca", "");
    e.token_file = j.value("token_file", "");
    return e;
  } catch (const nlohmann::json::exception& x) {
    KEEL_FAIL("'{}' is not a control file keel wrote ({}); remove it, it is rewritten at start",
              path, x.what());
  }
}

std::string write_token_file(const std::string& path) {
  const std::string token = random_hex(32);
  ::unlink(path.c_str());  // O_EXCL below: never reuse a file someone else may have opened
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  KEEL_CHECK(fd >= 0, "cannot create the control token file '{}'", path);
  const std::string line = token + "\n";
  const bool ok = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size()) &&
                  ::fchmod(fd, 0600) == 0;
  ::close(fd);
  KEEL_CHECK(ok, "cannot write the control token file '{}'", path);
  return token;
}

std::string read_token_file(const std::string& path) {
  std::ifstream f(path);
  KEEL_CHECK(f.good(),
             "cannot read the control token file '{}' (it is the run owner's: run "
             "as that user, or pass --token-file)",
             path);
  std::string token;
  std::getline(f, token);
  return token;
}

bool is_loopback_address(const std::string& address) {
  const std::string host = address.substr(0, address.rfind(':'));
  // 127.0.0.0/8 written as an address ("127.example.com" is a name, not loopback).
  const bool numeric = host.find_first_not_of("0123456789.") == std::string::npos;
  return host == "localhost" || host == "[::1]" || (numeric && host.rfind("127.", 0) == 0);
}

std::string make_run_id() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", &tm);
  return std::string(stamp) + "-" + random_hex(4);
}

}  // namespace keel::launcher
