#include "runtime/model/llama.h"

#include <omp.h>

#include <algorithm>
#include <functional>
#include <sstream>

#include "kernels/ops.h"
#include "kernels/rope.h"
#include "runtime/model/llama_slots.h"

namespace keel::runtime {

namespace {
// The stage's chunks of layers, each [first, last) of the model's L (one chunk without
// interleaving), or one keel::Error naming what is wrong.
std::vector<std::pair<int, int>> chunk_ranges(const ModelConfig& c, const ModelSplit& split) {
  if (split.chunk_layers.empty()) {
    const int L = static_cast<int>(c.num_hidden_layers);
    return {{split.first_layer, split.last_layer < 0 ? L : split.last_layer}};
  }
  const auto& r = split.chunk_layers;
  KEEL_CHECK(split.chunk_slots.size() == r.size() && split.pipeline_stages > 0,
             "a model of {} chunks needs a slot count per chunk and its pipeline stage named "
             "(internal error)",
             r.size());
  const int L = static_cast<int>(c.num_hidden_layers);
  const bool first = split.pipeline_stage == 0,
             last = split.pipeline_stage == split.pipeline_stages - 1;
  for (size_t i = 0; i < r.size(); ++i) {
    const bool may_be_empty = (i == 0 && first) || (i + 1 == r.size() && last);
    KEEL_CHECK(0 <= r[i].first && r[i].first <= r[i].second && r[i].second <= L &&
                   (r[i].first < r[i].second || may_be_empty) &&
                   (i == 0 || r[i - 1].second <= r[i].first) && split.chunk_slots[i] >= 1,
               "model chunk {} holds layers [{}, {}) of the model's {} with {} slots: chunks are "
               "in order, apart, and hold at least one layer (internal error)",
               i, r[i].first, r[i].second, L, split.chunk_slots[i]);
  }
  KEEL_CHECK((!first || r.front().first == 0) && (!last || r.back().second == L),
             "the first chunk of the first stage starts at layer 0 and the last chunk of the last "
             "stage ends at layer {} (internal error)",
             L);
  return r;
}

// The stage's layers [first, last) of the model's L, or one keel::Error naming the range.
int64_t stage_end(const ModelConfig& c, const ModelSplit& split) {
  if (!split.chunk_layers.empty()) return chunk_ranges(c, split).back().second;
  const int64_t L = c.num_hidden_layers;
  const int64_t last = split.last_layer < 0 ? L : split.last_layer;
  // Only a first or last stage named as such may be empty: it still holds the embedding or head.
  const bool ends =
      split.pipeline_stages > 1 &&
      (split.pipeline_stage == 0 || split.pipeline_stage == split.pipeline_stages - 1);
  KEEL_CHECK(0 <= split.first_layer && split.first_layer <= last && last <= L &&
                 (split.first_layer < last || ends),
             "a pipeline stage holds layers [{}, {}) of the model's {}: it needs at least one, and "
             "no layer past the last",
             split.first_layer, last, L);
  if (split.pipeline_stages > 0) {
    const int s = split.pipeline_stage, n = split.pipeline_stages;
    KEEL_CHECK(0 <= s && s < n && (s != 0 || split.first_layer == 0) && (s != n - 1 || last == L),
               "pipeline stage {} of {} holds layers [{}, {}) of the model's {}: the first stage "
               "starts at layer 0 and the last ends at layer {} (internal error)",
               s, n, split.first_layer, last, L, L);
  }
  return last;
}

parallel::TpSplit split_of(const ModelConfig& c, ModelSplit split) {
  const int64_t kv = c.num_key_value_heads ? c.num_key_value_heads : c.num_attention_heads;
  return parallel::tp_split(c.num_attention_heads, kv, c.intermediate_size, c.vocab_size,
                            split.tp_size, split.tp_rank);
}
}  // namespace

LlamaModel::LlamaModel(const ModelConfig& config, int64_t B, int64_t T, bool checkpointing,
                       ModelHolds holds, ModelSplit split)
    : config_(config),
      ops_(&kernels::ops(device_)),
      B_(B),
      T_(T),
      N_(B * T),
      tp_(split_of(config, split)),
      H_(tp_.heads.count),
      Hkv_(tp_.kv_heads.count),
      D_(config.hidden_size / config.num_attention_heads),
      C_(config.hidden_size),
      I_(tp_.inter.count),
      V_(tp_.vocab.count),
      QKV_((H_ + 2 * Hkv_) * D_),
      checkpointing_(checkpointing),
      split_backward_(split.split_backward),
      holds_(holds),
      l0_(split.chunk_layers.empty() ? split.first_layer : split.chunk_layers.front().first),
      l1_(stage_end(config, split)),
      first_(split.pipeline_stages > 0 ? split.pipeline_stage == 0 : l0_ == 0),
      last_(split.pipeline_stages > 0 ? split.pipeline_stage == split.pipeline_stages - 1
                                      : l1_ == config.num_hidden_layers),
      embed_(first_ || (last_ && config.tie_word_embeddings)),
      sp_(split.sequence_parallel && tp_.split()),
      rows_(sp_ ? parallel::Span{tp_.rank * N_ / tp_.size, N_ / tp_.size} : parallel::Span{0, N_}),
      block_({C_, H_, Hkv_, D_, I_, static_cast<float>(config.rms_norm_eps), tp_.kv_replicas,
              tp_.kv_heads.begin,
              config.num_key_value_heads ? config.num_key_value_heads : config.num_attention_heads,
              sp_},
             device_),
      s_(std::make_unique<Slots>()) {
  if (!config_.num_key_value_heads) config_.num_key_value_heads = config_.num_attention_heads;
  KEEL_CHECK(B > 0 && T > 0, "micro-batch must be positive, got B={} T={}", B, T);
  KEEL_CHECK(T <= config.max_position_embeddings,
             "sequence length {} exceeds model.max_position_embeddings {}", T,
             config.max_position_embeddings);
  KEEL_CHECK(!sp_ || N_ % tp_.size == 0,
             "sequence parallelism over {} ranks splits the {} rows of a micro-batch (B={} "
             "sequences of T={}); set data.seq_length to a multiple of {}",
             tp_.size, N_, B, T, tp_.size);
  KEEL_CHECK(
      !split_backward_ || !checkpointing,
      "a split backward keeps each block's insides from its first pass to its second, "
      "which checkpointing recomputes and drops; set training.gradient_checkpointing: false, "
      "or a schedule without a split backward");
  KEEL_CHECK(split.activation_slots >= 1,
             "a pipeline stage holds at least one micro-batch's activations, asked for {} slots "
             "(internal error)",
             split.activation_slots);
  // The chunks: their local layers one after another, their slots likewise.
  int64_t local = 0;
  int slots = 0;
  const std::vector<std::pair<int, int>> ranges = chunk_ranges(config, split);
  for (size_t c = 0; c < ranges.size(); ++c) {
    const int k = split.chunk_layers.empty() ? split.activation_slots : split.chunk_slots[c];
    const int64_t n = ranges[c].second - ranges[c].first;
    chunks_.push_back({local, local + n, ranges[c].first, slots, slots + k});
    for (int64_t l = 0; l < n; ++l) layer_index_.push_back(ranges[c].first + l);
    local += n, slots += k;
  }
  s_->slots.resize(static_cast<size_t>(slots));
  slot_state_.assign(s_->slots.size(), SlotState::kEmpty);
  block_.set_progress([this] { progress(); });
  if (config_.moe()) {
    KEEL_CHECK(split.ep_size >= 1 && config_.num_local_experts % split.ep_size == 0 &&
                   split.ep_rank >= 0 && split.ep_rank < split.ep_size,
               "{} experts over {} expert-parallel ranks, this one rank {} (internal error)",
               config_.num_local_experts, split.ep_size, split.ep_rank);
    KEEL_CHECK(
        !split_backward_,
        "a split backward (parallel.pipeline_schedule zb_h1) does not run mixture-of-experts "
        "layers yet; pick another schedule (1f1b, interleaved_1f1b, gpipe)");
    E_ = config_.num_local_experts;
    El_ = E_ / split.ep_size;
    e0_ = split.ep_rank * El_;
    moe_ = std::make_unique<MoeMlp>(MoeShape{C_, I_, E_, config_.num_experts_per_tok,
                                             config_.expert_capacity(T_), B_, T_, split.ep_size},
                                    device_);
    moe_->set_progress([this] { progress(); });
    block_.set_moe(moe_.get());
    set_router_loss_batch(B_);
  }
  // From the widest vocabulary slice, so that every TP rank cuts the same chunks (each chunk's
  // softmax statistics are collectives over the group).
  const int64_t widest = (config.vocab_size + tp_.size - 1) / tp_.size;
  chunk_rows_ = std::min(N_, std::max<int64_t>(kLogitsChunkFloats / widest / 16 * 16, 16));
  build_plans();
  clear_moe_stats();
  if (!holds_.allocate) return;
  kernels::cpu::rope_tables(work_[s_->rope_cos].f32(), work_[s_->rope_sin].f32(), T_, D_,
                            config_.rope_theta);
}

LlamaModel::~LlamaModel() = default;

int LlamaModel::chunk_slots(int chunk) const {
  const Chunk& c = chunks_.at(static_cast<size_t>(chunk));
  return c.slot_end - c.slot_begin;
}

int LlamaModel::chunk_slot(int chunk, int k) const {
  KEEL_CHECK(k >= 0 && k < chunk_slots(chunk),
             "chunk {} has {} activation slots, asked for its slot {} (internal error)", chunk,
             chunk_slots(chunk), k);
  return chunks_[static_cast<size_t>(chunk)].slot_begin + k;
}

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
  const int64_t k_ = config_.num_experts_per_tok, R = moe_ ? moe_->shape().max_expert_rows() : 0;
  auto add_moe = [&](MicroActs::Moe& y, const std::function<Slot(const char*, DType, Shape)>& add) {
    y.probs = add("router_probs", DType::F32, {N_, E_});
    y.lse = add("router_lse", DType::F32, {N_});
    y.sel = add("router_choice", DType::I32, {N_, k_});
    y.gate = add("router_weight", DType::F32, {N_, k_});
    y.dest = add("route_row", DType::I32, {N_, k_});
    y.src = add("route_token", DType::I32, {N_ * k_});
    y.counts = add("route_counts", DType::I64, {E_});
    y.recv = add("route_arrivals", DType::I64, {E_});
    y.choices = add("router_picks", DType::F32, {B_, E_});
    y.xe = add("expert_in", DType::F32, {R, C_});
    y.gu = add("expert_gate_up", DType::F32, {R, 2 * I_});
    y.h = add("expert_h", DType::F32, {R, I_});
    y.y = add("expert_out", DType::F32, {N_ * k_, C_});
  };
  auto add_block = [&](MicroActs::Block& y, const std::function<Slot(const char*, Shape)>& add,
                       const std::function<Slot(const char*, DType, Shape)>& typed, bool moe) {
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
  if (std::any_of(layers_.begin(), layers_.end(), [](const Layer& y) { return y.moe; })) {
    s.moe_logits = work_.add("router_logits", DType::F32, {N_, E_});
    s.moe_rows = work_.add("route_rows", DType::F32, {N_ * k_, C_});
    s.moe_expert = work_.add("expert_rows", DType::F32, {R, C_});
    if (moe_->shape().ep > 1) s.moe_staging = work_.add("expert_staging", DType::F32, {R, C_});
    s.moe_dh = work_.add("expert_dh", DType::F32, {R, I_});
    s.moe_dgu = work_.add("expert_dgate_up", DType::F32, {R, 2 * I_});
    s.moe_dgate = work_.add("router_dweight", DType::F32, {N_, k_});
    s.moe_aux = work_.add("router_aux", DType::F32, {B_, E_});
  }
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

void LlamaModel::set_expert_parallel(parallel::Communicator* ep) {
  if (moe_) moe_->set_expert_parallel(ep);
}

void LlamaModel::set_router_loss_batch(int64_t sequences) {
  if (!moe_) return;
  // Each of the L MoE layers adds coef/L × the mean over the batch's sequences of its
  // load-balancing loss and coef_z/L × the mean over its rows of lse² (docs/MOE.md).
  const double L = static_cast<double>(config_.num_moe_layers()),
               S = static_cast<double>(sequences);
  const double aux = config_.output_router_logits ? config_.router_aux_loss_coef : 0.0;
  moe_->set_loss_scale({static_cast<float>(aux / (L * S)),
                        static_cast<float>(config_.router_z_loss_coef / (L * S * T_))});
}

bool LlamaModel::moe_layer(int64_t l) const { return layers_.at(static_cast<size_t>(l)).moe; }

void LlamaModel::clear_moe_stats() {
  moe_stats_.resize(layers_.size());
  for (size_t l = 0; l < layers_.size(); ++l)
    if (layers_[l].moe) {
      moe_stats_[l].tokens.assign(static_cast<size_t>(E_), 0.0);
      moe_stats_[l].routed.assign(static_cast<size_t>(E_), 0.0);
      moe_stats_[l].clear();
    }
}

void LlamaModel::set_tensor_parallel(parallel::TpMappings tp) {
  KEEL_CHECK(tp.size() == tp_.size && tp.rank() == tp_.rank,
             "the model holds TP slice {} of {}, and the group given is rank {} of {} (internal "
             "error)",
             tp_.rank, tp_.size, tp.rank(), tp.size());
  tp_comm_ = tp;
  block_.set_tensor_parallel(tp);
  if (moe_) moe_->set_tensor_parallel(tp);
}

float* LlamaModel::own_weights(int u) const {
  // Slot 0 (the embedding) starts the plan.
  return holds_.weights && holds_.allocate ? weights_[0].f32() + unit_begin_[static_cast<size_t>(u)]
                                           : nullptr;
}

float* LlamaModel::own_grads(int u) const {
  return holds_.grads && holds_.allocate ? grads_[0].f32() + unit_begin_[static_cast<size_t>(u)]
                                         : nullptr;
}

std::vector<std::vector<int>> LlamaModel::weight_orders() const {
  std::vector<std::vector<int>> orders;
  for (size_t c = 0; c < chunks_.size(); ++c) {
    const Chunk& chunk = chunks_[c];
    const bool head = heads(static_cast<int>(c));
    std::vector<int>& order = orders.emplace_back();
    if (embeds(static_cast<int>(c))) order.push_back(0);
    // A layer's units in the order use_layer asks for them, forward and backward alike.
    auto layer = [&](int64_t l) {
      order.push_back(layer_unit(l));
      if (expert_unit(l) >= 0) order.push_back(expert_unit(l));
    };
    for (int64_t l = chunk.first; l < chunk.last; ++l) layer(l);
    if (head) order.push_back(head_unit());
    if (head && config_.tie_word_embeddings) order.push_back(0);  // the head's tied weights
    for (int64_t l = chunk.last - 1; l >= chunk.first; --l) layer(l);
  }
  return orders;
}

void LlamaModel::use_layer(int64_t l, bool weights, bool grads) {
  const int units[2] = {layer_unit(l), expert_unit(l)};
  for (int u : units)
    if (u >= 0 && weights) use_weights(u);
  for (int u : units)
    if (u >= 0 && grads) use_grads(u);
}

void LlamaModel::drop_layer(int64_t l, bool weights, bool grads) {
  const int units[2] = {layer_unit(l), expert_unit(l)};
  for (int u : units)
    if (u >= 0 && weights) drop_weights(u);
  for (int i = 1; i >= 0; --i)
    if (units[i] >= 0 && grads) drop_grads(units[i]);
}

void LlamaModel::use_weights(int u) {
  if (holds_.weights) return;
  KEEL_CHECK(hooks_, "the model holds no weights and has no hooks to ask for them");
  wbase_[static_cast<size_t>(u)] = hooks_->acquire_weights(u);
}

void LlamaModel::drop_weights(int u) {
  if (holds_.weights) return;
  hooks_->release_weights(u);
  wbase_[static_cast<size_t>(u)] = nullptr;
}

void LlamaModel::use_grads(int u) {
  if (holds_.grads) return;
  KEEL_CHECK(hooks_, "the model holds no gradients and has no hooks to ask for them");
  gbase_[static_cast<size_t>(u)] = hooks_->acquire_grads(u);
}

void LlamaModel::drop_grads(int u) {
  if (holds_.grads) return;
  hooks_->release_grads(u);
  gbase_[static_cast<size_t>(u)] = nullptr;
}

Parameter& LlamaModel::parameter(const std::string& name) {
  return const_cast<Parameter&>(parameter_by_name(name));
}

int64_t LlamaModel::num_parameters() const {
  int64_t n = 0;
  for (const Parameter& p : params_) n += p.global_shape.numel();
  return n;
}

void LlamaModel::init_weights(uint64_t seed) {
  KEEL_CHECK(holds_.weights, "init_weights: the model holds no weights (use init_unit)");
  for (size_t u = 0; u < units_.size(); ++u)
    init_unit(static_cast<int>(u), seed, own_weights(static_cast<int>(u)));
}

void LlamaModel::init_unit(int u, uint64_t seed, float* base) const {
  const parallel::ZeroUnit& unit = units_[static_cast<size_t>(u)];
  for (size_t i = 0; i < unit.params.size(); ++i) {
    const parallel::ZeroParamSpec& spec = unit.params[i];
    const Parameter& owner = parameter_by_name(spec.name);
    Parameter p = owner;
    p.value = Tensor(base + unit.offsets[i], DType::F32, owner.value.shape());
    if (p.value.rank() == 1)
      init_constant(p, 1.0f);
    else
      init_normal(p, seed, config_.initializer_range);
  }
}

const Parameter& LlamaModel::parameter_by_name(const std::string& name) const {
  for (const Parameter& p : params_)
    if (p.name == name) return p;
  KEEL_FAIL("the model has no parameter '{}'", name);
}

void LlamaModel::zero_grad() {
  if (!holds_.grads) return;  // the hooks hand out zeroed buffers
  Tensor g = grad_storage();
  std::fill_n(g.f32(), g.numel(), 0.0f);
}

Tensor LlamaModel::grad_storage() const {
  KEEL_CHECK(holds_.grads, "grad_storage: the model holds no gradients (ZeRO 2 and 3)");
  // Every entry of the plan is F32 and 64-byte aligned, so the block is a whole number of floats.
  return Tensor(grads_[0].data(), DType::F32,
                {static_cast<int64_t>(grads_.bytes() / sizeof(float))});
}

double LlamaModel::flops_per_token() const {
  // 6 FLOPs per weight per token (forward 2, backward 4) for every matrix the token passes through
  // (the embedding lookup is not a product), plus attention's QKᵀ and PV: 2·2·T·D per head
  // forward, half of it masked away by causality, ×3 with the backward. Work that checkpointing
  // recomputes is not model FLOPs and is not counted.
  // The whole model's, whatever slice of it this rank holds.
  const ModelConfig& m = config_;
  // An MoE layer's token passes through its router and k experts.
  const double L = static_cast<double>(m.num_hidden_layers);
  const int64_t H = m.num_attention_heads, QKV = (H + 2 * m.num_key_value_heads) * D_;
  const double attention_weights = static_cast<double>(QKV * C_ + C_ * H * D_);
  const double mlp = 3.0 * static_cast<double>(m.intermediate_size * C_);
  const double moe_layers = static_cast<double>(m.num_moe_layers());
  const double moe_mlp = static_cast<double>(m.num_experts_per_tok) * mlp +
                         static_cast<double>(m.num_local_experts * C_);
  const double weights = L * attention_weights + (L - moe_layers) * mlp + moe_layers * moe_mlp;
  const double matmul = 6.0 * (weights + static_cast<double>(m.vocab_size * C_));
  const double attention = 3.0 * L * static_cast<double>(H) * 2.0 * static_cast<double>(T_ * D_);
  return matmul + attention;
}

std::string LlamaModel::describe_memory() const {
  std::ostringstream os;
  if (holds_.weights) os << weights_.describe();
  if (holds_.grads) os << grads_.describe();
  os << acts_.describe();
  if (activation_slots() > 1)
    os << "  of which each of " << activation_slots()
       << " activation slots (micro-batches in flight) "
       << "holds " << format_mib(slot_bytes_) << " of its own\n";
  os << work_.describe();
  return os.str();
}

size_t LlamaModel::weight_bytes() const { return holds_.weights ? weights_.bytes() : 0; }
size_t LlamaModel::grad_bytes() const { return holds_.grads ? grads_.bytes() : 0; }
size_t LlamaModel::activation_bytes() const { return acts_.bytes(); }
size_t LlamaModel::workspace_bytes() const { return work_.bytes(); }

size_t LlamaModel::planned_bytes() const {
  return weight_bytes() + grad_bytes() + activation_bytes() + workspace_bytes();
}

}  // namespace keel::runtime
