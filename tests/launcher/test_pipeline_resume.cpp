// Checkpoints of pipelined runs, end to end: one run carried across pipeline sizes (pp2 × tp2 →
// one rank → pp4 → pp2 × dp2 interleaved → one rank) stays within 1e-5 of the uninterrupted
// one-rank run, with every optimizer's state; every stage's tensors are in the checkpoint once,
// under their Hugging Face names; the same pipelined layout resumes bit for bit.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "launcher/cli_util.h"
#include "runtime/store/safetensors.h"

namespace {

using namespace keel::test;  // NOLINT: the helpers of every CLI test

const char* const kModel = kPipelineModel;

std::string layout(int pp, int tp, int dp, int stage, const std::string& schedule = "1f1b") {
  return " --set parallel.pipeline_model_parallel_size=" + std::to_string(pp) +
         " --set parallel.tensor_model_parallel_size=" + std::to_string(tp) +
         " --set training.per_device_train_batch_size=" + std::to_string(2 / dp) +
         " --set parallel.zero_stage=" + std::to_string(stage) +
         " --set parallel.pipeline_schedule=" + schedule;
}

class PipelineResume : public Cli, public ::testing::WithParamInterface<Carried> {};

// Saving every 4 steps and stopping there, each leg on another layout; each resume reads every
// stage's tensors from whichever files hold them.
TEST_P(PipelineResume, CarriedAcrossPipelineSizes) {
  if (!have_mpi()) GTEST_SKIP() << "no MPI in this build or no mpirun";
  const Carried& c = GetParam();
  const std::string cfg = write("m.yaml", kModel);
  const std::string one = (dir_ / "one").string(), out = (dir_ / "carried").string();
  Result r = train(1, cfg, c.sets + " --set training.output_dir=" + one);
  ASSERT_EQ(r.code, 0) << r.out;
  const std::vector<CarriedLeg> legs = {
      {4, layout(2, 2, 1, 1), "4 ranks (2 tensor-parallel x 1 data-parallel x 2 pipeline), ZeRO 1"},
      {1, layout(1, 1, 1, 0), "1 data-parallel rank, ZeRO 0"},
      {4, layout(4, 1, 1, 0), "4 ranks (1 tensor-parallel x 1 data-parallel x 4 pipeline), ZeRO 0"},
      {4,
       layout(2, 1, 2, 3, "interleaved_1f1b --set parallel.virtual_pipeline_model_parallel_size=2"),
       "4 ranks (1 tensor-parallel x 2 data-parallel x 2 pipeline), ZeRO 3"},
      {1, layout(1, 1, 1, 0), "1 data-parallel rank, ZeRO 0"}};
  const std::vector<CarriedCheckpoint> stored = run_carried_legs(cfg, c.sets, legs, out);
  ASSERT_EQ(stored.size(), legs.size());
  const int pp[] = {2, 1, 4, 2, 1};
  // Every layout stores the same tensors (the whole model and its optimizer state).
  for (size_t i = 0; i < stored.size(); ++i) {
    EXPECT_EQ(stored[i].names, stored[0].names) << "leg " << i;
    EXPECT_EQ(stored[i].meta["pipeline_parallel_size"], pp[i]) << "leg " << i;
  }
  const std::set<std::string>& first_names = stored[0].names;
  EXPECT_TRUE(first_names.count("model.embed_tokens.weight"));
  EXPECT_TRUE(first_names.count("model.layers.3.mlp.down_proj.weight"));
  EXPECT_TRUE(first_names.count("lm_head.weight"));
  expect_carried_like_one(one, out, c);
}

INSTANTIATE_TEST_SUITE_P(Optimizers, PipelineResume, ::testing::ValuesIn(carried_optimizers()),
                         [](const ::testing::TestParamInfo<Carried>& p) {
                           return std::string(p.param.name);
                         });

// Stopped at step 6 and run again on the same pipelined layout, a 12-step run repeats every loss
// and the final parameters byte for byte: the schedules' and ZeRO's state on every stage.
TEST_F(Cli, PipelinedRunsResumeBitExact) {
  if (!have_mpi()) GTEST_SKIP() << "no MPI in this build or no mpirun";
  const std::string cfg = write("m.yaml", kModel);
  expect_resume_is_bit_exact(dir_, 2, cfg, layout(2, 1, 1, 0), "pp2", "pp2, 1F1B");
  expect_resume_is_bit_exact(
      dir_, 4, cfg,
      layout(2, 1, 2, 3, "gpipe") +
          " --set optimizer.type=adamw_8bit --set optimizer.min_8bit_size=1024",
      "pp2dp2", "pp2 x dp2, GPipe, ZeRO 3, 8-bit AdamW");
  expect_resume_is_bit_exact(dir_, 4, cfg, layout(4, 1, 1, 0) + " --set optimizer.type=adafactor",
                             "pp4", "pp4, Adafactor");
  expect_resume_is_bit_exact(dir_, 2, cfg, layout(2, 1, 1, 0, "zb_h1"), "zb", "pp2, ZB-H1");
}

// keel export of a checkpoint of interleaved stages over TP (each rank holding two chunks of the
// stack, tied embeddings with the last stage's copy) is exactly the model.safetensors the run
// ended with: every tensor once, whole, under its Hugging Face name.
TEST_F(Cli, ExportOfAPipelinedCheckpointIsTheWholeModel) {
  if (!have_mpi()) GTEST_SKIP() << "no MPI in this build or no mpirun";
  const std::string cfg = write("m.yaml", kModel);
  const std::string run_dir = (dir_ / "pp2tp2").string(), hf = (dir_ / "hf").string();
  Result r = train(4, cfg,
                   layout(2, 2, 1, 1, "interleaved_1f1b") +
                       " --set parallel.virtual_pipeline_model_parallel_size=2"
                       " --set model.tie_word_embeddings=true"
                       " --set training.max_steps=6 --set training.save_steps=6"
                       " --set training.output_dir=" +
                       run_dir);
  ASSERT_EQ(r.code, 0) << r.out;
  r = run("export --format hf " + run_dir + " " + hf);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("exported step 6 of"), std::string::npos) << r.out;
  EXPECT_EQ(max_relative_difference(run_dir + "/model.safetensors", hf + "/model.safetensors"),
            0.0);
  const keel::runtime::SafeTensorsReader whole(run_dir + "/model.safetensors");
  EXPECT_EQ(whole.names().size(), 1u + 4 * 9 + 1);  // embedding, 4 blocks of 9, norm; tied head
}

}  // namespace
