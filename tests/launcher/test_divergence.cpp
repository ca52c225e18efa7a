// A run that diverges, end to end: a learning rate of 1e30 used to train on nan with exit 0, save
// nan checkpoints as `latest` and let save_total_limit delete the good ones. Now the first step
// whose loss is not finite stops the run (exit 1, naming the step and the last good checkpoint),
// `latest` stays on that good checkpoint, and metrics.jsonl stays JSON that a strict parser
// reads; the same on 2 ranks under ZeRO 2, where every rank must agree.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "launcher/cli_util.h"

namespace {

using namespace keel::test;  // NOLINT: the helpers of every CLI test

TEST_F(Cli, DivergedRunStopsAndKeepsTheGoodCheckpoint) {
  const std::string cfg = write("m.yaml", kParallelModel);
  for (const int ranks : {1, 2}) {
    if (ranks > 1 && !have_mpi()) GTEST_SKIP() << "no mpirun in this build";
    const std::string out = out_dir() + std::to_string(ranks);
    const std::string sets = " --set training.output_dir=" + out +
                             " --set training.save_steps=2 --set training.save_total_limit=1" +
                             " --set parallel.zero_stage=" + (ranks > 1 ? "2" : "0");
    Result r = train(ranks, cfg, sets + " --set training.max_steps=4");
    ASSERT_EQ(r.code, 0) << r.out;
    const std::string good_weights = file_bytes(out + "/model.safetensors");
    // Resumed at step 4 with a learning rate that takes every weight to ~1e30: step 5's update
    // is finite, step 6's forward is not.
    r = train(ranks, cfg, sets + " --set training.max_steps=10 --set training.learning_rate=1e30");
    EXPECT_NE(r.code, 0) << r.out;
    // Said once, by rank 0 (every rank stops alike; none aborts the job).
    const std::string said = "keel: error: step 6: the loss is nan";
    EXPECT_NE(r.out.find(said), std::string::npos) << r.out;
    EXPECT_EQ(r.out.find(said), r.out.rfind(said)) << r.out;
    EXPECT_EQ(r.out.find("MPI_ABORT"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("The last good checkpoint is " + out + "/checkpoints/step_00000004"),
              std::string::npos)
        << r.out;
    EXPECT_EQ(file_bytes(out + "/checkpoints/latest"), "step_00000004\n");
    EXPECT_TRUE(fs::exists(out + "/checkpoints/step_00000004/meta.json"));
    EXPECT_TRUE(file_bytes(out + "/model.safetensors") == good_weights)
        << "diverged weights were exported";
    std::ifstream f(out + "/metrics.jsonl");
    std::string line;
    std::vector<nlohmann::json> lines;
    while (std::getline(f, line)) {
      ASSERT_NO_THROW(lines.push_back(nlohmann::json::parse(line))) << line;
    }
    ASSERT_EQ(lines.size(), 6u) << r.out;
    EXPECT_EQ(lines.back()["step"], 6);
    EXPECT_TRUE(lines.back()["loss"].is_null());
    EXPECT_EQ(lines.back()["action"], "stop");
    EXPECT_NE(lines.back()["nonfinite"].dump().find("loss"), std::string::npos);
  }
}

}  // namespace

namespace {

// Every step diverges (learning rate 1e30 from the checkpoint on): on 2 ranks under ZeRO 2, each
// rejected step rolls both ranks back to step 4 together, passing over one more batch each time,
// until training.max_skipped_steps; then one error, said once.
TEST_F(Cli, RollbackOnEveryRankUntilMaxSkippedSteps) {
  if (!have_mpi()) GTEST_SKIP() << "no mpirun in this build";
  const std::string cfg = write("m.yaml", kParallelModel);
  const std::string sets = " --set training.output_dir=" + out_dir() +
                           " --set training.save_steps=4 --set parallel.zero_stage=2";
  Result r = train(2, cfg, sets + " --set training.max_steps=4");
  ASSERT_EQ(r.code, 0) << r.out;
  r = train(2, cfg,
            sets + " --set training.max_steps=10 --set training.learning_rate=1e30" +
                " --set training.on_nonfinite=rollback --set training.max_skipped_steps=2");
  EXPECT_NE(r.code, 0) << r.out;
  size_t rollbacks = 0;
  for (size_t at = r.out.find("rolled back to"); at != std::string::npos;
       at = r.out.find("rolled back to", at + 1))
    ++rollbacks;
  EXPECT_EQ(rollbacks, 2u) << r.out;
  // Each rollback passes over the batch that diverged: the second diverges one batch later.
  EXPECT_NE(r.out.find("passes over the batch at sample 40"), std::string::npos) << r.out;
  const std::string said = "keel: error: step 6: ";
  EXPECT_NE(r.out.find(said), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find(said), r.out.rfind(said)) << r.out;
  EXPECT_NE(r.out.find("more than training.max_skipped_steps 2"), std::string::npos) << r.out;
  EXPECT_EQ(file_bytes(out_dir() + "/checkpoints/latest"), "step_00000004\n");
}

}  // namespace
