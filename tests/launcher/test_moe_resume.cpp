// Checkpoints of runs with experts, end to end: one run carried across expert-parallel sizes
// (ep2 → one rank → ep4 → ep2 over four data-parallel ranks under ZeRO 3 → one rank) stays within
// 1e-5 of the uninterrupted one-rank run, with every optimizer's state; each expert is in every
// checkpoint once, under its index in the model, whichever rank held it; the same layout resumes
// bit for bit.
#include <gtest/gtest.h>

#include <set>
#include <string>
#include <vector>

#include "launcher/cli_util.h"

namespace {

using namespace keel::test;  // NOLINT: the helpers of every CLI test

// A leg's layout: ep expert-parallel ranks among dp data-parallel ones, the global batch 8.
std::string layout(int ep, int dp, int stage) {
  return " --set parallel.expert_model_parallel_size=" + std::to_string(ep) +
         " --set training.per_device_train_batch_size=" + std::to_string(4 / dp) +
         " --set parallel.zero_stage=" + std::to_string(stage);
}

class MoeResume : public Cli, public ::testing::WithParamInterface<Carried> {};

TEST_P(MoeResume, CarriedAcrossExpertParallelSizes) {
  if (!have_mpi()) GTEST_SKIP() << "no MPI in this build or no mpirun";
  const Carried& c = GetParam();
  const std::string cfg = write("m.yaml", kMoeModel);
  const std::string one = (dir_ / "one").string(), out = (dir_ / "carried").string();
  Result r = train(1, cfg, c.sets + layout(1, 1, 0) + " --set training.output_dir=" + one);
  ASSERT_EQ(r.code, 0) << r.out;
  const std::vector<CarriedLeg> legs = {
      {2, layout(2, 2, 0),
       "2 ranks (1 tensor-parallel x 2 data-parallel, 2 expert-parallel), ZeRO 0"},
      {1, layout(1, 1, 1), "1 data-parallel rank, ZeRO 1"},
      {4, layout(4, 4, 2),
       "4 ranks (1 tensor-parallel x 4 data-parallel, 4 expert-parallel), ZeRO 2"},
      {4, layout(2, 4, 3),
       "4 ranks (1 tensor-parallel x 4 data-parallel, 2 expert-parallel), ZeRO 3"},
      {1, layout(1, 1, 0), "1 data-parallel rank, ZeRO 0"}};
  const std::vector<CarriedCheckpoint> stored = run_carried_legs(cfg, c.sets, legs, out);
  ASSERT_EQ(stored.size(), legs.size());
  // Every layout stores the same tensors: every expert once, under its index in the model.
  // (8-bit state keeps a shard below optimizer.min_8bit_size in fp32, without absmax: a tensor
  // cut in four on the four-rank legs may have none there.)
  auto without_absmax = [](const std::set<std::string>& names) {
    std::set<std::string> kept;
    for (const std::string& n : names)
      if (n.find("_absmax.") == std::string::npos) kept.insert(n);
    return kept;
  };
  const std::set<std::string> first_names = without_absmax(stored[0].names);
  const int ep[] = {2, 1, 4, 2, 1};
  for (size_t i = 0; i < stored.size(); ++i) {
    const std::set<std::string> names = without_absmax(stored[i].names);
    std::string differ;
    for (const std::string& n : names)
      if (!first_names.count(n)) differ += " +" + n;
    for (const std::string& n : first_names)
      if (!names.count(n)) differ += " -" + n;
    EXPECT_EQ(differ, "") << "leg " << i << " stores other tensors than leg 0";
    EXPECT_EQ(stored[i].meta["expert_parallel_size"], ep[i]) << "leg " << i;
  }
  for (int e = 0; e < 4; ++e)
    EXPECT_TRUE(first_names.count("model.layers.3.block_sparse_moe.experts." + std::to_string(e) +
                                  ".w2.weight"))
        << e;
  EXPECT_TRUE(first_names.count("model.layers.0.block_sparse_moe.gate.weight"));
  expect_carried_like_one(one, out, c);
}

INSTANTIATE_TEST_SUITE_P(Optimizers, MoeResume, ::testing::ValuesIn(carried_optimizers()),
                         [](const ::testing::TestParamInfo<Carried>& p) {
                           return std::string(p.param.name);
                         });

// Stopped at step 6 and run again on the same layout (experts over two ranks, ZeRO 3, 8-bit
// state), a 12-step run repeats every loss and the final parameters byte for byte.
TEST_F(Cli, ExpertParallelRunsResumeBitExact) {
  if (!have_mpi()) GTEST_SKIP() << "no MPI in this build or no mpirun";
  const std::string cfg = write("m.yaml", kMoeModel);
  expect_resume_is_bit_exact(dir_, 2, cfg, layout(2, 2, 3) + " --set optimizer.type=adamw_8bit",
                             "_ep2", "ep2, ZeRO 3, 8-bit");
  expect_resume_is_bit_exact(dir_, 4, cfg, layout(2, 4, 0), "_ep2_dp4", "ep2 of dp4, ZeRO 0");
}

}  // namespace
