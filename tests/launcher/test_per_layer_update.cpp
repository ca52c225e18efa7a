// optimizer.per_layer_update end to end: stepping each unit inside the backward trains the run
// the ordinary step trains, bit for bit, on every layout it runs on (1 rank; 2 ranks without ZeRO
// and with ZeRO 2 and 3; 4 ranks with ZeRO 3), tied or untied, AdamW or 8-bit AdamW, and with
// Adafactor and GaLore; it resumes bit-exactly; keel plan and the run's own plan count the
// smaller gradient memory, and peak RSS drops with them; the settings it cannot honour are one
// clear error.
//
// Why exact: the per-layer update runs the same kernels on the same gradients; only when each
// unit's optimizer step runs and where its gradient lives change. The element-wise AdamW kernels
// do not depend on which buffer holds the gradient, and the gradient's reductions are the same
// sums: one reduce-scatter per unit under ZeRO 2 and 3 in both paths, and without ZeRO an
// all-reduce per unit instead of one over all units, which on 2 ranks adds the same two numbers.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "cli_util.h"

namespace keel::test {
namespace {

// The global batch stays 4 sequences; no clipping, which a per-layer update cannot do.
std::string layout_sets(int ranks, int stage) {
  return " --set training.per_device_train_batch_size=" + std::to_string(4 / ranks) +
         " --set parallel.zero_stage=" + std::to_string(stage) +
         " --set training.max_grad_norm=0 --set training.max_steps=8";
}

const char* const kOn = " --set optimizer.per_layer_update=true";

// A setting the ordinary step and the per-layer update are compared under: its name and --sets.
struct Variant {
  std::string tag, sets;
};

// Tied and untied embeddings, each with adamw and adamw_8bit.
std::vector<Variant> plain_variants() {
  std::vector<Variant> out;
  for (const bool tied : {false, true})
    for (const std::string optimizer : {"adamw", "adamw_8bit"})
      out.push_back({(tied ? "tied_" : "untied_") + optimizer,
                     " --set optimizer.type=" + optimizer +
                         " --set model.tie_word_embeddings=" + (tied ? "true" : "false")});
  return out;
}

// Adafactor with a first moment (its sums all-reduced per step_tensors range); GaLore (rank 8,
// refreshed every 3 steps) around adamw projecting the short side, and around adamw_8bit
// projecting the long side (min_8bit_size 64: the projected state in 8 bits too).
const std::string kGaloreSets =
    " --set optimizer.galore.rank=8 --set optimizer.galore.update_proj_gap=3";
std::vector<Variant> other_variants() {
  return {{"adafactor", " --set optimizer.type=adafactor --set optimizer.adafactor_beta1=0.9"},
          {"galore_std", kGaloreSets},
          {"galore_8bit_reverse_std",
           kGaloreSets + " --set optimizer.galore.proj_type=reverse_std" +
               " --set optimizer.type=adamw_8bit --set optimizer.min_8bit_size=64"}};
}

class PerLayer : public Cli {
 protected:
  void expect_same_run(int ranks, int stage,
                       const std::vector<Variant>& variants = plain_variants());
};

// On `ranks` ranks under ZeRO `stage`: the ordinary step and the per-layer update log the same
// losses and write the same model.safetensors, byte for byte, under each variant. The grad norm
// is summed unit by unit in the per-layer update (another order of the same double-precision
// sum): within 1e-7.
void PerLayer::expect_same_run(int ranks, int stage, const std::vector<Variant>& variants) {
  const std::string cfg = write("m.yaml", kParallelModel);
  for (const Variant& v : variants) {
    const std::string what =
        std::to_string(ranks) + " ranks, ZeRO " + std::to_string(stage) + ", " + v.tag;
    const std::string sets = layout_sets(ranks, stage) + v.sets;
    const std::string step = (dir_ / ("step_" + v.tag)).string();
    const std::string unit = (dir_ / ("unit_" + v.tag)).string();
    Result r = train(ranks, cfg, sets + " --set training.output_dir=" + step);
    ASSERT_EQ(r.code, 0) << what << "\n" << r.out;
    r = train(ranks, cfg, sets + kOn + " --set training.output_dir=" + unit);
    ASSERT_EQ(r.code, 0) << what << "\n" << r.out;
    const std::vector<std::string> want = metric_texts(step + "/metrics.jsonl", "loss");
    ASSERT_EQ(want.size(), 8u) << what;
    EXPECT_EQ(metric_texts(unit + "/metrics.jsonl", "loss"), want) << what;
    EXPECT_TRUE(file_bytes(step + "/model.safetensors") == file_bytes(unit + "/model.safetensors"))
        << what << ": the final parameters differ";
    const std::vector<double> norm = field(step + "/metrics.jsonl", "grad_norm"),
                              got = field(unit + "/metrics.jsonl", "grad_norm");
    ASSERT_EQ(got.size(), norm.size()) << what;
    for (size_t i = 0; i < norm.size(); ++i)
      EXPECT_NEAR(got[i], norm[i], 1e-7 * norm[i]) << what << ", step " << i + 1;
  }
}

TEST_F(PerLayer, SameRunOnOneRank) { expect_same_run(1, 0); }

TEST_F(PerLayer, SameRunOnTwoRanksWithoutZero) {
  if (!have_mpi()) GTEST_SKIP() << "no MPI in this build or no mpirun";
  expect_same_run(2, 0);
}

TEST_F(PerLayer, SameRunOnTwoRanksZero2) {
  if (!have_mpi()) GTEST_SKIP() << "no MPI in this build or no mpirun";
  expect_same_run(2, 2);
}

TEST_F(PerLayer, SameRunOnTwoRanksZero3) {
  if (!have_mpi()) GTEST_SKIP() << "no MPI in this build or no mpirun";
  expect_same_run(2, 3);
}

TEST_F(PerLayer, SameRunOnFourRanksZero3) {
  if (!have_mpi()) GTEST_SKIP() << "no MPI in this build or no mpirun";
  expect_same_run(4, 3);
}

// Adafactor and GaLore inside the per-layer update: a unit's tensors are stepped (Adafactor's
// sums reduced across the shards for the unit alone; GaLore's matrices projected and, at a
// refresh, re-projected, the Gram matrix or long-side update reduced across the shards) as the
// unit's gradient completes; the same run as the ordinary step, bit for bit, without ZeRO and
// under ZeRO 2 and 3.
TEST_F(PerLayer, AdafactorAndGaloreSameRun) {
  expect_same_run(1, 0, other_variants());
  const std::string cfg = write("m.yaml", kParallelModel), plain = (dir_ / "plain").string();
  const Result r = train(1, cfg, layout_sets(1, 0) + kOn + " --set training.output_dir=" + plain);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(metric_texts(plain + "/metrics.jsonl", "loss"),
            metric_texts((dir_ / "unit_galore_std/metrics.jsonl").string(), "loss"))
      << "GaLore did not change the run";
  if (!have_mpi()) GTEST_SKIP() << "no MPI in this build or no mpirun";
  expect_same_run(2, 2, other_variants());
  expect_same_run(2, 3, other_variants());
}

// Stopped at step 6 (training.exit_interval) and run again, a 12-step per-layer run repeats the
// uninterrupted one exactly: every loss, and the final parameters byte for byte.
TEST_F(PerLayer, ResumeIsBitExact) {
  const std::string cfg = write("m.yaml", kParallelModel);
  struct Case {
    int ranks, stage;
    std::string sets;
  };
  std::vector<Case> cases = {
      {1, 0, " --set optimizer.type=adamw_8bit --set model.tie_word_embeddings=true"}};
  if (have_mpi())
    cases.insert(cases.end(), {{2, 0, ""},
                               {2, 2, " --set model.tie_word_embeddings=true"},
                               {2, 3, " --set optimizer.type=adamw_8bit"}});
  for (const Case& c : cases) {
    const std::string what = std::to_string(c.ranks) + " ranks, ZeRO " + std::to_string(c.stage) +
                             (c.sets.empty() ? "" : ",") + c.sets;
    const std::string tag = std::to_string(c.ranks) + "_" + std::to_string(c.stage);
    expect_resume_is_bit_exact(dir_, c.ranks, cfg, layout_sets(c.ranks, c.stage) + c.sets + kOn,
                               tag, what);
  }
}

// What a per-layer update cannot honour stops the run before anything is written.
TEST_F(PerLayer, RefusedSettingsAreOneClearError) {
  const std::string cfg = write("m.yaml", kParallelModel);
  const std::string base = "train " + cfg + kOn + " --set training.output_dir=" + out_dir();
  expect_clean_failure(run(base), "training.max_grad_norm is 0.5");
  expect_clean_failure(
      run(base + " --set training.max_grad_norm=0 --set training.gradient_accumulation_steps=2"),
      "training.gradient_accumulation_steps is 2");
  expect_clean_failure(run(base + " --set training.max_grad_norm=0 --set parallel.zero_stage=1"),
                       "set parallel.zero_stage to 2");
}

// The number before " MiB" that follows `key` in text (-1 when absent).
double mib_after(const std::string& text, const std::string& key) {
  const size_t at = text.find(key);
  return at == std::string::npos ? -1.0 : std::stod(text.substr(at + key.size()));
}

// The line of text that contains `what`, or "".
std::string line_with(const std::string& text, const std::string& what) {
  const size_t at = text.find(what);
  if (at == std::string::npos) return "";
  const size_t begin = text.rfind('\n', at) + 1;
  return text.substr(begin, text.find('\n', at) - begin);
}

// keel plan counts the gradient memory a per-layer update keeps, the run plans exactly that, and
// its peak RSS drops by what the plan drops. 13 M parameters, so the gradients dominate: the
// per-layer update keeps one block's gradient (the widest unit: norms 2 × 512, q/k/v 1536 × 512,
// o 512 × 512, gate/up 2752 × 512, down 512 × 1376 = 3,163,136 floats = 12.1 MiB) of the five
// units' 49.3 MiB (12,915,200 floats).
TEST_F(PerLayer, PlanCountsTheSmallerGradientAndRssFollows) {
  const std::string cfg = write("mem.yaml", R"(
model: {vocab_size: 256, hidden_size: 512, intermediate_size: 1376, num_hidden_layers: 4,
        num_attention_heads: 8, num_key_value_heads: 8, max_position_embeddings: 64}
data: {train: data/kjv.txt.gz, seq_length: 32}
training: {max_steps: 2, learning_rate: 1.0e-3, logging_steps: 1, per_device_train_batch_size: 1,
           max_grad_norm: 0}
)");
  double plan[2], rss[2];
  for (const bool on : {false, true}) {
    const std::string set = on ? kOn : "";
    // The attention workspace is per OpenMP thread: plan with the run's one thread.
    const Result forecast =
        shell("OMP_NUM_THREADS=1 " + std::string(KEEL_BINARY) + " plan " + cfg + set);
    ASSERT_EQ(forecast.code, 0) << forecast.out;
    const std::string out = (dir_ / (on ? "on" : "off")).string();
    const Result r = train(1, cfg, set + " --set training.output_dir=" + out);
    ASSERT_EQ(r.code, 0) << r.out;
    const std::string planned = line_with(r.out, "memory plan per rank");
    ASSERT_FALSE(planned.empty()) << r.out;
    EXPECT_EQ(line_with(forecast.out, "memory plan per rank"), planned);
    EXPECT_DOUBLE_EQ(mib_after(planned, "gradients "), on ? 12.1 : 49.3) << planned;
    plan[on] = mib_after(planned, "memory plan per rank ");
    rss[on] = field(out + "/metrics.jsonl", "peak_rss_mib").back();
  }
  std::printf("per-layer update off/on: plan %.1f / %.1f MiB, peak RSS %.1f / %.1f MiB\n", plan[0],
              plan[1], rss[0], rss[1]);
  EXPECT_NEAR(rss[0] - rss[1], plan[0] - plan[1], 0.1 * (plan[0] - plan[1]));
  if (!have_mpi()) return;
  // 2 ranks: ZeRO 2 and 3 keep the gradient shards of two units instead of all five.
  for (const char* stage : {"2", "3"}) {
    double gradients[2];
    for (const bool on : {false, true}) {
      const Result p = run("plan " + cfg + " --world-size 2 --set parallel.zero_stage=" + stage +
                           (on ? kOn : ""));
      ASSERT_EQ(p.code, 0) << p.out;
      gradients[on] = mib_after(p.out, "gradients ");
    }
    EXPECT_LT(gradients[1], gradients[0]) << "ZeRO " << stage;
  }
}

}  // namespace
}  // namespace keel::test
