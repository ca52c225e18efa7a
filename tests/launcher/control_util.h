// Helpers of the control-plane tests: a training job in the background, waiting for its control
// server, and its status through `keel status --json`.
#pragma once

#include <chrono>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "cli_util.h"

// Set by CMake for the targets linking launcher/control/ built with gRPC.
#ifndef KEEL_HAVE_GRPC
#define KEEL_HAVE_GRPC 0
#endif

namespace keel::test {

inline bool have_grpc() { return KEEL_HAVE_GRPC != 0; }

// A model whose steps take a few milliseconds, for 3000 of them: long enough for a client to act
// mid-run, short enough for a test.
inline constexpr const char* kControlSets =
    " --set training.max_steps=3000 --set training.logging_steps=1 --set training.warmup_steps=2"
    " --set training.report_to=none";

// `keel train` on `ranks` ranks in a thread, writing to `out`; join() waits for it and returns its
// result. A test that ends early (a failed ASSERT) stops the run rather than wait for it to end.
class BackgroundRun {
 public:
  BackgroundRun(int ranks, const std::string& cfg, const std::string& sets, const std::string& out)
      : out_(out), thread_([this, ranks, cfg, sets] {
          result_ = train(ranks, cfg, sets + " --set training.output_dir=" + out_);
        }) {}
  ~BackgroundRun() {
    if (!thread_.joinable()) return;
    shell(std::string(KEEL_BINARY) + " resume " + out_ + " --timeout 10");  // if paused
    shell(std::string(KEEL_BINARY) + " stop " + out_ + " --no-checkpoint --timeout 30");
    thread_.join();
  }
  Result join() {
    thread_.join();
    return result_;
  }

 private:
  std::string out_;
  Result result_{-1, ""};
  std::thread thread_;
};

// `keel status DIR --json` as JSON (null when the call failed).
inline nlohmann::json status_json(const std::string& target, const std::string& env = "") {
  const Result r = shell(env + std::string(KEEL_BINARY) + " status " + target + " --json");
  if (r.code != 0) return nullptr;
  return nlohmann::json::parse(r.out, nullptr, false);
}

// Waits (up to a minute) until the run in `out` serves its control plane and has trained at
// least `steps` steps; false if it never did.
inline bool wait_for_steps(const std::string& out, int64_t steps) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    if (fs::exists(out + "/control.json")) {
      const nlohmann::json s = status_json(out);
      if (s.is_object() && s["step"].get<int64_t>() >= steps) return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

}  // namespace keel::test
