// Expert parallelism end to end: a Mixtral-style model (every layer 4 experts, top-2, the
// load-balancing and z-losses on) trains on every layout as one rank does — EP 2 and 4, under
// ZeRO 0-3, with a capacity that drops tokens, beside TP (with and without SP) and PP, with every
// optimizer: each step's loss, gradient norm and routing metrics within 1e-5 relative over 20
// steps, and the final parameters gathered whole (each expert under its index) within 1e-5.
#include <gtest/gtest.h>

#include "cli_util.h"

namespace keel::test {
namespace {

struct Layout {
  const char* name;
  int ep, tp, pp, dp;  // dp: data-parallel ranks (ep divides it)
  std::string sets;    // besides the layout's own, for both runs
  double tol = 1e-5;
  double params = 0.0;    // on the final weights, where it differs from tol (8-bit state)
  int micro_batches = 2;  // per step; the global batch is 8 sequences
};

class MoeParallel : public Cli, public ::testing::WithParamInterface<Layout> {};

TEST_P(MoeParallel, TrainsAsOneRankDoes) {
  if (!have_mpi()) GTEST_SKIP() << "built without MPI";
  const Layout& l = GetParam();
  const std::string cfg = write("moe.yaml", kMoeModel);
  const std::string one = (dir_ / "one").string(), split = (dir_ / "split").string();
  // The same global batch of 8 sequences: one rank's micro-batches of 8/m, or each
  // data-parallel rank's of 8/m/dp (the router's losses average over sequences, so the
  // micro-batches' make-up does not matter).
  const int m = l.micro_batches;
  const std::string accumulate = " --set training.gradient_accumulation_steps=" + std::to_string(m);
  Result r = train(1, cfg,
                   l.sets + accumulate + " --set training.per_device_train_batch_size=" +
                       std::to_string(8 / m) + " --set training.output_dir=" + one);
  ASSERT_EQ(r.code, 0) << r.out;
  r = train(l.dp * l.tp * l.pp, cfg,
            l.sets + accumulate +
                " --set training.per_device_train_batch_size=" + std::to_string(8 / m / l.dp) +
                " --set parallel.expert_model_parallel_size=" + std::to_string(l.ep) +
                " --set parallel.tensor_model_parallel_size=" + std::to_string(l.tp) +
                " --set parallel.pipeline_model_parallel_size=" + std::to_string(l.pp) +
                " --set training.output_dir=" + split);
  ASSERT_EQ(r.code, 0) << r.out;
  for (const char* key : {"loss", "grad_norm", "aux_loss", "z_loss", "load_imbalance",
                          "router_entropy", "moe_dropped_fraction"}) {
    const std::vector<double> want = field(one + "/metrics.jsonl", key);
    const std::vector<double> got = field(split + "/metrics.jsonl", key);
    ASSERT_EQ(want.size(), 20u) << key;
    ASSERT_EQ(got.size(), want.size()) << key;
    // The norm sums squares of differences of nearly equal gradients: 10 × the tolerance.
    const double tol = std::string(key) == "grad_norm" ? 10 * l.tol : l.tol;
    for (size_t i = 0; i < want.size(); ++i)
      EXPECT_NEAR(got[i], want[i], tol * std::abs(want[i]) + 1e-12) << key << " step " << i + 1;
  }
  // Validation, where a layout evaluates: the ranks' padded shares route (and drop) as one.
  const std::vector<double> want_eval = field(one + "/metrics.jsonl", "eval_loss");
  const std::vector<double> got_eval = field(split + "/metrics.jsonl", "eval_loss");
  ASSERT_EQ(got_eval.size(), want_eval.size());
  if (l.sets.find("eval_steps") != std::string::npos) {
    EXPECT_EQ(want_eval.size(), 2u);
  }
  for (size_t i = 0; i < want_eval.size(); ++i)
    EXPECT_NEAR(got_eval[i], want_eval[i], l.tol * want_eval[i]) << "validation " << i + 1;
  // The expert-parallel group moved exactly what rank 0's routing sent away and took back.
  const std::vector<double> moved = field(split + "/metrics.jsonl", "all_to_all_bytes");
  const std::vector<double> routed = field(split + "/metrics.jsonl", "all_to_all_bytes_routed");
  ASSERT_EQ(moved.size(), 20u);
  EXPECT_EQ(moved, routed);
  for (double b : moved) EXPECT_GT(b, 0.0);
  EXPECT_LT(max_relative_difference(one + "/model.safetensors", split + "/model.safetensors"),
            l.params > 0 ? l.params : l.tol);
}

const std::string kCapacity =
    " --set model.moe_token_dropping=true --set model.moe_expert_capacity_factor=0.75";
// Validation every 10 steps over 9 sequences (the ranks' shares padded to equal batches).
const std::string kEval =
    " --set training.eval_steps=10 --set data.validation=data/kjv.txt.gz"
    " --set data.max_eval_samples=9";

INSTANTIATE_TEST_SUITE_P(
    Layouts, MoeParallel,
    ::testing::Values(
        Layout{"ep2", 2, 1, 1, 2, kEval},
        Layout{"ep2_zero1", 2, 1, 1, 2, " --set parallel.zero_stage=1"},
        Layout{"ep2_zero2", 2, 1, 1, 2, " --set parallel.zero_stage=2"},
        Layout{"ep2_zero3", 2, 1, 1, 2, " --set parallel.zero_stage=3"},
        // Two ranks hold each expert (expert-data-parallel size 2): their gradients and ZeRO
        // shards over that group, the dense layers' over all four.
        Layout{"ep2_dp4_zero2", 2, 1, 1, 4, " --set parallel.zero_stage=2"},
        Layout{"ep4_zero3", 4, 1, 1, 4, " --set parallel.zero_stage=3"},
        Layout{"ep2_capacity", 2, 1, 1, 2, kCapacity + kEval},
        // One element of the embedding (a byte seen once, whose Adam step divides the rounding
        // of four ranks' sums by a tiny √v) moves 1.8e-5 of the tensor's largest; every other
        // tensor stays within 1e-6 and every loss within 1e-8.
        Layout{"ep4_capacity", 4, 1, 1, 4, kCapacity + " --set parallel.zero_stage=1", 1e-5, 1e-4},
        Layout{"ep2_tp2", 2, 2, 1, 2, ""},
        Layout{"ep2_tp2_sp_zero3", 2, 2, 1, 2,
               " --set parallel.sequence_parallel=true --set parallel.zero_stage=3"},
        Layout{"ep2_pp2", 2, 1, 2, 2, " --set model.tie_word_embeddings=false"},
        Layout{"ep2_checkpointing", 2, 1, 1, 2, " --set training.gradient_checkpointing=true"},
        Layout{"ep2_adafactor", 2, 1, 1, 2,
               " --set optimizer.type=adafactor --set parallel.zero_stage=2"},
        Layout{"ep2_dp4_galore", 2, 1, 1, 4,
               " --set optimizer.galore.rank=8 --set optimizer.galore.update_proj_gap=5"
               " --set parallel.zero_stage=3"},
        // 8-bit blocks are cut from each rank's shard: another layout rounds a code otherwise.
        Layout{"ep2_adamw_8bit", 2, 1, 1, 2,
               " --set optimizer.type=adamw_8bit --set optimizer.min_8bit_size=1024"
               " --set parallel.zero_stage=2",
               0.02, 0.1},
        Layout{"ep2_per_layer_update", 2, 1, 1, 2,
               " --set optimizer.per_layer_update=true --set training.max_grad_norm=0"
               " --set parallel.zero_stage=2",
               1e-5, 0.0, 1},
        // A tied embedding's gradient is held across every layer's backward, beside a layer's
        // and its experts': three units' gradients at once (one rank too).
        Layout{"ep2_tied_zero3", 2, 1, 1, 2,
               " --set model.tie_word_embeddings=true --set parallel.zero_stage=3"},
        Layout{"ep2_tied_per_layer_update", 2, 1, 1, 2,
               " --set model.tie_word_embeddings=true --set optimizer.per_layer_update=true"
               " --set training.max_grad_norm=0 --set parallel.zero_stage=2",
               1e-5, 0.0, 1}),
    [](const ::testing::TestParamInfo<Layout>& p) { return std::string(p.param.name); });

// The per-layer update without ZeRO (one rank, or data parallelism without experts over ranks)
// holds a layer's gradients and its experts' at once, and a tied embedding's beside them: it
// steps what the update after the backward steps.
TEST_F(Cli, MoePerLayerUpdateWithoutZeroStepsAsTheWholeStep) {
  const std::string cfg = write("moe.yaml", kMoeModel);
  for (const char* tie : {"false", "true"}) {
    const std::string sets = std::string(" --set model.tie_word_embeddings=") + tie +
                             " --set training.gradient_accumulation_steps=1"
                             " --set training.max_grad_norm=0 --set training.max_steps=4";
    const std::string whole = (dir_ / (std::string("whole_") + tie)).string(),
                      per_layer = (dir_ / (std::string("per_layer_") + tie)).string();
    Result r = train(1, cfg, sets + " --set training.output_dir=" + whole);
    ASSERT_EQ(r.code, 0) << r.out;
    r = train(
        1, cfg,
        sets + " --set optimizer.per_layer_update=true --set training.output_dir=" + per_layer);
    ASSERT_EQ(r.code, 0) << r.out;
    const std::vector<double> want = losses(whole + "/metrics.jsonl");
    const std::vector<double> got = losses(per_layer + "/metrics.jsonl");
    ASSERT_EQ(want.size(), 4u) << tie;
    ASSERT_EQ(got.size(), want.size()) << tie;
    for (size_t i = 0; i < want.size(); ++i)
      EXPECT_NEAR(got[i], want[i], 1e-5 * want[i]) << "tied " << tie << ", step " << i + 1;
  }
}

}  // namespace
}  // namespace keel::test
