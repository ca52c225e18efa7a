// A run whose memory plan does not fit what a rank can have stops before it allocates, with one
// line: the plan, the limit and the settings that would fit; each offered setting then trains.
// The limit is injected (training.memory_limit, KEEL_MEMORY_LIMIT) so that nothing large is
// allocated. `keel plan --fit SIZE` runs the same search.
#include <gtest/gtest.h>

#include <string>

#include "cli_util.h"

namespace keel::test {
namespace {

const std::string kSteps = " --set training.max_steps=2 --set training.report_to=none";

// The MiB of "memory plan per rank N MiB" in `keel plan`'s output.
double planned_mib(const std::string& plan_output) {
  const std::string tag = "memory plan per rank ";
  const size_t at = plan_output.find(tag);
  return at == std::string::npos ? -1 : std::stod(plan_output.substr(at + tag.size()));
}

TEST_F(Cli, PlanAboveTheLimitIsOneLineAndNothingWritten) {
  const std::string cfg = write("m.yaml", kParallelModel);
  const std::string run_dir = " --set training.output_dir=" + out_dir();
  Result r = run("train " + cfg + kSteps + run_dir + " --set training.memory_limit=1MiB");
  expect_clean_failure(r, "keel: error: the plan needs ");
  for (const char* piece :
       {"per rank (parameters ", "but this rank can have 1.0 MiB (training.memory_limit is 1MiB)",
        "no setting searched fits", "training.memory_limit=none skips this check"})
    EXPECT_NE(r.out.find(piece), std::string::npos) << piece << "\n" << r.out;
  r = shell("KEEL_MEMORY_LIMIT=1MiB " + std::string(KEEL_BINARY) + " train " + cfg + kSteps +
            run_dir);
  expect_clean_failure(r, "but this rank can have 1.0 MiB (KEEL_MEMORY_LIMIT is 1MiB)");
  // The config key wins over the environment; none turns the check off.
  r = shell("KEEL_MEMORY_LIMIT=1MiB " + std::string(KEEL_BINARY) + " train " + cfg + kSteps +
            run_dir + " --set training.memory_limit=none");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(fs::exists(out_dir() + "/metrics.jsonl"));
}

// A limit 30 % under the plan: refused, and the first setting offered trains within it.
TEST_F(Cli, TheSettingOfferedTrains) {
  const std::string cfg = write("m.yaml", kParallelModel);
  const Result plan = shell("OMP_NUM_THREADS=1 " + std::string(KEEL_BINARY) + " plan " + cfg);
  ASSERT_EQ(plan.code, 0) << plan.out;
  const std::string limit =
      " --set training.memory_limit=" +
      std::to_string(static_cast<uint64_t>(0.7 * planned_mib(plan.out) * (1 << 20)));
  Result r = train(1, cfg, kSteps + limit + " --set training.output_dir=" + out_dir());
  expect_clean_failure(r, "settings that fit: --set ");
  const size_t from = r.out.find("settings that fit: ") + 19;
  const std::string offered = r.out.substr(from, r.out.find(" (", from) - from);
  r = train(1, cfg, kSteps + limit + " " + offered + " --set training.output_dir=" + out_dir());
  ASSERT_EQ(r.code, 0) << offered << "\n" << r.out;
  EXPECT_EQ(losses(out_dir() + "/metrics.jsonl").size(), 2u);
}

// Every rank checks; all stop, with the line of the first rank short of memory.
TEST_F(Cli, EveryRankStopsWhenOneDoesNotFit) {
  if (!have_mpi()) GTEST_SKIP() << "no MPI in this build or no mpirun";
  const std::string cfg = write("m.yaml", kParallelModel);
  const Result r =
      run_ranks(2, std::string(KEEL_BINARY) + " train " + cfg + kSteps +
                       " --set training.memory_limit=1MiB --set training.output_dir=" + out_dir());
  EXPECT_NE(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("but rank 0 of 2 (host "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("(1 other rank short too)"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(out_dir()));
}

TEST_F(Cli, PlanFitSearchesTheSettings) {
  const std::string cfg = write("m.yaml", kParallelModel);
  Result r = run("plan " + cfg + " --fit 64GiB");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("keel: the plan fits in 64.0 GiB per rank\n"), std::string::npos) << r.out;
  const double mib = planned_mib(r.out);
  r = run("plan " + cfg + " --world-size 4 --fit " +
          std::to_string(static_cast<uint64_t>(0.9 * mib)) + "MiB");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("does not fit in "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("settings that fit: --set parallel.zero_stage="), std::string::npos)
      << r.out;
  r = run("plan " + cfg + " --fit 1MiB");
  EXPECT_NE(r.out.find("does not fit in 1.0 MiB per rank; no setting searched fits"),
            std::string::npos)
      << r.out;
  r = run("plan " + cfg + " --fit lots");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("--fit is 'lots'"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace keel::test
