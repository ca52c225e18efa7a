// The control plane end to end: a real 2-rank `keel train` steered through the `keel` client
// (watch, pause, checkpoint, resume, stop), the bearer token beyond loopback, and a generic gRPC
// client that knows nothing of keel's protos (Python grpcio, through reflection and the health
// service).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <regex>

#include "control_util.h"

namespace keel::test {
namespace {

// The step a command's answer names ("keel: pause: paused at step 12").
int64_t answered_step(const Result& r) {
  std::smatch m;
  const bool found = std::regex_search(r.out, m, std::regex("at step ([0-9]+)"));
  return found ? std::stoll(m[1]) : -1;
}

TEST_F(Cli, ClientWatchesPausesCheckpointsResumesAndStopsATwoRankRun) {
  if (!have_mpi()) GTEST_SKIP() << "no MPI in this build or no mpirun";
  if (!have_grpc()) GTEST_SKIP() << "this keel was built without gRPC";
  const std::string cfg = write("m.yaml", kTensorParallelModel);
  const std::string straight = (dir_ / "straight").string(), out = (dir_ / "steered").string();
  Result r = train(2, cfg, std::string(kControlSets) + " --set training.output_dir=" + straight);
  ASSERT_EQ(r.code, 0) << r.out;

  // Declared before the job: a test that ends early stops the run (the job's destructor), which
  // ends the watch, which this thread's destructor then joins.
  Result watched{-1, ""};
  std::jthread watcher;
  BackgroundRun job(2, cfg, std::string(kControlSets) + " --set control.hang_timeout=3", out);
  ASSERT_TRUE(wait_for_steps(out, 3)) << job.join().out;
  watcher = std::jthread([&] { watched = run("watch " + out + " --json"); });

  // Pause: the step counter holds.
  r = run("pause " + out);
  ASSERT_EQ(r.code, 0) << r.out;
  const int64_t paused = answered_step(r);
  ASSERT_GE(paused, 3) << r.out;
  nlohmann::json s = status_json(out);
  EXPECT_EQ(s["state"], "paused");
  EXPECT_EQ(s["step"], paused);
  // Held past control.hang_timeout: a paused job is no hang.
  std::this_thread::sleep_for(std::chrono::milliseconds(4000));
  s = status_json(out);
  EXPECT_EQ(s["step"], paused) << "a paused run went on training";
  // Every rank's liveness, from the heartbeats.
  ASSERT_EQ(s["ranks"].size(), 2u) << s.dump();
  for (const nlohmann::json& rank : s["ranks"]) {
    EXPECT_FALSE(rank["host"].get<std::string>().empty());
    EXPECT_GT(rank["rss_bytes"].get<uint64_t>(), 0u);
    EXPECT_LT(rank["seconds_since_heartbeat"].get<double>(), 2.0);
    EXPECT_EQ(rank["step_lag"], 0);
    EXPECT_EQ(rank["activity"], "paused") << s.dump();
  }
  // A second pause is refused with the reason; so is a resume of a running run, later.
  r = run("pause " + out);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("cannot pause: the run is already paused"), std::string::npos) << r.out;

  // Checkpoint while paused: written at the paused step.
  r = run("checkpoint " + out);
  ASSERT_EQ(r.code, 0) << r.out;
  const std::string ckpt = out + "/checkpoints/step_" + [&] {
    char b[16];
    std::snprintf(b, sizeof b, "%08lld", static_cast<long long>(paused));
    return std::string(b);
  }();
  EXPECT_NE(r.out.find("checkpoint step " + std::to_string(paused) + " in " + ckpt),
            std::string::npos)
      << r.out;
  EXPECT_TRUE(fs::exists(ckpt + "/meta.json"));

  // Resume: the steps go on.
  r = run("resume " + out);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(answered_step(r), paused);
  ASSERT_TRUE(wait_for_steps(out, paused + 5));
  r = run("resume " + out);
  EXPECT_NE(r.out.find("cannot resume: the run is not paused"), std::string::npos) << r.out;

  // Stop: a final checkpoint, and the job exits 0.
  r = run("stop " + out);
  ASSERT_EQ(r.code, 0) << r.out;
  const int64_t stopped = answered_step(r);
  EXPECT_GT(stopped, paused);
  EXPECT_LT(stopped, 3000) << "the run ended before the stop";
  EXPECT_NE(r.out.find("checkpoint step " + std::to_string(stopped)), std::string::npos) << r.out;
  const Result job_result = job.join();
  ASSERT_EQ(job_result.code, 0) << job_result.out;
  EXPECT_NE(job_result.out.find("keel: stop requested: stopping at step " +
                                std::to_string(stopped) + " after a checkpoint"),
            std::string::npos)
      << job_result.out;
  EXPECT_FALSE(fs::exists(out + "/control.json")) << "a finished run leaves no control.json";

  // The watcher saw the run to its end: steps never going back, each repeat a change of state.
  watcher.join();
  ASSERT_EQ(watched.code, 0) << watched.out;
  std::istringstream lines(watched.out);
  int64_t last_step = -1, distinct = 0;
  std::string last_state, line;
  bool saw_paused = false;
  while (std::getline(lines, line)) {
    const nlohmann::json p = nlohmann::json::parse(line);
    const int64_t step = p["step"];
    ASSERT_GE(step, last_step) << "watch went back from step " << last_step;
    if (step == last_step) {
      EXPECT_NE(p["state"], last_state) << "step " << step << " twice";
    }
    distinct += step > last_step;
    saw_paused = saw_paused || p["state"] == "paused";
    last_step = step;
    last_state = p["state"];
  }
  EXPECT_GE(distinct, 5);
  EXPECT_TRUE(saw_paused);
  EXPECT_EQ(last_step, stopped);

  // The checkpoint taken on command resumes bit-exactly into the uninterrupted run.
  r = train(2, cfg,
            std::string(kControlSets) + " --set training.output_dir=" + out + " --resume " + ckpt);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("at step " + std::to_string(paused) + " in"), std::string::npos) << r.out;
  EXPECT_EQ(metric_texts(out + "/metrics.jsonl", "loss"),
            metric_texts(straight + "/metrics.jsonl", "loss"));
  EXPECT_TRUE(file_bytes(out + "/model.safetensors") ==
              file_bytes(straight + "/model.safetensors"));
}

// Bound beyond loopback, every call carries the token the run wrote (owner-only) to its directory;
// none or a wrong one is UNAUTHENTICATED, and the run logs the refusal with the caller's address.
// A run with experts over two ranks reports its routing: every MoE layer's share of the token
// choices per expert (summing to 1), the load-balancing loss and the imbalance, in keel status.
TEST_F(Cli, StatusShowsTheExpertLoadOfAnMoeRun) {
  if (!have_mpi()) GTEST_SKIP() << "no MPI in this build or no mpirun";
  if (!have_grpc()) GTEST_SKIP() << "this keel was built without gRPC";
  const std::string cfg = write("moe.yaml", kMoeModel);
  const std::string out = (dir_ / "moe").string();
  BackgroundRun job(
      2, cfg, std::string(kControlSets) + " --set parallel.expert_model_parallel_size=2", out);
  ASSERT_TRUE(wait_for_steps(out, 2)) << job.join().out;
  const nlohmann::json s = status_json(out);
  ASSERT_TRUE(s.is_object());
  EXPECT_GT(s["aux_loss"].get<double>(), 0.0) << s.dump();
  EXPECT_GE(s["load_imbalance"].get<double>(), 1.0) << s.dump();
  EXPECT_EQ(s["dropped_fraction"].get<double>(), 0.0) << s.dump();
  ASSERT_EQ(s["expert_load"].size(), 4u) << s.dump();
  for (size_t l = 0; l < 4; ++l) {
    const nlohmann::json& layer = s["expert_load"][l];
    EXPECT_EQ(layer["layer"], static_cast<int>(l));
    ASSERT_EQ(layer["fraction"].size(), 4u) << s.dump();
    double sum = 0.0;
    for (const nlohmann::json& f : layer["fraction"]) sum += f.get<double>();
    EXPECT_NEAR(sum, 1.0, 1e-9) << s.dump();
  }
  const Result text = run("status " + out);
  EXPECT_NE(text.out.find("experts: aux loss "), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("layer 3 routed: "), std::string::npos) << text.out;
}

TEST_F(Cli, BeyondLoopbackEveryCallNeedsTheRunsToken) {
  if (!have_grpc()) GTEST_SKIP() << "this keel was built without gRPC";
  const std::string cfg = write("m.yaml", kTensorParallelModel);
  const std::string out = out_dir();
  BackgroundRun job(1, cfg, std::string(kControlSets) + " --set control.address=0.0.0.0:0", out);
  ASSERT_TRUE(wait_for_steps(out, 1)) << job.join().out;
  struct stat st {};
  ASSERT_EQ(::stat((out + "/control.token").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  const std::string address = nlohmann::json::parse(file_bytes(out + "/control.json"))["address"];
  const std::string port = address.substr(address.rfind(':') + 1);
  const std::string direct = "127.0.0.1:" + port;

  Result r = run("status " + direct);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("this run needs its bearer token in the authorization metadata (no token "
                       "given)"),
            std::string::npos)
      << r.out;
  r = shell("KEEL_CONTROL_TOKEN=0123456789abcdef " + std::string(KEEL_BINARY) + " pause " + direct);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("(a wrong token given)"), std::string::npos) << r.out;
  EXPECT_TRUE(status_json(direct, "KEEL_CONTROL_TOKEN=" +
                                      file_bytes(out + "/control.token").substr(0, 64) + " ")
                  .is_object());
  EXPECT_TRUE(status_json(direct + " --token-file " + out + "/control.token").is_object());
  EXPECT_EQ(status_json(out)["state"], "running") << "the run directory's token is found";

  r = run("stop " + out + " --no-checkpoint");
  ASSERT_EQ(r.code, 0) << r.out;
  const Result done = job.join();
  ASSERT_EQ(done.code, 0) << done.out;
  EXPECT_NE(done.out.find("keel: control: refused GetStatus from ipv4:127.0.0.1:"),
            std::string::npos)
      << done.out;
  EXPECT_NE(done.out.find("keel: control: refused Pause from ipv4:127.0.0.1:"), std::string::npos)
      << done.out;
  EXPECT_NE(done.out.find("stopping at step "), std::string::npos);
  EXPECT_NE(done.out.find(" without a checkpoint"), std::string::npos) << done.out;
  EXPECT_FALSE(fs::exists(out + "/checkpoints"));
  EXPECT_FALSE(fs::exists(out + "/control.token")) << "the token outlived the run";
}

// A client that knows nothing of keel's protos (Python grpcio): reflection lists the service, the
// standard health service answers SERVING while the run trains and NOT_SERVING once it winds
// down, and GetStatus works with types built from reflection's descriptors.
TEST_F(Cli, AGenericGrpcClientListsTheServiceChecksHealthAndReadsTheStatus) {
  if (!have_grpc()) GTEST_SKIP() << "this keel was built without gRPC";
  const char* env = std::getenv("KEEL_TEST_PYTHON");
  const std::string python = env ? env : std::string(KEEL_SOURCE_DIR) + "/build/pyvenv/bin/python";
  if (shell(python + " -c 'import grpc_reflection, grpc_health'").code != 0)
    GTEST_SKIP() << "no Python with grpcio, grpcio-reflection and grpcio-health-checking at "
                 << python << " (.ci/run makes it; or set KEEL_TEST_PYTHON)";
  const std::string cfg = write("m.yaml", kTensorParallelModel);
  const std::string out = out_dir();
  BackgroundRun job(1, cfg, std::string(kControlSets), out);
  ASSERT_TRUE(wait_for_steps(out, 2)) << job.join().out;
  const std::string address = nlohmann::json::parse(file_bytes(out + "/control.json"))["address"];
  FILE* client = popen((python + " " + KEEL_SOURCE_DIR + "/tests/launcher/generic_grpc_client.py " +
                        address + " --watch-health")
                           .c_str(),
                       "r");
  ASSERT_NE(client, nullptr);
  char line[8192];
  ASSERT_NE(std::fgets(line, sizeof line, client), nullptr) << "the generic client printed nothing";
  const nlohmann::json first = nlohmann::json::parse(line);
  EXPECT_EQ(first["services"],
            nlohmann::json({"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                            "keel.control.v1.Control"}));
  EXPECT_EQ(first["health"], "SERVING");
  EXPECT_EQ(first["status"]["progress"]["state"], "STATE_RUNNING");
  EXPECT_EQ(first["status"]["progress"]["maxSteps"], "3000");  // int64 is a string in JSON
  EXPECT_GE(std::stoll(first["status"]["progress"]["step"].get<std::string>()), 2);

  const Result r = run("stop " + out);
  ASSERT_EQ(r.code, 0) << r.out;
  ASSERT_NE(std::fgets(line, sizeof line, client), nullptr) << "the health watch never ended";
  pclose(client);
  const nlohmann::json watched = nlohmann::json::parse(line)["health_watch"];
  ASSERT_GE(watched.size(), 2u) << watched;
  EXPECT_EQ(watched[0], "SERVING");
  EXPECT_NE(std::find(watched.begin(), watched.end(), "NOT_SERVING"), watched.end()) << watched;
  EXPECT_EQ(job.join().code, 0);
}

// control.tls_cert and tls_key: the server speaks TLS only, and the client trusts the certificate
// control.json names; a plaintext client is turned away. An unreadable key stops the run at start.
TEST_F(Cli, TlsServesWithTheRunsCertificate) {
  if (!have_grpc()) GTEST_SKIP() << "this keel was built without gRPC";
  if (shell("command -v openssl").code != 0) GTEST_SKIP() << "no openssl to make a certificate";
  const std::string key = (dir_ / "key.pem").string(), cert = (dir_ / "cert.pem").string();
  const Result made = shell(
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost"
      " -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout " +
      key + " -out " + cert);
  ASSERT_EQ(made.code, 0) << made.out;
  const std::string cfg = write("m.yaml", kTensorParallelModel);
  const std::string out = out_dir();
  const std::string tls = " --set control.tls_cert=" + cert + " --set control.tls_key=" + key;
  Result r = train(1, cfg,
                   tls + " --set control.tls_key=" + key + ".missing" +
                       " --set training.output_dir=" + (dir_ / "nokey").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("control.tls_key '" + key + ".missing' cannot be read"), std::string::npos)
      << r.out;

  BackgroundRun job(1, cfg, std::string(kControlSets) + tls, out);
  ASSERT_TRUE(wait_for_steps(out, 1)) << job.join().out;
  const nlohmann::json endpoint = nlohmann::json::parse(file_bytes(out + "/control.json"));
  EXPECT_EQ(endpoint["tls_ca"], cert);
  const std::string address = endpoint["address"];
  r = run("status " + address + " --timeout 5");  // plaintext to a TLS server
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(status_json(address + " --ca " + cert).is_object());
  r = run("stop " + out + " --no-checkpoint");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(job.join().code, 0);
}

// A run killed outright leaves its control.json: the client names the run as gone, not just a
// refused connection. A directory no run serves from says so.
TEST_F(Cli, TheClientNamesARunThatIsGone) {
  if (!have_grpc()) GTEST_SKIP() << "this keel was built without gRPC";
  Result r = run("status " + dir_.string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("no keel run is serving from '" + dir_.string() + "' (no control.json"),
            std::string::npos)
      << r.out;
  const std::string cfg = write("m.yaml", kTensorParallelModel);
  const std::string out = out_dir();
  BackgroundRun job(1, cfg, std::string(kControlSets), out);
  ASSERT_TRUE(wait_for_steps(out, 1)) << job.join().out;
  const int pid = nlohmann::json::parse(file_bytes(out + "/control.json"))["pid"];
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  EXPECT_NE(job.join().code, 0);
  r = run("status " + out);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("the run in " + out + " is no longer running (its rank 0, pid " +
                       std::to_string(pid) + ", is gone"),
            std::string::npos)
      << r.out;
}

// Without gRPC the program still builds, trains and answers the client with how to get gRPC.
TEST_F(Cli, WithoutGrpcTheClientSaysHowToGetIt) {
  if (have_grpc()) GTEST_SKIP() << "this keel has gRPC (the build without it runs this test)";
  const Result r = run("status " + dir_.string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("this keel was built without gRPC, so it has no control plane (install "
                       "libgrpc++-dev and protobuf-compiler-grpc"),
            std::string::npos)
      << r.out;
}

}  // namespace
}  // namespace keel::test
