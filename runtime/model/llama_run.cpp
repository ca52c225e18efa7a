// Running the model (runtime/model/llama.h): the embedding, the blocks, the head and its
// cross-entropy, forward and backward, as the whole model or as a pipeline stage. The plans and
// the parameters they hold are built in runtime/model/llama.cpp.
#include <omp.h>

#include <algorithm>

#include "kernels/ops.h"
#include "runtime/model/llama_slots.h"

namespace keel::runtime {

void LlamaModel::embed(const MicroActs& m, const int32_t* tokens) {
  KEEL_CHECK(holds_.allocate, "this model was built to plan memory only and cannot run");
  // Attention's workspace holds one scratch slot per thread, sized when the model was built.
  KEEL_CHECK(omp_get_max_threads() <= workspace_threads_,
             "the model was built for {} OpenMP threads and now runs with {}; build it after "
             "setting the thread count",
             workspace_threads_, omp_get_max_threads());
  KEEL_CHECK(tp_comm_.size() == tp_.size,
             "the model holds a tensor-parallel slice and has no TP group (internal error)");
  const kernels::Ops& k = *ops_;
  int32_t* kept = acts_[m.tokens].data_as<int32_t>();
  std::copy_n(tokens, N_, kept);
  float* x0 = acts_[m.x[0]].f32();
  if (!tp_.split()) {
    k.embedding_forward(x0, kept, w(s_->w_embed), N_, C_, V_, stream_);
    return;
  }
  // Vocabulary-parallel: each rank looks up the tokens its rows hold, zeros elsewhere, summed.
  for (int64_t n = 0; n < N_; ++n)
    KEEL_CHECK(kept[n] >= 0 && kept[n] < config_.vocab_size,
               "embedding: token {} of row {} is outside the vocabulary of {}", kept[n], n,
               config_.vocab_size);
  if (!sp_) {
    k.embedding_forward_slice(x0, kept, w(s_->w_embed), N_, C_, tp_.vocab.begin, V_, stream_);
    tp_comm_.reduce(x0, N_ * C_);
    return;
  }
  // Sequence parallelism: the sum is scattered, each rank keeping its rows of the stream.
  float* every_row = work_[s_->dtmp].f32();
  k.embedding_forward_slice(every_row, kept, w(s_->w_embed), N_, C_, tp_.vocab.begin, V_, stream_);
  tp_comm_.reduce_scatter(x0, every_row, rows_.count * C_);
}

BlockWeights LlamaModel::block_weights(int l) const {
  const Layer& y = layers_[static_cast<size_t>(l)];
  return {w(y.w_in_norm),
          w(y.w_qkv),
          w(y.w_o),
          w(y.w_post_norm),
          w(y.w_gate_up),
          w(y.w_down),
          y.moe ? w(y.w_router) : nullptr};
}

BlockGrads LlamaModel::block_grads(int l) const {
  const Layer& y = layers_[static_cast<size_t>(l)];
  return {g(y.w_in_norm),
          g(y.w_qkv),
          g(y.w_o),
          g(y.w_post_norm),
          g(y.w_gate_up),
          g(y.w_down),
          y.moe ? g(y.w_router) : nullptr};
}

BlockActs LlamaModel::block_acts(const MicroActs& m, int l, bool count) const {
  const MicroActs::Block& y = m.blocks[static_cast<size_t>(l - m.first)];
  auto a = [&](Slot s) { return acts_[s].f32(); };
  BlockActs acts = {a(y.ln1),  a(y.rstd1), a(y.qkv),   a(y.att), a(y.lse),
                    a(y.xmid), a(y.ln2),   a(y.rstd2), nullptr,  nullptr};
  if (!y.moe) {
    acts.gu = a(y.gu), acts.h = a(y.h);
    return acts;
  }
  acts.moe = moe_acts(y.experts, [&](Slot s) { return acts_[s].data(); });
  if (count) acts.moe_stats = &moe_stats_[static_cast<size_t>(l)];
  return acts;
}

MoeScratch LlamaModel::moe_scratch() const {
  if (!s_->moe) return {};
  return runtime::moe_scratch(s_->moe_work, moe_->shape().ep,
                              [&](Slot slot) { return work_[slot].data(); });
}

BlockPositions LlamaModel::positions() const {
  return {B_, T_, work_[s_->rope_cos].f32(), work_[s_->rope_sin].f32()};
}

// One block: x[l] → x[l+1]. With recompute (checkpointing's backward), x[l+1] is left alone.
void LlamaModel::block_forward(const MicroActs& m, int l, bool recompute, bool count) {
  const size_t i = static_cast<size_t>(l - m.first);
  // dtmp is free in the forward and in the backward's recompute (dres holds the gradient then).
  const MoeScratch moe = moe_scratch();
  block_.forward(recompute ? nullptr : acts_[m.x[i + 1]].f32(), acts_[m.x[i]].f32(),
                 block_weights(l), block_acts(m, l, count && !recompute), positions(),
                 work_[s_->attn_ws].f32(), work_[s_->dtmp].f32(), &moe);
}

// Takes ∂/∂x[l+1] in dres and leaves ∂/∂x[l] there; parameter gradients accumulate.
BlockScratch LlamaModel::block_scratch() const {
  return {work_[s_->dres].f32(),
          work_[s_->dtmp].f32(),
          work_[s_->dbig].f32(),
          work_[s_->dsmall].f32(),
          tp_.kv_replicas > 1 ? work_[s_->kv_grad].f32() : nullptr,
          sp_ ? work_[s_->norm_grad].f32() : nullptr,
          moe_scratch()};
}

void LlamaModel::block_backward(const MicroActs& m, int l, bool defer) {
  if (checkpointing_) block_forward(m, l, /*recompute=*/true);
  BlockDeferred kept;
  if (defer) {
    const MicroActs::Deferred& d = m.deferred[static_cast<size_t>(l - m.first)];
    kept = {acts_[d.down].f32(), acts_[d.gate_up].f32(), acts_[d.o].f32(), acts_[d.qkv].f32()};
  }
  block_.backward(acts_[m.x[static_cast<size_t>(l - m.first)]].f32(), block_weights(l),
                  block_grads(l), block_acts(m, l), positions(), block_scratch(),
                  work_[s_->attn_ws].f32(), defer ? &kept : nullptr);
}

// Final norm, output head and cross-entropy, chunk by chunk of rows. With backward, leaves
// ∂/∂x[L] in dres and accumulates the head's and final norm's gradients. Under sequence
// parallelism the norm runs on the rows held and its output is gathered whole for the head (the
// loss covers every row on every rank, as without SP); backward, the head's input gradient is
// reduce-scattered back to the rows held.
double LlamaModel::head(const MicroActs& m, const int32_t* targets, float grad_scale, bool backward,
                        float* logits_out) {
  const kernels::Ops& k = *ops_;
  const float* xL = acts_[m.x.back()].f32();
  float* lnf = acts_[s_->lnf].f32();
  const Slot head_slot = config_.tie_word_embeddings ? s_->w_embed : s_->w_head;
  const float* w_head = w(head_slot);
  float* g_head = backward ? g(head_slot) : nullptr;
  float* logits = work_[s_->logits].f32();
  float* losses = work_[s_->losses].f32();
  float* dtmp = work_[s_->dtmp].f32();
  const int64_t at = rows_.begin * C_, n = rows_.count;
  k.rmsnorm_forward(lnf + at, acts_[s_->rstdf].f32(), xL, w(s_->w_final_norm), n, C_,
                    static_cast<float>(config_.rms_norm_eps), stream_);
  if (sp_) tp_comm_.all_gather(lnf, lnf + at, n * C_);
  double total = 0.0;
  for (int64_t r0 = 0; r0 < N_; r0 += chunk_rows_) {
    const int64_t rows = std::min(chunk_rows_, N_ - r0);
    k.matmul_forward(logits, lnf + r0 * C_, w_head, rows, C_, V_, stream_);
    if (logits_out) std::copy_n(logits, rows * V_, logits_out + r0 * V_);
    if (!targets) continue;
    if (tp_.split())
      sliced_cross_entropy(losses + r0, logits, targets + r0, rows, grad_scale, backward);
    else if (backward)
      k.cross_entropy_forward_backward(losses + r0, logits, targets + r0, rows, V_, grad_scale,
                                       stream_);
    else
      k.cross_entropy_forward(losses + r0, logits, targets + r0, rows, V_, stream_);
    if (backward) {
      k.matmul_backward(dtmp + r0 * C_, g_head, logits, lnf + r0 * C_, w_head, rows, C_, V_, false,
                        stream_);
      // The head is column-parallel over the vocabulary: its input gradient sums over ranks
      // (under SP once every chunk is in, below).
      if (!sp_) tp_comm_.reduce(dtmp + r0 * C_, rows * C_);
    }
    for (int64_t i = 0; i < rows; ++i) total += losses[r0 + i];
    progress();
  }
  if (!backward) return total;
  if (!sp_) {
    k.rmsnorm_backward(work_[s_->dres].f32(), g(s_->w_final_norm), dtmp, xL, w(s_->w_final_norm),
                       acts_[s_->rstdf].f32(), N_, C_, false, stream_);
    return total;
  }
  tp_comm_.reduce_scatter(dtmp + at, dtmp, n * C_);
  // The norm weight's gradient over the rows held, summed over the group (as in the blocks).
  float* g_norm = work_[s_->norm_grad].f32();
  std::fill_n(g_norm, C_, 0.0f);
  k.rmsnorm_backward(work_[s_->dres].f32(), g_norm, dtmp + at, xL, w(s_->w_final_norm),
                     acts_[s_->rstdf].f32(), n, C_, false, stream_);
  tp_comm_.reduce(g_norm, C_);
  k.add_inplace(g(s_->w_final_norm), g_norm, C_, stream_);
  return total;
}

// Cross-entropy over the vocabulary split across the TP group (kernels/vocab_parallel.h): the
// row maxima and then Σ exp and the target's logit are joined over the group, so no rank ever
// holds a whole row of logits; with backward the logits become their gradient in place.
void LlamaModel::sliced_cross_entropy(float* losses, float* logits, const int32_t* targets,
                                      int64_t rows, float grad_scale, bool backward) {
  const kernels::Ops& k = *ops_;
  float* row_max = work_[s_->row_max].f32();
  double* stats = work_[s_->ce_stats].data_as<double>();
  k.cross_entropy_slice_max(row_max, logits, rows, V_, stream_);
  tp_comm_.reduce_max(row_max, rows);
  // Rows past `rows` of the (2, chunk) statistics are not used: pack the two halves together.
  k.cross_entropy_slice_sums(stats, logits, row_max, targets, rows, V_, tp_.vocab.begin, stream_);
  tp_comm_.reduce(stats, 2 * rows);
  k.cross_entropy_slice_finish(losses, logits, row_max, stats, targets, rows, V_, tp_.vocab.begin,
                               grad_scale, backward, stream_);
}

// The embedding (or the previous stage's output) and the stage's blocks forward, each unit's
// weights held only while it runs.
void LlamaModel::run_forward(const MicroActs& m, const int32_t* tokens, const float* input,
                             bool training) {
  if (hooks_) hooks_->begin_micro_batch(m.chunk);
  if (embeds(m.chunk)) {
    use_weights(0);
    embed(m, tokens);
    drop_weights(0);
  } else {
    KEEL_CHECK(input, "the pipeline stage from layer {} needs the previous stage's output",
               chunks_[static_cast<size_t>(m.chunk)].global_first);
    std::copy_n(input, rows_.count * C_, acts_[m.x[0]].f32());
  }
  for (int64_t l = m.first; l < m.last; ++l) {
    use_layer(l, true, false);
    block_forward(m, static_cast<int>(l), false, training);
    drop_layer(l, true, false);
  }
}

double LlamaModel::forward(const int32_t* tokens, const int32_t* targets, float* logits) {
  KEEL_CHECK(!logits || !tp_.split(),
             "the logits of a tensor-parallel model are split over its TP group (internal error)");
  KEEL_CHECK(first_ && last_,
             "forward runs the whole model; a pipeline stage runs stage_evaluate (internal error)");
  return evaluate_slot(0, tokens, nullptr, targets, logits);
}

double LlamaModel::stage_evaluate(const int32_t* tokens, const float* input, const int32_t* targets,
                                  int chunk) {
  return evaluate_slot(chunk_slot(chunk, 0), tokens, input, targets, nullptr);
}

double LlamaModel::evaluate_slot(int slot, const int32_t* tokens, const float* input,
                                 const int32_t* targets, float* logits) {
  // Evaluation runs between steps: never over a micro-batch awaiting its backward.
  const MicroActs& m = micro(slot, "forward");
  SlotState& state = slot_state_[static_cast<size_t>(slot)];
  KEEL_CHECK(state != SlotState::kForwarded && state != SlotState::kInputGrad,
             "forward: activation slot {} holds a micro-batch whose backward has not run; "
             "evaluate between steps (internal error)",
             slot);
  state = SlotState::kEmpty;
  run_forward(m, tokens, input, /*training=*/false);
  double loss = 0.0;
  if (heads(m.chunk)) loss = run_head(m, targets, 0.0f, false, logits);
  state = SlotState::kEvaluated;
  return loss;
}

double LlamaModel::run_head(const MicroActs& m, const int32_t* targets, float grad_scale,
                            bool backward, float* logits) {
  const bool tied = config_.tie_word_embeddings;
  use_weights(head_unit());
  if (tied) use_weights(0);
  if (backward) use_grads(head_unit());
  // On the first stage the tied embedding's gradient stays held until the embedding's own
  // backward adds to it; the last stage's copy is done here (the first stage sums the rest).
  if (backward && tied) use_grads(0);
  const double loss = head(m, targets, grad_scale, backward, logits);
  if (tied) drop_weights(0);
  if (backward && tied && !first_) drop_grads(0);
  drop_weights(head_unit());
  if (backward) drop_grads(head_unit());
  return loss;
}

double LlamaModel::forward_backward(const int32_t* tokens, const int32_t* targets,
                                    float grad_scale) {
  KEEL_CHECK(first_ && last_,
             "forward_backward runs the whole model; a pipeline stage runs stage_forward and "
             "stage_backward (internal error)");
  const double loss = stage_forward(0, tokens, nullptr, targets, grad_scale);
  stage_backward(0, nullptr);
  return loss;
}

const LlamaModel::MicroActs& LlamaModel::micro(int slot, const char* what) const {
  KEEL_CHECK(slot >= 0 && slot < activation_slots(),
             "{}: activation slot {} is out of range: this stage holds {} (slots 0 to {}); build "
             "the model with ModelSplit::activation_slots covering the schedule's micro-batches "
             "in flight (internal error)",
             what, slot, activation_slots(), activation_slots() - 1);
  return s_->slots[static_cast<size_t>(slot)];
}

double LlamaModel::stage_forward(int slot, const int32_t* tokens, const float* input,
                                 const int32_t* targets, float grad_scale) {
  const MicroActs& m = micro(slot, "stage_forward");
  KEEL_CHECK(slot_state_[static_cast<size_t>(slot)] != SlotState::kForwarded &&
                 slot_state_[static_cast<size_t>(slot)] != SlotState::kInputGrad,
             "stage_forward: activation slot {} still holds a micro-batch whose backward has not "
             "run; run stage_backward({}) first or use another slot (internal error)",
             slot, slot);
  // Overwritten from here on: if this forward fails, the slot holds nothing usable.
  slot_state_[static_cast<size_t>(slot)] = SlotState::kEmpty;
  run_forward(m, tokens, input, /*training=*/true);
  double loss = 0.0;
  if (heads(m.chunk)) {
    // The head (final norm and lm_head, or the tied embedding) runs forward and backward at once.
    loss = run_head(m, targets, grad_scale, true, nullptr);
    // The head's gradient waits in the slot for its backward (the shared dres will not): in
    // x[L], which nothing reads again.
    std::copy_n(work_[s_->dres].f32(), rows_.count * C_, acts_[m.x.back()].f32());
  }
  slot_state_[static_cast<size_t>(slot)] = SlotState::kForwarded;
  return loss;
}

const float* LlamaModel::stage_output(int slot) const {
  const MicroActs& m = micro(slot, "stage_output");
  KEEL_CHECK(!heads(m.chunk),
             "the last pipeline stage hands no output on: its forward ends in the loss "
             "(internal error)");
  KEEL_CHECK(slot_state_[static_cast<size_t>(slot)] != SlotState::kEmpty,
             "stage_output: activation slot {} holds no micro-batch's forward (internal error)",
             slot);
  return acts_[m.x.back()].f32();
}

const float* LlamaModel::stage_input_grad(int slot) const {
  const MicroActs& m = micro(slot, "stage_input_grad");
  KEEL_CHECK(!embeds(m.chunk), "the first pipeline stage hands no gradient back (internal error)");
  const SlotState state = slot_state_[static_cast<size_t>(slot)];
  KEEL_CHECK(state == SlotState::kBackwarded || state == SlotState::kInputGrad,
             "stage_input_grad: activation slot {} holds no finished backward (internal error)",
             slot);
  return acts_[m.x[0]].f32();
}

void LlamaModel::stage_backward(int slot, const float* output_grad) {
  run_backward(slot, output_grad, false);
}

void LlamaModel::stage_backward_input(int slot, const float* output_grad) {
  KEEL_CHECK(split_backward_,
             "stage_backward_input: the model was built without ModelSplit::split_backward "
             "(internal error)");
  run_backward(slot, output_grad, true);
  slot_state_[static_cast<size_t>(slot)] = SlotState::kInputGrad;
}

void LlamaModel::stage_backward_weight(int slot) {
  const MicroActs& m = micro(slot, "stage_backward_weight");
  KEEL_CHECK(slot_state_[static_cast<size_t>(slot)] == SlotState::kInputGrad,
             "stage_backward_weight: activation slot {} holds no micro-batch whose input-gradient "
             "pass ran (internal error)",
             slot);
  const BlockScratch scratch = block_scratch();
  for (int64_t l = m.last - 1; l >= m.first; --l) {
    use_layer(l, false, true);
    const MicroActs::Deferred& d = m.deferred[static_cast<size_t>(l - m.first)];
    block_.weight_backward(
        block_grads(static_cast<int>(l)), block_acts(m, static_cast<int>(l)),
        {acts_[d.down].f32(), acts_[d.gate_up].f32(), acts_[d.o].f32(), acts_[d.qkv].f32()},
        scratch, N_);
    drop_layer(l, false, true);
    progress();
  }
  slot_state_[static_cast<size_t>(slot)] = SlotState::kBackwarded;
}

void LlamaModel::run_backward(int slot, const float* output_grad, bool defer) {
  const MicroActs& m = micro(slot, "stage_backward");
  KEEL_CHECK(slot_state_[static_cast<size_t>(slot)] == SlotState::kForwarded,
             "stage_backward: activation slot {} holds no micro-batch awaiting its backward (no "
             "stage_forward({}) since its last backward) (internal error)",
             slot, slot);
  slot_state_[static_cast<size_t>(slot)] = SlotState::kEmpty;  // consumed, even if this fails
  float* dres = work_[s_->dres].f32();
  if (heads(m.chunk)) {  // the head's gradient, kept in x.back() by the forward
    std::copy_n(acts_[m.x.back()].f32(), rows_.count * C_, dres);
  } else {
    KEEL_CHECK(output_grad, "the pipeline stage to layer {} needs the next stage's gradient",
               chunks_[static_cast<size_t>(m.chunk)].global_first + (m.last - m.first));
    std::copy_n(output_grad, rows_.count * C_, dres);
  }
  for (int64_t l = m.last - 1; l >= m.first; --l) {
    use_layer(l, true, true);
    block_backward(m, static_cast<int>(l), defer);
    drop_layer(l, true, true);
  }
  if (!embeds(
          m.chunk)) {  // ∂/∂x[0], the previous stage's output gradient, into the slot: x[0] is done
    std::copy_n(dres, rows_.count * C_, acts_[m.x[0]].f32());
    slot_state_[static_cast<size_t>(slot)] = SlotState::kBackwarded;
    return;
  }
  // Acquired already by a tied head on this stage; the embedding's backward reads no weights.
  if (!config_.tie_word_embeddings || !last_) use_grads(0);
  const kernels::Ops& k = *ops_;
  const int32_t* kept = acts_[m.tokens].data_as<int32_t>();
  const float* dx0 = dres;
  if (sp_) {  // the lookups of every row: the rows held by each rank, gathered
    tp_comm_.all_gather(work_[s_->dtmp].f32(), dx0, rows_.count * C_);
    dx0 = work_[s_->dtmp].f32();
  }
  if (tp_.split())
    k.embedding_backward_slice(g(s_->w_embed), dx0, kept, N_, C_, tp_.vocab.begin, V_, stream_);
  else
    k.embedding_backward(g(s_->w_embed), dres, kept, N_, C_, V_, stream_);
  drop_grads(0);
  slot_state_[static_cast<size_t>(slot)] = SlotState::kBackwarded;
}

}  // namespace keel::runtime
