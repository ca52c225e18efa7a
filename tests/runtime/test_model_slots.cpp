// Activation slots (runtime/model/llama.h): stages that keep several micro-batches between their
// forward and their backward, run in the orders of the pipeline schedules
// (parallel/pipeline_schedule.h) or any other valid order, equal running the micro-batches one at
// a time; a slot misused is one line naming it; K slots plan one slot's memory plus K - 1 slots'
// own buffers.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels/error.h"
#include "parallel/pipeline_schedule.h"
#include "runtime/model/llama.h"
#include "runtime/model_test_util.h"

namespace keel::runtime {
namespace {

using test::batch;
using test::kB;
using test::kT;
using test::small_model;

// One pass of a stage's list: the forward or the (whole) backward of a micro-batch.
struct Pass {
  bool forward;
  int mb;
};
using Orders = std::vector<std::vector<Pass>>;  // [stage][i]

// The compute passes of a schedule, one list per virtual stage (a rank's chunk c of p ranks is
// virtual stage c·p + s: each chunk is a model of its own here).
Orders schedule_orders(parallel::PipelineSchedule schedule, parallel::PipelineShape shape) {
  Orders orders(static_cast<size_t>(shape.stages * shape.virtual_stages));
  const auto lists = parallel::pipeline_actions_all(schedule, shape);
  for (int s = 0; s < shape.stages; ++s)
    for (const parallel::PipelineAction& a : lists[static_cast<size_t>(s)]) {
      if (!parallel::is_compute(a.op)) continue;
      const size_t vs = static_cast<size_t>(parallel::virtual_stage(s, a.chunk, shape.stages));
      orders[vs].push_back({a.op == parallel::PipelineOp::kForward, a.micro_batch});
    }
  return orders;
}

// Every stage's list run as the pipeline would run it: a pass waits for the previous stage's
// forward (its input) or the next stage's backward (its output's gradient). Returns the passes in
// one order that respects that, or nothing when the lists deadlock.
std::vector<std::pair<int, Pass>> serialize(const Orders& orders) {
  const int S = static_cast<int>(orders.size());
  std::vector<size_t> next(orders.size(), 0);
  std::map<std::pair<int, int>, bool> fwd, bwd;  // (stage, mb) done
  std::vector<std::pair<int, Pass>> out;
  for (bool moved = true; moved;) {
    moved = false;
    for (int s = 0; s < S; ++s) {
      const size_t i = next[static_cast<size_t>(s)];
      if (i == orders[static_cast<size_t>(s)].size()) continue;
      const Pass p = orders[static_cast<size_t>(s)][i];
      const bool ready = p.forward ? (s == 0 || fwd[{s - 1, p.mb}])
                                   : fwd[{s, p.mb}] && (s + 1 == S || bwd[{s + 1, p.mb}]);
      if (!ready) continue;
      (p.forward ? fwd : bwd)[{s, p.mb}] = true;
      out.push_back({s, p});
      ++next[static_cast<size_t>(s)];
      moved = true;
    }
  }
  for (int s = 0; s < S; ++s)
    if (next[static_cast<size_t>(s)] != orders[static_cast<size_t>(s)].size()) return {};
  return out;
}

// Micro-batches alive at once on a stage that runs `order`: the activation slots it needs.
int peak_in_flight(const std::vector<Pass>& order) {
  int alive = 0, peak = 0;
  for (const Pass& p : order) peak = std::max(peak, alive += p.forward ? 1 : -1);
  return peak;
}

struct PipelineRun {
  std::vector<double> losses;  // per micro-batch, from the last stage's forward
  std::map<std::string, std::vector<float>> grads;  // every parameter's, by name
  std::vector<int> slots;  // per stage, the activation slots it was built with
};

// A 4-layer model cut at `cuts` into stages, each built with the slots its list needs, running
// `orders` over m micro-batches. A micro-batch takes a stage's lowest free slot at its forward and
// frees it at its backward; what a stage hands on is copied out at once, as a send would.
PipelineRun run_pipeline(const std::vector<int>& cuts, const Orders& orders, int m,
                         bool checkpointing, bool tied = false) {
  ModelConfig config = small_model();
  config.tie_word_embeddings = tied;
  std::vector<int> bounds = {0};
  bounds.insert(bounds.end(), cuts.begin(), cuts.end());
  bounds.push_back(static_cast<int>(config.num_hidden_layers));
  const size_t S = bounds.size() - 1;
  EXPECT_EQ(orders.size(), S);
  PipelineRun run;
  std::vector<std::unique_ptr<LlamaModel>> stages;
  for (size_t s = 0; s < S; ++s) {
    ModelSplit split;
    split.first_layer = bounds[s], split.last_layer = bounds[s + 1];
    split.activation_slots = peak_in_flight(orders[s]);
    run.slots.push_back(split.activation_slots);
    stages.push_back(
        std::make_unique<LlamaModel>(config, kB, kT, checkpointing, ModelHolds{}, split));
    stages.back()->init_weights(7);
    stages.back()->zero_grad();
  }
  std::vector<std::vector<int32_t>> tokens(static_cast<size_t>(m)), targets(tokens);
  for (int mb = 0; mb < m; ++mb)
    batch(tokens[static_cast<size_t>(mb)], targets[static_cast<size_t>(mb)], mb);
  const float scale = 1.0f / 29.0f;
  run.losses.assign(static_cast<size_t>(m), 0.0);
  std::map<std::pair<size_t, int>, int> slot_of;                          // (stage, mb) → slot
  std::map<std::pair<size_t, int>, std::vector<float>> activation, grad;  // sent to stage, mb
  const auto passes = serialize(orders);
  EXPECT_FALSE(passes.empty()) << "the stages' lists deadlock";
  for (const auto& [stage, p] : passes) {
    const size_t s = static_cast<size_t>(stage);
    LlamaModel& model = *stages[s];
    const size_t mb = static_cast<size_t>(p.mb);
    if (p.forward) {
      int slot = 0;
      for (;; ++slot) {
        bool used = false;
        for (const auto& [key, k] : slot_of) used |= key.first == s && k == slot;
        if (!used) break;
      }
      slot_of[{s, p.mb}] = slot;
      const float* input = s == 0 ? nullptr : activation[{s, p.mb}].data();
      run.losses[mb] +=
          model.stage_forward(slot, tokens[mb].data(), input, targets[mb].data(), scale);
      if (s + 1 < S) {
        const float* out = model.stage_output(slot);
        activation[{s + 1, p.mb}].assign(out, out + kB * kT * config.hidden_size);
      }
    } else {
      const int slot = slot_of.at({s, p.mb});
      slot_of.erase({s, p.mb});
      model.stage_backward(slot, s + 1 == S ? nullptr : grad[{s, p.mb}].data());
      if (s > 0) {
        const float* in = model.stage_input_grad(slot);
        grad[{s - 1, p.mb}].assign(in, in + kB * kT * config.hidden_size);
      }
    }
  }
  for (const auto& stage : stages)
    for (const Parameter& p : stage->parameters())
      run.grads[p.name].assign(p.grad.f32(), p.grad.f32() + p.grad.numel());
  return run;
}

// One micro-batch at a time, forward then backward, in the order `mbs`: one slot is enough.
Orders one_at_a_time(const std::vector<int>& mbs, size_t stages) {
  std::vector<Pass> order;
  for (int mb : mbs) order.push_back({true, mb}), order.push_back({false, mb});
  return Orders(stages, order);
}

// The micro-batches in the order the last stage runs their backwards.
std::vector<int> backward_order(const Orders& orders) {
  std::vector<int> mbs;
  for (const Pass& p : orders.back())
    if (!p.forward) mbs.push_back(p.mb);
  return mbs;
}

// Whether the last stage adds to the parameter's gradient in its forward: the head (final norm
// and lm_head) runs its backward at once, so its gradients add in forward order.
bool head_param(const std::string& name) {
  return name == "model.norm.weight" || name == "lm_head.weight";
}

// Bit for bit: every micro-batch's loss is one forward of the same weights, and each parameter's
// gradient is the same float sum when the passes add into it in the same micro-batch order,
// whatever other passes run in between (a slot's backward reads only its own saved activations,
// the weights, which no pass changes, and the gradient handed to it). The head's gradients are
// compared with head_want (by default want), a run whose forwards came in the same order.
void expect_equal_runs(const PipelineRun& got, const PipelineRun& want,
                       const PipelineRun* head_want = nullptr) {
  ASSERT_EQ(got.losses.size(), want.losses.size());
  for (size_t mb = 0; mb < got.losses.size(); ++mb)
    EXPECT_EQ(got.losses[mb], want.losses[mb]) << "micro-batch " << mb;
  ASSERT_EQ(got.grads.size(), want.grads.size());
  for (const auto& [name, g] : got.grads) {
    const std::vector<float>& w =
        (head_param(name) && head_want ? *head_want : want).grads.at(name);
    ASSERT_EQ(g.size(), w.size()) << name;
    EXPECT_EQ(std::memcmp(g.data(), w.data(), g.size() * sizeof(float)), 0) << name;
  }
}

// The schedule's lists on stages cut at `cuts`, against one micro-batch at a time in the order
// of its backwards; and the slots each stage needed (the schedule's peak per stage).
std::vector<int> expect_schedule_equals_one_at_a_time(parallel::PipelineSchedule schedule,
                                                      parallel::PipelineShape shape,
                                                      const std::vector<int>& cuts,
                                                      bool checkpointing) {
  const Orders orders = schedule_orders(schedule, shape);
  const PipelineRun got = run_pipeline(cuts, orders, shape.micro_batches, checkpointing);
  const PipelineRun want = run_pipeline(cuts, one_at_a_time(backward_order(orders), orders.size()),
                                        shape.micro_batches, checkpointing);
  for (int k : want.slots) EXPECT_EQ(k, 1);
  expect_equal_runs(got, want);
  return got.slots;
}

TEST(ModelSlots, GPipeOrderEqualsOneAtATime) {
  for (bool checkpointing : {false, true}) {
    SCOPED_TRACE(checkpointing ? "checkpointing" : "no checkpointing");
    // Three stages (layers 0, 1-2, 3), four micro-batches: every stage holds all four.
    EXPECT_EQ(expect_schedule_equals_one_at_a_time(parallel::PipelineSchedule::kGPipe, {3, 4, 1},
                                                   {1, 3}, checkpointing),
              (std::vector<int>{4, 4, 4}));
  }
}

TEST(ModelSlots, OneFOneBOrderEqualsOneAtATime) {
  for (bool checkpointing : {false, true}) {
    SCOPED_TRACE(checkpointing ? "checkpointing" : "no checkpointing");
    // The middle stage runs F0 F1 B0 F2 B1 F3 B2 F4 B3 B4 with two slots.
    EXPECT_EQ(expect_schedule_equals_one_at_a_time(parallel::PipelineSchedule::kOneFOneB, {3, 5, 1},
                                                   {1, 3}, checkpointing),
              (std::vector<int>{3, 2, 1}));
  }
}

TEST(ModelSlots, InterleavedChunksEqualOneAtATime) {
  // Two ranks of two one-layer chunks each: four virtual stages, each a model with its slots.
  const std::vector<int> slots = expect_schedule_equals_one_at_a_time(
      parallel::PipelineSchedule::kInterleaved, {2, 4, 2}, {1, 2, 3}, true);
  EXPECT_GT(*std::max_element(slots.begin(), slots.end()), 1);
}

// Random valid interleavings: each stage runs the forwards in one order and the backwards in
// another (the same on every stage), mixed at random; equal to one at a time in the backwards'
// order (the head's gradients: in the forwards'). Three stages, and the whole model as one stage
// (whose head's gradient waits in the slot from the forward to the backward).
TEST(ModelSlots, AnyInterleavingEqualsOneAtATimeInItsBackwardOrder) {
  const int m = 4;
  std::mt19937 rng(17);
  for (const std::vector<int>& cuts : {std::vector<int>{1, 3}, std::vector<int>{}}) {
    const size_t S = cuts.size() + 1;
    for (bool checkpointing : {false, true})
      for (int trial = 0; trial < 3; ++trial) {
        std::vector<int> fwd = {0, 1, 2, 3}, bwd = fwd;
        std::shuffle(fwd.begin(), fwd.end(), rng);
        std::shuffle(bwd.begin(), bwd.end(), rng);
        Orders orders;
        do {  // draw every stage's mix until the lists can run together
          orders.assign(S, {});
          for (auto& order : orders) {
            size_t f = 0, b = 0;
            std::vector<bool> done(static_cast<size_t>(m), false);
            while (b < bwd.size()) {
              const bool can_b = done[static_cast<size_t>(bwd[b])];
              if (f < fwd.size() && (!can_b || rng() % 2)) {
                done[static_cast<size_t>(fwd[f])] = true;
                order.push_back({true, fwd[f++]});
              } else {
                order.push_back({false, bwd[b++]});
              }
            }
          }
        } while (serialize(orders).empty());
        SCOPED_TRACE("stages " + std::to_string(S) + (checkpointing ? ", checkpointing" : "") +
                     ", trial " + std::to_string(trial));
        const PipelineRun got = run_pipeline(cuts, orders, m, checkpointing);
        const PipelineRun head = run_pipeline(cuts, one_at_a_time(fwd, S), m, checkpointing);
        expect_equal_runs(got, run_pipeline(cuts, one_at_a_time(bwd, S), m, checkpointing), &head);
      }
  }
}

// Tied embeddings (the whole model on one stage): the embedding's gradient gets the head's part
// in each forward and the lookup's in each backward, so holding micro-batches in flight reorders
// that one float sum (a rounding apart); every other gradient and the losses stay bit for bit.
TEST(ModelSlots, TiedEmbeddingsInFlightDifferOnlyByTheEmbeddingSumsOrder) {
  const Orders gpipe = {{{true, 0}, {true, 1}, {true, 2}, {false, 0}, {false, 1}, {false, 2}}};
  const PipelineRun got = run_pipeline({}, gpipe, 3, false, /*tied=*/true);
  const PipelineRun want = run_pipeline({}, one_at_a_time({0, 1, 2}, 1), 3, false, true);
  EXPECT_EQ(got.slots, std::vector<int>{3});
  const std::string embed = "model.embed_tokens.weight";
  PipelineRun rest = got;
  rest.grads.erase(embed);
  PipelineRun rest_want = want;
  rest_want.grads.erase(embed);
  expect_equal_runs(rest, rest_want);
  const std::vector<float>&g = got.grads.at(embed), &w = want.grads.at(embed);
  float largest = 0.0f;
  for (float v : w) largest = std::max(largest, std::abs(v));
  ASSERT_GT(largest, 0.0f);
  for (size_t i = 0; i < g.size(); ++i) EXPECT_NEAR(g[i], w[i], 1e-6f * largest) << i;
}

// What a stage hands on stays in its slot while other micro-batches run, as a send in flight
// needs: the output until the slot's next forward, the input gradient from its backward on.
TEST(ModelSlots, HandedOnBuffersLiveInTheirSlot) {
  ModelSplit split;
  split.first_layer = 1, split.last_layer = 3, split.activation_slots = 2;
  LlamaModel middle(small_model(), kB, kT, false, ModelHolds{}, split);
  middle.init_weights(7);
  middle.zero_grad();
  const size_t n = static_cast<size_t>(kB * kT * 32);
  std::vector<float> a(n), b(n), ga(n), gb(n);
  for (size_t i = 0; i < n; ++i) {
    a[i] = std::sin(0.1f * static_cast<float>(i)), b[i] = std::cos(0.3f * static_cast<float>(i));
    ga[i] = 0.01f * std::sin(0.7f * static_cast<float>(i)), gb[i] = 0.01f * a[i] * b[i];
  }
  auto copy = [n](const float* p) { return std::vector<float>(p, p + n); };
  middle.stage_forward(0, nullptr, a.data(), nullptr, 1.0f);
  const std::vector<float> out_a = copy(middle.stage_output(0));
  middle.stage_forward(1, nullptr, b.data(), nullptr, 1.0f);
  const std::vector<float> out_b = copy(middle.stage_output(1));
  EXPECT_EQ(copy(middle.stage_output(0)), out_a);
  EXPECT_NE(out_b, out_a);
  middle.stage_backward(0, ga.data());
  const std::vector<float> grad_a = copy(middle.stage_input_grad(0));
  middle.stage_backward(1, gb.data());
  EXPECT_EQ(copy(middle.stage_input_grad(0)), grad_a);
  EXPECT_NE(copy(middle.stage_input_grad(1)), grad_a);
  EXPECT_EQ(copy(middle.stage_output(1)), out_b);  // a backward leaves the output alone
}

// ZB-H1's split backward: the input-gradient passes of two micro-batches, then their weight
// passes, add the gradients the whole backwards add (norms in the first pass, the GEMMs in the
// second, each in micro-batch order): the same bits, on a whole model (embedding and head
// included) and on a middle stage, whose input gradients are the same too.
TEST(ModelSlots, ASplitBackwardAddsWhatTheWholeOneAdds) {
  for (const auto& [first, last] : {std::pair{0, 4}, {1, 3}}) {
    SCOPED_TRACE("layers " + std::to_string(first) + " to " + std::to_string(last));
    auto build = [&](bool split_backward) {
      ModelSplit split;
      split.first_layer = first, split.last_layer = last, split.activation_slots = 2;
      split.split_backward = split_backward;
      auto m = std::make_unique<LlamaModel>(small_model(), kB, kT, false, ModelHolds{}, split);
      m->init_weights(7);
      m->zero_grad();
      return m;
    };
    const auto whole = build(false), split = build(true);
    const size_t n = static_cast<size_t>(kB * kT * 32);
    std::vector<float> in[2], grad[2];
    std::vector<int32_t> tokens[2], targets[2];
    for (int mb = 0; mb < 2; ++mb) {
      batch(tokens[mb], targets[mb], mb);
      for (size_t i = 0; i < n; ++i) {
        in[mb].push_back(std::sin(0.1f * static_cast<float>(i + 7 * mb)));
        grad[mb].push_back(0.01f * std::cos(0.3f * static_cast<float>(i + 5 * mb)));
      }
    }
    const bool has_input = first > 0, has_grad = last < 4;
    auto input = [&](int mb) { return has_input ? in[mb].data() : nullptr; };
    auto output_grad = [&](int mb) { return has_grad ? grad[mb].data() : nullptr; };
    std::vector<std::vector<float>> whole_dx, split_dx;
    for (int mb = 0; mb < 2; ++mb) {
      whole->stage_forward(mb, tokens[mb].data(), input(mb), targets[mb].data(), 0.5f);
      whole->stage_backward(mb, output_grad(mb));
      if (has_input)
        whole_dx.emplace_back(whole->stage_input_grad(mb), whole->stage_input_grad(mb) + n);
    }
    for (int mb = 0; mb < 2; ++mb)
      split->stage_forward(mb, tokens[mb].data(), input(mb), targets[mb].data(), 0.5f);
    for (int mb = 0; mb < 2; ++mb) {
      split->stage_backward_input(mb, output_grad(mb));
      if (has_input)
        split_dx.emplace_back(split->stage_input_grad(mb), split->stage_input_grad(mb) + n);
    }
    for (int mb = 0; mb < 2; ++mb) split->stage_backward_weight(mb);
    EXPECT_EQ(split_dx, whole_dx);
    for (size_t i = 0; i < whole->parameters().size(); ++i) {
      const Tensor& a = whole->parameters()[i].grad;
      const Tensor& b = split->parameters()[i].grad;
      ASSERT_EQ(a.numel(), b.numel());
      EXPECT_EQ(std::memcmp(a.f32(), b.f32(), static_cast<size_t>(a.numel()) * 4), 0)
          << whole->parameters()[i].name;
    }
  }
}

// Misuse of a slot is one line naming it.
TEST(ModelSlots, MisusedSlotsAreOneLineNamingTheSlot) {
  ModelSplit split;
  split.first_layer = 1, split.last_layer = 3, split.activation_slots = 2;
  LlamaModel middle(small_model(), kB, kT, false, ModelHolds{}, split);
  middle.init_weights(7);
  middle.zero_grad();
  const std::vector<float> x(static_cast<size_t>(kB * kT * 32), 0.5f);
  auto error = [](auto&& call) -> std::string {
    try {
      call();
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(error([&] {
              middle.stage_forward(2, nullptr, x.data(), nullptr, 1.0f);
            }).find("activation slot 2 is out of range: this stage holds 2 (slots 0 to 1)"),
            std::string::npos);
  EXPECT_NE(error([&] { middle.stage_backward(-1, x.data()); }).find("activation slot -1 is out"),
            std::string::npos);
  EXPECT_NE(error([&] {
              middle.stage_backward(1, x.data());
            }).find("stage_backward: activation slot 1 holds no micro-batch awaiting"),
            std::string::npos);
  EXPECT_NE(error([&] {
              middle.stage_input_grad(1);
            }).find("activation slot 1 holds no finished backward"),
            std::string::npos);
  EXPECT_NE(error([&] { middle.stage_output(0); }).find("activation slot 0 holds no"),
            std::string::npos);
  middle.stage_forward(1, nullptr, x.data(), nullptr, 1.0f);
  EXPECT_NE(error([&] { middle.stage_forward(1, nullptr, x.data(), nullptr, 1.0f); })
                .find("stage_forward: activation slot 1 still holds a micro-batch whose backward "
                      "has not run"),
            std::string::npos);
  middle.stage_forward(0, nullptr, x.data(), nullptr, 1.0f);  // the other slot is free
  middle.stage_backward(1, x.data());
  EXPECT_EQ(error([&] { middle.stage_input_grad(1); }), "");
  EXPECT_NE(error([&] { middle.stage_backward(1, x.data()); }).find("activation slot 1 holds no"),
            std::string::npos);
}

// The plan for K slots is the plan for one (what a stage planned before slots, counted here from
// the shapes) plus K − 1 slots of the buffers a micro-batch keeps to its backward: block inputs,
// the blocks' insides unless checkpointing recomputes them, the tokens. Nothing else grows.
TEST(ModelSlots, KSlotsPlanOneSlotPlusKMinusOneSlotsOfActivations) {
  const ModelConfig c = small_model();
  const int64_t N = kB * kT, C = c.hidden_size, I = c.intermediate_size;
  const int64_t H = c.num_attention_heads, D = C / H, QKV = (H + 2 * c.num_key_value_heads) * D;
  // Every size here is a multiple of the plan's 64-byte alignment: no padding to count.
  const int64_t block =
      N * C + N + N * QKV + N * H * D + kB * H * kT + N * C + N * C + N + N * 2 * I + N * I;
  for (bool checkpointing : {false, true})
    for (const auto& [first, last] : {std::pair{0, 1}, {1, 3}, {3, 4}, {0, 4}}) {
      SCOPED_TRACE("layers " + std::to_string(first) + " to " + std::to_string(last) +
                   (checkpointing ? ", checkpointing" : ""));
      auto model = [&](int slots) {
        ModelSplit split;
        split.first_layer = first, split.last_layer = last, split.activation_slots = slots;
        return std::make_unique<LlamaModel>(c, kB, kT, checkpointing, ModelHolds{true, true, false},
                                            split);
      };
      const auto one = model(1), three = model(3);
      const int64_t L = last - first;
      const bool has_embedding = first == 0, has_head = last == 4;
      const int64_t per_slot = (L + 1) * N * C + (checkpointing ? 0 : L * block) +
                               (has_embedding ? N : 0);  // tokens: int32, one float's size
      const int64_t shared = (checkpointing ? block : 0) + (has_head ? N * C + N : 0);
      EXPECT_EQ(one->activation_slot_bytes(), static_cast<size_t>(per_slot) * sizeof(float));
      EXPECT_EQ(one->activation_bytes(), static_cast<size_t>(per_slot + shared) * sizeof(float));
      EXPECT_EQ(three->activation_slot_bytes(), one->activation_slot_bytes());
      EXPECT_EQ(three->activation_bytes(),
                one->activation_bytes() + 2 * one->activation_slot_bytes());
      EXPECT_EQ(three->workspace_bytes(), one->workspace_bytes());
      EXPECT_EQ(three->weight_bytes(), one->weight_bytes());
      EXPECT_EQ(three->grad_bytes(), one->grad_bytes());
    }
}

}  // namespace
}  // namespace keel::runtime
