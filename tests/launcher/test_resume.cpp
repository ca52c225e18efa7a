// Checkpoints end to end: a run stopped and resumed gives the uninterrupted run's losses and
// parameters bit for bit on the same layout and to fp32 rounding on another data-parallel size and
// ZeRO stage; a save killed at any moment leaves `latest` on a checkpoint that loads; a checkpoint
// that cannot be resumed is one clear error.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "launcher/cli_util.h"

namespace {

using namespace keel::test;  // NOLINT: the helpers of every CLI test
namespace fs = std::filesystem;

std::string layout_sets(int micro, int stage) {
  return " --set training.per_device_train_batch_size=" + std::to_string(micro) +
         " --set parallel.zero_stage=" + std::to_string(stage);
}

// Stopped at step 6 (training.exit_interval) and run again, a 12-step run repeats the
// uninterrupted one exactly: every loss, and the final parameters byte for byte.
TEST_F(Cli, ResumeIsBitExact) {
  const std::string cfg = write("m.yaml", kParallelModel);
  struct Case {
    int ranks, micro, stage;
    std::string optimizer;
    int galore_rank = 0;  // GaLore around the optimizer: refreshes at steps 1, 6, 11
  };
  // 8-bit AdamW: the codes and absmax of every block come back exactly.
  std::vector<Case> cases = {{1, 4, 0, "adamw"},
                             {1, 4, 0, "adamw_8bit"},
                             {1, 4, 0, "adafactor"},
                             {1, 4, 0, "adamw", 8},
                             {1, 4, 0, "adamw_8bit", 8}};
  if (have_mpi())
    cases.insert(cases.end(), {{2, 2, 2, "adamw"},
                               {2, 2, 3, "adamw"},
                               {2, 2, 1, "adamw_8bit"},
                               {2, 2, 3, "adamw_8bit"},
                               {2, 2, 3, "adafactor"},
                               {2, 2, 3, "adamw", 8}});
  for (const Case& c : cases) {
    const std::string what = std::to_string(c.ranks) + " ranks, ZeRO " + std::to_string(c.stage) +
                             ", " + c.optimizer + (c.galore_rank ? " with GaLore" : "");
    const std::string sets = layout_sets(c.micro, c.stage) +
                             " --set optimizer.type=" + c.optimizer +
                             " --set optimizer.galore.rank=" + std::to_string(c.galore_rank) +
                             " --set optimizer.galore.update_proj_gap=5";
    const std::string tag = std::to_string(c.ranks) + "_" + std::to_string(c.stage) + "_" +
                            c.optimizer + "_" + std::to_string(c.galore_rank);
    expect_resume_is_bit_exact(dir_, c.ranks, cfg, sets, tag, what);
  }
}

// One 20-step run carried across data-parallel sizes and ZeRO stages, stopping every 4 steps:
// 2 ranks (ZeRO 1) -> 4 (ZeRO 2) -> 2 (ZeRO 3) -> 4 (ZeRO 3) -> 1 (no ZeRO), the global batch
// always 4 sequences; `extra` adds settings to the legs after the first. Each resume reshards the
// master weights and the optimizer state. Returns the carried run's directory; the one-rank run
// of the same optimizer is in dir/one.
std::string carry_across_layouts(const fs::path& dir, const std::string& cfg,
                                 const std::string& sets, const std::string& extra) {
  const std::string one = (dir / "one").string(), out = (dir / "carried").string();
  Result r = train(1, cfg, sets + " --set training.output_dir=" + one);
  EXPECT_EQ(r.code, 0) << r.out;
  struct Leg {
    int ranks, micro, stage;
  };
  const std::vector<Leg> legs = {{2, 2, 1}, {4, 1, 2}, {2, 2, 3}, {4, 1, 3}, {1, 4, 0}};
  for (size_t i = 0; i < legs.size(); ++i) {
    const Leg& l = legs[i];
    r = train(l.ranks, cfg,
              sets + (i > 0 ? extra : "") + layout_sets(l.micro, l.stage) +
                  " --set training.exit_interval=4" +
                  " --set training.save_total_limit=1 --set training.output_dir=" + out);
    EXPECT_EQ(r.code, 0) << "leg " << i << "\n" << r.out;
    if (i > 0) {
      EXPECT_NE(r.out.find("at step " + std::to_string(4 * i) + " in "), std::string::npos)
          << r.out;
      EXPECT_NE(
          r.out.find("(written by " + std::to_string(legs[i - 1].ranks) + " data-parallel rank"),
          std::string::npos)
          << r.out;
    }
  }
  return out;
}

// The 20 losses of two runs, each within `relative` of the first run's.
void expect_losses_near(const std::string& want_dir, const std::string& got_dir, double relative) {
  const std::vector<double> want = losses(want_dir + "/metrics.jsonl"),
                            got = losses(got_dir + "/metrics.jsonl");
  ASSERT_EQ(want.size(), 20u);
  ASSERT_EQ(got.size(), 20u);
  for (size_t i = 0; i < want.size(); ++i)
    EXPECT_NEAR(got[i], want[i], relative * want[i]) << "step " << i + 1;
}

// 8-bit state rounds in the blocks of each layout's shards, so no layout equals the one-rank run:
// the run carried across layouts in dir (settings `sets`) must stay as near the one-rank run as an
// uninterrupted 2-rank run (ZeRO 1) does: parameters within 1.5x that run's largest difference,
// losses within 1 %.
void expect_as_near_as_another_layout(const fs::path& dir, const std::string& cfg,
                                      const std::string& sets, const std::string& carried_dir) {
  const std::string one = (dir / "one").string(), two = (dir / "two").string();
  const Result r = train(2, cfg, sets + layout_sets(2, 1) + " --set training.output_dir=" + two);
  ASSERT_EQ(r.code, 0) << r.out;
  expect_losses_near(one, carried_dir, 1e-2);
  const double layout =
      max_relative_difference(one + "/model.safetensors", two + "/model.safetensors");
  const double carried =
      max_relative_difference(one + "/model.safetensors", carried_dir + "/model.safetensors");
  EXPECT_GT(layout, 0.0);  // blocks of other shards do round differently
  EXPECT_LE(carried, 1.5 * layout) << "the uninterrupted 2-rank run differs by " << layout;
}

// AdamW: the losses and the final parameters match the one-rank run to fp32 rounding.
TEST_F(Cli, ResumeOnAnotherDataParallelSize) {
  if (!have_mpi()) GTEST_SKIP() << "no MPI in this build or no mpirun";
  const std::string cfg = write("m.yaml", kParallelModel);
  const std::string out = carry_across_layouts(dir_, cfg, "", "");
  const std::string one = (dir_ / "one").string();
  EXPECT_EQ(fs::directory_iterator(out + "/checkpoints/step_00000020") != fs::directory_iterator(),
            true);
  EXPECT_EQ(std::distance(fs::directory_iterator(out + "/checkpoints"), fs::directory_iterator()),
            2)
      << "save_total_limit 1: the latest checkpoint and the `latest` file";
  expect_losses_near(one, out, 1e-5);
  EXPECT_LE(max_relative_difference(one + "/model.safetensors", out + "/model.safetensors"), 1e-5);
}

// 8-bit AdamW, its blocks changing with every leg's shards (and from block size 256 to 128
// after the first): each resume dequantizes the saved blocks and requantizes in the new ones.
TEST_F(Cli, EightBitStateReshardsOnAnotherLayout) {
  if (!have_mpi()) GTEST_SKIP() << "no MPI in this build or no mpirun";
  const std::string cfg = write("m.yaml", kParallelModel);
  const std::string sets = " --set optimizer.type=adamw_8bit";
  const std::string out = carry_across_layouts(dir_, cfg, sets, " --set optimizer.block_size=128");
  expect_as_near_as_another_layout(dir_, cfg, sets, out);
}

// Adafactor's means are a rectangle of a (rows x 1) or (cols x 1) tensor of their own: the split
// side's rows on each rank, the other side whole on every rank. A 12-step run with a first moment
// goes 1 rank (ZeRO 0) -> 2 ranks (ZeRO 3), and the checkpoint at step 8 is resumed both on 1 rank
// (ZeRO 0) and on 4 ranks (ZeRO 2), where the MLP's 98 rows or columns leave padding in the
// shards and their means. Both stay within 1e-5 of the uninterrupted one-rank run: every loss and
// the final parameters.
TEST_F(Cli, AdafactorStateReshardsOnAnotherLayout) {
  if (!have_mpi()) GTEST_SKIP() << "no MPI in this build or no mpirun";
  const std::string cfg = write("m.yaml", kParallelModel);
  const std::string sets =
      " --set training.max_steps=12 --set optimizer.type=adafactor"
      " --set optimizer.adafactor_beta1=0.9 --set model.intermediate_size=98";
  const std::string one = (dir_ / "one").string(), out = (dir_ / "carried").string();
  Result r = train(1, cfg, sets + " --set training.output_dir=" + one);
  ASSERT_EQ(r.code, 0) << r.out;
  const std::string legs = sets + " --set training.exit_interval=4";
  r = train(1, cfg, legs + layout_sets(4, 0) + " --set training.output_dir=" + out);
  ASSERT_EQ(r.code, 0) << r.out;
  r = train(2, cfg, legs + layout_sets(2, 3) + " --set training.output_dir=" + out);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("at step 4 in"), std::string::npos) << r.out;
  const std::string wide = (dir_ / "wide").string();
  fs::copy(out, wide, fs::copy_options::recursive);
  struct Leg {
    int ranks, micro, stage;
    std::string dir;
  };
  for (const Leg& l : {Leg{1, 4, 0, out}, Leg{4, 1, 2, wide}}) {
    const std::string what = std::to_string(l.ranks) + " ranks, ZeRO " + std::to_string(l.stage);
    r = train(l.ranks, cfg,
              legs + layout_sets(l.micro, l.stage) + " --set training.output_dir=" + l.dir);
    ASSERT_EQ(r.code, 0) << what << "\n" << r.out;
    EXPECT_NE(r.out.find("resumed from " + l.dir + "/checkpoints/step_00000008 at step 8"),
              std::string::npos)
        << r.out;
    EXPECT_NE(r.out.find("(written by 2 data-parallel ranks, ZeRO 3)"), std::string::npos) << r.out;
    const std::vector<double> want = losses(one + "/metrics.jsonl"),
                              got = losses(l.dir + "/metrics.jsonl");
    ASSERT_EQ(want.size(), 12u);
    ASSERT_EQ(got.size(), 12u) << what;
    for (size_t i = 0; i < want.size(); ++i)
      EXPECT_NEAR(got[i], want[i], 1e-5 * want[i]) << what << ", step " << i + 1;
    EXPECT_LE(max_relative_difference(one + "/model.safetensors", l.dir + "/model.safetensors"),
              1e-5)
        << what;
  }
}

// GaLore's projectors and the moments of the projected gradients are rectangles of tensors of
// their own (the projected gradient is sliced as the matrix is), so they reshard like parameters:
// the 20-step run carried across layouts, refreshing every 3 steps (some resumes land on a
// refresh, some between), with the long side projected (reverse_std: each rank's rows of U and an
// even split of R) and the short side (std), around AdamW and around Adafactor with a first
// moment (R's row and column means), stays within 1e-5 of the one-rank run.
TEST_F(Cli, GaloreStateReshardsOnAnotherLayout) {
  if (!have_mpi()) GTEST_SKIP() << "no MPI in this build or no mpirun";
  const std::string cfg = write("m.yaml", kParallelModel);
  struct Case {
    std::string tag, sets;
  };
  const std::string adafactor =
      " --set optimizer.type=adafactor --set optimizer.adafactor_beta1=0.9";
  for (const Case& c : {Case{"std", " --set optimizer.galore.proj_type=std"},
                        Case{"reverse_std", " --set optimizer.galore.proj_type=reverse_std"},
                        Case{"adafactor", adafactor}}) {
    const fs::path dir = dir_ / c.tag;
    fs::create_directories(dir);
    const std::string sets =
        " --set optimizer.galore.rank=8 --set optimizer.galore.update_proj_gap=3" + c.sets;
    const std::string out = carry_across_layouts(dir, cfg, sets, "");
    const std::string one = (dir / "one").string();
    expect_losses_near(one, out, 1e-5);
    EXPECT_LE(max_relative_difference(one + "/model.safetensors", out + "/model.safetensors"), 1e-5)
        << c.tag;
  }
}

// 8-bit GaLore: the moments of the projected gradient are codes in blocks of each rank's slice of
// R, so every resume on other shards (or, after the first leg, blocks of 128 instead of 64)
// dequantizes them with the blocks they were saved in and requantizes them in its own.
TEST_F(Cli, EightBitGaloreStateReshardsOnAnotherLayout) {
  if (!have_mpi()) GTEST_SKIP() << "no MPI in this build or no mpirun";
  const std::string cfg = write("m.yaml", kParallelModel);
  // min_8bit_size 64: R's slices (64 x 8 and smaller) are quantized on every layout.
  const std::string sets =
      " --set optimizer.type=adamw_8bit --set optimizer.block_size=64"
      " --set optimizer.min_8bit_size=64 --set optimizer.galore.rank=8"
      " --set optimizer.galore.update_proj_gap=3";
  const std::string out = carry_across_layouts(dir_, cfg, sets, " --set optimizer.block_size=128");
  std::ifstream meta(out + "/checkpoints/step_00000020/meta.json");
  const std::string text((std::istreambuf_iterator<char>(meta)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("optimizer.galore.exp_avg_sq_absmax.model.layers.0.mlp.down_proj.weight"),
            std::string::npos)
      << "R's second moment was not kept in 8 bits";
  expect_as_near_as_another_layout(dir_, cfg, sets, out);
}

// fp32 and 8-bit AdamW hold the same state: a run may switch at a resume, its moments quantized
// into the 8-bit run's blocks or dequantized for the fp32 one, and so may GaLore around them (the
// moments of R; min_8bit_size 64 quantizes them). 4 steps of each, then 4 more of AdamW: the 12
// losses stay within 1 % of an AdamW run that never switched.
TEST_F(Cli, SwitchingBetweenAdamWAndEightBitOnResume) {
  const std::string cfg = write("m.yaml", kParallelModel);
  const std::string galore =
      " --set optimizer.galore.rank=8 --set optimizer.galore.update_proj_gap=3"
      " --set optimizer.min_8bit_size=64";
  for (const std::string& base : {std::string(), galore}) {
    const std::string what = base.empty() ? "AdamW" : "GaLore";
    const std::string straight = (dir_ / (what + "_straight")).string(),
                      out = (dir_ / (what + "_switched")).string();
    const std::string sets = base + " --set training.max_steps=12";
    Result r = train(1, cfg, sets + " --set training.output_dir=" + straight);
    ASSERT_EQ(r.code, 0) << r.out;
    for (const char* type : {"adamw", "adamw_8bit", "adamw"}) {
      r = train(1, cfg,
                sets + " --set training.exit_interval=4 --set optimizer.type=" + type +
                    " --set training.output_dir=" + out);
      ASSERT_EQ(r.code, 0) << what << ", " << type << "\n" << r.out;
    }
    const std::vector<double> want = losses(straight + "/metrics.jsonl"),
                              got = losses(out + "/metrics.jsonl");
    ASSERT_EQ(want.size(), 12u);
    ASSERT_EQ(got.size(), 12u);
    for (size_t i = 0; i < want.size(); ++i)
      EXPECT_NEAR(got[i], want[i], 1e-2 * want[i]) << what << ", step " << i + 1;
    EXPECT_NE(got[5], want[5]) << what;  // steps 5-8 did run in 8 bits
  }
}

// A checkpoint that cannot continue this run stops it before anything is written.
TEST_F(Cli, UnresumableCheckpointsAreClearErrors) {
  const std::string cfg = write("m.yaml", kParallelModel);
  const std::string saved = (dir_ / "saved").string();
  Result r = train(1, cfg,
                   " --set training.max_steps=2 --set training.save_steps=2"
                   " --set training.output_dir=" +
                       saved);
  ASSERT_EQ(r.code, 0) << r.out;
  const std::string ckpt = saved + "/checkpoints/step_00000002";
  const std::string to_out = " --set training.output_dir=" + out_dir();
  expect_clean_failure(
      run("train " + cfg + " --resume " + saved + " --set model.hidden_size=32" +
          " --set model.num_attention_heads=2 --set model.num_key_value_heads=1" + to_out),
      "checkpoint " + ckpt +
          " is of another model shape (model.hidden_size: 64 -> 32; "
          "model.num_attention_heads: 4 -> 2; model.num_key_value_heads: 2 -> 1)");
  expect_clean_failure(run("train " + cfg + " --resume " + (dir_ / "nowhere").string() + to_out),
                       "holds no checkpoint");
  fs::remove(ckpt + "/rank_00000.safetensors");
  const Result missing = run("train " + cfg + " --resume " + ckpt + to_out);
  EXPECT_NE(missing.code, 0);
  EXPECT_NE(missing.out.find("checkpoint " + ckpt + " is missing rank_00000.safetensors"),
            std::string::npos)
      << missing.out;
  std::ofstream(ckpt + "/meta.json") << "{ damaged";
  expect_clean_failure(run("train " + cfg + " --resume " + ckpt + to_out),
                       ckpt + "/meta.json is not valid JSON");
}

// SIGKILL at moments spread over a run that checkpoints every step (the saves take most of its
// time): `latest` always names a complete checkpoint, and training resumes from it.
TEST_F(Cli, KilledDuringCheckpointsLatestStaysLoadable) {
  const std::string cfg = write("m.yaml", kParallelModel);
  const std::string sets =
      " --set model.hidden_size=256 --set model.intermediate_size=512 --set "
      "model.num_hidden_layers=4 --set model.num_attention_heads=4 --set data.seq_length=16"
      " --set training.per_device_train_batch_size=1 --set training.save_steps=1"
      " --set training.save_total_limit=2 --set training.max_steps=1000";
  int killed_mid_save = 0;
  // Each kill comes a different delay after the first checkpoint has appeared.
  for (const char* delay : {"0.05", "0.13", "0.21", "0.29", "0.37", "0.45"}) {
    const std::string out = (dir_ / (std::string("k") + delay)).string();
    const Result r = shell("OMP_NUM_THREADS=1 " + std::string(KEEL_BINARY) + " train " + cfg +
                           sets + " --set training.output_dir=" + out + " & pid=$!; " +
                           "for i in $(seq 600); do [ -e " + out +
                           "/checkpoints/latest ] && break; sleep 0.05; done; sleep " + delay +
                           "; kill -9 $pid; wait $pid");
    ASSERT_EQ(r.code, 128 + 9) << "the run should have been killed " << delay << " s in\n" << r.out;
    const std::string store = out + "/checkpoints";
    ASSERT_TRUE(fs::exists(store + "/latest")) << r.out;
    for (const auto& e : fs::directory_iterator(store))
      killed_mid_save += e.path().extension() == ".tmp";
    std::ifstream f(store + "/latest");
    std::string name;
    std::getline(f, name);
    ASSERT_TRUE(fs::exists(store + "/" + name + "/meta.json")) << delay << ": " << name;
    const int64_t step = std::stoll(name.substr(5));
    const Result again = shell("OMP_NUM_THREADS=1 " + std::string(KEEL_BINARY) + " train " + cfg +
                               sets + " --set training.max_steps=" + std::to_string(step + 1) +
                               " --set training.output_dir=" + out);
    ASSERT_EQ(again.code, 0) << "killed at " << delay << " s, latest " << name << "\n" << again.out;
    EXPECT_NE(again.out.find("at step " + std::to_string(step)), std::string::npos) << again.out;
  }
  std::printf("kills that landed inside a save: %d of 6\n", killed_mid_save);
  // Some kill must have landed inside a save, or this test proved nothing.
  EXPECT_GT(killed_mid_save, 0);
}

}  // namespace
