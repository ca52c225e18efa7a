// A scheduler's notice to one rank of a running job (SIGTERM from Slurm or Kubernetes, SIGUSR1
// from Slurm's --signal): the whole job agrees on it at the next step boundary, checkpoints there
// and exits 0, and the run resumed from that checkpoint ends bit-identical to an uninterrupted
// one. With training.save_on_signal false the signalled rank dies where it stands.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <iomanip>
#include <sstream>
#include <string>
#include <thread>

#include "cli_util.h"
#include "rank_process.h"

namespace keel::test {
namespace {

// Trains `sets` on 2 ranks in the background and sends `signal` to world rank `rank` once three
// steps are logged; returns the run's result.
Result signalled_run(const std::string& cfg, const std::string& sets, const std::string& out,
                     int rank, int signal) {
  Result r{-1, ""};
  std::thread job([&] { r = train(2, cfg, sets + " --set training.output_dir=" + out); });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  pid_t pid = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    if (lines(out + "/metrics.jsonl") >= 3 && (pid = rank_pid(rank, out)) > 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_GT(pid, 0) << "no rank " << rank << " of the run in " << out << " was found running";
  if (pid > 0) kill(pid, signal);
  job.join();
  return r;
}

// A model whose steps take milliseconds, for 400 of them: the signal lands mid-run.
constexpr const char* kSets =
    " --set training.max_steps=400 --set training.logging_steps=1 --set training.warmup_steps=2"
    " --set training.report_to=none";

TEST_F(Cli, SigtermToOneRankCheckpointsTheJobWhichResumesBitExactly) {
  if (!have_mpi()) GTEST_SKIP() << "no MPI in this build or no mpirun";
  const std::string cfg = write("m.yaml", kTensorParallelModel);
  const std::string straight = (dir_ / "straight").string(), out = (dir_ / "signalled").string();
  Result r = train(2, cfg, std::string(kSets) + " --set training.output_dir=" + straight);
  ASSERT_EQ(r.code, 0) << r.out;

  r = signalled_run(cfg, kSets, out, 1, SIGTERM);
  ASSERT_EQ(r.code, 0) << r.out;
  const std::string said = "keel: SIGTERM received: stopping at step ";
  const size_t at = r.out.find(said);
  ASSERT_NE(at, std::string::npos) << r.out;
  const int step = std::stoi(r.out.substr(at + said.size()));
  EXPECT_GE(step, 3);
  ASSERT_LT(step, 400) << "the run ended before the signal";
  EXPECT_NE(r.out.find("after a checkpoint; run again to resume"), std::string::npos) << r.out;
  std::ostringstream name;
  name << out << "/checkpoints/step_" << std::setw(8) << std::setfill('0') << step;
  EXPECT_TRUE(fs::exists(name.str() + "/meta.json")) << name.str();

  r = train(2, cfg, std::string(kSets) + " --set training.output_dir=" + out);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("at step " + std::to_string(step) + " in"), std::string::npos) << r.out;
  EXPECT_EQ(metric_texts(out + "/metrics.jsonl", "loss"),
            metric_texts(straight + "/metrics.jsonl", "loss"));
  EXPECT_EQ(slurp(out + "/model.safetensors"), slurp(straight + "/model.safetensors"));
}

// SIGUSR1 (Slurm's --signal) to rank 0 does the same.
TEST_F(Cli, SigusrOneToRankZeroStopsTheJobWithACheckpoint) {
  if (!have_mpi()) GTEST_SKIP() << "no MPI in this build or no mpirun";
  const std::string cfg = write("m.yaml", kTensorParallelModel);
  const std::string out = (dir_ / "usr1").string();
  const Result r = signalled_run(cfg, kSets, out, 0, SIGUSR1);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("keel: SIGUSR1 received: stopping at step "), std::string::npos) << r.out;
  EXPECT_TRUE(fs::exists(out + "/checkpoints/latest")) << r.out;
}

// training.save_on_signal false: the signal keeps its default, the rank dies and the job fails
// without a checkpoint.
TEST_F(Cli, WithoutSaveOnSignalSigtermEndsTheJobWithoutACheckpoint) {
  if (!have_mpi()) GTEST_SKIP() << "no MPI in this build or no mpirun";
  const std::string cfg = write("m.yaml", kTensorParallelModel);
  const std::string out = (dir_ / "default").string();
  const Result r = signalled_run(cfg, std::string(kSets) + " --set training.save_on_signal=false",
                                 out, 1, SIGTERM);
  EXPECT_NE(r.code, 0) << r.out;
  EXPECT_EQ(r.out.find("received: stopping"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(out + "/checkpoints")) << r.out;
}

}  // namespace
}  // namespace keel::test
