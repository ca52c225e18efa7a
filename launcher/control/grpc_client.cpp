// The control plane's client over gRPC: finds the server (a run directory's control.json, or
// host:port), adds the token, and prints what the server answers.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "kernels/error.h"
#include "launcher/command_line.h"
#include "launcher/control/client.h"
#include "launcher/control/control.grpc.pb.h"
#include "launcher/control/control_files.h"
#include "parallel/liveness.h"
#include "runtime/train/run_control.h"

namespace keel::launcher {

namespace {

namespace pb = keel::control::v1;
namespace fs = std::filesystem;

struct Target {
  std::string address;  // what to connect to
  std::string token;    // "" when none is needed
  std::string ca;       // PEM path: TLS; "" for plaintext
  std::string dir;      // the run directory named, or ""
  int pid = 0;          // its rank 0's pid, when it runs on this host (else 0)
};

Target resolve(const CommandLine& cl) {
  const std::string where = cl.positional().empty() ? "." : cl.positional()[0];
  Target t;
  std::string token_file = cl.text("--token-file");
  if (fs::is_directory(where)) {
    const ControlEndpoint e = read_control_json(where);
    t.address = e.address;
    // A wildcard bind is reached through its host (this one: loopback).
    const std::string host = e.address.substr(0, e.address.rfind(':'));
    const std::string port = e.address.substr(e.address.rfind(':') + 1);
    if (host == "0.0.0.0" || host == "[::]")
      t.address = (e.host == parallel::host_name() ? "127.0.0.1" : e.host) + ":" + port;
    t.ca = e.tls_ca;
    if (token_file.empty()) token_file = e.token_file;
    t.dir = where;
    if (e.host == parallel::host_name()) t.pid = e.pid;
  } else {
    const size_t colon = where.rfind(':');
    KEEL_CHECK(colon != std::string::npos && colon > 0 && colon + 1 < where.size(),
               "'{}' is neither a run directory nor host:port; give the run's "
               "training.output_dir (where control.json is) or the server's address",
               where);
    t.address = where;
  }
  if (cl.has("--ca")) t.ca = cl.text("--ca");
  if (!token_file.empty()) {
    t.token = read_token_file(token_file);
  } else if (const char* env = std::getenv("KEEL_CONTROL_TOKEN")) {
    t.token = env;
  }
  return t;
}

std::unique_ptr<pb::Control::Stub> connect(const Target& t) {
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (!t.ca.empty()) {
    std::ifstream f(t.ca);
    KEEL_CHECK(f.good(), "cannot read the TLS certificate '{}'; pass --ca FILE", t.ca);
    std::ostringstream pem;
    pem << f.rdbuf();
    grpc::SslCredentialsOptions tls;
    tls.pem_root_certs = pem.str();
    credentials = grpc::SslCredentials(tls);
  }
  return pb::Control::NewStub(grpc::CreateChannel(t.address, credentials));
}

void prepare(grpc::ClientContext& ctx, const Target& t, double timeout_seconds) {
  if (!t.token.empty()) ctx.AddMetadata("authorization", "Bearer " + t.token);
  if (timeout_seconds > 0)
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::milliseconds(static_cast<int64_t>(timeout_seconds * 1000)));
}

// A failed call as one line, and exit status 1.
int report(const grpc::Status& s, const std::string& command, const Target& t) {
  std::string line;
  switch (s.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
      // A run killed outright (SIGKILL, MPI_Abort) leaves its control.json behind.
      if (t.pid > 0 && ::kill(t.pid, 0) != 0 && errno == ESRCH)
        line = "the run in " + t.dir + " is no longer running (its rank 0, pid " +
               std::to_string(t.pid) + ", is gone; control.json is left from it)";
      else
        line =
            "no keel run answers at " + t.address + " (" + s.error_message() + "): has it ended?";
      break;
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::UNAUTHENTICATED:
    case grpc::StatusCode::DEADLINE_EXCEEDED: line = s.error_message(); break;
    default: line = command + " failed: " + s.error_message();
  }
  std::cerr << "keel: error: " << line << "\n";
  return 1;
}

// The server's state as runtime::run_state_name spells it (the proto's values are RunState + 1).
const char* state_name(pb::State s) {
  if (s < pb::STATE_STARTING || s > pb::STATE_DONE) return "unknown";
  return runtime::run_state_name(static_cast<runtime::RunState>(s - 1));
}

std::string duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto s = static_cast<int64_t>(seconds + 0.5);
  std::ostringstream o;
  if (s >= 3600) o << s / 3600 << "h";
  if (s >= 60) o << (s % 3600) / 60 << "m";
  o << s % 60 << "s";
  return o.str();
}

nlohmann::json progress_json(const pb::Progress& p) {
  return {{"state", state_name(p.state())},
          {"step", p.step()},
          {"max_steps", p.max_steps()},
          {"loss", p.loss()},
          {"learning_rate", p.learning_rate()},
          {"grad_norm", p.grad_norm()},
          {"tokens_per_second", p.tokens_per_second()},
          {"mfu", p.mfu()},
          {"eta_seconds", p.eta_seconds()},
          {"step_seconds", p.step_seconds()},
          {"aux_loss", p.aux_loss()},
          {"load_imbalance", p.load_imbalance()},
          {"dropped_fraction", p.dropped_fraction()}};
}

std::string progress_text(const pb::Progress& p) {
  char line[256];
  std::snprintf(line, sizeof line,
                "%s | step %lld/%lld | loss %.4f | lr %.2e | grad norm %.3g | %.0f tok/s | MFU "
                "%.1f%% | ETA %s",
                state_name(p.state()), static_cast<long long>(p.step()),
                static_cast<long long>(p.max_steps()), p.loss(), p.learning_rate(), p.grad_norm(),
                p.tokens_per_second(), 100 * p.mfu(), duration(p.eta_seconds()).c_str());
  return line;
}

int status(pb::Control::Stub& stub, const Target& t, const CommandLine& cl) {
  grpc::ClientContext ctx;
  prepare(ctx, t, cl.number("--timeout", 10));
  pb::Status s;
  const grpc::Status rc = stub.GetStatus(&ctx, pb::GetStatusRequest(), &s);
  if (!rc.ok()) return report(rc, "status", t);
  if (cl.has("--json")) {
    nlohmann::json j = progress_json(s.progress());
    j["run_id"] = s.run_id();
    j["config"] = s.config_summary();
    j["output_dir"] = s.output_dir();
    j["world_size"] = s.world_size();
    j["pid"] = s.pid();
    j["failure"] = s.failure();
    j["last_checkpoint"] = s.has_last_checkpoint()
                               ? nlohmann::json{{"step", s.last_checkpoint().step()},
                                                {"path", s.last_checkpoint().path()}}
                               : nlohmann::json(nullptr);
    j["expert_load"] = nlohmann::json::array();
    for (const pb::ExpertLoad& e : s.expert_load())
      j["expert_load"].push_back(
          {{"layer", e.layer()},
           {"fraction", std::vector<double>(e.fraction().begin(), e.fraction().end())}});
    j["ranks"] = nlohmann::json::array();
    for (const pb::RankStatus& r : s.ranks())
      j["ranks"].push_back({{"rank", r.rank()},
                            {"host", r.host()},
                            {"step", r.step()},
                            {"step_lag", r.step_lag()},
                            {"seconds_since_heartbeat", r.seconds_since_heartbeat()},
                            {"activity", r.activity()},
                            {"rss_bytes", r.rss_bytes()},
                            {"peak_rss_bytes", r.peak_rss_bytes()}});
    std::cout << j.dump() << "\n";
    return 0;
  }
  std::cout << "run " << s.run_id() << " in " << s.output_dir() << " (" << s.world_size()
            << (s.world_size() == 1 ? " rank" : " ranks") << ", rank 0 pid " << s.pid() << ")\n"
            << "  " << s.config_summary() << "\n"
            << "  " << progress_text(s.progress()) << "\n";
  if (s.has_last_checkpoint())
    std::cout << "  last checkpoint: step " << s.last_checkpoint().step() << ", "
              << s.last_checkpoint().path() << "\n";
  else
    std::cout << "  last checkpoint: none yet\n";
  if (!s.failure().empty()) std::cout << "  failure: " << s.failure() << "\n";
  if (s.expert_load_size() > 0) {
    char line[160];
    std::snprintf(line, sizeof line,
                  "  experts: aux loss %.4f, load imbalance %.2f (busiest / mean), %.1f%% of "
                  "choices dropped\n",
                  s.progress().aux_loss(), s.progress().load_imbalance(),
                  100 * s.progress().dropped_fraction());
    std::cout << line;
  }
  for (const pb::ExpertLoad& e : s.expert_load()) {
    std::cout << "  layer " << e.layer() << " routed:";
    for (double f : e.fraction()) {
      char share[16];
      std::snprintf(share, sizeof share, " %.0f%%", 100 * f);
      std::cout << share;
    }
    std::cout << "\n";
  }
  for (const pb::RankStatus& r : s.ranks()) {
    char line[512];
    std::snprintf(line, sizeof line,
                  "  rank %d on %s: step %lld (lag %lld), heartbeat %.1f s ago, %s, %.0f MiB "
                  "(peak %.0f MiB)\n",
                  r.rank(), r.host().c_str(), static_cast<long long>(r.step()),
                  static_cast<long long>(r.step_lag()), r.seconds_since_heartbeat(),
                  r.activity().c_str(), static_cast<double>(r.rss_bytes()) / (1 << 20),
                  static_cast<double>(r.peak_rss_bytes()) / (1 << 20));
    std::cout << line;
  }
  return 0;
}

int watch(pb::Control::Stub& stub, const Target& t, const CommandLine& cl) {
  grpc::ClientContext ctx;
  prepare(ctx, t, cl.number("--timeout", 0));
  std::unique_ptr<grpc::ClientReader<pb::Progress>> reader =
      stub.WatchProgress(&ctx, pb::WatchProgressRequest());
  const bool json = cl.has("--json"), tty = ::isatty(STDOUT_FILENO) != 0;
  pb::Progress p;
  while (reader->Read(&p)) {
    if (json) {
      std::cout << progress_json(p).dump() << "\n" << std::flush;
      continue;
    }
    const double done = p.max_steps() > 0
                            ? static_cast<double>(p.step()) / static_cast<double>(p.max_steps())
                            : 0.0;
    const int filled = static_cast<int>(30 * std::min(1.0, done));
    const std::string bar = "[" + std::string(filled, '#') + std::string(30 - filled, '.') + "] ";
    std::cout << (tty ? "\r\033[K" : "") << bar << progress_text(p) << (tty ? "" : "\n")
              << std::flush;
  }
  if (tty && !json) std::cout << "\n";
  const grpc::Status rc = reader->Finish();
  if (!rc.ok()) return report(rc, "watch", t);
  return 0;
}

int command(pb::Control::Stub& stub, const Target& t, const std::string& name,
            const CommandLine& cl) {
  grpc::ClientContext ctx;
  prepare(ctx, t, cl.number("--timeout", 3600));
  const std::string id = cl.text("--request-id", "req-" + make_run_id());
  pb::CommandRequest request;
  request.set_request_id(id);
  pb::CommandReply reply;
  grpc::Status rc;
  if (name == "pause") rc = stub.Pause(&ctx, request, &reply);
  if (name == "resume") rc = stub.Resume(&ctx, request, &reply);
  if (name == "checkpoint") rc = stub.Checkpoint(&ctx, request, &reply);
  if (name == "stop") {
    pb::StopRequest stop;
    stop.set_request_id(id);
    stop.set_no_checkpoint(cl.has("--no-checkpoint"));
    rc = stub.Stop(&ctx, stop, &reply);
  }
  if (!rc.ok()) {
    if (rc.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED)
      std::cerr << "keel: the " << name << " stays queued; to wait for it: keel " << name << " "
                << (cl.positional().empty() ? "." : cl.positional()[0]) << " --request-id " << id
                << "\n";
    return report(rc, name, t);
  }
  std::cout << "keel: " << name << ": " << state_name(reply.state()) << " at step " << reply.step();
  if (!reply.checkpoint_path().empty())
    std::cout << ", checkpoint step " << reply.checkpoint_step() << " in "
              << reply.checkpoint_path();
  std::cout << "\n";
  return 0;
}

}  // namespace

int run_control_client(const std::string& name, const std::vector<std::string>& args) {
  const CommandLine cl(args, name, {"--token-file", "--ca", "--timeout", "--request-id"},
                       {"--json", "--no-checkpoint"});
  if (cl.help()) {
    std::cout << kControlUsage;
    return 0;
  }
  KEEL_CHECK(cl.positional().size() <= 1, "'keel {}' takes one run directory or host:port", name);
  const Target t = resolve(cl);
  const std::unique_ptr<pb::Control::Stub> stub = connect(t);
  if (name == "status") return status(*stub, t, cl);
  if (name == "watch") return watch(*stub, t, cl);
  return command(*stub, t, name, cl);
}

}  // namespace keel::launcher
