// Pipeline schedules as pure functions: for one pipeline stage, the ordered list of what it does
// in one step — forward and backward passes of micro-batches and the sends and receives that move
// activations and their gradients between neighbouring stages. GPipe, 1F1B, Megatron's
// interleaved 1F1B (virtual stages) and zero-bubble ZB-H1. No MPI: the runtime executes the
// lists; parallel/pipeline_sim.h executes all stages' lists on a clock to check and measure them.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace keel::parallel {

// parallel.pipeline_schedule.
enum class PipelineSchedule : uint8_t {
  kGPipe,         // "gpipe": every forward, then every backward; m micro-batches alive
  kOneFOneB,      // "1f1b": PipeDream-flush / Megatron's default; ≤ p alive on stage 0
  kInterleaved,   // "interleaved_1f1b": Megatron's, v model chunks per rank
  kZeroBubbleH1,  // "zb_h1": 1F1B with the backward split, weight gradients deferred (Qi et al.)
};

// "gpipe", "1f1b", "interleaved_1f1b", "zb_h1".
std::string_view pipeline_schedule_name(PipelineSchedule schedule);
// The inverse; anything else is a KEEL_CHECK error listing the choices.
PipelineSchedule parse_pipeline_schedule(std::string_view name);

enum class PipelineOp : uint8_t {
  kForward,         // the chunk's forward of the micro-batch (on the last virtual stage: + loss)
  kBackward,        // the whole backward: input gradient and weight gradients together
  kBackwardInput,   // ZB-H1's B: the input gradient only (what the previous stage waits for)
  kBackwardWeight,  // ZB-H1's W: the weight gradients, from what kBackwardInput left behind
  kSendActivation,  // the forward's output, to the next virtual stage
  kRecvActivation,  // the forward's input, from the previous virtual stage
  kSendGrad,        // the input gradient, to the previous virtual stage
  kRecvGrad,        // the output's gradient, from the next virtual stage
};

// "forward", "backward", "backward_input", "backward_weight", "send_activation",
// "recv_activation", "send_grad", "recv_grad".
std::string_view pipeline_op_name(PipelineOp op);
bool is_compute(PipelineOp op);
bool is_send(PipelineOp op);
bool is_recv(PipelineOp op);

// One entry of a stage's list. The contract with the runtime that executes it:
//  - Compute actions run in list order, one at a time.
//  - A Recv precedes, in the list, the compute that consumes its tensor; the runtime may post it
//    (MPI_Irecv / ncclRecv) as early as it likes — at the start of the step, or as soon as a
//    buffer is free — but must wait for it to complete before that compute. Posting early cannot
//    deadlock: no stage ever blocks on a send.
//  - A Send follows the compute that produced its tensor and is non-blocking (isend): the
//    runtime keeps the buffer alive until the send completes, and waits for every send of the
//    step before the step ends (the optimizer).
//  - Between two stages, each direction carries its sends in list order and the peer lists the
//    matching receives in the same order (same micro-batch, same virtual stage), so a runtime may
//    match messages by order on one tag per direction and kind.
//  - The first virtual stage (stage 0, chunk 0) receives no activation: it embeds the
//    micro-batch's tokens. The last (stage p-1, chunk v-1) receives no gradient: its forward ends
//    in the loss, whose backward starts its kBackward / kBackwardInput.
struct PipelineAction {
  PipelineOp op = PipelineOp::kForward;
  int micro_batch = 0;  // 0 .. m-1
  // This rank's model chunk, 0 .. v-1: with p stages the chunk c of stage s is virtual stage
  // c·p + s (Megatron's layout; v = 1 without interleaving). For a send, the chunk that produced
  // the tensor; for a receive, the chunk that will consume it.
  int chunk = 0;
  int peer = -1;  // send/recv: the other side's pipeline rank (in the pp group); compute: -1
  bool operator==(const PipelineAction&) const = default;
};

// "F3", "B3", "Bi3", "W3", "sendA3->1", "recvA3<-0", "sendG3->0", "recvG3<-1", with ".c" after
// the micro-batch when chunk ≠ 0 ("F3.1"): for messages and test failures.
std::string to_string(const PipelineAction& action);

// The shape of one pipeline: p stages, m micro-batches per step (training.gradient_accumulation_
// steps), v model chunks per rank (parallel.virtual_pipeline_model_parallel_size).
struct PipelineShape {
  int stages = 1;
  int micro_batches = 1;
  int virtual_stages = 1;
};

// Throws (KEEL_CHECK, one line naming the config keys and the fix) unless the schedule can run
// this shape: m ≥ 1; v = 1 except for interleaved_1f1b, which needs p ≥ 2, v ≥ 2 and, as
// Megatron does, m a multiple of p (micro-batches enter each chunk in groups of p).
void check_pipeline_shape(PipelineSchedule schedule, const PipelineShape& shape);

// The ordered actions of pipeline stage `stage` (0 .. p-1) for one step (checks the shape first).
std::vector<PipelineAction> pipeline_actions(PipelineSchedule schedule, const PipelineShape& shape,
                                             int stage);

// Every stage's list, [stage][i].
std::vector<std::vector<PipelineAction>> pipeline_actions_all(PipelineSchedule schedule,
                                                              const PipelineShape& shape);

// The virtual stage of chunk `chunk` on stage `stage`: chunk·p + stage.
inline int virtual_stage(int stage, int chunk, int stages) { return chunk * stages + stage; }

}  // namespace keel::parallel
