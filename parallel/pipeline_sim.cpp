#include "parallel/pipeline_sim.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <map>
#include <tuple>

#include "kernels/error.h"

namespace keel::parallel {

namespace {

// A tensor in flight: which micro-batch, for which virtual stage, arriving when.
struct Message {
  int micro_batch;
  int to_virtual_stage;
  double arrival;
};

// What one stage has done with one (micro-batch, chunk).
struct Progress {
  bool received_activation = false;
  bool forward = false;
  bool received_grad = false;
  bool backward_input = false;  // kBackward or kBackwardInput ran
  bool whole_backward = false;  // ... and it was kBackward
  bool backward_weight = false;
  bool sent_activation = false;
  bool sent_grad = false;
};

struct StageState {
  size_t next = 0;  // index of the next action in the list
  double clock = 0.0;
  int live = 0;
  std::vector<Progress> progress;  // [micro_batch · v + chunk]
};

class Simulator {
 public:
  Simulator(const std::vector<std::vector<PipelineAction>>& lists, const PipelineShape& shape,
            const PipelineCosts& costs)
      : lists_(lists), shape_(shape), costs_(costs) {
    const int p = shape.stages;
    KEEL_CHECK(static_cast<int>(lists.size()) == p,
               "simulate_pipeline: {} lists for {} pipeline stages", lists.size(), p);
    KEEL_CHECK(shape.micro_batches >= 1 && shape.virtual_stages >= 1,
               "simulate_pipeline: {} micro-batches and {} virtual stages", shape.micro_batches,
               shape.virtual_stages);
    states_.resize(static_cast<size_t>(p));
    for (StageState& st : states_)
      st.progress.resize(static_cast<size_t>(shape.micro_batches) * shape.virtual_stages);
    sim_.shape = shape;
    sim_.stages.resize(static_cast<size_t>(p));
    sim_.computes.resize(static_cast<size_t>(p));
  }

  PipelineSimulation run() {
    const int p = shape_.stages;
    for (;;) {
      bool moved = false;
      bool finished = true;
      for (int s = 0; s < p; ++s) {
        while (states_[s].next < lists_[s].size() && step(s)) moved = true;
        finished = finished && states_[s].next == lists_[s].size();
      }
      if (finished) break;
      if (!moved) fail_deadlock();
    }
    check_complete();
    for (int s = 0; s < p; ++s) sim_.makespan = std::max(sim_.makespan, sim_.stages[s].finish);
    double idle = 0.0;
    for (StageTiming& t : sim_.stages) {
      t.idle = sim_.makespan - t.busy;
      idle += t.idle;
    }
    sim_.bubble_fraction = sim_.makespan > 0.0 ? idle / (p * sim_.makespan) : 0.0;
    return std::move(sim_);
  }

 private:
  int last_virtual_stage() const { return shape_.stages * shape_.virtual_stages - 1; }

  std::string where(int s, const PipelineAction& a) const {
    return format("stage {} action {} ({})", s, states_[s].next, to_string(a));
  }

  // Executes stage s's next action; false when it is a receive whose message has not been sent.
  bool step(int s) {
    StageState& st = states_[s];
    const PipelineAction& a = lists_[s][st.next];
    const int p = shape_.stages;
    KEEL_CHECK(a.micro_batch >= 0 && a.micro_batch < shape_.micro_batches && a.chunk >= 0 &&
                   a.chunk < shape_.virtual_stages,
               "pipeline list: {} names a micro-batch or chunk outside {} x {}", where(s, a),
               shape_.micro_batches, shape_.virtual_stages);
    const int vs = virtual_stage(s, a.chunk, p);
    const bool activation =
        a.op == PipelineOp::kSendActivation || a.op == PipelineOp::kRecvActivation;
    if (is_compute(a.op)) {
      KEEL_CHECK(a.peer == -1, "pipeline list: {} is a compute with a peer", where(s, a));
    } else {
      // Activations flow to the next virtual stage, gradients to the previous one.
      const bool to_next = activation == is_send(a.op);
      const int peer = to_next ? (s + 1) % p : (s + p - 1) % p;
      const bool exists = to_next ? vs < last_virtual_stage() : vs > 0;
      KEEL_CHECK(exists, "pipeline list: {} has no neighbour on that side (virtual stage {} of {})",
                 where(s, a), vs, last_virtual_stage() + 1);
      KEEL_CHECK(a.peer == peer, "pipeline list: {} names peer {}, but the neighbour is stage {}",
                 where(s, a), a.peer, peer);
    }
    Progress& pr =
        st.progress[static_cast<size_t>(a.micro_batch) * shape_.virtual_stages + a.chunk];
    switch (a.op) {
      case PipelineOp::kRecvActivation:
      case PipelineOp::kRecvGrad: {
        auto& channel = channels_[{a.peer, s, activation}];
        if (channel.empty()) return false;
        const Message msg = channel.front();
        KEEL_CHECK(msg.micro_batch == a.micro_batch && msg.to_virtual_stage == vs,
                   "pipeline lists disagree on order: {} expects micro-batch {} for virtual stage "
                   "{}, but stage {} sent micro-batch {} for virtual stage {} first",
                   where(s, a), a.micro_batch, vs, a.peer, msg.micro_batch, msg.to_virtual_stage);
        channel.pop_front();
        bool& got = activation ? pr.received_activation : pr.received_grad;
        KEEL_CHECK(!got, "pipeline list: {} receives the same tensor twice", where(s, a));
        got = true;
        st.clock = std::max(st.clock, msg.arrival);
        break;
      }
      case PipelineOp::kSendActivation:
      case PipelineOp::kSendGrad: {
        const bool ready = activation ? pr.forward : pr.backward_input;
        KEEL_CHECK(ready, "pipeline list: {} sends before the pass that computes it", where(s, a));
        bool& sent = activation ? pr.sent_activation : pr.sent_grad;
        KEEL_CHECK(!sent, "pipeline list: {} sends the same tensor twice", where(s, a));
        sent = true;
        channels_[{s, a.peer, activation}].push_back(
            {a.micro_batch, activation ? vs + 1 : vs - 1, st.clock + costs_.p2p});
        break;
      }
      case PipelineOp::kForward:
        KEEL_CHECK(!pr.forward, "pipeline list: {} runs twice", where(s, a));
        KEEL_CHECK(vs == 0 || pr.received_activation,
                   "pipeline list: {} runs before its input is received", where(s, a));
        pr.forward = true;
        ++st.live;
        compute(s, a, costs_.forward);
        break;
      case PipelineOp::kBackward:
      case PipelineOp::kBackwardInput: {
        const bool whole = a.op == PipelineOp::kBackward;
        KEEL_CHECK(!pr.backward_input, "pipeline list: {} runs a backward twice", where(s, a));
        KEEL_CHECK(pr.forward, "pipeline list: {} runs before its forward", where(s, a));
        KEEL_CHECK(vs == last_virtual_stage() || pr.received_grad,
                   "pipeline list: {} runs before its output's gradient is received", where(s, a));
        pr.backward_input = true;
        pr.whole_backward = whole;
        if (whole) --st.live;
        compute(s, a,
                whole ? costs_.backward_input + costs_.backward_weight : costs_.backward_input);
        break;
      }
      case PipelineOp::kBackwardWeight:
        KEEL_CHECK(pr.backward_input && !pr.whole_backward,
                   "pipeline list: {} runs before its backward_input (or after a whole backward)",
                   where(s, a));
        KEEL_CHECK(!pr.backward_weight, "pipeline list: {} runs twice", where(s, a));
        pr.backward_weight = true;
        --st.live;
        compute(s, a, costs_.backward_weight);
        break;
    }
    ++st.next;
    return true;
  }

  void compute(int s, const PipelineAction& a, double whole_stage_cost) {
    StageState& st = states_[s];
    StageTiming& t = sim_.stages[s];
    const double cost = whole_stage_cost / shape_.virtual_stages;
    sim_.computes[s].push_back({a, st.clock, st.clock + cost});
    st.clock += cost;
    t.busy += cost;
    t.finish = st.clock;
    t.peak_live = std::max(t.peak_live, st.live);
  }

  [[noreturn]] void fail_deadlock() const {
    std::string stuck;
    for (int s = 0; s < shape_.stages; ++s) {
      const StageState& st = states_[s];
      if (st.next == lists_[s].size()) continue;
      if (!stuck.empty()) stuck += "; ";
      stuck +=
          format("stage {} waits at action {} ({})", s, st.next, to_string(lists_[s][st.next]));
    }
    KEEL_FAIL(
        "pipeline deadlock: {}, and no stage can move: the lists' sends and receives do not "
        "pair up",
        stuck);
  }

  void check_complete() const {
    for (const auto& [key, channel] : channels_) {
      if (channel.empty()) continue;
      const auto& [from, to, activation] = key;
      KEEL_FAIL(
          "pipeline lists: stage {} sent {} of micro-batch {} to stage {}, which never "
          "receives it",
          from, activation ? "the activation" : "the gradient", channel.front().micro_batch, to);
    }
    for (int s = 0; s < shape_.stages; ++s) {
      for (int mb = 0; mb < shape_.micro_batches; ++mb) {
        for (int c = 0; c < shape_.virtual_stages; ++c) {
          const Progress& pr =
              states_[s].progress[static_cast<size_t>(mb) * shape_.virtual_stages + c];
          const bool done =
              pr.forward && pr.backward_input && (pr.whole_backward || pr.backward_weight);
          KEEL_CHECK(done,
                     "pipeline list of stage {} leaves micro-batch {} chunk {} unfinished "
                     "(forward {}, backward {}, weight gradient {})",
                     s, mb, c, pr.forward, pr.backward_input,
                     pr.whole_backward || pr.backward_weight);
        }
      }
    }
  }

  const std::vector<std::vector<PipelineAction>>& lists_;
  const PipelineShape shape_;
  const PipelineCosts costs_;
  std::vector<StageState> states_;
  // (from, to, activation?) → messages in the order sent.
  std::map<std::tuple<int, int, bool>, std::deque<Message>> channels_;
  PipelineSimulation sim_;
};

}  // namespace

PipelineSimulation simulate_pipeline(const std::vector<std::vector<PipelineAction>>& lists,
                                     const PipelineShape& shape, const PipelineCosts& costs) {
  return Simulator(lists, shape, costs).run();
}

PipelinePlan plan_pipeline(PipelineSchedule schedule, const PipelineShape& shape,
                           const PipelineCosts& costs) {
  const PipelineSimulation sim =
      simulate_pipeline(pipeline_actions_all(schedule, shape), shape, costs);
  PipelinePlan plan;
  for (const StageTiming& t : sim.stages)
    plan.peak_live_micro_batches.push_back(static_cast<double>(t.peak_live) / shape.virtual_stages);
  plan.bubble_fraction = sim.bubble_fraction;
  plan.makespan = sim.makespan;
  return plan;
}

std::string pipeline_timeline(const PipelineSimulation& sim, double unit) {
  KEEL_CHECK(unit > 0.0, "pipeline_timeline: unit must be positive, got {}", unit);
  auto cells = [&](double time) {
    const double n = time / unit;
    const double rounded = std::round(n);
    KEEL_CHECK(std::abs(n - rounded) < 1e-9,
               "pipeline_timeline: time {} is not a multiple of the unit {}", time, unit);
    return static_cast<size_t>(rounded);
  };
  const size_t width = std::to_string(std::max(sim.shape.micro_batches - 1, 0)).size() + 1;
  const size_t total = cells(sim.makespan);
  const size_t label = std::to_string(std::max(sim.shape.stages - 1, 0)).size();
  std::string out;
  for (size_t s = 0; s < sim.computes.size(); ++s) {
    std::string row(total * width, '.');
    for (const TimedAction& t : sim.computes[s]) {
      char letter = 'F';
      if (t.action.op == PipelineOp::kBackward || t.action.op == PipelineOp::kBackwardInput)
        letter = 'B';
      if (t.action.op == PipelineOp::kBackwardWeight) letter = 'W';
      if (t.action.chunk % 2 == 1) letter = static_cast<char>(letter - 'A' + 'a');
      std::string text = letter + std::to_string(t.action.micro_batch);
      const size_t begin = cells(t.start) * width;
      const size_t end = cells(t.end) * width;
      text.resize(end - begin, ' ');
      row.replace(begin, end - begin, text);
    }
    std::string name = std::to_string(s);
    name.insert(0, label - name.size(), ' ');
    out += "stage " + name + " |" + row + "|\n";
  }
  return out;
}

}  // namespace keel::parallel
