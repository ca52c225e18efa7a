// optimizer.type adamw_8bit end to end: it trains as AdamW does (each step's loss within 1 % over
// 40 steps), under ZeRO its blocks follow each rank's shard and the run stays within 1 % of the
// one-rank run, and keel plan forecasts its smaller state.
#include <gtest/gtest.h>

#include "cli_util.h"

namespace keel::test {
namespace {

TEST_F(Cli, EightBitAdamWTracksAdamW) {
  const std::string cfg = write("m.yaml", kParallelModel);
  const std::string sets = " --set training.max_steps=40";
  Result r = run("train " + cfg + sets + " --set training.output_dir=" + (dir_ / "fp32").string());
  ASSERT_EQ(r.code, 0) << r.out;
  r = run("train " + cfg + sets +
          " --set optimizer.type=adamw_8bit --set training.output_dir=" + (dir_ / "q8").string());
  ASSERT_EQ(r.code, 0) << r.out;
  const std::vector<double> fp32 = losses((dir_ / "fp32/metrics.jsonl").string());
  const std::vector<double> q8 = losses((dir_ / "q8/metrics.jsonl").string());
  ASSERT_EQ(fp32.size(), 40u);
  ASSERT_EQ(q8.size(), 40u);
  for (size_t i = 0; i < fp32.size(); ++i) EXPECT_NEAR(q8[i], fp32[i], 0.01 * fp32[i]) << i + 1;
  EXPECT_LT(q8.back(), 0.7 * q8.front());  // it learned

  if (have_mpi()) {
    const std::string out = (dir_ / "q8_np2_zero2").string();
    r = run_ranks(2, std::string(KEEL_BINARY) + " train " + cfg + sets +
                         " --set optimizer.type=adamw_8bit --set parallel.zero_stage=2" +
                         " --set training.per_device_train_batch_size=2" +
                         " --set training.output_dir=" + out);
    ASSERT_EQ(r.code, 0) << r.out;
    const std::vector<double> sharded = losses(out + "/metrics.jsonl");
    ASSERT_EQ(sharded.size(), q8.size());
    for (size_t i = 0; i < q8.size(); ++i) EXPECT_NEAR(sharded[i], q8[i], 0.01 * q8[i]) << i + 1;
  }
}

// keel plan: the optimizer state of the 8-bit run, against AdamW's, on the same model.
TEST_F(Cli, PlanForecastsEightBitState) {
  const std::string cfg = write("m.yaml", kParallelModel);
  auto optimizer_mib = [&](const std::string& type) {
    const Result r = run("plan " + cfg + " --set optimizer.type=" + type +
                         " --set model.hidden_size=256 --set model.intermediate_size=512" +
                         " --set model.vocab_size=4096");
    EXPECT_EQ(r.code, 0) << r.out;
    const std::string key = "optimizer state ";
    const size_t at = r.out.find(key);
    return at == std::string::npos ? -1.0 : std::stod(r.out.substr(at + key.size()));
  };
  const double fp32 = optimizer_mib("adamw"), q8 = optimizer_mib("adamw_8bit");
  ASSERT_GT(fp32, 0);
  // Every matrix but the token embedding drops from 8 bytes per parameter to 2 + 8/256; the
  // embedding (1,048,576) and the norms (1,280) of the 3,278,080 parameters stay fp32:
  // (8 · 1,049,856 + 2.03125 · 2,228,224) / (8 · 3,278,080) = 0.493 of AdamW's state.
  EXPECT_GT(q8, 0.485 * fp32);
  EXPECT_LT(q8, 0.50 * fp32);
}

// optimizer.type adafactor: it learns; 2 data-parallel ranks (ZeRO 0) repeat the one-rank run;
// on ZeRO shards, whose row or column sums and RMS are reduced across the ranks, 2 ranks at ZeRO
// 1, 2 and 3 and 4 ranks at ZeRO 3 repeat it too (every loss and the final parameters within
// 1e-5), with the Trainer's settings, a first moment, and the paper's relative step scaled by
// RMS(param); its state is a fraction of AdamW's.
TEST_F(Cli, AdafactorTrainsOnDataParallelRanks) {
  const std::string cfg = write("m.yaml", kParallelModel);
  const std::string sets = " --set training.max_steps=40 --set optimizer.type=adafactor";
  const std::string one = (dir_ / "one").string();
  Result r = run("train " + cfg + sets + " --set training.output_dir=" + one);
  ASSERT_EQ(r.code, 0) << r.out;
  const std::vector<double> loss = losses(one + "/metrics.jsonl");
  ASSERT_EQ(loss.size(), 40u);
  EXPECT_LT(loss.back(), 0.7 * loss.front());
  if (have_mpi()) {
    const std::string two = (dir_ / "two").string();
    r = run_ranks(2, std::string(KEEL_BINARY) + " train " + cfg + sets +
                         " --set training.per_device_train_batch_size=2" +
                         " --set training.output_dir=" + two);
    ASSERT_EQ(r.code, 0) << r.out;
    const std::vector<double> got = losses(two + "/metrics.jsonl");
    ASSERT_EQ(got.size(), loss.size());
    for (size_t i = 0; i < loss.size(); ++i) EXPECT_NEAR(got[i], loss[i], 1e-5 * loss[i]) << i + 1;

    // Sharded: 12 steps of each setting on each layout against one rank, every loss and the
    // final parameters within 1e-5 (they differ by ~3e-7 here; the gradients' summation order
    // differs between layouts, and the difference grows with the steps).
    auto expect_same_run = [&](const std::string& want, const std::string& run_dir,
                               const std::string& what) {
      const std::vector<double> a = losses(want + "/metrics.jsonl"),
                                b = losses(run_dir + "/metrics.jsonl");
      ASSERT_EQ(a.size(), 12u) << what;
      ASSERT_EQ(b.size(), a.size()) << what;
      for (size_t i = 0; i < a.size(); ++i)
        EXPECT_NEAR(b[i], a[i], 1e-5 * a[i]) << what << ", step " << i + 1;
      EXPECT_LE(
          max_relative_difference(want + "/model.safetensors", run_dir + "/model.safetensors"),
          1e-5)
          << what;
    };
    struct Layout {
      int ranks, stage;
    };
    const std::vector<std::pair<std::string, std::string>> settings = {
        {"trainer", ""},
        {"first moment", " --set optimizer.adafactor_beta1=0.9"},
        {"relative step",
         " --set optimizer.relative_step=true --set optimizer.scale_parameter=true"}};
    const std::string short_run = " --set training.max_steps=12 --set optimizer.type=adafactor";
    for (size_t s = 0; s < settings.size(); ++s) {
      const std::string base = short_run + settings[s].second;
      const std::string want = (dir_ / ("one_" + std::to_string(s))).string();
      r = run("train " + cfg + base + " --set training.output_dir=" + want);
      ASSERT_EQ(r.code, 0) << r.out;
      for (const Layout l : {Layout{2, 1}, Layout{2, 2}, Layout{2, 3}, Layout{4, 3}}) {
        const std::string what = settings[s].first + ", " + std::to_string(l.ranks) +
                                 " ranks, ZeRO " + std::to_string(l.stage);
        const std::string sharded = (dir_ / (std::to_string(s) + "_" + std::to_string(l.ranks) +
                                             "_" + std::to_string(l.stage)))
                                        .string();
        r = run_ranks(l.ranks, std::string(KEEL_BINARY) + " train " + cfg + base +
                                   " --set training.per_device_train_batch_size=" +
                                   std::to_string(4 / l.ranks) +
                                   " --set parallel.zero_stage=" + std::to_string(l.stage) +
                                   " --set training.output_dir=" + sharded);
        ASSERT_EQ(r.code, 0) << what << "\n" << r.out;
        expect_same_run(want, sharded, what);
      }
    }
  }
  auto optimizer_mib = [&](const std::string& type) {
    const Result p = run("plan " + cfg + " --set optimizer.type=" + type +
                         " --set model.hidden_size=1024 --set model.intermediate_size=4096" +
                         " --set model.vocab_size=32000 --set model.num_attention_heads=8" +
                         " --set model.num_key_value_heads=8");
    const size_t at = p.out.find("optimizer state ");
    return at == std::string::npos ? -1.0 : std::stod(p.out.substr(at + 16));
  };
  // Matrices keep rows + cols floats instead of 2 · rows · cols: under 1 % of AdamW's here.
  const double adafactor = optimizer_mib("adafactor"), adamw = optimizer_mib("adamw");
  EXPECT_GT(adafactor, 0.0);
  EXPECT_LT(adafactor, 0.01 * adamw);

  // ZeRO 3 on 2 ranks, a model large enough for the MiB to tell: a rank keeps the means of its
  // half of each matrix's longer side and all of the shorter side, half of each norm. The
  // optimizer line adds ZeRO's fp32 master shards, a third of AdamW's line (8 bytes of moments
  // and 4 of master per parameter), so Adafactor's state is its line less that.
  // Per rank: embedding and head 128000x8192: 64000 + 8192 each; q, k, v, o 8192x8192: 4096 +
  // 8192 each; gate, up 32768x8192: 16384 + 8192 each; down 8192x32768: 8192 + 16384; norms
  // 4096: 410,624 floats (1.57 MiB) against ZeRO 0's 690,176 (2.63 MiB).
  auto big_mib = [&](const std::string& type, int stage) {
    const Result p =
        run("plan " + cfg + " --world-size 2 --set parallel.zero_stage=" + std::to_string(stage) +
            " --set optimizer.type=" + type +
            " --set model.hidden_size=8192 --set model.intermediate_size=32768" +
            " --set model.vocab_size=128000 --set model.num_attention_heads=8" +
            " --set model.num_key_value_heads=8");
    EXPECT_EQ(p.code, 0) << p.out;
    const size_t at = p.out.find("optimizer state ");
    return at == std::string::npos ? -1.0 : std::stod(p.out.substr(at + 16));
  };
  EXPECT_NEAR(big_mib("adafactor", 0), 2.63, 0.06);
  // Each line is rounded to 0.1 MiB: the difference is within 0.07 of the state.
  EXPECT_NEAR(big_mib("adafactor", 3) - big_mib("adamw", 3) / 3, 1.57, 0.07);
}

}  // namespace
}  // namespace keel::test
