// Executes every stage's pipeline list (parallel/pipeline_schedule.h) together on a simulated
// clock, with the runtime's semantics — computes in list order, sends that never block, receives
// that wait until the neighbour's matching send has arrived — and checks the lists on the way:
// each pass runs once and after what it needs, messages meet in order, nothing is left over, no
// deadlock. It measures what `keel plan` reports: the bubble and the peak of live activations.
#pragma once

#include <string>
#include <vector>

#include "parallel/pipeline_schedule.h"

namespace keel::parallel {

// What each pass costs, for one micro-batch through one whole stage (all the layers of a rank);
// a chunk of an interleaved stage costs 1/v of it. kBackward costs backward_input +
// backward_weight. The defaults, F = 1 and B = W = 1, are the usual rule of thumb (a backward
// costs twice a forward); the textbook bubble formulas hold exactly under these and others.
struct PipelineCosts {
  double forward = 1.0;
  double backward_input = 1.0;
  double backward_weight = 1.0;
  double p2p = 0.0;  // from a send to the data's arrival at the peer
};

struct StageTiming {
  double busy = 0.0;    // Σ compute costs
  double idle = 0.0;    // makespan − busy: the stage's share of the bubble
  double finish = 0.0;  // when its last compute ends
  // The most (micro-batch, chunk) activation sets alive at once; one lives from its chunk's
  // forward until that chunk's backward (or its W, when the backward is split). Interleaved
  // chunks hold 1/v of a stage's layers each: divide by v for whole-stage micro-batches.
  int peak_live = 0;
};

// One compute as it ran.
struct TimedAction {
  PipelineAction action;
  double start = 0.0;
  double end = 0.0;
};

struct PipelineSimulation {
  PipelineShape shape;
  double makespan = 0.0;  // from 0 to the last compute of any stage
  // Σ idle / (p · makespan): the share of the stages' time lost to the bubble.
  double bubble_fraction = 0.0;
  std::vector<StageTiming> stages;
  std::vector<std::vector<TimedAction>> computes;  // [stage], in execution order
};

// Runs lists[stage] for every stage (lists.size() == shape.stages). Throws keel::Error on a list
// that the runtime could not execute: a deadlock (naming each stuck stage and what it waits for),
// a receive that meets another message than the one its peer sent first, a pass before what it
// needs (a forward before its activation arrived, a backward before its forward or its gradient,
// a W before its B, a send before its tensor exists), a pass twice or never, a wrong peer, or a
// message nobody receives.
PipelineSimulation simulate_pipeline(const std::vector<std::vector<PipelineAction>>& lists,
                                     const PipelineShape& shape, const PipelineCosts& costs = {});

// What `keel plan` shows for a schedule: per stage, the peak of live activations in whole-stage
// micro-batches (peak_live / v), and the bubble fraction, under `costs`.
struct PipelinePlan {
  std::vector<double> peak_live_micro_batches;  // [stage]
  double bubble_fraction = 0.0;
  double makespan = 0.0;
};
PipelinePlan plan_pipeline(PipelineSchedule schedule, const PipelineShape& shape,
                           const PipelineCosts& costs = {});

// One line per stage, one cell per `unit` of time: "F3", "B3", "W3" (a split backward's B is
// "B" too) at the start of each compute, spaces through the rest of it, "." where the stage is
// idle; odd chunks in lower case ("f3"). Every start and end must be a multiple of `unit`.
std::string pipeline_timeline(const PipelineSimulation& sim, double unit = 1.0);

}  // namespace keel::parallel
