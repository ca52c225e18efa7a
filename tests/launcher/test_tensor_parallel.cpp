// Tensor parallelism end to end: every TP layout, with sequence parallelism and without, trains as
// one rank does (each step's loss and validation loss within 1e-5 relative over 20 steps, the
// final parameters gathered whole within 1e-5 of the one-rank run's), the TP group moves exactly
// the bytes Megatron's layout implies, and the layouts TP cannot serve are one clear line before
// any work.
#include <gtest/gtest.h>

#include "cli_util.h"

namespace keel::test {
namespace {

// Two layers of width 64: four query heads, a vocabulary 2 and 4 do not divide (cli_util.h).
const char* const kModel = kTensorParallelModel;

// GaLore's exact projector, refreshed at steps 1, 6, 11 and 16.
constexpr const char* kGalore =
    " --set optimizer.galore.rank=8 --set optimizer.galore.update_proj_gap=5";

struct Layout {
  const char* name;
  int ranks, tp;
  std::string sets;   // besides the layout's own
  double tol = 1e-5;  // relative, on each loss and on the parameters
  // Largest relative difference of any final weight, where it differs from tol: 8-bit blocks are
  // cut from each rank's slice, so a small weight may round otherwise (0.055 measured).
  double params = 0.0;
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
  Result r = train(1, cfg, l.sets + " --set training.output_dir=" + one);
  ASSERT_EQ(r.code, 0) << r.out;
  // The same global batch: dp ranks of 4/dp sequences each.
  r = train(l.ranks, cfg,
            l.sets + " --set parallel.tensor_model_parallel_size=" + std::to_string(l.tp) +
                " --set training.per_device_train_batch_size=" + std::to_string(4 / dp) +
                " --set training.output_dir=" + split);
  ASSERT_EQ(r.code, 0) << r.out;
  const std::vector<double> want = losses(one + "/metrics.jsonl");
  const std::vector<double> got = losses(split + "/metrics.jsonl");
  ASSERT_EQ(want.size(), 20u);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], l.tol * want[i]) << i + 1;
  // The gradient norm counts each tensor once, whatever holds it (what clipping divides by).
  const std::vector<double> want_norm = field(one + "/metrics.jsonl", "grad_norm");
  const std::vector<double> got_norm = field(split + "/metrics.jsonl", "grad_norm");
  ASSERT_EQ(got_norm.size(), want_norm.size());
  for (size_t i = 0; i < want_norm.size(); ++i)
    EXPECT_NEAR(got_norm[i], want_norm[i], 10 * l.tol * want_norm[i]) << i + 1;
  // Validation, where the layout asks for it (kEval).
  const std::vector<double> want_eval = field(one + "/metrics.jsonl", "eval_loss");
  const std::vector<double> got_eval = field(split + "/metrics.jsonl", "eval_loss");
  ASSERT_EQ(got_eval.size(), want_eval.size());
  for (size_t i = 0; i < want_eval.size(); ++i)
    EXPECT_NEAR(got_eval[i], want_eval[i], l.tol * want_eval[i]) << "validation " << i + 1;
  EXPECT_LT(max_relative_difference(one + "/model.safetensors", split + "/model.safetensors"),
            l.params > 0 ? l.params : l.tol);
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
        // ZeRO on the data-parallel dimension shards each rank's TP slice; stage 3 gathers the
        // slices' units for the final export, then the TP group makes them whole.
        Layout{"tp2_zero3", 2, 2, " --set parallel.zero_stage=3"},
        Layout{"tp2_dp2_tied_zero3", 4, 2,
               " --set parallel.zero_stage=3 --set model.tie_word_embeddings=true"},
        Layout{"tp2_dp2_mqa_zero1", 4, 2,
               " --set parallel.zero_stage=1 --set model.num_key_value_heads=1"},
        // Each unit stepped in the backward; the norm counts a replicated tensor once (the
        // guard's verdict agrees over the TP group).
        Layout{"tp2_dp2_zero2_per_layer", 4, 2,
               " --set parallel.zero_stage=2 --set optimizer.per_layer_update=true"
               " --set training.max_grad_norm=0"},
        // 8-bit blocks are cut from each rank's slice (a column slice is not contiguous in the
        // whole matrix), so the state rounds differently: within 1 %, as under ZeRO.
        Layout{"tp2_dp2_adamw_8bit", 4, 2,
               " --set optimizer.type=adamw_8bit --set optimizer.min_8bit_size=1024", 0.01, 0.1},
        // Adafactor's row and column sums of a split matrix over the TP (and DP) ranks.
        Layout{"tp2_dp2_adafactor", 4, 2, " --set optimizer.type=adafactor"},
        Layout{"tp2_dp2_adafactor_zero3_beta1", 4, 2,
               " --set optimizer.type=adafactor --set optimizer.adafactor_beta1=0.9"
               " --set parallel.zero_stage=3"},
        // GaLore on the whole matrix: k, v and o are split along their short side, whose
        // vectors then follow from the long side's Gram matrix, signed over the group.
        Layout{"tp2_galore", 2, 2, kGalore},
        Layout{"tp2_dp2_galore_zero2", 4, 2, std::string(kGalore) + " --set parallel.zero_stage=2"},
        Layout{"tp4_gqa_galore_reverse", 4, 4,
               std::string(kGalore) + " --set optimizer.galore.proj_type=reverse_std"},
        // Sequence parallelism: the residual stream and norms on 1/tp of the rows.
        Layout{"tp2_sp", 2, 2, kSp + kEval},
        Layout{"tp2_mqa_tied_sp", 2, 2,
               kSp + " --set model.num_key_value_heads=1 --set model.tie_word_embeddings=true"},
        Layout{"tp4_gqa_sp", 4, 4, kSp},
        Layout{"tp2_dp2_tied_sp", 4, 2, kSp + kEval + " --set model.tie_word_embeddings=true"},
        // The backward's recompute gathers the norms' outputs again.
        Layout{"tp2_sp_checkpointing", 2, 2, kSp + " --set training.gradient_checkpointing=true"},
        // ZeRO 3 shards each rank's slice; GaLore's projector over the whole matrix.
        Layout{"tp2_dp2_sp_zero3", 4, 2, kSp + " --set parallel.zero_stage=3"},
        Layout{"tp4_gqa_zero3", 4, 4, " --set parallel.zero_stage=3"},
        // Two micro-batches a step: each gathers and scatters its own rows.
        Layout{"tp2_sp_accumulation", 2, 2, kSp + " --set training.gradient_accumulation_steps=2"},
        Layout{"tp4_gqa_sp_zero3_galore", 4, 4, kSp + kGalore + " --set parallel.zero_stage=3"}),
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

// keel plan's count of the TP group's bytes per step is what a run's counters see, step by step:
// shared key/value heads (their weight gradient summed), gradient checkpointing (the recompute's
// sums), accumulation, the per-layer update's verdicts; the logits in several chunks.
TEST_F(Cli, KeelPlanCountsTheBytesTensorParallelismMoves) {
  if (!have_mpi()) GTEST_SKIP() << "built without MPI";
  const std::string cfg = write("m.yaml", kModel);
  const std::vector<std::pair<int, std::string>> cases = {
      {2, ""},
      {4,
       " --set training.gradient_checkpointing=true --set training.gradient_accumulation_steps=2"
       " --set training.per_device_train_batch_size=2 --set model.vocab_size=4099"},
      {2, " --set optimizer.per_layer_update=true --set training.max_grad_norm=0"},
      {2, kSp},
      {4, kSp + " --set training.gradient_checkpointing=true"
                " --set training.gradient_accumulation_steps=2"
                " --set training.per_device_train_batch_size=2 --set model.vocab_size=4099"},
  };
  for (const auto& [tp, sets] : cases) {
    const std::string layout = " --set parallel.tensor_model_parallel_size=" + std::to_string(tp) +
                               " --set training.max_steps=2" + sets;
    Result r = run("plan " + cfg + " --world-size " + std::to_string(tp) + layout);
    ASSERT_EQ(r.code, 0) << r.out;
    const size_t at = r.out.find(" bytes) per rank per step");
    ASSERT_NE(at, std::string::npos) << r.out;
    const int64_t planned = std::stoll(r.out.substr(r.out.rfind('(', at) + 1));
    const std::string out = (dir_ / ("tp" + std::to_string(tp) + std::to_string(planned))).string();
    r = train(tp, cfg, layout + " --set training.output_dir=" + out);
    ASSERT_EQ(r.code, 0) << r.out;
    const std::vector<double> bytes = field(out + "/metrics.jsonl", "comm_bytes");
    ASSERT_EQ(bytes.size(), 2u) << sets;
    for (double b : bytes) EXPECT_EQ(static_cast<int64_t>(b), planned) << sets;
  }
}

// keel plan's memory per rank is the TP slice's: parameters halve under tp2 but for the norms
// every rank holds whole (the model widened fourfold so that 0.1 MiB resolves them).
TEST_F(Cli, KeelPlanShowsTheMemoryOfATensorParallelRank) {
  const std::string cfg = write("m.yaml", kModel);
  auto parameters_mib = [&](int tp) {
    const Result r = run("plan " + cfg + " --world-size " + std::to_string(tp) +
                         " --set model.hidden_size=256 --set model.intermediate_size=384" +
                         " --set parallel.tensor_model_parallel_size=" + std::to_string(tp));
    EXPECT_EQ(r.code, 0) << r.out;
    const size_t at = r.out.find(": parameters ");
    return at == std::string::npos ? 0.0 : std::stod(r.out.substr(at + 13));
  };
  // Embedding and head, then per layer q, o (C·C), k, v (C/2·C), gate, up, down (384·C); norms.
  const double C = 256, norms = C * 5;
  const double whole = 257 * C * 2 + 2 * (C * C * 2 + 2 * (C / 2) * C + 3 * 384 * C) + norms;
  const double tp2 = (whole - norms - 2 * C) / 2 + norms + 2 * C;  // rank 0: 129 vocabulary rows
  EXPECT_NEAR(parameters_mib(1), whole * 4 / (1 << 20), 0.051);
  EXPECT_NEAR(parameters_mib(2), tp2 * 4 / (1 << 20), 0.051);
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
  refused(
      " --set parallel.tensor_model_parallel_size=4 --set parallel.sequence_parallel=true"
      " --set data.seq_length=30",
      "data.seq_length 30 is not a multiple of 4");
  // One rank cannot be split two ways.
  refused(" --set parallel.tensor_model_parallel_size=2", "tensor_model_parallel_size");
}

}  // namespace
}  // namespace keel::test
