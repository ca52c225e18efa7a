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

// optimizer.type adafactor with the Trainer's settings: it learns, 2 data-parallel ranks (ZeRO 0)
// repeat the one-rank run, its state is a fraction of AdamW's, and ZeRO 1-3 are refused until
// the sharded statistics exist.
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
  }
  expect_clean_failure(run("train " + cfg + sets + " --set parallel.zero_stage=1" +
                           " --set training.output_dir=" + out_dir()),
                       "optimizer.type adafactor runs with parallel.zero_stage 0 so far");
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
}

}  // namespace
}  // namespace keel::test
