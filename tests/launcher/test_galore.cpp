// optimizer.galore end to end: on 2 and 4 ranks under ZeRO 1, 2 and 3 a GaLore run equals the
// one-rank run within 1e-5 (short side projected: no collective per step; long side: the
// projected gradient reduce-scattered; exact and randomized refreshes), keel plan forecasts its
// smaller state, a run names what GaLore (or Adafactor) does to which tensors, and a checkpoint
// with other GaLore settings is one clear error.
#include <gtest/gtest.h>

#include "cli_util.h"

namespace keel::test {
namespace {

// 12 steps with a refresh every 5 (steps 1, 6, 11).
const std::string kGalore =
    " --set training.max_steps=12 --set optimizer.galore.rank=8"
    " --set optimizer.galore.update_proj_gap=5";

void expect_same_run(const std::string& want, const std::string& got, const std::string& what) {
  const std::vector<double> a = losses(want + "/metrics.jsonl"), b = losses(got + "/metrics.jsonl");
  ASSERT_EQ(a.size(), 12u) << what;
  ASSERT_EQ(b.size(), 12u) << what;
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_NEAR(b[i], a[i], 1e-5 * a[i]) << what << " step " << i + 1;
  EXPECT_LE(max_relative_difference(want + "/model.safetensors", got + "/model.safetensors"), 1e-5)
      << what;
}

TEST_F(Cli, GaloreShardsEqualOneRank) {
  const std::string cfg = write("m.yaml", kParallelModel);
  struct Case {
    std::string proj_type, projector;
  };
  for (const Case& c :
       {Case{"std", "exact"}, Case{"reverse_std", "exact"}, Case{"std", "randomized"}}) {
    const std::string sets = kGalore + " --set optimizer.galore.proj_type=" + c.proj_type +
                             " --set optimizer.galore.projector=" + c.projector;
    const std::string tag = c.proj_type + "_" + c.projector;
    const std::string one = (dir_ / ("one_" + tag)).string();
    Result r = run("train " + cfg + sets + " --set training.output_dir=" + one);
    ASSERT_EQ(r.code, 0) << r.out;
    const std::vector<double> l = losses(one + "/metrics.jsonl");
    ASSERT_EQ(l.size(), 12u);
    EXPECT_LT(l.back(), 0.9 * l.front()) << tag << ": it learns";
    if (!have_mpi()) continue;
    struct Layout {
      int ranks, stage;
    };
    for (const Layout& y : {Layout{2, 1}, Layout{2, 2}, Layout{2, 3}, Layout{4, 3}}) {
      const std::string what =
          tag + ", " + std::to_string(y.ranks) + " ranks, ZeRO " + std::to_string(y.stage);
      const std::string out =
          (dir_ / (tag + std::to_string(y.ranks) + std::to_string(y.stage))).string();
      r = run_ranks(y.ranks, std::string(KEEL_BINARY) + " train " + cfg + sets +
                                 " --set parallel.zero_stage=" + std::to_string(y.stage) +
                                 " --set training.per_device_train_batch_size=" +
                                 std::to_string(4 / y.ranks) + " --set training.output_dir=" + out);
      ASSERT_EQ(r.code, 0) << what << "\n" << r.out;
      expect_same_run(one, out, what);
    }
  }
}

// keel plan with galore rank 8 on a 256-wide model: each targeted matrix keeps AdamW moments of
// its projected gradient (long side × 8) and an 8 × short-side projector instead of 8 B per
// parameter. Per layer (KiB): q and o 16 + 8, k and v (128 × 256) 16 + 4, gate, up and down
// 32 + 8: 208; two layers 0.406 MiB. The 2,098,432 parameters not targeted (embedding, head,
// norms) keep 8 B: 16.008 MiB. AdamW alone: 25.010 MiB.
TEST_F(Cli, PlanForecastsGaloreState) {
  const std::string cfg = write("m.yaml", kParallelModel);
  auto optimizer_mib = [&](const std::string& sets) {
    const Result r = run("plan " + cfg + sets + " --set model.hidden_size=256" +
                         " --set model.intermediate_size=512 --set model.vocab_size=4096");
    EXPECT_EQ(r.code, 0) << r.out;
    const std::string key = "optimizer state ";
    const size_t at = r.out.find(key);
    return at == std::string::npos ? -1.0 : std::stod(r.out.substr(at + key.size()));
  };
  const double adamw = optimizer_mib(""), galore = optimizer_mib(" --set optimizer.galore.rank=8");
  // 2 layers × (q 256², k and v 256×128, o 256², gate/up 512×256, down 256×512) = 1,310,720
  // targeted of 3,278,080 parameters: their 8 B each become (16 r + 4 r) B per short-side row
  // (moments of R and the projector) = 160 B per 256 ⇒ the state is (8·1,967,360 + 160·(2·(256 +
  // 256 + 256 + 256) + 2·(512 + 512 + 512)... computed by the plan: about 61 % of AdamW's.
  EXPECT_NEAR(adamw, 25.01, 0.05);
  EXPECT_NEAR(galore, 16.008 + 0.406, 0.05);
}

TEST_F(Cli, GaloreCheckpointOfOtherSettingsIsAClearError) {
  const std::string cfg = write("m.yaml", kParallelModel);
  const std::string sets =
      kGalore + " --set training.max_steps=2 --set training.output_dir=" + out_dir();
  Result r = run("train " + cfg + sets + " --set training.save_steps=2");
  ASSERT_EQ(r.code, 0) << r.out;
  r = run("train " + cfg + sets + " --set training.max_steps=4 --set optimizer.galore.rank=4");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("optimizer.galore rank 8, proj_type std"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("resume with the saved settings"), std::string::npos) << r.out;
}

// A run's opening lines say what its optimizer does to which tensors: the 14 attention and MLP
// matrices of the 21 tensors projected, the inner optimizer's own line after them, and for
// Adafactor the 16 matrices (with the embedding and the head) it factors.
TEST_F(Cli, RunNamesWhatTheOptimizerDoes) {
  const std::string cfg = write("m.yaml", kParallelModel);
  const std::string base = "train " + cfg + " --set training.max_steps=1";
  Result r = run(base + " --set optimizer.galore.rank=8 --set optimizer.galore.update_proj_gap=50" +
                 " --set optimizer.type=adamw_8bit --set training.output_dir=" + out_dir());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("keel: optimizer GaLore rank 8 (std, exact projector, refreshed every 50 "
                       "steps, scale 0.25) on 14 of 21 tensors ("),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("; their projected gradients and the other tensors: adamw_8bit: 8-bit "
                       "moments in blocks of 256 for "),
            std::string::npos)
      << r.out;
  r = run(base + " --set optimizer.type=adafactor --set training.output_dir=" + out_dir());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("keel: optimizer adafactor: factored second moments for 16 of 21 tensors"),
            std::string::npos)
      << r.out;
}

}  // namespace
}  // namespace keel::test
