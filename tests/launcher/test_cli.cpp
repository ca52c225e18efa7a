// The keel program end to end: help, config mistakes (one clear line, non-zero exit, nothing
// written), and the demo config actually learning.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "launcher/cli_util.h"

namespace {

using namespace keel::test;  // NOLINT: the helpers of every CLI test
namespace fs = std::filesystem;

TEST_F(Cli, Help) {
  Result r = run("--help");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("train"), std::string::npos);
  r = run("train --help");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("--set"), std::string::npos);
  r = run("bogus");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("unknown command 'bogus'"), std::string::npos);
}

TEST_F(Cli, LaunchHelpAndBadRankCount) {
  Result r = run("launch --help");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("--oversubscribe"), std::string::npos) << r.out;
  r = run("launch -n zero configs/tiny.yaml");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("-n takes a number of ranks"), std::string::npos) << r.out;
  r = run("launch configs/tiny.yaml");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("keel launch -n N CONFIG.yaml"), std::string::npos) << r.out;
}

TEST_F(Cli, UnknownKeySuggestsTheClosest) {
  const std::string cfg =
      write("c.yaml", "training:\n  learnig_rate: 0.1\n  output_dir: " + out_dir() +
                          "\ndata:\n  train: data/kjv.txt.gz\n");
  expect_clean_failure(run("train " + cfg), "training.learning_rate");
}

TEST_F(Cli, UnknownOverrideKey) {
  expect_clean_failure(run("train configs/tiny.yaml --set training.output_dir=" + out_dir() +
                           " --set model.hiden_size=64"),
                       "model.hidden_size");
}

TEST_F(Cli, WrongType) {
  expect_clean_failure(run("train configs/tiny.yaml --set training.output_dir=" + out_dir() +
                           " --set training.max_steps=lots"),
                       "training.max_steps");
}

TEST_F(Cli, ImpossibleShapes) {
  expect_clean_failure(run("train configs/tiny.yaml --set training.output_dir=" + out_dir() +
                           " --set model.hidden_size=100"),
                       "model.num_attention_heads");
  expect_clean_failure(run("train configs/tiny.yaml --set training.output_dir=" + out_dir() +
                           " --set model.num_key_value_heads=4"),
                       "model.num_key_value_heads");
}

TEST_F(Cli, MissingDataFile) {
  expect_clean_failure(run("train configs/tiny.yaml --set training.output_dir=" + out_dir() +
                           " --set data.train=/nonexistent/corpus.txt"),
                       "/nonexistent/corpus.txt");
}

struct Layout {
  int ranks, micro, accumulation, stage;
};

// Trains kParallelModel on one rank, then on each layout with the same global batch of 4
// sequences: every step's loss and the final parameters must match the one-rank run to fp32
// rounding, and each rank must communicate exactly what the stage's algorithm needs.
void expect_layouts_match_one_rank(const fs::path& dir, const std::string& cfg, bool tied,
                                   const std::vector<Layout>& layouts) {
  // Validation on the first 9 sequences of the text every 10 steps: batches of 4 or 8 over the
  // ranks leave the last one partial.
  const std::string tie =
      " --set model.tie_word_embeddings=" + std::string(tied ? "true" : "false") +
      " --set training.eval_steps=10 --set data.validation=data/kjv.txt.gz" +
      " --set data.max_eval_samples=9";
  const std::string one = (dir / "one").string();
  Result r = run("train " + cfg + tie + " --set training.output_dir=" + one);
  ASSERT_EQ(r.code, 0) << r.out;
  const std::vector<double> want = losses(one + "/metrics.jsonl");
  ASSERT_EQ(want.size(), 20u);
  const std::vector<double> want_eval = field(one + "/metrics.jsonl", "eval_loss");
  ASSERT_EQ(want_eval.size(), 2u);
  // Parameter counts: embedding 256·64, per layer 2·64 norms + (4+2+2)·16·64 qkv + 64·64 o
  // + 2·96·64 gate/up + 64·96 down = 30,848, head = final norm 64 (+ lm_head 256·64 untied).
  const double embed = 256 * 64, blocks = 2 * 30848, head = 64 + (tied ? 0 : 256 * 64);
  const double psi = embed + blocks + head;  // 94,528 untied, 78,144 tied
  for (const Layout& l : layouts) {
    const std::string out =
        (dir / ("np" + std::to_string(l.ranks) + "_acc" + std::to_string(l.accumulation) + "_zero" +
                std::to_string(l.stage)))
            .string();
    r = run_ranks(
        l.ranks,
        std::string(KEEL_BINARY) + " train " + cfg + tie +
            " --set training.per_device_train_batch_size=" + std::to_string(l.micro) +
            " --set training.gradient_accumulation_steps=" + std::to_string(l.accumulation) +
            " --set parallel.zero_stage=" + std::to_string(l.stage) +
            " --set training.output_dir=" + out);
    const std::string what = std::to_string(l.ranks) + " ranks x " + std::to_string(l.micro) +
                             " x " + std::to_string(l.accumulation) + ", ZeRO " +
                             std::to_string(l.stage) + (tied ? ", tied" : "");
    ASSERT_EQ(r.code, 0) << what << "\n" << r.out;
    EXPECT_NE(r.out.find(std::to_string(l.ranks) + " data-parallel ranks"), std::string::npos)
        << r.out;
    const std::vector<double> got = losses(out + "/metrics.jsonl");
    ASSERT_EQ(got.size(), want.size()) << what;
    for (size_t i = 0; i < want.size(); ++i)
      EXPECT_NEAR(got[i], want[i], 1e-5 * want[i]) << what << ", step " << i + 1;
    EXPECT_LE(max_relative_difference(one + "/model.safetensors", out + "/model.safetensors"), 1e-5)
        << what;
    const std::vector<double> eval = field(out + "/metrics.jsonl", "eval_loss");
    ASSERT_EQ(eval.size(), want_eval.size()) << what;
    for (size_t i = 0; i < eval.size(); ++i)
      EXPECT_NEAR(eval[i], want_eval[i], 1e-5 * want_eval[i]) << what << ", eval " << i;

    // Floats each rank's link carries per step (bus bytes, ×4(N−1)/N below). Stages 0 and 1: 2Ψ
    // (all-reduce; or reduce-scatter + all-gather). Stage 2 reduce-scatters each micro-batch's
    // gradients as the backward makes them: (A + 1)Ψ. Stage 3 gathers, per micro-batch, every
    // block twice (forward, backward), the embedding once for its lookup (again for a tied head)
    // and the head once (its forward and backward run together), and reduce-scatters Ψ: below
    // the 3Ψ of the textbook by the embedding and head gathers it saves.
    const double A = l.accumulation;
    double floats = 2 * psi;
    if (l.stage == 2) floats = (A + 1) * psi;
    if (l.stage == 3) floats = A * ((tied ? 2 : 1) * embed + 2 * blocks + head + psi);
    const double theory = 4 * floats * (l.ranks - 1) / l.ranks;
    for (double bytes : field(out + "/metrics.jsonl", "comm_bytes")) {
      EXPECT_GE(bytes, theory) << what;
      EXPECT_LE(bytes, 1.01 * theory + 4096) << what;  // a few 8-byte scalars
    }
  }
}

// Data parallelism (ZeRO 0) and sharded optimizer state (ZeRO 1) on 2 and 4 ranks, with
// micro-batches and with accumulation.
TEST_F(Cli, ZeroStages0And1MatchOneRank) {
  if (!have_mpi()) GTEST_SKIP() << "no MPI in this build or no mpirun";
  expect_layouts_match_one_rank(
      dir_, write("dp.yaml", kParallelModel), false,
      {{2, 2, 1, 0}, {4, 1, 1, 0}, {2, 1, 2, 0}, {2, 2, 1, 1}, {4, 1, 1, 1}});
}

// Gradients sharded during the backward (ZeRO 2) and parameters too (ZeRO 3).
TEST_F(Cli, ZeroStages2And3MatchOneRank) {
  if (!have_mpi()) GTEST_SKIP() << "no MPI in this build or no mpirun";
  expect_layouts_match_one_rank(
      dir_, write("dp.yaml", kParallelModel), false,
      {{2, 2, 1, 2}, {4, 1, 1, 2}, {2, 1, 2, 2}, {2, 2, 1, 3}, {4, 1, 1, 3}, {2, 1, 2, 3}});
}

// With tied embeddings the head needs the embedding's weights, and the embedding's gradient
// collects from the head and the lookup: the unit bookkeeping of stages 2 and 3.
TEST_F(Cli, ZeroWithTiedEmbeddingsMatchesOneRank) {
  if (!have_mpi()) GTEST_SKIP() << "no MPI in this build or no mpirun";
  expect_layouts_match_one_rank(dir_, write("dp.yaml", kParallelModel), true,
                                {{2, 2, 1, 1}, {2, 2, 1, 2}, {4, 1, 1, 3}, {2, 1, 2, 3}});
}

// The number after `prefix` in text (e.g. "memory plan per rank " → MiB), or -1.
double number_after(const std::string& text, const std::string& prefix) {
  const size_t at = text.find(prefix);
  return at == std::string::npos ? -1.0 : std::stod(text.substr(at + prefix.size()));
}

// The line of text that contains `what`, or "".
std::string line_with(const std::string& text, const std::string& what) {
  const size_t at = text.find(what);
  if (at == std::string::npos) return "";
  const size_t begin = text.rfind('\n', at) + 1;
  return text.substr(begin, text.find('\n', at) - begin);
}

// `keel plan --world-size 2` forecasts the memory plan each ZeRO stage's run then prints, and
// each rank's peak RSS follows that plan: RSS minus plan (the program, libraries and MPI) stays
// the same across stages within 10 % of the plan, so what the plan says a stage saves is saved.
// Every rank writes its own log.
TEST_F(Cli, PlanForecastsTheRunAndRssFollowsIt) {
  if (!have_mpi()) GTEST_SKIP() << "no MPI in this build or no mpirun";
  // 13 M parameters, so optimizer state and gradients dominate the activations.
  const std::string cfg = write("mem.yaml", R"(
model: {vocab_size: 256, hidden_size: 512, intermediate_size: 1376, num_hidden_layers: 4,
        num_attention_heads: 8, num_key_value_heads: 8, max_position_embeddings: 64}
data: {train: data/kjv.txt.gz, seq_length: 32}
training: {max_steps: 2, learning_rate: 1.0e-3, logging_steps: 1, per_device_train_batch_size: 1}
)");
  std::vector<double> plan, rss;
  for (int stage = 0; stage <= 3; ++stage) {
    const std::string set = " --set parallel.zero_stage=" + std::to_string(stage);
    // The attention workspace is per OpenMP thread: plan with the ranks' one thread.
    const Result forecast = shell("OMP_NUM_THREADS=1 " + std::string(KEEL_BINARY) + " plan " + cfg +
                                  set + " --world-size 2");
    ASSERT_EQ(forecast.code, 0) << forecast.out;
    const std::string out = (dir_ / ("zero" + std::to_string(stage))).string();
    const Result r = run_ranks(
        2, std::string(KEEL_BINARY) + " train " + cfg + set + " --set training.output_dir=" + out);
    ASSERT_EQ(r.code, 0) << r.out;
    const std::string planned = line_with(r.out, "memory plan per rank");
    ASSERT_FALSE(planned.empty()) << r.out;
    EXPECT_EQ(line_with(forecast.out, "memory plan per rank"), planned) << "stage " << stage;
    plan.push_back(number_after(planned, "memory plan per rank "));
    rss.push_back(field(out + "/metrics.jsonl", "peak_rss_mib").back());
    for (int rank = 0; rank < 2; ++rank) {
      std::ifstream f(out + "/logs/rank_" + std::to_string(rank) + ".log");
      std::stringstream log;
      log << f.rdbuf();
      EXPECT_NE(log.str().find("data-parallel rank " + std::to_string(rank) + " of 2"),
                std::string::npos)
          << log.str();
      EXPECT_NE(log.str().find("step 2/2"), std::string::npos) << log.str();
      EXPECT_NE(log.str().find(planned), std::string::npos) << log.str();
    }
  }
  std::printf("stage: plan MiB, peak RSS MiB (rank 0)\n");
  for (int stage = 0; stage <= 3; ++stage)
    std::printf("%d: %.1f, %.1f\n", stage, plan[stage], rss[stage]);
  EXPECT_LT(plan[3], plan[2]);
  EXPECT_LT(plan[2], plan[0]);
  const double base = rss[0] - plan[0];
  for (int stage = 1; stage <= 3; ++stage)
    EXPECT_NEAR(rss[stage] - base, plan[stage], 0.1 * plan[stage]) << "stage " << stage;
}

// Ranks given different configs stop before any work, naming a rank that differs. Each rank's
// shell expands its own OMPI_COMM_WORLD_RANK into the seed.
TEST_F(Cli, MismatchedConfigsAcrossRanks) {
  if (!have_mpi()) GTEST_SKIP() << "no MPI in this build or no mpirun";
  const Result r = run_ranks(2, "sh -c '" + std::string(KEEL_BINARY) +
                                    " train configs/tiny.yaml --set training.max_steps=1"
                                    " --set training.seed=$OMPI_COMM_WORLD_RANK"
                                    " --set training.output_dir=" +
                                    out_dir() + "'");
  EXPECT_NE(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("different configs (rank 1 differs from rank 0)"), std::string::npos)
      << r.out;
  EXPECT_FALSE(fs::exists(out_dir() + "/metrics.jsonl"));
}

// A rank killed with SIGKILL mid-run ends the whole job promptly, and the message names it.
TEST_F(Cli, KilledRankEndsTheJob) {
  if (!have_mpi()) GTEST_SKIP() << "no MPI in this build or no mpirun";
  const auto t0 = std::chrono::steady_clock::now();
  const Result r = run_ranks(
      2, "sh -c '[ $OMPI_COMM_WORLD_RANK = 1 ] && (sleep 4; kill -9 $$) & exec " +
             std::string(KEEL_BINARY) + " train configs/tiny.yaml --set training.max_steps=100000" +
             " --set training.output_dir=" + out_dir() + "'");
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(r.code, 0) << r.out;
  EXPECT_LT(seconds, 40.0) << r.out;
  EXPECT_NE(r.out.find("rank 1"), std::string::npos) << r.out;
}

// The demo learns: after 40 steps of configs/tiny.yaml the loss is far below the corpus's unigram
// entropy (3.03 nats per byte), which letter frequencies alone cannot beat.
TEST_F(Cli, TinyConfigLearns) {
  const Result r =
      run("train configs/tiny.yaml --set training.max_steps=40 "
          "--set training.warmup_steps=5 --set training.logging_steps=10 "
          "--set training.output_dir=" +
          out_dir());
  ASSERT_EQ(r.code, 0) << r.out;
  std::ifstream f(out_dir() + "/metrics.jsonl");
  std::string line, last;
  int lines = 0;
  while (std::getline(f, line)) last = line, ++lines;
  ASSERT_EQ(lines, 5) << "steps 1, 10, 20, 30, 40";
  const size_t at = last.find("\"loss\": ");
  ASSERT_NE(at, std::string::npos) << last;
  const double loss = std::stod(last.substr(at + 8));
  std::printf("tiny.yaml loss after 40 steps: %.4f\n", loss);
  EXPECT_LT(loss, 2.6) << "the demo should beat the 3.03-nat unigram entropy clearly";
}

}  // namespace
