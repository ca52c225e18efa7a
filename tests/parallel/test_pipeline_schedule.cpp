// The pipeline schedules (parallel/pipeline_schedule.h) on every shape of tests/parallel/
// pipeline_test_util.h: each list's order (forward before backward, B before W, receives before
// and sends after their pass), the sends of each stage against its neighbour's receives, the
// lists run together by the simulator with no deadlock, the peak of live activations and the
// bubble against their formulas; the names and every refusal word for word.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "parallel/pipeline_schedule.h"
#include "parallel/pipeline_sim.h"
#include "tests/parallel/pipeline_test_util.h"

namespace keel::parallel {
namespace {

using test::all_pipeline_cases;
using test::check_message_order;
using test::check_stage_order;
using test::error_of;
using test::Lists;

TEST(PipelineScheduleTest, NamesRoundTripAndAnUnknownNameListsTheChoices) {
  for (PipelineSchedule s : {PipelineSchedule::kGPipe, PipelineSchedule::kOneFOneB,
                             PipelineSchedule::kInterleaved, PipelineSchedule::kZeroBubbleH1})
    EXPECT_EQ(parse_pipeline_schedule(pipeline_schedule_name(s)), s);
  EXPECT_EQ(pipeline_schedule_name(PipelineSchedule::kGPipe), "gpipe");
  EXPECT_EQ(pipeline_schedule_name(PipelineSchedule::kOneFOneB), "1f1b");
  EXPECT_EQ(pipeline_schedule_name(PipelineSchedule::kInterleaved), "interleaved_1f1b");
  EXPECT_EQ(pipeline_schedule_name(PipelineSchedule::kZeroBubbleH1), "zb_h1");
  EXPECT_EQ(error_of([] { parse_pipeline_schedule("1F1B"); }),
            "parallel.pipeline_schedule: unknown schedule '1F1B': choose gpipe, 1f1b, "
            "interleaved_1f1b or zb_h1");
}

TEST(PipelineScheduleTest, GPipeRunsEveryForwardThenEveryBackwardInTheSameOrder) {
  std::string s;
  for (const PipelineAction& a : pipeline_actions(PipelineSchedule::kGPipe, {3, 3, 1}, 1))
    s += to_string(a) + " ";
  EXPECT_EQ(s,
            "recvA0<-0 F0 sendA0->2 recvA1<-0 F1 sendA1->2 recvA2<-0 F2 sendA2->2 "
            "recvG0<-2 B0 sendG0->0 recvG1<-2 B1 sendG1->0 recvG2<-2 B2 sendG2->0 ");
}

TEST(PipelineScheduleTest, OneFOneBOnFourStagesIsMegatronsOrder) {
  const PipelineShape shape{4, 6, 1};
  auto computes = [&](int stage) {
    std::string s;
    for (const PipelineAction& a : pipeline_actions(PipelineSchedule::kOneFOneB, shape, stage))
      if (is_compute(a.op)) s += to_string(a) + " ";
    return s;
  };
  EXPECT_EQ(computes(0), "F0 F1 F2 F3 B0 F4 B1 F5 B2 B3 B4 B5 ");
  EXPECT_EQ(computes(2), "F0 F1 B0 F2 B1 F3 B2 F4 B3 F5 B4 B5 ");
  EXPECT_EQ(computes(3), "F0 B0 F1 B1 F2 B2 F3 B3 F4 B4 F5 B5 ");
  // With the messages: the receive right before its pass, the send right after.
  std::string s;
  for (const PipelineAction& a : pipeline_actions(PipelineSchedule::kOneFOneB, {2, 2, 1}, 1))
    s += to_string(a) + " ";
  EXPECT_EQ(s, "recvA0<-0 F0 B0 sendG0->0 recvA1<-0 F1 B1 sendG1->0 ");
}

TEST(PipelineScheduleTest, InterleavedFollowsMegatronsTableAndWarmup) {
  // p = 2, m = 4, v = 2: forwards take (micro-batch, chunk) in groups of p per chunk —
  // (0,0) (1,0) (0,1) (1,1) (2,0) (3,0) (2,1) (3,1) — backwards the same with the chunks
  // reversed; stage 0 warms up with 2(p-1) + (v-1)p = 4 forwards, stage 1 with 2.
  const PipelineShape shape{2, 4, 2};
  auto computes = [&](int stage) {
    std::string s;
    for (const PipelineAction& a : pipeline_actions(PipelineSchedule::kInterleaved, shape, stage))
      if (is_compute(a.op)) s += to_string(a) + " ";
    return s;
  };
  EXPECT_EQ(computes(0), "F0 F1 F0.1 F1.1 F2 B0.1 F3 B1.1 F2.1 B0 F3.1 B1 B2.1 B3.1 B2 B3 ");
  EXPECT_EQ(computes(1), "F0 F1 F0.1 B0.1 F1.1 B1.1 F2 B0 F3 B1 F2.1 B2.1 F3.1 B3.1 B2 B3 ");
  // The ring: stage 1's chunk 0 hands its output to stage 0's chunk 1, and gets its gradient
  // back from it.
  const auto s1 = pipeline_actions(PipelineSchedule::kInterleaved, shape, 1);
  EXPECT_EQ(to_string(s1[1]), "F0");
  EXPECT_EQ(to_string(s1[2]), "sendA0->0");
  const auto s0 = pipeline_actions(PipelineSchedule::kInterleaved, shape, 0);
  const PipelineAction recv{PipelineOp::kRecvActivation, 0, 1, 1};
  EXPECT_NE(std::find(s0.begin(), s0.end(), recv), s0.end());
}

TEST(PipelineScheduleTest, ZeroBubbleH1LetsStageSsWeightGradientsLagSBehind) {
  const PipelineShape shape{4, 6, 1};
  auto computes = [&](int stage) {
    std::string s;
    for (const PipelineAction& a : pipeline_actions(PipelineSchedule::kZeroBubbleH1, shape, stage))
      if (is_compute(a.op)) s += to_string(a) + " ";
    return s;
  };
  EXPECT_EQ(computes(0), "F0 F1 F2 F3 Bi0 W0 F4 Bi1 W1 F5 Bi2 W2 Bi3 W3 Bi4 W4 Bi5 W5 ");
  EXPECT_EQ(computes(1), "F0 F1 F2 Bi0 F3 Bi1 W0 F4 Bi2 W1 F5 Bi3 W2 Bi4 W3 Bi5 W4 W5 ");
  EXPECT_EQ(computes(3), "F0 Bi0 F1 Bi1 F2 Bi2 F3 Bi3 W0 F4 Bi4 W1 F5 Bi5 W2 W3 W4 W5 ");
}

// The properties that hold for every schedule on every shape, stage by stage.
TEST(PipelineScheduleTest, EveryListIsWellOrderedAndItsMessagesPairUpWithTheNeighbours) {
  int checked = 0;
  for (const auto& c : all_pipeline_cases()) {
    SCOPED_TRACE(c.name());
    const Lists lists = pipeline_actions_all(c.schedule, c.shape);
    ASSERT_EQ(static_cast<int>(lists.size()), c.shape.stages);
    const bool split = c.schedule == PipelineSchedule::kZeroBubbleH1;
    for (int s = 0; s < c.shape.stages; ++s) {
      EXPECT_EQ(check_stage_order(lists[s], c.shape, s, split), "") << "stage " << s;
      EXPECT_EQ(lists[s], pipeline_actions(c.schedule, c.shape, s));  // one stage alone: the same
    }
    EXPECT_EQ(check_message_order(lists, c.shape), "");
    ++checked;
  }
  EXPECT_GT(checked, 250);
}

// The checks above catch a wrong list: each mutation of a right one is reported.
TEST(PipelineScheduleTest, TheOrderChecksCatchSwappedActions) {
  const PipelineShape shape{4, 8, 1};
  Lists lists = pipeline_actions_all(PipelineSchedule::kOneFOneB, shape);
  auto index_of = [](const std::vector<PipelineAction>& l, const std::string& text) {
    for (size_t i = 0; i < l.size(); ++i)
      if (to_string(l[i]) == text) return i;
    ADD_FAILURE() << text << " not found";
    return size_t{0};
  };
  {  // the backward of micro-batch 1 before its forward
    auto l = lists[3];
    std::swap(l[index_of(l, "F1")], l[index_of(l, "B1")]);
    EXPECT_EQ(check_stage_order(l, shape, 3, false),
              "stage 3 micro-batch 1 chunk 0: backward before forward");
  }
  {  // a send before the pass that computes it
    auto l = lists[1];
    std::swap(l[index_of(l, "F2")], l[index_of(l, "sendA2->2")]);
    EXPECT_EQ(check_stage_order(l, shape, 1, false),
              "stage 1 micro-batch 2 chunk 0: activation sent before the forward");
  }
  {  // two forwards (with their sends) in the other order than the next stage receives them
    Lists broken = lists;
    auto& l = broken[0];
    std::swap(l[index_of(l, "F1")], l[index_of(l, "F2")]);
    std::swap(l[index_of(l, "sendA1->1")], l[index_of(l, "sendA2->1")]);
    EXPECT_EQ(check_stage_order(l, shape, 0, false), "");  // each list alone still looks right
    EXPECT_EQ(check_message_order(broken, shape),
              "stage 0 -> 1 activations: sends and receives differ");
  }
  {  // ZB-H1: a W before its B
    Lists zb = pipeline_actions_all(PipelineSchedule::kZeroBubbleH1, shape);
    auto& l = zb[2];
    std::swap(l[index_of(l, "Bi0")], l[index_of(l, "W0")]);
    EXPECT_EQ(check_stage_order(l, shape, 2, true),
              "stage 2 micro-batch 0 chunk 0: W before its B");
  }
}

// Run together with the runtime's semantics, every list finishes: no deadlock, nothing left.
TEST(PipelineScheduleTest, EveryScheduleRunsToTheEndInLockStep) {
  for (const auto& c : all_pipeline_cases()) {
    SCOPED_TRACE(c.name());
    EXPECT_NO_THROW(simulate_pipeline(pipeline_actions_all(c.schedule, c.shape), c.shape));
    // Communication that takes time changes when things happen, not whether they can.
    EXPECT_NO_THROW(simulate_pipeline(pipeline_actions_all(c.schedule, c.shape), c.shape,
                                      {1.0, 1.0, 1.0, 0.7}));
  }
}

// Megatron's warm-up of stage s in the interleaved schedule, in chunk forwards, capped at m·v.
int interleaved_warmup(const PipelineShape& shape, int s) {
  const int p = shape.stages;
  const int v = shape.virtual_stages;
  return std::min(2 * (p - 1 - s) + (v - 1) * p, shape.micro_batches * v);
}

TEST(PipelineScheduleTest, PeakLiveActivationsPerStageMatchEachSchedulesBound) {
  for (const auto& c : all_pipeline_cases()) {
    SCOPED_TRACE(c.name());
    const int p = c.shape.stages;
    const int m = c.shape.micro_batches;
    const int v = c.shape.virtual_stages;
    const PipelineSimulation sim =
        simulate_pipeline(pipeline_actions_all(c.schedule, c.shape), c.shape);
    for (int s = 0; s < p; ++s) {
      const int peak = sim.stages[s].peak_live;
      switch (c.schedule) {
        case PipelineSchedule::kGPipe: EXPECT_EQ(peak, m) << "stage " << s; break;
        case PipelineSchedule::kOneFOneB:
          EXPECT_EQ(peak, std::min(m, p - s)) << "stage " << s;
          EXPECT_LE(peak, p);
          break;
        case PipelineSchedule::kZeroBubbleH1:
          // Stage s holds 1F1B's p-s plus the s micro-batches whose W lags: p on every stage,
          // which is 1F1B's peak (stage 0's), as the paper says.
          EXPECT_EQ(peak, std::min(m, p)) << "stage " << s;
          break;
        case PipelineSchedule::kInterleaved:
          // Warm-up forwards plus the one of the first steady step; on stage 0 at most
          // p·v + p - 1 chunks, i.e. p(1 + (p-1)/(pv)) stages' worth (Megatron's bound).
          EXPECT_EQ(peak, std::min(interleaved_warmup(c.shape, s) + 1, m * v)) << "stage " << s;
          EXPECT_LE(peak, p * v + p - 1);
          break;
      }
    }
  }
}

TEST(PipelineScheduleTest, BubbleFractionsEqualTheTextbookFormulas) {
  for (const auto& c : all_pipeline_cases()) {
    SCOPED_TRACE(c.name());
    const double p = c.shape.stages;
    const double m = c.shape.micro_batches;
    const double v = c.shape.virtual_stages;
    // F = 1, B = 1, W = 1: a whole backward costs 2.
    const PipelineSimulation sim =
        simulate_pipeline(pipeline_actions_all(c.schedule, c.shape), c.shape);
    switch (c.schedule) {
      case PipelineSchedule::kGPipe:
      case PipelineSchedule::kOneFOneB:
        EXPECT_NEAR(sim.bubble_fraction, (p - 1) / (m + p - 1), 1e-12);
        EXPECT_NEAR(sim.makespan, 3 * (m + p - 1), 1e-9);
        break;
      case PipelineSchedule::kInterleaved:
        EXPECT_NEAR(sim.bubble_fraction, (p - 1) / (v * m + p - 1), 1e-12);
        break;
      case PipelineSchedule::kZeroBubbleH1: {
        // The paper's bubble, (p-1)(T_F + T_B - T_W) per stage, once m ≥ p: the W passes that
        // lag fill (p-1) T_W of 1F1B's (p-1)(T_F + T_B + T_W). With fewer micro-batches only
        // m-1 lag. Always below 1F1B's.
        const PipelineSimulation one =
            simulate_pipeline(pipeline_actions_all(PipelineSchedule::kOneFOneB, c.shape), c.shape);
        if (p > 1) {
          EXPECT_LT(sim.bubble_fraction, one.bubble_fraction);
        }
        for (const StageTiming& t : sim.stages)
          EXPECT_NEAR(t.idle, 2 * (p - 1) - std::min(m - 1, p - 1), 1e-9);
        break;
      }
    }
    for (const StageTiming& t : sim.stages) {
      EXPECT_NEAR(t.busy, 3 * m, 1e-9);  // every stage does all its work, whatever the order
      EXPECT_NEAR(t.busy + t.idle, sim.makespan, 1e-9);
    }
  }
}

// With other costs (B = 2, W = 1: a whole backward three times a forward) the formulas hold as
// the papers write them: GPipe's and 1F1B's bubble is (p-1)(T_F+T_B+T_W) per stage,
// interleaved's that over v, ZB-H1's (p-1)(T_F+T_B) - min(m-1, p-1) T_W.
TEST(PipelineScheduleTest, BubbleFormulasHoldForOtherPassCosts) {
  const PipelineCosts costs{1.0, 2.0, 1.0, 0.0};
  for (const auto& c : all_pipeline_cases()) {
    SCOPED_TRACE(c.name());
    const double p = c.shape.stages;
    const double m = c.shape.micro_batches;
    const double v = c.shape.virtual_stages;
    const PipelineSimulation sim =
        simulate_pipeline(pipeline_actions_all(c.schedule, c.shape), c.shape, costs);
    double expected = (p - 1) * 4;
    if (c.schedule == PipelineSchedule::kInterleaved) expected /= v;
    if (c.schedule == PipelineSchedule::kZeroBubbleH1)
      expected = (p - 1) * 3 - std::min(m - 1, p - 1);
    for (const StageTiming& t : sim.stages) EXPECT_NEAR(t.idle, expected, 1e-9);
  }
}

TEST(PipelineScheduleTest, ShapesASchedulesCannotRunAreRefusedWithTheFix) {
  using S = PipelineSchedule;
  EXPECT_EQ(error_of([] {
              pipeline_actions(S::kInterleaved, {4, 6, 2}, 0);
            }),
            "parallel.pipeline_schedule = interleaved_1f1b needs training.gradient_accumulation_"
            "steps to be a multiple of parallel.pipeline_model_parallel_size (4), as Megatron does "
            "(micro-batches enter each chunk in groups of 4); got 6: use 8 or 4");
  EXPECT_EQ(error_of([] {
              pipeline_actions(S::kInterleaved, {4, 3, 2}, 0);
            }),
            "parallel.pipeline_schedule = interleaved_1f1b needs training.gradient_accumulation_"
            "steps to be a multiple of parallel.pipeline_model_parallel_size (4), as Megatron does "
            "(micro-batches enter each chunk in groups of 4); got 3: use 4");
  EXPECT_EQ(error_of([] {
              pipeline_actions(S::kInterleaved, {4, 8, 1}, 0);
            }),
            "parallel.pipeline_schedule = interleaved_1f1b needs parallel.virtual_pipeline_model_"
            "parallel_size of 2 or more, got 1: with one chunk per rank use 1f1b");
  EXPECT_EQ(error_of([] {
              pipeline_actions(S::kInterleaved, {1, 8, 2}, 0);
            }),
            "parallel.pipeline_schedule = interleaved_1f1b needs parallel.pipeline_model_parallel_"
            "size of 2 or more, got 1: use 1f1b (or gpipe) on one stage");
  EXPECT_EQ(error_of([] {
              pipeline_actions(S::kOneFOneB, {4, 8, 2}, 0);
            }),
            "parallel.virtual_pipeline_model_parallel_size = 2 needs parallel.pipeline_schedule = "
            "interleaved_1f1b, not 1f1b: set the schedule to interleaved_1f1b or the virtual size "
            "to 1");
  EXPECT_EQ(error_of([] {
              pipeline_actions(S::kGPipe, {4, 0, 1}, 0);
            }),
            "training.gradient_accumulation_steps (the pipeline's micro-batches per step) must be "
            "at least 1, got 0");
  EXPECT_EQ(error_of([] {
              pipeline_actions(S::kGPipe, {0, 4, 1}, 0);
            }),
            "parallel.pipeline_model_parallel_size must be at least 1, got 0");
  EXPECT_EQ(error_of([] {
              pipeline_actions(S::kZeroBubbleH1, {4, 4, 0}, 0);
            }),
            "parallel.virtual_pipeline_model_parallel_size must be at least 1, got 0");
  EXPECT_EQ(error_of([] {
              pipeline_actions(S::kOneFOneB, {4, 4, 1}, 4);
            }),
            "pipeline stage 4 is outside the 4 stages of parallel.pipeline_model_parallel_size");
  EXPECT_EQ(error_of([] {
              pipeline_actions(S::kOneFOneB, {4, 4, 1}, -1);
            }),
            "pipeline stage -1 is outside the 4 stages of parallel.pipeline_model_parallel_size");
  // What is allowed: fewer micro-batches than stages without interleaving (a large bubble, but a
  // valid schedule, as in Megatron), and the interleaved multiples.
  EXPECT_NO_THROW(check_pipeline_shape(S::kOneFOneB, {8, 3, 1}));
  EXPECT_NO_THROW(check_pipeline_shape(S::kZeroBubbleH1, {8, 3, 1}));
  EXPECT_NO_THROW(check_pipeline_shape(S::kInterleaved, {4, 12, 3}));
}

}  // namespace
}  // namespace keel::parallel
