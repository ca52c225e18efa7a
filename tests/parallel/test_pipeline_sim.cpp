// The pipeline simulator (parallel/pipeline_sim.h): that it refuses every kind of list the
// runtime could not execute, each with its words — a deadlock, messages out of order, a pass
// before what it needs, a message nobody receives, work left undone — and what it measures:
// times with communication latency, `keel plan`'s summary, and the timeline docs/PARALLEL.md shows.
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "parallel/pipeline_schedule.h"
#include "parallel/pipeline_sim.h"
#include "tests/parallel/pipeline_test_util.h"

namespace keel::parallel {
namespace {

using test::error_of;
using test::Lists;

size_t index_of(const std::vector<PipelineAction>& list, const std::string& text) {
  for (size_t i = 0; i < list.size(); ++i)
    if (to_string(list[i]) == text) return i;
  ADD_FAILURE() << text << " not found";
  return 0;
}

void remove_action(std::vector<PipelineAction>& list, const std::string& text) {
  list.erase(list.begin() + static_cast<std::ptrdiff_t>(index_of(list, text)));
}

const PipelineShape kTwo{2, 2, 1};

Lists one_f_one_b(const PipelineShape& shape = kTwo) {
  return pipeline_actions_all(PipelineSchedule::kOneFOneB, shape);
}

TEST(PipelineSimTest, AReceiveThatNoSendCanMeetIsADeadlockNamingEveryStuckStage) {
  Lists lists = one_f_one_b();  // stage 0: F0 sendA0 F1 sendA1 recvG0 B0 recvG1 B1
  auto& l = lists[0];
  const PipelineAction recv = l[index_of(l, "recvG0<-1")];
  remove_action(l, "recvG0<-1");
  l.insert(l.begin(), recv);  // waits for a gradient before sending the activation it needs
  EXPECT_EQ(error_of([&] { simulate_pipeline(lists, kTwo); }),
            "pipeline deadlock: stage 0 waits at action 0 (recvG0<-1); stage 1 waits at action 0 "
            "(recvA0<-0), and no stage can move: the lists' sends and receives do not pair up");
}

TEST(PipelineSimTest, ASendThatIsMissingLeavesItsReceiverStuck) {
  Lists lists = one_f_one_b();
  remove_action(lists[1], "sendG1->0");
  EXPECT_EQ(error_of([&] { simulate_pipeline(lists, kTwo); }),
            "pipeline deadlock: stage 0 waits at action 6 (recvG1<-1), and no stage can move: the "
            "lists' sends and receives do not pair up");
}

TEST(PipelineSimTest, MessagesOutOfOrderAreRefused) {
  Lists lists = one_f_one_b();
  auto& l = lists[0];  // stage 0 forwards micro-batch 1 before 0; stage 1 still expects 0 first
  std::swap(l[index_of(l, "F0")], l[index_of(l, "F1")]);
  std::swap(l[index_of(l, "sendA0->1")], l[index_of(l, "sendA1->1")]);
  EXPECT_EQ(error_of([&] { simulate_pipeline(lists, kTwo); }),
            "pipeline lists disagree on order: stage 1 action 0 (recvA0<-0) expects micro-batch 0 "
            "for virtual stage 1, but stage 0 sent micro-batch 1 for virtual stage 1 first");
}

TEST(PipelineSimTest, APassBeforeWhatItNeedsIsRefused) {
  {
    Lists lists = one_f_one_b();
    std::swap(lists[0][0], lists[0][1]);  // sendA0 before F0
    EXPECT_EQ(error_of([&] { simulate_pipeline(lists, kTwo); }),
              "pipeline list: stage 0 action 0 (sendA0->1) sends before the pass that computes it");
  }
  {
    Lists lists = one_f_one_b();
    std::swap(lists[1][0], lists[1][1]);  // F0 before recvA0
    EXPECT_EQ(error_of([&] { simulate_pipeline(lists, kTwo); }),
              "pipeline list: stage 1 action 0 (F0) runs before its input is received");
  }
  {
    Lists lists = one_f_one_b();
    auto& l = lists[0];
    std::swap(l[index_of(l, "recvG0<-1")], l[index_of(l, "B0")]);
    EXPECT_EQ(error_of([&] { simulate_pipeline(lists, kTwo); }),
              "pipeline list: stage 0 action 4 (B0) runs before its output's gradient is received");
  }
  {
    Lists lists = one_f_one_b();
    auto& l = lists[1];  // recvA0 F0 B0 sendG0 recvA1 F1 B1 sendG1
    std::swap(l[index_of(l, "F1")], l[index_of(l, "B1")]);
    EXPECT_EQ(error_of([&] { simulate_pipeline(lists, kTwo); }),
              "pipeline list: stage 1 action 5 (B1) runs before its forward");
  }
  {
    Lists lists = pipeline_actions_all(PipelineSchedule::kZeroBubbleH1, kTwo);
    auto& l = lists[1];
    std::swap(l[index_of(l, "Bi1")], l[index_of(l, "W1")]);
    EXPECT_EQ(error_of([&] { simulate_pipeline(lists, kTwo); }),
              "pipeline list: stage 1 action 6 (W1) runs before its backward_input (or after a "
              "whole backward)");
  }
}

TEST(PipelineSimTest, WrongPeersDuplicatesAndLeftoversAreRefused) {
  const PipelineShape three{3, 3, 1};
  {
    Lists lists = one_f_one_b(three);
    lists[1][index_of(lists[1], "sendA0->2")].peer = 0;
    EXPECT_EQ(error_of([&] { simulate_pipeline(lists, three); }),
              "pipeline list: stage 1 action 2 (sendA0->0) names peer 0, but the neighbour is "
              "stage 2");
  }
  {
    Lists lists = one_f_one_b(three);
    lists[0].insert(lists[0].begin(), {PipelineOp::kRecvActivation, 0, 0, 2});
    EXPECT_EQ(error_of([&] { simulate_pipeline(lists, three); }),
              "pipeline list: stage 0 action 0 (recvA0<-2) has no neighbour on that side (virtual "
              "stage 0 of 3)");
  }
  {
    Lists lists = one_f_one_b();
    lists[0].insert(lists[0].begin() + 2, lists[0][1]);  // sendA0 twice
    EXPECT_EQ(error_of([&] { simulate_pipeline(lists, kTwo); }),
              "pipeline list: stage 0 action 2 (sendA0->1) sends the same tensor twice");
  }
  {  // stage 1 never takes micro-batch 1; stage 0 no longer waits for its gradient
    Lists lists = one_f_one_b();
    for (const char* a : {"recvA1<-0", "F1", "B1", "sendG1->0"}) remove_action(lists[1], a);
    for (const char* a : {"recvG1<-1", "B1"}) remove_action(lists[0], a);
    EXPECT_EQ(error_of([&] { simulate_pipeline(lists, kTwo); }),
              "pipeline lists: stage 0 sent the activation of micro-batch 1 to stage 1, which "
              "never receives it");
  }
  {  // every message pairs up, but micro-batch 1 is never backpropagated
    Lists lists = one_f_one_b();
    for (const char* a : {"B1", "sendG1->0"}) remove_action(lists[1], a);
    for (const char* a : {"recvG1<-1", "B1"}) remove_action(lists[0], a);
    EXPECT_EQ(error_of([&] { simulate_pipeline(lists, kTwo); }),
              "pipeline list of stage 0 leaves micro-batch 1 chunk 0 unfinished (forward 1, "
              "backward 0, weight gradient 0)");
  }
  EXPECT_EQ(error_of([&] { simulate_pipeline(one_f_one_b(), three); }),
            "simulate_pipeline: 2 lists for 3 pipeline stages");
}

TEST(PipelineSimTest, CommunicationLatencyLengthensTheCriticalPathOncePerHop) {
  // GPipe: the first micro-batch crosses p-1 links forward and p-1 back; nothing else waits.
  for (int p = 1; p <= 6; ++p) {
    for (int m : {1, p, 2 * p + 1}) {
      const PipelineShape shape{p, m, 1};
      const PipelineSimulation sim = simulate_pipeline(
          pipeline_actions_all(PipelineSchedule::kGPipe, shape), shape, {1.0, 1.0, 1.0, 0.25});
      EXPECT_DOUBLE_EQ(sim.makespan, 3.0 * (m + p - 1) + 2 * (p - 1) * 0.25)
          << "p=" << p << " m=" << m;
    }
  }
}

TEST(PipelineSimTest, ThePlanGivesPeakMemoryInWholeStagesAndTheBubble) {
  const PipelinePlan one = plan_pipeline(PipelineSchedule::kOneFOneB, {4, 8, 1});
  EXPECT_EQ(one.peak_live_micro_batches, (std::vector<double>{4, 3, 2, 1}));
  EXPECT_DOUBLE_EQ(one.bubble_fraction, 3.0 / 11.0);
  EXPECT_DOUBLE_EQ(one.makespan, 33.0);
  // v = 2: each chunk is half a stage; stage 0 holds 2·3 + 4 + 1 = 11 chunks, 5.5 stages' worth.
  const PipelinePlan inter = plan_pipeline(PipelineSchedule::kInterleaved, {4, 8, 2});
  EXPECT_EQ(inter.peak_live_micro_batches, (std::vector<double>{5.5, 4.5, 3.5, 2.5}));
  EXPECT_NEAR(inter.bubble_fraction, 3.0 / 19.0, 1e-12);
  const PipelinePlan zb = plan_pipeline(PipelineSchedule::kZeroBubbleH1, {4, 8, 1});
  EXPECT_EQ(zb.peak_live_micro_batches, (std::vector<double>{4, 4, 4, 4}));
  EXPECT_DOUBLE_EQ(zb.bubble_fraction, 3.0 / 27.0);
  EXPECT_EQ(error_of([] {
              plan_pipeline(PipelineSchedule::kInterleaved, {4, 6, 2});
            }).substr(0, 60),
            "parallel.pipeline_schedule = interleaved_1f1b needs training");
}

TEST(PipelineSimTest, TheTimelineDrawsEachPassWhereItRan) {
  const PipelineShape two{2, 2, 1};
  EXPECT_EQ(pipeline_timeline(simulate_pipeline(one_f_one_b(two), two)),
            "stage 0 |F0F1....B0  ..B1  |\n"
            "stage 1 |..F0B0  F1B1  ....|\n");
  EXPECT_EQ(pipeline_timeline(
                simulate_pipeline(pipeline_actions_all(PipelineSchedule::kZeroBubbleH1, two), two)),
            "stage 0 |F0F1..B0W0B1W1|\n"
            "stage 1 |..F0B0F1B1W0W1|\n");
  // The two drawn in docs/PARALLEL.md.
  const PipelineShape four{4, 8, 1};
  EXPECT_EQ(pipeline_timeline(simulate_pipeline(one_f_one_b(four), four)),
            "stage 0 |F0F1F2F3............B0  F4B1  F5B2  F6B3  F7B4  ..B5  ..B6  ..B7  |\n"
            "stage 1 |..F0F1F2........B0  F3B1  F4B2  F5B3  F6B4  F7B5  ..B6  ..B7  ....|\n"
            "stage 2 |....F0F1....B0  F2B1  F3B2  F4B3  F5B4  F6B5  F7B6  ..B7  ........|\n"
            "stage 3 |......F0B0  F1B1  F2B2  F3B3  F4B4  F5B5  F6B6  F7B7  ............|\n");
  EXPECT_EQ(pipeline_timeline(simulate_pipeline(
                pipeline_actions_all(PipelineSchedule::kZeroBubbleH1, four), four)),
            "stage 0 |F0F1F2F3......B0W0F4B1W1F5B2W2F6B3W3F7B4W4B5W5B6W6B7W7|\n"
            "stage 1 |..F0F1F2....B0F3B1W0F4B2W1F5B3W2F6B4W3F7B5W4B6W5B7W6W7|\n"
            "stage 2 |....F0F1..B0F2B1F3B2W0F4B3W1F5B4W2F6B5W3F7B6W4B7W5W6W7|\n"
            "stage 3 |......F0B0F1B1F2B2F3B3W0F4B4W1F5B5W2F6B6W3F7B7W4W5W6W7|\n");
  // Interleaved chunks take 1/v of the time: draw in half units; chunk 1 in lower case.
  const PipelineShape inter{2, 2, 2};
  EXPECT_EQ(
      pipeline_timeline(
          simulate_pipeline(pipeline_actions_all(PipelineSchedule::kInterleaved, inter), inter),
          0.5),
      "stage 0 |F0F1f0f1....b0  ..b1  B0  B1  |\n"
      "stage 1 |..F0F1f0b0  f1b1  B0  B1  ....|\n");
  EXPECT_EQ(error_of([&] {
              pipeline_timeline(simulate_pipeline(
                  pipeline_actions_all(PipelineSchedule::kInterleaved, inter), inter));
            }),
            "pipeline_timeline: time 7.5 is not a multiple of the unit 1");
}

}  // namespace
}  // namespace keel::parallel
