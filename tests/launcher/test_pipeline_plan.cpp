// keel plan for a pipelined run: each stage's memory plan is what that stage's ranks then plan at
// start-up (their rank logs), under GPipe (m micro-batches alive on every stage) and 1F1B
// (min(m, p - s) on stage s), with data and tensor parallelism beside; the bubble it prints is
// (p-1)/(m+p-1); and a run is admitted by its own stage's plan, not the whole model's.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "cli_util.h"

namespace keel::test {
namespace {

// Four layers; a vocabulary of 256 so that every TP rank plans the same slice.
const char* const kModel = R"(
model: {vocab_size: 256, hidden_size: 128, intermediate_size: 256, num_hidden_layers: 4,
        num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 64}
data: {train: data/kjv.txt.gz, seq_length: 64}
training: {max_steps: 1, learning_rate: 3.0e-3, logging_steps: 1, per_device_train_batch_size: 2,
           gradient_accumulation_steps: 4, report_to: none}
)";

// The line of text that contains `what`, from `what` to the line's end; "" when none does.
std::string rest_of_line(const std::string& text, const std::string& what, size_t from = 0) {
  const size_t at = text.find(what, from);
  if (at == std::string::npos) return "";
  return text.substr(at, text.find('\n', at) - at);
}

std::string read(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// `keel plan` with the ranks' one OpenMP thread (the attention workspace is per thread).
Result plan(const std::string& args) {
  return shell("OMP_NUM_THREADS=1 " + std::string(KEEL_BINARY) + " plan " + args);
}

// "1/(4+1) = 20.0 %", as keel plan rounds it.
std::string bubble(int p, int m) {
  char percent[32];
  std::snprintf(percent, sizeof percent, "%.1f", 100.0 * (p - 1) / (m + p - 1));
  return std::to_string(p - 1) + "/(" + std::to_string(m) + "+" + std::to_string(p - 1) +
         ") = " + percent + " % of the step, " + percent + " % as simulated";
}

struct Layout {
  const char* name;
  int pp, tp, dp;
  const char* schedule;
  std::string sets = "";
};

class PipelinePlan : public Cli, public ::testing::WithParamInterface<Layout> {};

TEST_P(PipelinePlan, EachStagesPlanIsWhatItsRanksPlan) {
  if (!have_mpi()) GTEST_SKIP() << "built without MPI";
  const Layout& l = GetParam();
  const int m = 4, world = l.pp * l.tp * l.dp;
  const std::string cfg = write("m.yaml", kModel);
  const std::string sets = " --set parallel.pipeline_model_parallel_size=" + std::to_string(l.pp) +
                           " --set parallel.tensor_model_parallel_size=" + std::to_string(l.tp) +
                           " --set parallel.pipeline_schedule=" + l.schedule + l.sets;
  const Result p = plan(cfg + " --world-size " + std::to_string(world) + sets);
  ASSERT_EQ(p.code, 0) << p.out;
  // The bubble, as keel plan and every rank's log print it.
  const std::string bubble_line = std::string("keel: pipeline ") + l.schedule +
                                  ", 4 micro-batches a step over " + std::to_string(l.pp) +
                                  " stages: bubble (p-1)/(m+p-1) = " + bubble(l.pp, m);
  EXPECT_NE(p.out.find(bubble_line), std::string::npos) << p.out;
  const Result r = train(world, cfg, sets + " --set training.output_dir=" + out_dir());
  ASSERT_EQ(r.code, 0) << r.out;
  for (int s = 0; s < l.pp; ++s) {
    const std::string planned =
        rest_of_line(p.out, "memory plan per rank ",
                     p.out.find("keel: pipeline stage " + std::to_string(s) + " ("));
    ASSERT_FALSE(planned.empty()) << "stage " << s << "\n" << p.out;
    // The schedule's peak of live micro-batches on the stage, each in its own slot.
    const int slots = std::string(l.schedule) == "gpipe" ? m : std::min(m, l.pp - s);
    std::string in_flight = "(";  // appended: GCC 12 misreads "(" + std::to_string (-Wrestrict)
    in_flight += std::to_string(slots) + " micro-batches in flight";
    EXPECT_EQ(planned.find(in_flight) != std::string::npos, slots > 1)
        << "stage " << s << ": " << planned;
    // Every rank of the stage (TP fastest, then DP, then PP) plans that at start-up.
    for (int rank = s * l.tp * l.dp; rank < (s + 1) * l.tp * l.dp; ++rank) {
      const std::string log = read(out_dir() + "/logs/rank_" + std::to_string(rank) + ".log");
      EXPECT_NE(log.find("pipeline stage " + std::to_string(s) + " of " + std::to_string(l.pp)),
                std::string::npos)
          << "rank " << rank << "\n"
          << log;
      EXPECT_EQ(rest_of_line(log, "memory plan per rank "), planned) << "rank " << rank;
      EXPECT_NE(log.find(bubble_line), std::string::npos) << "rank " << rank << "\n" << log;
    }
  }
}

// ZB-H1 (each slot also keeps its blocks' GEMM output gradients between the two backward
// passes) and interleaved 1F1B (two chunks a rank, each with its own slots): keel plan's line for
// each stage is what that stage's rank plans, and the bubble line carries the schedule's formula
// where there is one.
TEST_F(Cli, ZeroBubbleAndInterleavedStagesPlanWhatTheyRun) {
  if (!have_mpi()) GTEST_SKIP() << "built without MPI";
  const std::string cfg = write("m.yaml", kModel);
  const std::vector<std::pair<std::string, std::string>> cases = {
      {" --set parallel.pipeline_schedule=zb_h1", "zb_h1, 4 micro-batches a step over 2 stages"},
      {" --set parallel.pipeline_schedule=interleaved_1f1b"
       " --set parallel.virtual_pipeline_model_parallel_size=2",
       "(p-1)/(v*m+p-1) = 1/(2*4+1) = 11.1 % of the step"}};
  for (const auto& [schedule, said] : cases) {
    const std::string sets = " --set parallel.pipeline_model_parallel_size=2" + schedule;
    const Result p = plan(cfg + " --world-size 2" + sets);
    ASSERT_EQ(p.code, 0) << p.out;
    EXPECT_NE(p.out.find(said), std::string::npos) << p.out;
    const std::string out = out_dir() + std::to_string(said.size());
    const Result r = train(2, cfg, sets + " --set training.output_dir=" + out);
    ASSERT_EQ(r.code, 0) << r.out;
    for (int s = 0; s < 2; ++s) {
      const std::string planned =
          rest_of_line(p.out, "memory plan per rank ",
                       p.out.find("keel: pipeline stage " + std::to_string(s) + " ("));
      ASSERT_FALSE(planned.empty()) << p.out;
      const std::string log = read(out + "/logs/rank_" + std::to_string(s) + ".log");
      EXPECT_EQ(rest_of_line(log, "memory plan per rank "), planned) << schedule << ", stage " << s;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, PipelinePlan,
    ::testing::Values(
        Layout{"pp2_1f1b", 2, 1, 1, "1f1b"}, Layout{"pp2_gpipe", 2, 1, 1, "gpipe"},
        Layout{"pp4_1f1b", 4, 1, 1, "1f1b"}, Layout{"pp4_gpipe", 4, 1, 1, "gpipe"},
        Layout{"pp4_1f1b_checkpointing", 4, 1, 1, "1f1b",
               " --set training.gradient_checkpointing=true"},
        Layout{"pp2_dp2_zero2_1f1b", 2, 1, 2, "1f1b",
               " --set parallel.zero_stage=2 --set training.per_device_train_batch_size=1"},
        Layout{"pp2_tp2_gpipe", 2, 2, 1, "gpipe"}),
    [](const ::testing::TestParamInfo<Layout>& p) { return std::string(p.param.name); });

// The MiB of the line "...memory plan per rank N MiB..." that follows `after` in `text`.
double planned_mib(const std::string& text, const std::string& after = "") {
  const std::string line = rest_of_line(text, "memory plan per rank ", text.find(after));
  return line.empty() ? -1.0 : std::stod(line.substr(21));
}

// A run is admitted by its own stage's plan: a limit above every stage's plan but below the whole
// model's trains; one between the stages' plans stops every rank with the line of the rank of the
// larger stage, naming the stage. (A vocabulary of 4096 makes the stages uneven: three layers and
// the embedding on the first, one and the head on the second.)
TEST_F(Cli, PipelinedRunIsAdmittedByItsStagesPlan) {
  if (!have_mpi()) GTEST_SKIP() << "built without MPI";
  const std::string cfg = write("m.yaml", kModel);
  const std::string vocab = " --set model.vocab_size=4096";
  const std::string sets =
      vocab +
      " --set parallel.pipeline_model_parallel_size=2 --set parallel.pipeline_schedule=gpipe";
  const double whole = planned_mib(plan(cfg + vocab).out);
  const Result p = plan(cfg + " --world-size 2" + sets);
  ASSERT_EQ(p.code, 0) << p.out;
  const double stage0 = planned_mib(p.out, "pipeline stage 0 ("),
               stage1 = planned_mib(p.out, "pipeline stage 1 (");
  const double small = std::min(stage0, stage1), large = std::max(stage0, stage1);
  const int larger = stage0 > stage1 ? 0 : 1;
  ASSERT_GT(large, small + 1.0) << p.out;
  ASSERT_GT(whole, large + 1.0) << p.out;
  auto limit = [](double mib) {
    return " --set training.memory_limit=" + std::to_string(static_cast<uint64_t>(mib * (1 << 20)));
  };
  const std::string admitted = (dir_ / "admitted").string();
  Result r =
      train(2, cfg, sets + limit((large + whole) / 2) + " --set training.output_dir=" + admitted);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(losses(admitted + "/metrics.jsonl").size(), 1u);
  r = train(2, cfg, sets + limit((small + large) / 2) + " --set training.output_dir=" + out_dir());
  EXPECT_NE(r.code, 0) << r.out;
  const std::string rank = std::to_string(larger);
  EXPECT_NE(r.out.find("but rank " + rank + " of 2 (host "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(", pipeline stage " + rank + ") can have "), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("other rank short too"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(out_dir()));
}

// --fit compares the largest stage's plan: it fits a limit above it, though not the whole model.
TEST_F(Cli, PlanFitTakesTheLargestStage) {
  const std::string cfg = write("m.yaml", kModel);
  const std::string sets =
      " --set parallel.pipeline_model_parallel_size=2 --set model.vocab_size=4096";
  const Result p = plan(cfg + " --world-size 2" + sets);
  ASSERT_EQ(p.code, 0) << p.out;
  const double stage0 = planned_mib(p.out, "pipeline stage 0 ("),
               stage1 = planned_mib(p.out, "pipeline stage 1 (");
  const double largest = std::max(stage0, stage1);
  const std::string between = std::to_string(static_cast<uint64_t>((largest + 0.2) * (1 << 20)));
  Result r = plan(cfg + " --world-size 2" + sets + " --fit " + between);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("keel: the plan of the largest stage (" +
                       std::string(stage1 > stage0 ? "1" : "0") + ") fits in "),
            std::string::npos)
      << r.out;
  r = plan(cfg + " --set model.vocab_size=4096 --fit " + between);
  EXPECT_NE(r.out.find("keel: the plan does not fit in "), std::string::npos) << r.out;
  r = plan(cfg + " --world-size 2" + sets + " --fit " +
           std::to_string(static_cast<uint64_t>((largest - 0.2) * (1 << 20))));
  EXPECT_NE(r.out.find(") does not fit in "), std::string::npos) << r.out;
}

}  // namespace
}  // namespace keel::test
