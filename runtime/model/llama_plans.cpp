// The model's memory plans and parameters, laid out once at construction: the weights and
// gradients unit by unit, each activation slot's buffers (an MoE layer's routing and expert rows
// instead of the dense MLP's), the shared workspace, and every parameter under its Hugging Face
// name as a view of the plans (llama.h).
#include <omp.h>

#include <algorithm>
#include <functional>

#include "kernels/ops.h"
#include "runtime/model/llama.h"
#include "runtime/model/llama_slots.h"

namespace keel::runtime {

void LlamaModel::build_plans() {
  const int64_t L = num_layers();  // the stage's; layer l is the model's layer_index_[l]
  Slots& s = *s_;
  // Parameters and gradients: the same table twice, unit after unit.
  auto begin_unit = [&](std::string name, int group = parallel::ZeroUnit::kDataGroup) {
    units_.push_back({std::move(name), {}, {}, 0, group});
    unit_begin_.push_back(-1);
  };
  auto add_weight = [&](const std::string& name, Shape shape) {
    const Slot slot = weights_.add(name, DType::F32, shape);
    grads_.add(name, DType::F32, shape);
    const int64_t at = static_cast<int64_t>(weights_.offset(slot) / sizeof(float));
    if (unit_begin_.back() < 0) unit_begin_.back() = at;
    unit_of_.push_back(static_cast<int>(units_.size()) - 1);
    slot_at_.push_back(at - unit_begin_.back());
    units_.back().elems = slot_at_.back() + shape.numel();
    return slot;
  };
  if (embed_) {
    begin_unit("embed_tokens");
    s.w_embed = add_weight("embed_tokens", {V_, C_});
  }
  layers_.resize(static_cast<size_t>(L));
  for (int64_t l = 0; l < L; ++l) {
    Layer& y = layers_[static_cast<size_t>(l)];
    const std::string p = "layers." + std::to_string(layer_index_[static_cast<size_t>(l)]) + ".";
    begin_unit("layers." + std::to_string(layer_index_[static_cast<size_t>(l)]));
    layer_unit_.push_back(static_cast<int>(units_.size()) - 1);
    expert_unit_.push_back(-1);
    y.w_in_norm = add_weight(p + "input_layernorm", {C_});
    y.w_qkv = add_weight(p + "qkv_proj", {QKV_, C_});
    y.w_o = add_weight(p + "o_proj", {C_, H_ * D_});
    y.w_post_norm = add_weight(p + "post_attention_layernorm", {C_});
    y.moe = config_.moe_layer(layer_index_[static_cast<size_t>(l)]);
    if (y.moe) {  // the router, then this rank's experts stacked
      y.w_router = add_weight(p + "router", {E_, C_});
      begin_unit("layers." + std::to_string(layer_index_[static_cast<size_t>(l)]) + ".experts",
                 parallel::ZeroUnit::kExpertGroup);
      expert_unit_.back() = static_cast<int>(units_.size()) - 1;
      y.w_gate_up = add_weight(p + "experts.gate_up_proj", {El_ * 2 * I_, C_});
      y.w_down = add_weight(p + "experts.down_proj", {El_ * C_, I_});
    } else {
      y.w_gate_up = add_weight(p + "gate_up_proj", {2 * I_, C_});
      y.w_down = add_weight(p + "down_proj", {C_, I_});
    }
  }
  if (last_) {
    begin_unit("head");
    s.w_final_norm = add_weight("norm", {C_});
    if (!config_.tie_word_embeddings) s.w_head = add_weight("lm_head", {V_, C_});
  }

  // Activations: slot 0's as one micro-batch has always kept them, then each further slot's own
  // buffers (block inputs, the blocks' insides unless checkpointing shares one recomputed set,
  // tokens). The head's norm is done with once the head's backward has run inside the forward:
  // one for every slot.
  // A buffer of slot k's own (slot 0's under the names they had before slots), and its size as
  // the plan lays it out: what each further slot adds.
  auto own = [&](int k, const std::string& name, DType dtype, Shape shape) {
    const size_t bytes = static_cast<size_t>(shape.numel()) * dtype_size(dtype);
    const size_t aligned =
        (bytes + MemoryPlan::kAlign - 1) / MemoryPlan::kAlign * MemoryPlan::kAlign;
    if (k == 0) slot_bytes_ += aligned;
    own_bytes_ += aligned;
    return acts_.add(k == 0 ? name : "slot " + std::to_string(k) + ": " + name, dtype, shape);
  };
  // Checkpointing: every block of every slot shares one set of insides, recomputed when needed.
  MicroActs::Block shared;
  // An MoE layer keeps its routing and its experts' rows instead of the dense gate_up and h.
  auto add_moe = [&](MoeActSlots& y, const MoePlanAdd& add) {
    y = declare_moe_acts(moe_->shape(), add);
  };
  auto add_block = [&](MicroActs::Block& y, const std::function<Slot(const char*, Shape)>& add,
                       const MoePlanAdd& typed, bool moe) {
    y.ln1 = add("ln1", {N_, C_});
    y.rstd1 = add("rstd1", {rows_.count});
    y.qkv = add("qkv", {N_, QKV_});
    y.att = add("att", {N_, H_ * D_});
    y.lse = add("lse", {B_, H_, T_});
    y.xmid = add("xmid", {rows_.count, C_});
    y.ln2 = add("ln2", {N_, C_});
    y.rstd2 = add("rstd2", {rows_.count});
    y.moe = moe;
    if (moe) {
      add_moe(y.experts, typed);
    } else {
      y.gu = add("gate_up", {N_, 2 * I_});
      y.h = add("h", {N_, I_});
    }
  };
  // The shared set serves dense and MoE layers alike when the stage has both.
  MicroActs::Block shared_moe;
  if (checkpointing_ && L > 0) {
    const std::string p = "layers." + std::to_string(layer_index_[0]) + ".";
    auto typed = [&](const char* name, DType dtype, Shape shape) {
      return acts_.add(p + name, dtype, shape);
    };
    auto add = [&](const char* name, Shape shape) { return typed(name, DType::F32, shape); };
    bool dense = false, moe = false;
    for (const Layer& y : layers_) (y.moe ? moe : dense) = true;
    if (dense) add_block(shared, add, typed, false);
    if (moe) {
      if (dense) {  // the attention half once, the MoE insides beside it
        shared_moe = shared;
        shared_moe.moe = true;
        add_moe(shared_moe.experts, typed);
      } else {
        add_block(shared_moe, add, typed, true);
      }
    }
  }
  for (size_t c = 0; c < chunks_.size(); ++c) {
    const Chunk& chunk = chunks_[c];
    for (int k = chunk.slot_begin; k < chunk.slot_end; ++k) {
      MicroActs& m = s.slots[static_cast<size_t>(k)];
      m.chunk = static_cast<int>(c);
      m.first = chunk.first, m.last = chunk.last;
      for (int64_t l = chunk.first; l <= chunk.last; ++l)
        m.x.push_back(own(k, "x." + std::to_string(l), DType::F32, {rows_.count, C_}));
      for (int64_t l = chunk.first; l < chunk.last; ++l) {
        MicroActs::Block& y = m.blocks.emplace_back();
        const bool moe = layers_[static_cast<size_t>(l)].moe;
        if (checkpointing_) {
          y = moe ? shared_moe : shared;
          continue;
        }
        const std::string p =
            "layers." + std::to_string(layer_index_[static_cast<size_t>(l)]) + ".";
        auto typed = [&](const char* name, DType dtype, Shape shape) {
          return own(k, p + name, dtype, shape);
        };
        add_block(
            y, [&](const char* name, Shape shape) { return typed(name, DType::F32, shape); }, typed,
            moe);
      }
      for (int64_t l = chunk.first; split_backward_ && l < chunk.last; ++l) {
        const std::string p =
            "layers." + std::to_string(layer_index_[static_cast<size_t>(l)]) + ".";
        MicroActs::Deferred& d = m.deferred.emplace_back();
        d.down = own(k, p + "d_down", DType::F32, {N_, C_});
        d.gate_up = own(k, p + "d_gate_up", DType::F32, {N_, 2 * I_});
        d.o = own(k, p + "d_o", DType::F32, {N_, C_});
        d.qkv = own(k, p + "d_qkv", DType::F32, {N_, QKV_});
      }
      if (last_ && k == 0) {
        s.lnf = acts_.add("norm", DType::F32, {N_, C_});
        s.rstdf = acts_.add("rstd", DType::F32, {rows_.count});
      }
      if (embeds(m.chunk)) m.tokens = own(k, "tokens", DType::I32, {N_});
    }
  }

  // Workspace: lives across steps, contents meaningless between calls.
  if (last_) {
    s.logits = work_.add("logits_chunk", DType::F32, {chunk_rows_, V_});
    s.losses = work_.add("losses", DType::F32, {N_});
  }
  s.dres = work_.add("d_residual", DType::F32, {rows_.count, C_});
  s.dtmp = work_.add("d_scratch", DType::F32, {N_, C_});
  s.dbig = work_.add("d_qkv_or_gate_up", DType::F32, {N_, std::max(QKV_, 2 * I_)});
  s.dsmall = work_.add("d_att_or_h", DType::F32, {N_, std::max(H_ * D_, I_)});
  workspace_threads_ = omp_get_max_threads();
  const kernels::Ops& k = *ops_;
  const size_t ws = k.attention_workspace_floats(B_, T_, H_, Hkv_, D_, workspace_threads_);
  s.attn_ws = work_.add("attention", DType::F32, {static_cast<int64_t>(ws)});
  if (tp_.kv_replicas > 1)
    s.kv_grad = work_.add("kv_grad", DType::F32, {2 * config_.num_key_value_heads * D_, C_});
  if (tp_.split() && last_) {  // the vocabulary-parallel cross-entropy's per-row statistics
    s.row_max = work_.add("row_max", DType::F32, {chunk_rows_});
    s.ce_stats = work_.add("ce_stats", DType::F64, {2, chunk_rows_});
  }
  if (sp_) s.norm_grad = work_.add("norm_grad", DType::F32, {2, C_});
  s.moe = std::any_of(layers_.begin(), layers_.end(), [](const Layer& y) { return y.moe; });
  if (s.moe)
    s.moe_work = declare_moe_scratch(
        moe_->shape(),
        [&](const char* name, DType dtype, Shape shape) { return work_.add(name, dtype, shape); },
        /*backward=*/true);
  s.rope_cos = work_.add("rope_cos", DType::F32, {T_, D_ / 2});
  s.rope_sin = work_.add("rope_sin", DType::F32, {T_, D_ / 2});

  if (holds_.allocate) {
    if (holds_.weights) weights_.allocate();
    if (holds_.grads) grads_.allocate();
    acts_.allocate();
    work_.allocate();
  }
  for (size_t u = 0; u < units_.size(); ++u) {
    wbase_.push_back(own_weights(static_cast<int>(u)));
    gbase_.push_back(own_grads(static_cast<int>(u)));
  }

  // Parameters under their Hugging Face names, as views of the plan (null where not held), and
  // in their unit's list for ZeRO. Each names its global shape and, under TP, the slice held here.
  const int64_t Hg = config_.num_attention_heads, Hkvg = config_.num_key_value_heads;
  const int64_t Ig = config_.intermediate_size, Vg = config_.vocab_size;
  auto split = [&](int dim, parallel::Span span, int64_t scale, int64_t total) {
    return span.count * scale == total ? ShardSpec{}
                                       : ShardSpec{dim, span.begin * scale, span.end() * scale};
  };
  const bool first = tp_.rank == 0;  // counts the tensors every TP rank holds alike
  const bool kv_first = tp_.rank % tp_.kv_replicas == 0;
  auto add_param = [&](const std::string& name, Slot slot, int64_t row0, int64_t rows, bool decay,
                       Shape global, ShardSpec shard, bool counted_if_split) {
    const Shape full = weights_.shape(slot);
    const Shape shape = rows >= 0 ? Shape{rows, full[1]} : full;
    const int64_t at = slot_at_[slot] + (rows >= 0 ? row0 * full[1] : 0);  // rows of a fused matrix
    const int u = unit_of_[slot];
    Tensor w(wbase_[static_cast<size_t>(u)] ? wbase_[static_cast<size_t>(u)] + at : nullptr,
             DType::F32, shape);
    Tensor g(gbase_[static_cast<size_t>(u)] ? gbase_[static_cast<size_t>(u)] + at : nullptr,
             DType::F32, shape);
    const bool counted = shard.whole() ? first : counted_if_split;
    const bool copy = u == 0 && embed_ && !first_;  // the tied embedding on the last stage
    const bool expert = units_[static_cast<size_t>(u)].group == parallel::ZeroUnit::kExpertGroup;
    params_.push_back({name, global, shard, decay, counted, copy, expert, w, g});
    parallel::ZeroUnit& unit = units_[static_cast<size_t>(u)];
    unit.params.push_back({name, shape[0], shape.numel() / shape[0], counted && !copy, shard.dim});
    unit.offsets.push_back(at);
    return params_.size() - 1;
  };
  const ShardSpec vocab = split(0, tp_.vocab, 1, Vg);
  const ShardSpec q_rows = split(0, tp_.heads, D_, Hg * D_),
                  o_cols = split(1, tp_.heads, D_, Hg * D_);
  const ShardSpec kv_rows = split(0, tp_.kv_heads, D_, Hkvg * D_);
  const ShardSpec mlp_rows = split(0, tp_.inter, 1, Ig), down_cols = split(1, tp_.inter, 1, Ig);
  if (embed_)
    s.embed = add_param("model.embed_tokens.weight", s.w_embed, 0, -1, true, {Vg, C_}, vocab, true);
  for (int64_t l = 0; l < L; ++l) {
    Layer& y = layers_[static_cast<size_t>(l)];
    const std::string p =
        "model.layers." + std::to_string(layer_index_[static_cast<size_t>(l)]) + ".";
    add_param(p + "input_layernorm.weight", y.w_in_norm, 0, -1, false, {C_}, {}, true);
    add_param(p + "self_attn.q_proj.weight", y.w_qkv, 0, H_ * D_, true, {Hg * D_, C_}, q_rows,
              true);
    add_param(p + "self_attn.k_proj.weight", y.w_qkv, H_ * D_, Hkv_ * D_, true, {Hkvg * D_, C_},
              kv_rows, kv_first);
    add_param(p + "self_attn.v_proj.weight", y.w_qkv, (H_ + Hkv_) * D_, Hkv_ * D_, true,
              {Hkvg * D_, C_}, kv_rows, kv_first);
    add_param(p + "self_attn.o_proj.weight", y.w_o, 0, -1, true, {C_, Hg * D_}, o_cols, true);
    add_param(p + "post_attention_layernorm.weight", y.w_post_norm, 0, -1, false, {C_}, {}, true);
    if (y.moe) {
      // Mixtral's names; each expert under its index in the model, whichever rank holds it.
      const std::string q = p + "block_sparse_moe.";
      add_param(q + "gate.weight", y.w_router, 0, -1, true, {E_, C_}, {}, true);
      for (int64_t e = 0; e < El_; ++e) {
        const std::string x = q + "experts." + std::to_string(e0_ + e) + ".";
        add_param(x + "w1.weight", y.w_gate_up, e * 2 * I_, I_, true, {Ig, C_}, mlp_rows, true);
        add_param(x + "w3.weight", y.w_gate_up, e * 2 * I_ + I_, I_, true, {Ig, C_}, mlp_rows,
                  true);
        add_param(x + "w2.weight", y.w_down, e * C_, C_, true, {C_, Ig}, down_cols, true);
      }
      continue;
    }
    add_param(p + "mlp.gate_proj.weight", y.w_gate_up, 0, I_, true, {Ig, C_}, mlp_rows, true);
    add_param(p + "mlp.up_proj.weight", y.w_gate_up, I_, I_, true, {Ig, C_}, mlp_rows, true);
    add_param(p + "mlp.down_proj.weight", y.w_down, 0, -1, true, {C_, Ig}, down_cols, true);
  }
  if (!last_) return;
  s.final_norm = add_param("model.norm.weight", s.w_final_norm, 0, -1, false, {C_}, {}, true);
  s.head = config_.tie_word_embeddings
               ? s.embed
               : add_param("lm_head.weight", s.w_head, 0, -1, true, {Vg, C_}, vocab, true);
}

}  // namespace keel::runtime
