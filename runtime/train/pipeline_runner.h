// Runs a pipeline stage's part of a step: the schedule's action list for this stage
// (parallel/pipeline_schedule.h) over the model's stage API (runtime/model/llama.h), with the
// activations and their gradients moving to and from the neighbouring stages by non-blocking
// send/recv on the pipeline group. Receives are posted ahead of need, as soon as a buffer is free;
// sends are waited for only when their buffer (the model's activation slot) is about to be reused,
// or at the end of the step. With interleaving the rank holds several model chunks, each with its
// own slots; chunk c of stage s is virtual stage c·p + s, whose neighbours may wrap around the
// ring (stage p−1's chunk c hands on to stage 0's chunk c+1). The micro-batches' gradients add up
// in the schedule's backward order, which for GPipe, 1F1B and ZB-H1 (its input and weight passes
// alike) is micro-batch order on every stage, and for interleaved 1F1B on every chunk: the
// one-rank run's sum, bit for bit.
#pragma once

#include <cstdint>
#include <deque>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/pipeline_schedule.h"
#include "runtime/model/llama.h"

namespace keel::runtime {

class PipelineRunner {
 public:
  // The model is this rank's stage: its chunks (one without interleaving), each with the
  // activation slots the schedule keeps alive at its peak; pp is the pipeline group, this rank
  // at the stage's place in it. Both outlive the runner.
  PipelineRunner(LlamaModel& model, parallel::Communicator& pp, parallel::PipelineSchedule schedule,
                 parallel::PipelineShape shape);

  // One step's forwards and backwards of shape.micro_batches micro-batches, micro-batch i the
  // (B, T) tokens and targets at tokens + i·B·T (every stage passes them; the first embeds the
  // tokens, the last takes the targets). Gradients accumulate as stage_forward/stage_backward
  // say. Returns Σ losses over the step's valid targets on the last stage, 0 on the others.
  double run_step(const int32_t* tokens, const int32_t* targets, float grad_scale);

  // One micro-batch forward only, through every virtual stage, for evaluation (collective over
  // the pipeline group): Σ losses on the last stage, 0 elsewhere.
  double evaluate(const int32_t* tokens, const int32_t* targets);

  // The bytes of the receive buffers a runner of this stage keeps (keel plan's buffers): two of
  // each kind, one message each. A receive due while both are busy adds one for the run.
  static size_t buffer_bytes(const LlamaModel& model) {
    return 2 * kPool * static_cast<size_t>(model.stage_io_elems()) * sizeof(float);
  }

  // Seconds the last run_step spent waiting for a neighbour (for its data, or for its receive of
  // ours). A stage that ends its list before the others spends the rest of its bubble after
  // run_step (the trainer adds the wait in the loss's sum over the stages).
  double wait_seconds() const { return wait_seconds_; }
  const std::vector<parallel::PipelineAction>& actions() const { return actions_; }

 private:
  static constexpr size_t kPool = 2;  // receive buffers of each kind to start with
  enum Kind { kActivation = 0, kGrad = 1 };
  // A receive buffer and the message it is posted for (micro-batch and chunk; -1 when free).
  struct Buffer {
    std::vector<float> data;
    int micro_batch = -1;
    int chunk = 0;
    parallel::Work work;
  };
  // Posts the receive of action i into a free buffer of its kind (growing the pool only when
  // `must`: the action is due); false when none is free.
  bool post(size_t i, bool must);
  // Posts the receives ahead of position i in list order, while buffers are free.
  void post_ahead(size_t i);
  // The received tensor of `kind` for (mb, chunk), waited for; its buffer is freed by release.
  Buffer& received(Kind kind, int mb, int chunk);
  void release(Buffer& b) { b.micro_batch = -1; }
  // A free slot of the chunk for a forward, and the one (mb, chunk) runs in.
  int take_slot(int chunk);
  int& slot_of(int mb, int chunk) {
    return slot_of_[static_cast<size_t>(mb * shape_.virtual_stages + chunk)];
  }
  // One of the things a slot waits for before it is free: its backward (both passes of a split
  // one), and, except on virtual stage 0, the send of its input gradient.
  void release_slot(int slot);
  void wait(parallel::Work& w);

  LlamaModel& model_;
  parallel::Communicator& pp_;
  parallel::PipelineShape shape_;
  std::vector<parallel::PipelineAction> actions_;
  int64_t elems_;  // floats per message
  std::vector<Buffer> buffers_[2];
  size_t posted_ = 0;         // actions before this index have had their receives posted
  std::vector<int> slot_of_;  // (micro-batch, chunk) → activation slot (-1: none)
  std::vector<std::vector<int>> free_slots_;       // per chunk: slots no micro-batch occupies
  std::vector<int> chunk_of_;                      // per slot: its chunk
  std::vector<int> holds_;                         // per slot: releases it still waits for
  std::vector<std::deque<parallel::Work>> sends_;  // per slot: sends from its buffers in flight
  double wait_seconds_ = 0.0;
};

}  // namespace keel::runtime
