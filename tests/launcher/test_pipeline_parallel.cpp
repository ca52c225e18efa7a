// Pipeline parallelism end to end: every schedule and layout (pp2, pp4, pp2 × tp2, pp2 × dp2
// under ZeRO 1-3, every optimizer, checkpointing, the per-layer update, uneven stages) trains as
// one rank does: each step's loss, gradient norm and validation loss within 1e-5 relative over 20
// steps and the final parameters gathered whole within 1e-5; where only the layers are split
// (no data or tensor parallelism), the parameters are the one-rank run's bit for bit.
#include <gtest/gtest.h>

#include <chrono>

#include "cli_util.h"

namespace keel::test {
namespace {

const char* const kModel = kPipelineModel;  // four layers (cli_util.h)

struct Layout {
  const char* name;
  int pp, tp, dp;
  std::string sets;   // besides the layout's own, for both runs
  double tol = 1e-5;  // relative, on each loss and on the parameters
  // Largest relative difference of any final weight where it differs from tol (8-bit state).
  double params = 0.0;
  int micro_batches = 4;         // per step (training.gradient_accumulation_steps)
  std::string layout_sets = "";  // for the pipelined run only
};

class PipelineParallel : public Cli, public ::testing::WithParamInterface<Layout> {};

const std::string kEval =
    " --set training.eval_steps=10 --set data.validation=data/kjv.txt.gz"
    " --set data.max_eval_samples=9";

TEST_P(PipelineParallel, TrainsAsOneRankDoes) {
  if (!have_mpi()) GTEST_SKIP() << "built without MPI";
  const Layout& l = GetParam();
  const std::string cfg = write("m.yaml", kModel);
  const std::string one = (dir_ / "one").string(), split = (dir_ / "split").string();
  // The same global batch of 8 sequences: the one rank's micro-batches of 2, or dp ranks'
  // micro-batches of 2/dp.
  const std::string batch =
      " --set training.gradient_accumulation_steps=" + std::to_string(l.micro_batches) +
      " --set training.per_device_train_batch_size=" + std::to_string(8 / l.micro_batches);
  Result r = train(1, cfg, l.sets + batch + " --set training.output_dir=" + one);
  ASSERT_EQ(r.code, 0) << r.out;
  r = train(l.pp * l.tp * l.dp, cfg,
            l.sets + l.layout_sets + " --set training.gradient_accumulation_steps=" +
                std::to_string(l.micro_batches) + " --set training.per_device_train_batch_size=" +
                std::to_string(8 / l.micro_batches / l.dp) +
                " --set parallel.pipeline_model_parallel_size=" + std::to_string(l.pp) +
                " --set parallel.tensor_model_parallel_size=" + std::to_string(l.tp) +
                " --set training.output_dir=" + split);
  ASSERT_EQ(r.code, 0) << r.out;
  const std::vector<double> want = losses(one + "/metrics.jsonl");
  const std::vector<double> got = losses(split + "/metrics.jsonl");
  ASSERT_EQ(want.size(), 20u);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], l.tol * want[i]) << i + 1;
  // The gradient norm counts each tensor once, on whichever stage holds it.
  const std::vector<double> want_norm = field(one + "/metrics.jsonl", "grad_norm");
  const std::vector<double> got_norm = field(split + "/metrics.jsonl", "grad_norm");
  ASSERT_EQ(got_norm.size(), want_norm.size());
  for (size_t i = 0; i < want_norm.size(); ++i)
    EXPECT_NEAR(got_norm[i], want_norm[i], 10 * l.tol * want_norm[i]) << i + 1;
  const std::vector<double> want_eval = field(one + "/metrics.jsonl", "eval_loss");
  const std::vector<double> got_eval = field(split + "/metrics.jsonl", "eval_loss");
  ASSERT_EQ(got_eval.size(), want_eval.size());
  for (size_t i = 0; i < want_eval.size(); ++i)
    EXPECT_NEAR(got_eval[i], want_eval[i], l.tol * want_eval[i]) << "validation " << i + 1;
  // The stages' parameters gathered into one file.
  if (l.tp == 1 && l.dp == 1 && l.params == 0.0) {
    // The stages add each micro-batch's gradients in the one rank's order: the same run exactly.
    EXPECT_EQ(file_bytes(one + "/model.safetensors"), file_bytes(split + "/model.safetensors"));
  } else {
    EXPECT_LT(max_relative_difference(one + "/model.safetensors", split + "/model.safetensors"),
              l.params > 0 ? l.params : l.tol);
  }
}

const std::string k1f1b = " --set parallel.pipeline_schedule=1f1b";
const std::string kGpipe = " --set parallel.pipeline_schedule=gpipe";
const std::string kTied = " --set model.tie_word_embeddings=true";
const std::string kZb = " --set parallel.pipeline_schedule=zb_h1";
const std::string kInterleaved =
    " --set parallel.pipeline_schedule=interleaved_1f1b"
    " --set parallel.virtual_pipeline_model_parallel_size=2";

INSTANTIATE_TEST_SUITE_P(
    Layouts, PipelineParallel,
    ::testing::Values(
        Layout{"pp2_1f1b", 2, 1, 1, k1f1b + kEval}, Layout{"pp2_gpipe", 2, 1, 1, kGpipe},
        // Stage 0 holds 3 micro-batches under 1F1B, stage 3 one.
        Layout{"pp4_1f1b", 4, 1, 1, k1f1b + kEval}, Layout{"pp4_gpipe", 4, 1, 1, kGpipe},
        // Fewer micro-batches than stages: a longer bubble, the same run.
        Layout{"pp4_1f1b_two_micro_batches", 4, 1, 1, k1f1b, 1e-5, 0.0, 2},
        // Megatron's uneven first and last stages taken to the end: the embedding and the head
        // alone on stages of their own.
        Layout{"pp4_listed_empty_ends", 4, 1, 1, "", 1e-5, 0.0, 4,
               " --set parallel.pipeline_layers=[0,2,2,0]"},
        Layout{"pp2_checkpointing", 2, 1, 1, " --set training.gradient_checkpointing=true"},
        // ZB-H1: each backward in two passes, the weight passes lagging (bit for bit as well).
        Layout{"pp2_zb_h1", 2, 1, 1, kZb + kEval}, Layout{"pp4_zb_h1", 4, 1, 1, kZb},
        Layout{"pp4_zb_h1_two_micro_batches", 4, 1, 1, kZb, 1e-5, 0.0, 2},
        Layout{"pp2_tp2_zb_h1_mqa", 2, 2, 1, kZb + " --set model.num_key_value_heads=1"},
        Layout{"pp2_tp2_zb_h1_sp", 2, 2, 1, kZb + " --set parallel.sequence_parallel=true"},
        Layout{"pp2_dp2_zb_h1_zero1", 2, 1, 2, kZb + " --set parallel.zero_stage=1"},
        Layout{"pp2_dp2_zb_h1_zero2", 2, 1, 2, kZb + " --set parallel.zero_stage=2"},
        Layout{"pp2_dp2_zb_h1_zero3", 2, 1, 2, kZb + " --set parallel.zero_stage=3"},
        Layout{"pp2_zb_h1_tied", 2, 1, 1, kZb + kTied, 1e-5, 1e-5},
        // Interleaved 1F1B: each rank two chunks (stage 1's layer 1 hands on to stage 0's
        // layer 2 around the ring), bit for bit as well.
        Layout{"pp2_v2_interleaved", 2, 1, 1, kEval, 1e-5, 0.0, 4, kInterleaved},
        Layout{"pp2_v2_interleaved_two_micro_batches", 2, 1, 1, "", 1e-5, 0.0, 2, kInterleaved},
        Layout{"pp4_v2_interleaved_8_layers", 4, 1, 1, " --set model.num_hidden_layers=8", 1e-5,
               0.0, 4, kInterleaved},
        Layout{"pp2_v2_interleaved_listed", 2, 1, 1, "", 1e-5, 0.0, 4,
               kInterleaved + " --set parallel.pipeline_layers=[0,2,1,1]"},
        Layout{"pp2_tp2_v2_interleaved", 2, 2, 1, "", 1e-5, 0.0, 4, kInterleaved},
        // Two layers in four chunks: the embedding and the head alone in the end chunks.
        Layout{"pp2_v2_interleaved_empty_end_chunks", 2, 1, 1, " --set model.num_hidden_layers=2",
               1e-5, 0.0, 4, kInterleaved + " --set parallel.pipeline_layers=[0,1,1,0]"},
        Layout{"pp2_dp2_v2_interleaved_zero3", 2, 1, 2, " --set parallel.zero_stage=3", 1e-5, 0.0,
               4, kInterleaved},
        Layout{"pp2_dp2_v2_interleaved_zero1", 2, 1, 2, " --set parallel.zero_stage=1", 1e-5, 0.0,
               4, kInterleaved},
        Layout{"pp2_v2_interleaved_tied_checkpointing", 2, 1, 1,
               kTied + " --set training.gradient_checkpointing=true", 1e-5, 1e-5, 4, kInterleaved},
        // Tied embeddings: the last stage's copy gets the first stage's gradient added, and both
        // step the one tensor alike (its two halves add in another order: within 1e-5).
        Layout{"pp2_tied", 2, 1, 1, kTied + kEval, 1e-5, 1e-5},
        Layout{"pp4_tied_gpipe", 4, 1, 1, kTied + kGpipe, 1e-5, 1e-5},
        Layout{"pp2_tp2_tied", 2, 2, 1, kTied},
        Layout{"pp2_dp2_tied_zero1", 2, 1, 2, kTied + " --set parallel.zero_stage=1"},
        Layout{"pp2_dp2_tied_zero3", 2, 1, 2, kTied + " --set parallel.zero_stage=3"},
        // The embedding's gradient differs in its last bits (the two halves add in another
        // order), and an 8-bit moment may round to a neighbouring code: a small weight of
        // another tensor then moves by up to 0.6 % (measured); the losses stay within 1e-5.
        Layout{"pp2_tied_adamw_8bit", 2, 1, 1,
               kTied + " --set optimizer.type=adamw_8bit --set optimizer.min_8bit_size=1024", 1e-5,
               0.02},
        Layout{"pp2_tp2_1f1b", 2, 2, 1, k1f1b + kEval},
        Layout{"pp2_tp2_gpipe_sp", 2, 2, 1, kGpipe + " --set parallel.sequence_parallel=true"},
        Layout{"pp2_dp2_zero1_1f1b", 2, 1, 2, k1f1b + " --set parallel.zero_stage=1" + kEval},
        Layout{"pp2_dp2_zero1_gpipe", 2, 1, 2, kGpipe + " --set parallel.zero_stage=1"},
        Layout{"pp2_dp2_zero3_1f1b", 2, 1, 2, k1f1b + " --set parallel.zero_stage=3" + kEval},
        Layout{"pp2_dp2_zero3_gpipe", 2, 1, 2, kGpipe + " --set parallel.zero_stage=3"},
        Layout{"pp2_dp2_zero2", 2, 1, 2, " --set parallel.zero_stage=2"},
        // One micro-batch a step; each stage steps its units in its backward.
        Layout{"pp2_dp2_zero2_per_layer", 2, 1, 2,
               " --set parallel.zero_stage=2 --set optimizer.per_layer_update=true"
               " --set training.max_grad_norm=0",
               1e-5, 0.0, 1},
        Layout{"pp2_adamw_8bit", 2, 1, 1,
               " --set optimizer.type=adamw_8bit --set optimizer.min_8bit_size=1024"},
        Layout{"pp2_adafactor", 2, 1, 1, " --set optimizer.type=adafactor"},
        Layout{"pp2_dp2_galore_zero2", 2, 1, 2,
               " --set optimizer.galore.rank=8 --set optimizer.galore.update_proj_gap=5"
               " --set parallel.zero_stage=2"}),
    [](const ::testing::TestParamInfo<Layout>& p) { return std::string(p.param.name); });

// configs/pipeline.yaml: two stages of the tiny demo train what one process trains on the same
// batch, bit for bit.
TEST_F(Cli, PipelineConfigTrainsAsOneProcessDoes) {
  if (!have_mpi()) GTEST_SKIP() << "built without MPI";
  const std::string one = (dir_ / "one").string(), split = (dir_ / "split").string();
  const std::string steps = " --set training.max_steps=2 --set training.logging_steps=1";
  Result r = train(1, "configs/pipeline.yaml",
                   steps +
                       " --set parallel.pipeline_model_parallel_size=1 --set "
                       "training.output_dir=" +
                       one);
  ASSERT_EQ(r.code, 0) << r.out;
  r = train(2, "configs/pipeline.yaml", steps + " --set training.output_dir=" + split);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(metric_texts(split + "/metrics.jsonl", "loss"),
            metric_texts(one + "/metrics.jsonl", "loss"));
  EXPECT_EQ(file_bytes(one + "/model.safetensors"), file_bytes(split + "/model.safetensors"));
}

// A stage killed mid-run (its neighbour waiting on it in a send or receive) ends the whole job
// promptly, and the message names it.
TEST_F(Cli, AKilledStageEndsTheJob) {
  if (!have_mpi()) GTEST_SKIP() << "no MPI in this build or no mpirun";
  const std::string cfg = write("m.yaml", kModel);
  const auto t0 = std::chrono::steady_clock::now();
  const Result r = run_ranks(
      2, "sh -c '[ $OMPI_COMM_WORLD_RANK = 1 ] && (sleep 3; kill -9 $$) & exec " +
             std::string(KEEL_BINARY) + " train " + cfg +
             " --set training.max_steps=1000000 --set parallel.pipeline_model_parallel_size=2"
             " --set training.output_dir=" +
             out_dir() + "'");
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(r.code, 0) << r.out;
  EXPECT_LT(seconds, 30.0) << r.out;
  EXPECT_NE(r.out.find("rank 1"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace keel::test
