// What the pipeline-schedule tests share: the shapes every schedule is run on, the error text of a
// call, and the checks of a list that do not need the simulator (each returns "" when the lists
// are right, else the first thing wrong, so that a test can also feed them broken lists).
#pragma once

#include <functional>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/error.h"
#include "parallel/pipeline_schedule.h"
#include "tests/parallel/unit_test_util.h"  // error_of

namespace keel::parallel::test {

using Lists = std::vector<std::vector<PipelineAction>>;

struct PipelineCase {
  PipelineSchedule schedule;
  PipelineShape shape;
  std::string name() const {
    return format("{} p={} m={} v={}", pipeline_schedule_name(schedule), shape.stages,
                  shape.micro_batches, shape.virtual_stages);
  }
};

// p = 1..8; m from 1 (fewer than p), p-1, p, p+1, 2p-1, 2p, 3p, 3p+1 for the schedules without
// chunks; for interleaved_1f1b p ≥ 2, v = 2..4 and m = p, 2p, 3p, 4p (the multiples it accepts).
inline std::vector<PipelineCase> all_pipeline_cases() {
  std::vector<PipelineCase> cases;
  for (int p = 1; p <= 8; ++p) {
    std::vector<int> ms;
    for (int m : {1, 2, p - 1, p, p + 1, 2 * p - 1, 2 * p, 3 * p, 3 * p + 1}) {
      bool seen = false;
      for (int x : ms) seen = seen || x == m;
      if (m >= 1 && !seen) ms.push_back(m);
    }
    for (PipelineSchedule s :
         {PipelineSchedule::kGPipe, PipelineSchedule::kOneFOneB, PipelineSchedule::kZeroBubbleH1})
      for (int m : ms) cases.push_back({s, {p, m, 1}});
    if (p >= 2)
      for (int v = 2; v <= 4; ++v)
        for (int k = 1; k <= 4; ++k)
          cases.push_back({PipelineSchedule::kInterleaved, {p, k * p, v}});
  }
  return cases;
}

// On one stage's list: every (micro-batch, chunk) runs one forward and then either one whole
// backward or a B followed later by its W (split: ZB-H1); the receive of a pass's input comes
// before the pass, exactly where the pass has a neighbour on that side, and the send of its
// output after it.
inline std::string check_stage_order(const std::vector<PipelineAction>& list,
                                     const PipelineShape& shape, int stage, bool split) {
  const int p = shape.stages;
  const int last = p * shape.virtual_stages - 1;
  // (op, micro-batch, chunk) → positions in the list.
  std::map<std::tuple<PipelineOp, int, int>, std::vector<int>> at;
  for (int i = 0; i < static_cast<int>(list.size()); ++i)
    at[{list[i].op, list[i].micro_batch, list[i].chunk}].push_back(i);
  auto where = [&](PipelineOp op, int mb, int c) {
    auto it = at.find({op, mb, c});
    return it == at.end() ? std::vector<int>{} : it->second;
  };
  for (int mb = 0; mb < shape.micro_batches; ++mb) {
    for (int c = 0; c < shape.virtual_stages; ++c) {
      const std::string what = format("stage {} micro-batch {} chunk {}: ", stage, mb, c);
      const int vs = virtual_stage(stage, c, p);
      const auto f = where(PipelineOp::kForward, mb, c);
      const auto b = where(split ? PipelineOp::kBackwardInput : PipelineOp::kBackward, mb, c);
      const auto w = where(PipelineOp::kBackwardWeight, mb, c);
      const auto other = where(split ? PipelineOp::kBackward : PipelineOp::kBackwardInput, mb, c);
      if (f.size() != 1 || b.size() != 1 || !other.empty()) return what + "not one F and one B";
      if (w.size() != (split ? 1u : 0u)) return what + "wrong number of W";
      if (f[0] > b[0]) return what + "backward before forward";
      if (split && b[0] > w[0]) return what + "W before its B";
      const auto ra = where(PipelineOp::kRecvActivation, mb, c);
      const auto sa = where(PipelineOp::kSendActivation, mb, c);
      const auto rg = where(PipelineOp::kRecvGrad, mb, c);
      const auto sg = where(PipelineOp::kSendGrad, mb, c);
      if (ra.size() != (vs > 0 ? 1u : 0u) || sg.size() != (vs > 0 ? 1u : 0u))
        return what + "receives an activation / sends a gradient where it should not, or not";
      if (sa.size() != (vs < last ? 1u : 0u) || rg.size() != (vs < last ? 1u : 0u))
        return what + "sends an activation / receives a gradient where it should not, or not";
      if (!ra.empty() && ra[0] > f[0]) return what + "forward before its input arrives";
      if (!sa.empty() && sa[0] < f[0]) return what + "activation sent before the forward";
      if (!rg.empty() && rg[0] > b[0]) return what + "backward before its gradient arrives";
      if (!sg.empty() && sg[0] < b[0]) return what + "gradient sent before the backward";
    }
  }
  return "";
}

// Across the stages: for each direction between two stages and each kind of tensor, the sends
// in the sender's list order and the receives in the receiver's list order name the same
// micro-batches for the same virtual stages, one for one.
inline std::string check_message_order(const Lists& lists, const PipelineShape& shape) {
  const int p = shape.stages;
  // (from, to, activation?) → (micro-batch, receiving virtual stage) in order.
  using Key = std::tuple<int, int, bool>;
  std::map<Key, std::vector<std::pair<int, int>>> sent, received;
  for (int s = 0; s < p; ++s) {
    for (const PipelineAction& a : lists[s]) {
      const int vs = virtual_stage(s, a.chunk, p);
      const bool act = a.op == PipelineOp::kSendActivation || a.op == PipelineOp::kRecvActivation;
      if (is_send(a.op)) sent[{s, a.peer, act}].push_back({a.micro_batch, act ? vs + 1 : vs - 1});
      if (is_recv(a.op)) received[{a.peer, s, act}].push_back({a.micro_batch, vs});
    }
  }
  if (sent.size() != received.size()) return "a direction has sends but no receives, or back";
  for (const auto& [key, messages] : sent) {
    const auto it = received.find(key);
    const auto& [from, to, act] = key;
    if (it == received.end() || it->second != messages)
      return format("stage {} -> {} {}: sends and receives differ", from, to,
                    act ? "activations" : "gradients");
  }
  return "";
}

}  // namespace keel::parallel::test
