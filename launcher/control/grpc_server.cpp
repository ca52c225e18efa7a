// start_control_server with gRPC: the Control service's handlers over a ControlState, the health
// and reflection services, the token check, and the files the client reads.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/resource_quota.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <sstream>

#include "kernels/error.h"
#include "launcher/control/control.grpc.pb.h"
#include "launcher/control/control_files.h"
#include "launcher/control/control_server.h"

namespace keel::launcher {

namespace {

namespace pb = keel::control::v1;
using runtime::RunCommand;
using runtime::RunState;

constexpr const char* kServiceName = "keel.control.v1.Control";
// Every request of this service is a few bytes; anything larger is refused before it is parsed.
constexpr int kMaxRequestBytes = 16 * 1024;
// Every open call holds one of the server's threads in the training process: watchers and the
// threads together are capped, so that no caller can exhaust rank 0.
constexpr int kMaxWatchers = 128;
constexpr int kMaxThreads = 256;

pb::State to_proto(RunState s) { return static_cast<pb::State>(static_cast<int>(s) + 1); }

void fill_progress(const RunSnapshot& r, pb::Progress* p) {
  p->set_state(to_proto(r.state));
  p->set_step(r.progress.step);
  p->set_max_steps(r.progress.max_steps);
  p->set_loss(r.progress.loss);
  p->set_learning_rate(r.progress.learning_rate);
  p->set_grad_norm(r.progress.grad_norm);
  p->set_tokens_per_second(r.progress.tokens_per_second);
  p->set_mfu(r.progress.mfu);
  p->set_eta_seconds(r.progress.eta_seconds);
  p->set_step_seconds(r.progress.step_seconds);
  p->set_aux_loss(r.progress.aux_loss);
  p->set_load_imbalance(r.progress.load_imbalance);
  p->set_dropped_fraction(r.progress.dropped_fraction);
}

std::string read_file(const std::string& path, const char* key) {
  std::ifstream f(path);
  KEEL_CHECK(f.good(), "control.{} '{}' cannot be read; give the path of a PEM file", key, path);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

// Whether two strings are equal, in a time that does not depend on where they first differ.
bool same_secret(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i)
    diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

class Service final : public pb::Control::Service {
 public:
  Service(ControlState& state, const ControlServerOptions& options, std::string token)
      : state_(state), options_(options), token_(std::move(token)) {}

  grpc::Status GetStatus(grpc::ServerContext* ctx, const pb::GetStatusRequest*,
                         pb::Status* out) override {
    if (grpc::Status s = authorize(ctx, "GetStatus"); !s.ok()) return s;
    const RunSnapshot r = state_.snapshot();
    out->set_run_id(options_.run_id);
    out->set_config_summary(options_.config_summary);
    out->set_output_dir(options_.output_dir);
    out->set_world_size(options_.world_size);
    out->set_pid(static_cast<int32_t>(::getpid()));
    fill_progress(r, out->mutable_progress());
    for (const runtime::ExpertShare& share : r.progress.expert_load) {
      pb::ExpertLoad* load = out->add_expert_load();
      load->set_layer(share.layer);
      for (double f : share.fraction) load->add_fraction(f);
    }
    if (r.checkpoint_step >= 0) {
      out->mutable_last_checkpoint()->set_step(r.checkpoint_step);
      out->mutable_last_checkpoint()->set_path(r.checkpoint);
    }
    out->set_failure(r.failure);
    {
      const std::vector<parallel::RankLiveness> ranks = this->ranks();
      int64_t furthest = 0;
      for (const parallel::RankLiveness& k : ranks) furthest = std::max(furthest, k.step);
      for (const parallel::RankLiveness& k : ranks) {
        pb::RankStatus* p = out->add_ranks();
        p->set_rank(k.rank);
        p->set_host(k.host);
        p->set_step(k.step);
        p->set_step_lag(furthest - k.step);
        p->set_seconds_since_heartbeat(k.seconds_since_heartbeat);
        p->set_activity(k.activity);
        p->set_rss_bytes(k.rss_bytes);
        p->set_peak_rss_bytes(k.peak_rss_bytes);
      }
    }
    return grpc::Status::OK;
  }

  grpc::Status WatchProgress(grpc::ServerContext* ctx, const pb::WatchProgressRequest*,
                             grpc::ServerWriter<pb::Progress>* writer) override {
    if (grpc::Status s = authorize(ctx, "WatchProgress"); !s.ok()) return s;
    struct Seat {
      std::atomic<int>& n;
      ~Seat() { --n; }
    } seat{watchers_};
    if (++watchers_ > kMaxWatchers)
      return {grpc::StatusCode::RESOURCE_EXHAUSTED,
              std::to_string(kMaxWatchers) + " watchers are connected already; try later"};
    uint64_t seen = 0;
    int64_t sent_step = -1;
    RunState sent_state = RunState::kStarting;
    for (;;) {
      // Woken by every change; a watcher that left is noticed within half a second.
      const RunSnapshot r =
          state_.wait_newer(seen, ControlState::Clock::now() + std::chrono::milliseconds(500));
      if (ctx->IsCancelled()) return grpc::Status::CANCELLED;
      seen = r.version;
      // One message per step or change of state (a checkpoint's bookkeeping is not progress).
      if (r.progress.step != sent_step || r.state != sent_state) {
        pb::Progress p;
        fill_progress(r, &p);
        if (!writer->Write(p)) return grpc::Status::CANCELLED;  // the client left
        sent_step = r.progress.step;
        sent_state = r.state;
      }
      if (run_ended(r.state) || state_.watchers_stopped()) return grpc::Status::OK;
    }
  }

  grpc::Status Pause(grpc::ServerContext* ctx, const pb::CommandRequest* in,
                     pb::CommandReply* out) override {
    return command(ctx, "Pause", RunCommand::kPause, in->request_id(), out);
  }
  grpc::Status Resume(grpc::ServerContext* ctx, const pb::CommandRequest* in,
                      pb::CommandReply* out) override {
    return command(ctx, "Resume", RunCommand::kResume, in->request_id(), out);
  }
  grpc::Status Checkpoint(grpc::ServerContext* ctx, const pb::CommandRequest* in,
                          pb::CommandReply* out) override {
    return command(ctx, "Checkpoint", RunCommand::kCheckpoint, in->request_id(), out);
  }
  grpc::Status Stop(grpc::ServerContext* ctx, const pb::StopRequest* in,
                    pb::CommandReply* out) override {
    return command(ctx, "Stop",
                   in->no_checkpoint() ? RunCommand::kStopNoCheckpoint : RunCommand::kStop,
                   in->request_id(), out);
  }

 private:
  // Beyond loopback every call carries "authorization: Bearer <token>"; a refusal is logged with
  // the peer's address.
  grpc::Status authorize(grpc::ServerContext* ctx, const char* method) const {
    if (token_.empty()) return grpc::Status::OK;
    const auto& metadata = ctx->client_metadata();
    const auto it = metadata.find("authorization");
    const std::string given =
        it == metadata.end() ? "" : std::string(it->second.data(), it->second.size());
    if (same_secret(given, "Bearer " + token_)) return grpc::Status::OK;
    const std::string why = it == metadata.end() ? "no token" : "a wrong token";
    std::cerr << ("keel: control: refused " + std::string(method) + " from " + ctx->peer() + ": " +
                  why + "\n")
              << std::flush;
    return {grpc::StatusCode::UNAUTHENTICATED,
            "this run needs its bearer token in the authorization metadata (" + why +
                " given): the token is in the run's control.token"};
  }

  grpc::Status command(grpc::ServerContext* ctx, const char* method, RunCommand c,
                       const std::string& request_id, pb::CommandReply* out) {
    if (grpc::Status s = authorize(ctx, method); !s.ok()) return s;
    // The client's deadline on the steady clock, less a margin so that the server's answer (the
    // command stays queued; the same request id waits for it) arrives before the client gives
    // up; no deadline: as long as a day.
    const auto left = std::min<std::chrono::system_clock::duration>(
        ctx->deadline() - std::chrono::system_clock::now(), std::chrono::hours(24));
    const auto wait =
        left - std::min<std::chrono::system_clock::duration>(left / 10, std::chrono::seconds(1));
    const CommandOutcome o =
        state_.submit(c, request_id,
                      ControlState::Clock::now() +
                          std::chrono::duration_cast<ControlState::Clock::duration>(wait),
                      [ctx] { return ctx->IsCancelled(); });
    out->set_state(to_proto(o.state));
    out->set_step(o.step);
    out->set_checkpoint_path(o.checkpoint);
    out->set_checkpoint_step(o.checkpoint_step);
    switch (o.code) {
      case CommandOutcome::Code::kOk: return grpc::Status::OK;
      case CommandOutcome::Code::kInvalidArgument:
        return {grpc::StatusCode::INVALID_ARGUMENT, o.message};
      case CommandOutcome::Code::kFailedPrecondition:
        return {grpc::StatusCode::FAILED_PRECONDITION, o.message};
      case CommandOutcome::Code::kResourceExhausted:
        return {grpc::StatusCode::RESOURCE_EXHAUSTED, o.message};
      case CommandOutcome::Code::kAborted: return {grpc::StatusCode::ABORTED, o.message};
      case CommandOutcome::Code::kDeadlineExceeded:
        return {grpc::StatusCode::DEADLINE_EXCEEDED, o.message};
      case CommandOutcome::Code::kCancelled: return {grpc::StatusCode::CANCELLED, o.message};
    }
    return {grpc::StatusCode::INTERNAL, "unknown outcome"};
  }

  ControlState& state_;
  const ControlServerOptions& options_;
  const std::string token_;
  std::atomic<int> watchers_{0};
  // Called under its lock: once set_rank_source({}) returns, no call is still reading the source
  // (the heartbeat it reads may be gone next).
  mutable std::mutex rank_source_mu_;
  RankSource rank_source_;

 public:
  void set_rank_source(RankSource source) {
    std::lock_guard lock(rank_source_mu_);
    rank_source_ = std::move(source);
  }
  int watchers() const { return watchers_.load(); }
  std::vector<parallel::RankLiveness> ranks() const {
    std::lock_guard lock(rank_source_mu_);
    return rank_source_ ? rank_source_() : std::vector<parallel::RankLiveness>{};
  }
};

class GrpcControlServer final : public ControlServer {
 public:
  explicit GrpcControlServer(const ControlServerOptions& options)
      : options_(options), state_(options.max_steps) {
    namespace fs = std::filesystem;
    fs::create_directories(options.output_dir);
    const std::string dir = fs::absolute(options.output_dir).string();
    ControlEndpoint endpoint;
    if (!is_loopback_address(options.address)) {
      endpoint.token_file = dir + "/control.token";
      token_ = write_token_file(endpoint.token_file);
    }
    std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
    if (!options.tls_cert.empty()) {
      grpc::SslServerCredentialsOptions tls;
      tls.pem_key_cert_pairs.push_back(
          {read_file(options.tls_key, "tls_key"), read_file(options.tls_cert, "tls_cert")});
      credentials = grpc::SslServerCredentials(tls);
      endpoint.tls_ca = fs::absolute(options.tls_cert).string();
    }
    service_ = std::make_unique<Service>(state_, options_, token_);
    grpc::EnableDefaultHealthCheckService(true);
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort(options.address, credentials, &port);
    builder.RegisterService(service_.get());
    builder.SetMaxReceiveMessageSize(kMaxRequestBytes);
    // gRPC sets SO_REUSEPORT by default: two runs could then share a fixed port, and the kernel
    // would hand one run's commands to the other.
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    grpc::ResourceQuota quota("keel-control");
    quota.SetMaxThreads(kMaxThreads);
    builder.SetResourceQuota(quota);
    server_ = builder.BuildAndStart();
    if ((!server_ || port == 0) && !endpoint.token_file.empty()) {
      std::error_code ignored;
      std::filesystem::remove(endpoint.token_file, ignored);
    }
    KEEL_CHECK(server_ && port > 0,
               "the control server cannot listen on control.address {} (the port is taken, or the "
               "host is not this machine's); set control.address to another host:port (port 0 "
               "takes a free one) or none",
               options.address);
    address_ = options.address.substr(0, options.address.rfind(':') + 1) + std::to_string(port);
    grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
    health->SetServingStatus(true);
    health->SetServingStatus(kServiceName, true);
    // NOT_SERVING from the moment the run winds down.
    state_.set_state_listener([health](RunState s) {
      const bool serving = s != RunState::kStopping && !run_ended(s);
      health->SetServingStatus(serving);
      health->SetServingStatus(kServiceName, serving);
    });
    endpoint.address = address_;
    endpoint.pid = static_cast<int>(::getpid());
    endpoint.host = parallel::host_name();
    endpoint.run_id = options.run_id;
    write_control_json(options.output_dir, endpoint);
    control_json_ = options.output_dir + "/control.json";
    banner_ = "keel: control server on " + address_ +
              (token_.empty() ? "" : " (token in control.token)") +
              (endpoint.tls_ca.empty() ? "" : " over TLS") +
              (!token_.empty() && endpoint.tls_ca.empty()
                   ? " (plaintext beyond loopback: the token crosses the network in the clear; "
                     "control.tls_cert and control.tls_key encrypt it)"
                   : "") +
              ": keel status|watch|pause|resume|checkpoint|stop " + options.output_dir;
  }

  ~GrpcControlServer() override {
    std::error_code ignored;
    std::filesystem::remove(control_json_, ignored);
    if (!token_.empty()) std::filesystem::remove(options_.output_dir + "/control.token", ignored);
    grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
    health->SetServingStatus(false);
    state_.set_state_listener(nullptr);
    state_.stop_watchers();
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  }

  ControlState& state() override { return state_; }
  void set_rank_source(RankSource source) override { service_->set_rank_source(std::move(source)); }
  const std::string& address() const override { return address_; }
  const std::string& banner() const override { return banner_; }
  int watchers() const override { return service_->watchers(); }

 private:
  const ControlServerOptions options_;
  ControlState state_;
  std::string token_;
  std::unique_ptr<Service> service_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
  std::string banner_;
  std::string control_json_;
};

}  // namespace

std::unique_ptr<ControlServer> start_control_server(const ControlServerOptions& options) {
  return std::make_unique<GrpcControlServer>(options);
}

std::string control_plane_missing() { return ""; }

}  // namespace keel::launcher
