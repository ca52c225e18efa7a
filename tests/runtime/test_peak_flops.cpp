// MFU's denominator: the start-up probe keeps the best of several runs of each shape and says its
// spread; training.peak_flops replaces it, the opening lines name which one MFU is against, and a
// step faster than the peak is said (the measured peak is raised to it; a given one is not).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "runtime/train/peak_flops.h"
#include "runtime/train/trainer.h"

namespace keel::runtime {
namespace {

TEST(PeakProbe, KeepsTheBestRunOfEveryShapeAndSaysTheSpread) {
  const PeakProbe p = probe_peak_flops({{64, 96, 80}, {128, 64, 32}}, 3, 0.0);
  ASSERT_EQ(p.shapes.size(), 2u);
  for (const ProbeShape& s : p.shapes) {
    EXPECT_GE(s.runs, 3);
    EXPECT_GT(s.worst, 0.0);
    EXPECT_GE(s.best, s.worst);
  }
  EXPECT_EQ(p.best(), std::max(p.shapes[0].best, p.shapes[1].best));
  const std::string text = p.describe();
  EXPECT_NE(text.find("64x96x80: "), std::string::npos) << text;
  EXPECT_NE(text.find("; 128x64x32: "), std::string::npos) << text;
  EXPECT_NE(
      text.find("the best of " + std::to_string(p.shapes[0].runs + p.shapes[1].runs) + " runs"),
      std::string::npos)
      << text;
}

TEST(PeakProbe, ShapesAreASquareAndTheModelsMlp) {
  const std::vector<ProbeShape> s = probe_shapes(4096, 768, 2048);
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[0].m * s[0].n * s[0].k, 1024 * 1024 * 1024);
  EXPECT_EQ(s[1].m, 2048);  // the micro-batch's tokens, capped
  EXPECT_EQ(s[1].n, 2048);
  EXPECT_EQ(s[1].k, 768);
  EXPECT_EQ(probe_shapes(16, 32, 48).size(), 1u);  // a product too small to say anything
}

TEST(PeakFlops, GivenPeakIsWhatMfuIsAgainst) {
  const auto dir =
      std::filesystem::temp_directory_path() / ("keel_peak_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "corpus.txt") << std::string(4000, 'a') << "\n";
  Config c;
  c.model.hidden_size = 32;
  c.model.intermediate_size = 48;
  c.model.num_hidden_layers = 1;
  c.model.num_attention_heads = 4;
  c.model.max_position_embeddings = 32;
  c.data.train = (dir / "corpus.txt").string();
  c.data.seq_length = 16;
  c.training.per_device_train_batch_size = 2;
  c.training.output_dir = (dir / "run").string();
  c.training.peak_flops = 1e3;  // far too low: every step is faster
  std::ostringstream console;
  Trainer t(c, console);
  EXPECT_NE(console.str().find("keel: MFU against training.peak_flops, 1e-06 GFLOP/s a rank"),
            std::string::npos)
      << console.str();
  const StepStats s = t.step();
  EXPECT_DOUBLE_EQ(s.mfu, s.tokens_per_second * t.model().flops_per_token() / 1e3);
  EXPECT_NE(console.str().find("training.peak_flops is too low"), std::string::npos)
      << console.str();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace keel::runtime
