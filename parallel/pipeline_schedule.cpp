#include "parallel/pipeline_schedule.h"

#include <algorithm>
#include <deque>
#include <sstream>

#include "kernels/error.h"

namespace keel::parallel {

namespace {

constexpr PipelineSchedule kSchedules[] = {PipelineSchedule::kGPipe, PipelineSchedule::kOneFOneB,
                                           PipelineSchedule::kInterleaved,
                                           PipelineSchedule::kZeroBubbleH1};

// A compute action before the sends and receives around it are added.
struct Compute {
  PipelineOp op;
  int micro_batch;
  int chunk;
};

// Megatron's order of (micro-batch, chunk) for the interleaved schedule: micro-batches go through
// the chunks in groups of p — chunk 0 of micro-batches 0..p-1, chunk 1 of the same, ..., then the
// next group. Forward k runs table[k]; backward k runs table[k] with the chunks reversed.
std::vector<Compute> interleaved_table(const PipelineShape& shape) {
  const int p = shape.stages;
  std::vector<Compute> table;
  table.reserve(static_cast<size_t>(shape.micro_batches) * shape.virtual_stages);
  for (int group = 0; group < shape.micro_batches; group += p)
    for (int chunk = 0; chunk < shape.virtual_stages; ++chunk)
      for (int mb = group; mb < group + p; ++mb) table.push_back({PipelineOp::kForward, mb, chunk});
  return table;
}

std::vector<Compute> gpipe_order(const PipelineShape& shape) {
  std::vector<Compute> order;
  for (int mb = 0; mb < shape.micro_batches; ++mb) order.push_back({PipelineOp::kForward, mb, 0});
  // Backwards in the order the micro-batches entered, as in 1F1B: the previous stage receives
  // gradients in the order it sent activations, and buffers recycle first-in first-out.
  for (int mb = 0; mb < shape.micro_batches; ++mb) order.push_back({PipelineOp::kBackward, mb, 0});
  return order;
}

// Warm-up of p-1-s forwards (stage s), then one forward and one backward in turn, then the
// backwards left: stage s never holds more than p-s micro-batches.
std::vector<Compute> one_f_one_b_order(const PipelineShape& shape, int stage) {
  const int m = shape.micro_batches;
  const int warmup = std::min(shape.stages - 1 - stage, m);
  std::vector<Compute> order;
  for (int mb = 0; mb < warmup; ++mb) order.push_back({PipelineOp::kForward, mb, 0});
  for (int mb = 0; mb < m; ++mb) {
    if (mb + warmup < m) order.push_back({PipelineOp::kForward, mb + warmup, 0});
    order.push_back({PipelineOp::kBackward, mb, 0});
  }
  return order;
}

// ZB-H1 (Qi et al., "Zero Bubble Pipeline Parallelism", 2023): 1F1B's order with every backward
// split into B (input gradient) and W (weight gradients), and stage s letting its W passes lag s
// behind its B passes. The B passes, which the previous stage waits for, then travel back without
// waiting for any W, and the lagging W passes fill what in 1F1B is the bubble. A micro-batch lives
// until its W, so stage s holds at most p-s + s = p micro-batches: 1F1B's peak (stage 0's).
std::vector<Compute> zb_h1_order(const PipelineShape& shape, int stage) {
  std::vector<Compute> order;
  std::deque<int> pending;  // micro-batches whose B ran and whose W has not
  for (const Compute& c : one_f_one_b_order(shape, stage)) {
    if (c.op == PipelineOp::kForward) {
      order.push_back(c);
      continue;
    }
    order.push_back({PipelineOp::kBackwardInput, c.micro_batch, 0});
    pending.push_back(c.micro_batch);
    if (static_cast<int>(pending.size()) > stage) {
      order.push_back({PipelineOp::kBackwardWeight, pending.front(), 0});
      pending.pop_front();
    }
  }
  for (int mb : pending) order.push_back({PipelineOp::kBackwardWeight, mb, 0});
  return order;
}

// Megatron-LM's interleaved 1F1B (Narayanan et al., 2021; megatron/core/pipeline_parallel/
// schedules.py): the same warm-up / steady / cool-down shape as 1F1B over the m·v (micro-batch,
// chunk) pairs of interleaved_table, with a longer warm-up — 2(p-1-s) + (v-1)p forwards — so that
// the first chunk's output has come back around the ring by the time the stage needs it.
std::vector<Compute> interleaved_order(const PipelineShape& shape, int stage) {
  const int p = shape.stages;
  const int v = shape.virtual_stages;
  const std::vector<Compute> table = interleaved_table(shape);
  const int total = static_cast<int>(table.size());
  const int warmup = std::min(2 * (p - 1 - stage) + (v - 1) * p, total);
  auto forward = [&](int k) { return table[static_cast<size_t>(k)]; };
  auto backward = [&](int k) {
    const Compute& t = table[static_cast<size_t>(k)];
    return Compute{PipelineOp::kBackward, t.micro_batch, v - 1 - t.chunk};
  };
  std::vector<Compute> order;
  for (int k = 0; k < warmup; ++k) order.push_back(forward(k));
  for (int k = 0; k < total; ++k) {
    if (k + warmup < total) order.push_back(forward(k + warmup));
    order.push_back(backward(k));
  }
  return order;
}

// Adds the receive before and the send after each compute: a chunk's forward needs the previous
// virtual stage's output unless it is the first virtual stage; its backward (or B) needs the next
// one's input gradient unless it is the last.
std::vector<PipelineAction> with_communication(const std::vector<Compute>& order,
                                               const PipelineShape& shape, int stage) {
  const int p = shape.stages;
  const int last = p * shape.virtual_stages - 1;
  const int prev = (stage + p - 1) % p;
  const int next = (stage + 1) % p;
  std::vector<PipelineAction> actions;
  actions.reserve(order.size() * 3);
  for (const Compute& c : order) {
    const int vs = virtual_stage(stage, c.chunk, p);
    auto comm = [&](PipelineOp op, int peer) {
      actions.push_back({op, c.micro_batch, c.chunk, peer});
    };
    switch (c.op) {
      case PipelineOp::kForward:
        if (vs > 0) comm(PipelineOp::kRecvActivation, prev);
        actions.push_back({c.op, c.micro_batch, c.chunk, -1});
        if (vs < last) comm(PipelineOp::kSendActivation, next);
        break;
      case PipelineOp::kBackward:
      case PipelineOp::kBackwardInput:
        if (vs < last) comm(PipelineOp::kRecvGrad, next);
        actions.push_back({c.op, c.micro_batch, c.chunk, -1});
        if (vs > 0) comm(PipelineOp::kSendGrad, prev);
        break;
      default: actions.push_back({c.op, c.micro_batch, c.chunk, -1}); break;
    }
  }
  return actions;
}

}  // namespace

std::string_view pipeline_schedule_name(PipelineSchedule schedule) {
  switch (schedule) {
    case PipelineSchedule::kGPipe: return "gpipe";
    case PipelineSchedule::kOneFOneB: return "1f1b";
    case PipelineSchedule::kInterleaved: return "interleaved_1f1b";
    case PipelineSchedule::kZeroBubbleH1: return "zb_h1";
  }
  return "?";
}

PipelineSchedule parse_pipeline_schedule(std::string_view name) {
  for (PipelineSchedule s : kSchedules)
    if (pipeline_schedule_name(s) == name) return s;
  KEEL_FAIL(
      "parallel.pipeline_schedule: unknown schedule '{}': choose gpipe, 1f1b, interleaved_1f1b or "
      "zb_h1",
      name);
}

std::string_view pipeline_op_name(PipelineOp op) {
  switch (op) {
    case PipelineOp::kForward: return "forward";
    case PipelineOp::kBackward: return "backward";
    case PipelineOp::kBackwardInput: return "backward_input";
    case PipelineOp::kBackwardWeight: return "backward_weight";
    case PipelineOp::kSendActivation: return "send_activation";
    case PipelineOp::kRecvActivation: return "recv_activation";
    case PipelineOp::kSendGrad: return "send_grad";
    case PipelineOp::kRecvGrad: return "recv_grad";
  }
  return "?";
}

bool is_compute(PipelineOp op) {
  return op == PipelineOp::kForward || op == PipelineOp::kBackward ||
         op == PipelineOp::kBackwardInput || op == PipelineOp::kBackwardWeight;
}
bool is_send(PipelineOp op) {
  return op == PipelineOp::kSendActivation || op == PipelineOp::kSendGrad;
}
bool is_recv(PipelineOp op) {
  return op == PipelineOp::kRecvActivation || op == PipelineOp::kRecvGrad;
}

std::string to_string(const PipelineAction& a) {
  std::string_view letters = "F";
  switch (a.op) {
    case PipelineOp::kForward: letters = "F"; break;
    case PipelineOp::kBackward: letters = "B"; break;
    case PipelineOp::kBackwardInput: letters = "Bi"; break;
    case PipelineOp::kBackwardWeight: letters = "W"; break;
    case PipelineOp::kSendActivation: letters = "sendA"; break;
    case PipelineOp::kRecvActivation: letters = "recvA"; break;
    case PipelineOp::kSendGrad: letters = "sendG"; break;
    case PipelineOp::kRecvGrad: letters = "recvG"; break;
  }
  std::ostringstream os;
  os << letters << a.micro_batch;
  if (a.chunk != 0) os << '.' << a.chunk;
  if (is_send(a.op)) os << "->" << a.peer;
  if (is_recv(a.op)) os << "<-" << a.peer;
  return os.str();
}

void check_pipeline_shape(PipelineSchedule schedule, const PipelineShape& shape) {
  const int p = shape.stages;
  const int m = shape.micro_batches;
  const int v = shape.virtual_stages;
  const std::string_view name = pipeline_schedule_name(schedule);
  KEEL_CHECK(p >= 1, "parallel.pipeline_model_parallel_size must be at least 1, got {}", p);
  KEEL_CHECK(m >= 1,
             "training.gradient_accumulation_steps (the pipeline's micro-batches per step) must be "
             "at least 1, got {}",
             m);
  KEEL_CHECK(v >= 1, "parallel.virtual_pipeline_model_parallel_size must be at least 1, got {}", v);
  if (schedule != PipelineSchedule::kInterleaved) {
    KEEL_CHECK(
        v == 1,
        "parallel.virtual_pipeline_model_parallel_size = {} needs parallel.pipeline_schedule "
        "= interleaved_1f1b, not {}: set the schedule to interleaved_1f1b or the virtual "
        "size to 1",
        v, name);
    return;
  }
  KEEL_CHECK(p >= 2,
             "parallel.pipeline_schedule = interleaved_1f1b needs parallel.pipeline_model_parallel_"
             "size of 2 or more, got {}: use 1f1b (or gpipe) on one stage",
             p);
  KEEL_CHECK(v >= 2,
             "parallel.pipeline_schedule = interleaved_1f1b needs parallel.virtual_pipeline_model_"
             "parallel_size of 2 or more, got {}: with one chunk per rank use 1f1b",
             v);
  const int below = m / p * p;
  KEEL_CHECK(m % p == 0,
             "parallel.pipeline_schedule = interleaved_1f1b needs training.gradient_accumulation_"
             "steps to be a multiple of parallel.pipeline_model_parallel_size ({}), as Megatron "
             "does (micro-batches enter each chunk in groups of {}); got {}: use {}{}",
             p, p, m, below + p, below > 0 ? " or " + std::to_string(below) : std::string());
}

std::vector<PipelineAction> pipeline_actions(PipelineSchedule schedule, const PipelineShape& shape,
                                             int stage) {
  check_pipeline_shape(schedule, shape);
  KEEL_CHECK(stage >= 0 && stage < shape.stages,
             "pipeline stage {} is outside the {} stages of parallel.pipeline_model_parallel_size",
             stage, shape.stages);
  switch (schedule) {
    case PipelineSchedule::kGPipe: return with_communication(gpipe_order(shape), shape, stage);
    case PipelineSchedule::kOneFOneB:
      return with_communication(one_f_one_b_order(shape, stage), shape, stage);
    case PipelineSchedule::kInterleaved:
      return with_communication(interleaved_order(shape, stage), shape, stage);
    case PipelineSchedule::kZeroBubbleH1:
      return with_communication(zb_h1_order(shape, stage), shape, stage);
  }
  KEEL_FAIL("unknown pipeline schedule {}", static_cast<int>(schedule));
}

std::vector<std::vector<PipelineAction>> pipeline_actions_all(PipelineSchedule schedule,
                                                              const PipelineShape& shape) {
  std::vector<std::vector<PipelineAction>> all;
  for (int s = 0; s < shape.stages; ++s) all.push_back(pipeline_actions(schedule, shape, s));
  return all;
}

}  // namespace keel::parallel
