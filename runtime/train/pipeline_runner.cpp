#include "runtime/train/pipeline_runner.h"

#include <algorithm>
#include <chrono>

#include "kernels/error.h"

namespace keel::runtime {

namespace {
using Clock = std::chrono::steady_clock;
using parallel::PipelineAction;
using parallel::PipelineOp;

// Messages between two stages pair in list order per direction and kind (the schedule's
// contract), so one tag per kind suffices: MPI keeps the order of messages on one tag.
constexpr int kTags[2] = {1, 2};

Tensor floats(float* p, int64_t n) { return Tensor(p, DType::F32, Shape{n}); }
Tensor floats(const float* p, int64_t n) { return floats(const_cast<float*>(p), n); }
}  // namespace

PipelineRunner::PipelineRunner(LlamaModel& model, parallel::Communicator& pp,
                               parallel::PipelineSchedule schedule, parallel::PipelineShape shape)
    : model_(model),
      pp_(pp),
      shape_(shape),
      actions_(parallel::pipeline_actions(schedule, shape, pp.rank())),
      elems_(model.stage_io_elems()),
      slot_of_(static_cast<size_t>(shape.micro_batches * shape.virtual_stages), -1),
      free_slots_(static_cast<size_t>(shape.virtual_stages)),
      sends_(static_cast<size_t>(model.activation_slots())) {
  KEEL_CHECK(pp.size() == shape.stages && model.chunks() == shape.virtual_stages,
             "the pipeline group has {} ranks and the model {} chunks for a pipeline of {} "
             "stages of {} chunks (internal error)",
             pp.size(), model.chunks(), shape.stages, shape.virtual_stages);
  // Two receive buffers of each kind: one being consumed, one arriving behind it. Touched now,
  // so that no step pays the first-touch page faults.
  for (auto& pool : buffers_) {
    pool.resize(kPool);
    for (Buffer& b : pool) b.data.assign(static_cast<size_t>(elems_), 0.0f);
  }
  holds_.assign(static_cast<size_t>(model.activation_slots()), 0);
  chunk_of_.assign(holds_.size(), 0);
  for (int c = 0; c < model.chunks(); ++c)
    for (int k = model.chunk_slots(c) - 1; k >= 0; --k) {
      free_slots_[static_cast<size_t>(c)].push_back(model.chunk_slot(c, k));
      chunk_of_[static_cast<size_t>(model.chunk_slot(c, k))] = c;
    }
}

void PipelineRunner::wait(parallel::Work& w) {
  const auto t0 = Clock::now();
  w.wait();
  wait_seconds_ += std::chrono::duration<double>(Clock::now() - t0).count();
}

bool PipelineRunner::post(size_t i, bool must) {
  const PipelineAction& a = actions_[i];
  const Kind kind = a.op == PipelineOp::kRecvActivation ? kActivation : kGrad;
  std::vector<Buffer>& pool = buffers_[kind];
  auto it =
      std::find_if(pool.begin(), pool.end(), [](const Buffer& b) { return b.micro_batch < 0; });
  if (it == pool.end()) {
    if (!must) return false;
    pool.emplace_back().data.assign(static_cast<size_t>(elems_), 0.0f);
    it = std::prev(pool.end());
  }
  it->micro_batch = a.micro_batch;
  it->chunk = a.chunk;
  it->work = pp_.recv_async(floats(it->data.data(), elems_), a.peer, kTags[kind]);
  return true;
}

void PipelineRunner::post_ahead(size_t i) {
  posted_ = std::max(posted_, i);
  while (posted_ < actions_.size()) {
    if (parallel::is_recv(actions_[posted_].op) && !post(posted_, false)) return;
    ++posted_;
  }
}

PipelineRunner::Buffer& PipelineRunner::received(Kind kind, int mb, int chunk) {
  for (Buffer& b : buffers_[kind]) {
    if (b.micro_batch != mb || b.chunk != chunk) continue;
    wait(b.work);
    return b;
  }
  KEEL_FAIL(
      "pipeline stage {}: micro-batch {}'s {} for chunk {} was never received (internal "
      "error)",
      pp_.rank(), mb, kind == kActivation ? "activation" : "gradient", chunk);
}

int PipelineRunner::take_slot(int chunk) {
  std::vector<int>& free = free_slots_[static_cast<size_t>(chunk)];
  KEEL_CHECK(!free.empty(),
             "pipeline stage {}: every one of chunk {}'s {} activation slots holds a micro-batch "
             "(internal error: the model was planned for fewer than the schedule keeps)",
             pp_.rank(), chunk, model_.chunk_slots(chunk));
  const int slot = free.back();
  free.pop_back();
  holds_[static_cast<size_t>(slot)] = model_.embeds(chunk) ? 1 : 2;
  // Its output or input gradient may still be on its way to a neighbour.
  for (parallel::Work& w : sends_[static_cast<size_t>(slot)]) wait(w);
  sends_[static_cast<size_t>(slot)].clear();
  return slot;
}

void PipelineRunner::release_slot(int slot) {
  if (--holds_[static_cast<size_t>(slot)] == 0)
    free_slots_[static_cast<size_t>(chunk_of_[static_cast<size_t>(slot)])].push_back(slot);
}

double PipelineRunner::run_step(const int32_t* tokens, const int32_t* targets, float grad_scale) {
  const int64_t BT = model_.batch() * model_.seq();
  wait_seconds_ = 0.0;
  posted_ = 0;
  std::fill(slot_of_.begin(), slot_of_.end(), -1);
  double loss = 0.0;
  for (size_t i = 0; i < actions_.size(); ++i) {
    const PipelineAction& a = actions_[i];
    const int mb = a.micro_batch, c = a.chunk;
    switch (a.op) {
      case PipelineOp::kRecvActivation:
      case PipelineOp::kRecvGrad:
        if (i >= posted_) {  // not posted ahead: every buffer was busy, so a new one
          post(i, true);
          posted_ = i + 1;
        }
        break;
      case PipelineOp::kForward: {
        const int slot = take_slot(c);
        slot_of(mb, c) = slot;
        Buffer* in = model_.embeds(c) ? nullptr : &received(kActivation, mb, c);
        loss += model_.stage_forward(slot, tokens + mb * BT, in ? in->data.data() : nullptr,
                                     targets + mb * BT, grad_scale);
        if (in) release(*in);
        break;
      }
      case PipelineOp::kBackward:
      case PipelineOp::kBackwardInput: {
        const int slot = slot_of(mb, c);
        Buffer* grad = model_.heads(c) ? nullptr : &received(kGrad, mb, c);
        const float* g = grad ? grad->data.data() : nullptr;
        if (a.op == PipelineOp::kBackward) {
          model_.stage_backward(slot, g);
          release_slot(slot);
        } else {
          model_.stage_backward_input(slot, g);  // the slot waits for its weight pass
        }
        if (grad) release(*grad);
        break;
      }
      case PipelineOp::kBackwardWeight:
        model_.stage_backward_weight(slot_of(mb, c));
        release_slot(slot_of(mb, c));
        break;
      case PipelineOp::kSendActivation: {
        const int slot = slot_of(mb, c);
        sends_[static_cast<size_t>(slot)].push_back(
            pp_.send_async(floats(model_.stage_output(slot), elems_), a.peer, kTags[kActivation]));
        break;
      }
      case PipelineOp::kSendGrad: {
        const int slot = slot_of(mb, c);
        sends_[static_cast<size_t>(slot)].push_back(
            pp_.send_async(floats(model_.stage_input_grad(slot), elems_), a.peer, kTags[kGrad]));
        release_slot(slot);
        break;
      }
    }
    post_ahead(i + 1);
  }
  for (auto& slot : sends_) {
    for (parallel::Work& w : slot) wait(w);
    slot.clear();
  }
  for (const auto& pool : buffers_)
    for (const Buffer& b : pool)
      KEEL_CHECK(b.micro_batch < 0,
                 "pipeline stage {}: micro-batch {}'s message was received but never used "
                 "(internal error)",
                 pp_.rank(), b.micro_batch);
  return loss;
}

double PipelineRunner::evaluate(const int32_t* tokens, const int32_t* targets) {
  const int s = pp_.rank(), p = shape_.stages;
  std::vector<float>& in = buffers_[kActivation][0].data;
  double loss = 0.0;
  // Virtual stage by virtual stage: from the previous one (around the ring between chunks) to
  // the next.
  for (int c = 0; c < shape_.virtual_stages; ++c) {
    if (!model_.embeds(c)) pp_.recv(floats(in.data(), elems_), (s + p - 1) % p, kTags[kActivation]);
    loss += model_.stage_evaluate(tokens, model_.embeds(c) ? nullptr : in.data(), targets, c);
    if (!model_.heads(c))
      pp_.send(floats(model_.stage_output(model_.chunk_slot(c, 0)), elems_), (s + 1) % p,
               kTags[kActivation]);
  }
  return loss;
}

}  // namespace keel::runtime
