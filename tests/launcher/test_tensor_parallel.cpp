// Tensor parallelism end to end: every TP layout, with sequence parallelism and without, trains as
// one rank does (each step's loss and validation loss within 1e-5 relative over 20 steps, the
// final parameters gathered whole within 1e-5 of the one-rank run's), the TP group moves exactly
// the bytes Megatron's layout implies, and the layouts TP cannot serve are one clear line before
// any work.
#include <gtest/gtest.h>

#include "cli_util.h"

namespace keel::test {
namespace {

// Two layers of width 64: four query heads, a vocabulary 2 and 4 do not divide.
constexpr const char* kModel = R"(
model: {vocab_size: 257, hidden_size: 64, intermediate_size: 96, num_hidden_layers: 2,
        num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 64}
data: {train: data/kjv.txt.gz, seq_length: 32}
training: {max_steps: 20, learning_rate: 3.0e-3, warmup_steps: 2, logging_steps: 1,
           weight_decay: 0.1, max_grad_norm: 0.5, per_device_train_batch_size: 4}
)";

struct Layout {
  const char* name;
  int ranks, tp;
  std::string sets;   // besides the layout's own
  double tol = 1e-5;  // relative, on each loss and (when exact) on the parameters
  bool exact = true;  // false: 8-bit blocks are cut from each rank's slice, as under ZeRO
};

class TensorParallel : public Cli, public ::testing::WithParamInterface<Layout> {};

// Sequence parallelism (the one-rank run gets it too, where it splits nothing), and validation
// on the first 9 sequences every 10 steps (batches of 4 over the ranks leave the last partial).
const std::string kSp = " --set parallel.sequence_parallel=true";
const std::string kEval =
    " --set training.eval_steps=10 --set data.validation=data/kjv.txt.gz"
    " --set data.max_eval_samples=9";

TEST_P(TensorParallel, TrainsAsOneRankDoes) {
  if (!have_mpi()) GTEST_SKIP() << "built without MPI";
  const Layout& l = GetParam();
  const std::string cfg = write("m.yaml", kModel);
  const int dp = l.ranks / l.tp;
  const std::string one = (dir_ / "one").string(), split = (dir_ / "split").string();
  Result r = train(1, cfg, std::string(l.sets) + " --set training.output_dir=" + one);
  ASSERT_EQ(r.code, 0) << r.out;
  // The same global batch: dp ranks of 4/dp sequences each.
  r = train(l.ranks, cfg,
            std::string(l.sets) +
                " --set parallel.tensor_model_parallel_size=" + std::to_string(l.tp) +
                " --set training.per_device_train_batch_size=" + std::to_string(4 / dp) +
                " --set training.output_dir=" + split);
  ASSERT_EQ(r.code, 0) << r.out;
  const std::vector<double> want = losses(one + "/metrics.jsonl");
  const std::vector<double> got = losses(split + "/metrics.jsonl");
  ASSERT_EQ(want.size(), 20u);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], l.tol * want[i]) << i + 1;
  // Validation, where the layout asks for it (kEval).
  const std::vector<double> want_eval = field(one + "/metrics.jsonl", "eval_loss");
  const std::vector<double> got_eval = field(split + "/metrics.jsonl", "eval_loss");
  ASSERT_EQ(got_eval.size(), want_eval.size());
  for (size_t i = 0; i < want_eval.size(); ++i)
    EXPECT_NEAR(got_eval[i], want_eval[i], l.tol * want_eval[i]) << "validation " << i + 1;
  if (l.exact) {
    EXPECT_LT(max_relative_difference(one + "/model.safetensors", split + "/model.safetensors"),
              l.tol);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, TensorParallel,
    ::testing::Values(
        // Key/value heads split, untied, the vocabulary 129 + 128 rows.
        Layout{"tp2", 2, 2, ""},
        // MQA: one key/value head shared by both ranks; tied embeddings.
        Layout{"tp2_mqa_tied", 2, 2,
               " --set model.num_key_value_heads=1 --set model.tie_word_embeddings=true"},
        // GQA with TP above the key/value heads: each shared by two ranks; 65 + 64 · 3 rows.
        Layout{"tp4_gqa", 4, 4, ""},
        Layout{"tp2_dp2_tied", 4, 2, " --set model.tie_word_embeddings=true"},
        // 8-bit blocks are cut from each rank's slice (a column slice is not contiguous in the
        // whole matrix), so the state rounds differently: within 1 %, as under ZeRO.
        Layout{"tp2_dp2_adamw_8bit", 4, 2,
               " --set optimizer.type=adamw_8bit --set optimizer.min_8bit_size=1024", 0.01, false},
        // Sequence parallelism: the residual stream and norms on 1/tp of the rows.
        Layout{"tp2_sp", 2, 2, kSp + kEval},
        Layout{"tp2_mqa_tied_sp", 2, 2,
               kSp + " --set model.num_key_value_heads=1 --set model.tie_word_embeddings=true"},
        Layout{"tp4_gqa_sp", 4, 4, kSp},
        Layout{"tp2_dp2_tied_sp", 4, 2, kSp + kEval + " --set model.tie_word_embeddings=true"},
        // The backward's recompute gathers the norms' outputs again.
        Layout{"tp2_sp_checkpointing", 2, 2, kSp + " --set training.gradient_checkpointing=true"}),
    [](const ::testing::TestParamInfo<Layout>& p) { return std::string(p.param.name); });

// Megatron's count per step on the TP group (N = B·T rows of width C, n = 4·N·C bytes, an
// all-reduce of n bytes on 2 ranks moving n): the embedding's sum, two sums per layer forward
// and two backward, the head's input gradient; the vocabulary-parallel softmax's row maxima (N
// floats) and sums (2·N doubles); the gradient norm's sum (one double).
TEST_F(Cli, TensorParallelBytesPerStepAreTheLayoutsCount) {
  if (!have_mpi()) GTEST_SKIP() << "built without MPI";
  const std::string cfg = write("m.yaml", kModel);
  const std::string out = (dir_ / "tp2").string();
  const Result r = train(2, cfg,
                         " --set parallel.tensor_model_parallel_size=2 --set training.max_steps=3"
                         " --set training.output_dir=" +
                             out);
  ASSERT_EQ(r.code, 0) << r.out;
  const int64_t L = 2, N = 4 * 32, C = 64, n = 4 * N * C;
  const int64_t want = (1 + 4 * L + 1) * n + 4 * N + 16 * N + 8;
  const std::vector<double> bytes = field(out + "/metrics.jsonl", "comm_bytes");
  ASSERT_EQ(bytes.size(), 3u);
  for (double b : bytes) EXPECT_EQ(static_cast<int64_t>(b), want);
}

// With sequence parallelism each all-reduce of an activation becomes a reduce-scatter and an
// all-gather of the same n bytes, each moving n/2 on 2 ranks: forward, the embedding's sum
// scattered, per layer two gathers (before q/k/v and gate/up) and two scatters (after o and
// down), the final norm's output gathered for the head; backward, the conjugates (the head's
// input gradient scattered, per layer two scatters and two gathers, the embedding's gradient
// gathered). So the activations move (4 · n/2 + 4L · n), as without SP; besides, the norm
// weights' gradients, summed over the rows each rank held (2·C floats per layer and C for the
// final norm, all-reduced: 8·C and 4·C bytes), and as before the softmax's statistics and the
// gradient norm's sum.
TEST_F(Cli, SequenceParallelBytesPerStepAreTheLayoutsCount) {
  if (!have_mpi()) GTEST_SKIP() << "built without MPI";
  const std::string cfg = write("m.yaml", kModel);
  const std::string out = (dir_ / "tp2_sp").string();
  const Result r = train(2, cfg,
                         " --set parallel.tensor_model_parallel_size=2 --set training.max_steps=3"
                         " --set parallel.sequence_parallel=true --set training.output_dir=" +
                             out);
  ASSERT_EQ(r.code, 0) << r.out;
  const int64_t L = 2, N = 4 * 32, C = 64, n = 4 * N * C;
  const int64_t activations = 4 * n / 2 + 4 * L * n;
  const int64_t want = activations + (8 * L + 4) * C + 4 * N + 16 * N + 8;
  const std::vector<double> bytes = field(out + "/metrics.jsonl", "comm_bytes");
  ASSERT_EQ(bytes.size(), 3u);
  for (double b : bytes) EXPECT_EQ(static_cast<int64_t>(b), want);
}

TEST_F(Cli, LayoutsTensorParallelismCannotServeAreOneLine) {
  const std::string cfg = write("m.yaml", kModel);
  auto refused = [&](const std::string& sets, const std::string& says) {
    const Result r =
        run("train " + cfg + sets + " --set training.output_dir=" + (dir_ / "never").string());
    EXPECT_NE(r.code, 0) << sets;
    EXPECT_NE(r.out.find(says), std::string::npos) << sets << "\n" << r.out;
    EXPECT_FALSE(fs::exists(dir_ / "never" / "metrics.jsonl")) << sets;
  };
  refused(" --set parallel.tensor_model_parallel_size=3", "model.num_attention_heads 4");
  refused(" --set parallel.tensor_model_parallel_size=4 --set model.intermediate_size=90",
          "model.intermediate_size 90");
  refused(" --set parallel.tensor_model_parallel_size=2 --set parallel.zero_stage=1",
          "parallel.zero_stage 1");
  refused(
      " --set parallel.tensor_model_parallel_size=4 --set parallel.sequence_parallel=true"
      " --set data.seq_length=30",
      "data.seq_length 30 is not a multiple of 4");
  // One rank cannot be split two ways.
  refused(" --set parallel.tensor_model_parallel_size=2", "tensor_model_parallel_size");
}

}  // namespace
}  // namespace keel::test
