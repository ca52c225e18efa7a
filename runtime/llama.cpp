#include "runtime/llama.h"

#include <omp.h>

#include <algorithm>
#include <sstream>

#include "kernels/ops.h"
#include "kernels/rope.h"

namespace keel::runtime {

using Slot = MemoryPlan::Slot;

namespace {
// Logits of at most this many floats exist at once (32 MiB).
constexpr int64_t kLogitsChunkFloats = int64_t{8} << 20;
}  // namespace

// Slots of one block. Parameters: q, k and v are views of one (QKV, C) matrix, gate and up of one
// (2I, C) matrix, so each pair of projections is one GEMM.
struct LlamaModel::Layer {
  size_t in_norm, q, k, v, o, post_norm, gate, up, down;  // indices into params_
  Slot w_in_norm, w_qkv, w_o, w_post_norm, w_gate_up, w_down;
  // Activations of this block (with checkpointing all blocks share block 0's).
  Slot ln1, rstd1, qkv, att, lse, xmid, ln2, rstd2, gu, h;
};

struct LlamaModel::Slots {
  Slot w_embed, w_final_norm, w_head;
  size_t embed, final_norm, head;  // indices into params_
  std::vector<Slot> x;             // (n, C) residual stream entering block l; x[L] leaves the last
  Slot lnf, rstdf;                 // (N, C) (SP: gathered), (n)
  Slot tokens;                     // (N) the micro-batch's tokens, kept for the embedding backward
  Slot logits, losses;             // (chunk, V), (N)
  Slot dres, dtmp;                 // (n, C) residual gradient (n: rows held), (N, C) scratch
  Slot dbig;                       // (N, max(QKV, 2I)): dqkv, then dgate_up
  Slot dsmall;                     // (N, max(H·D, I)): datt, then dh
  Slot attn_ws;                    // attention workspace
  Slot rope_cos, rope_sin;         // (T, D/2)
  Slot kv_grad = 0;                // (2·Hkv·D, C) shared key/value heads' gradients (TP > Hkv)
  Slot row_max = 0, ce_stats = 0;  // (chunk), (2, chunk) doubles: vocabulary-parallel softmax
  Slot norm_grad = 0;              // (2, C) SP: a norm's partial weight gradient, summed over TP
};

namespace {
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
      holds_(holds),
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
  block_.set_progress([this] { progress(); });
  chunk_rows_ = std::min(N_, std::max<int64_t>(kLogitsChunkFloats / V_ / 16 * 16, 16));
  build_plans();
  if (!holds_.allocate) return;
  kernels::cpu::rope_tables(work_[s_->rope_cos].f32(), work_[s_->rope_sin].f32(), T_, D_,
                            config_.rope_theta);
}

LlamaModel::~LlamaModel() = default;

void LlamaModel::build_plans() {
  const int64_t L = config_.num_hidden_layers;
  Slots& s = *s_;
  // Parameters and gradients: the same table twice, unit after unit.
  auto begin_unit = [&](std::string name) {
    units_.push_back({std::move(name), {}, {}, 0});
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
  begin_unit("embed_tokens");
  s.w_embed = add_weight("embed_tokens", {V_, C_});
  layers_.resize(static_cast<size_t>(L));
  for (int64_t l = 0; l < L; ++l) {
    Layer& y = layers_[static_cast<size_t>(l)];
    const std::string p = "layers." + std::to_string(l) + ".";
    begin_unit("layers." + std::to_string(l));
    y.w_in_norm = add_weight(p + "input_layernorm", {C_});
    y.w_qkv = add_weight(p + "qkv_proj", {QKV_, C_});
    y.w_o = add_weight(p + "o_proj", {C_, H_ * D_});
    y.w_post_norm = add_weight(p + "post_attention_layernorm", {C_});
    y.w_gate_up = add_weight(p + "gate_up_proj", {2 * I_, C_});
    y.w_down = add_weight(p + "down_proj", {C_, I_});
  }
  begin_unit("head");
  s.w_final_norm = add_weight("norm", {C_});
  if (!config_.tie_word_embeddings) s.w_head = add_weight("lm_head", {V_, C_});

  // Activations.
  for (int64_t l = 0; l <= L; ++l)
    s.x.push_back(acts_.add("x." + std::to_string(l), DType::F32, {rows_.count, C_}));
  const int64_t kept = checkpointing_ ? 1 : L;
  for (int64_t l = 0; l < L; ++l) {
    Layer& y = layers_[static_cast<size_t>(l)];
    if (l >= kept) {  // checkpointing: share block 0's buffers
      const Layer& z = layers_[0];
      y.ln1 = z.ln1, y.rstd1 = z.rstd1, y.qkv = z.qkv, y.att = z.att, y.lse = z.lse;
      y.xmid = z.xmid, y.ln2 = z.ln2, y.rstd2 = z.rstd2, y.gu = z.gu, y.h = z.h;
      continue;
    }
    const std::string p = "layers." + std::to_string(l) + ".";
    y.ln1 = acts_.add(p + "ln1", DType::F32, {N_, C_});
    y.rstd1 = acts_.add(p + "rstd1", DType::F32, {rows_.count});
    y.qkv = acts_.add(p + "qkv", DType::F32, {N_, QKV_});
    y.att = acts_.add(p + "att", DType::F32, {N_, H_ * D_});
    y.lse = acts_.add(p + "lse", DType::F32, {B_, H_, T_});
    y.xmid = acts_.add(p + "xmid", DType::F32, {rows_.count, C_});
    y.ln2 = acts_.add(p + "ln2", DType::F32, {N_, C_});
    y.rstd2 = acts_.add(p + "rstd2", DType::F32, {rows_.count});
    y.gu = acts_.add(p + "gate_up", DType::F32, {N_, 2 * I_});
    y.h = acts_.add(p + "h", DType::F32, {N_, I_});
  }
  s.lnf = acts_.add("norm", DType::F32, {N_, C_});
  s.rstdf = acts_.add("rstd", DType::F32, {rows_.count});
  s.tokens = acts_.add("tokens", DType::I32, {N_});

  // Workspace: lives across steps, contents meaningless between calls.
  s.logits = work_.add("logits_chunk", DType::F32, {chunk_rows_, V_});
  s.losses = work_.add("losses", DType::F32, {N_});
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
  if (tp_.split()) {  // the vocabulary-parallel cross-entropy's per-row statistics
    s.row_max = work_.add("row_max", DType::F32, {chunk_rows_});
    s.ce_stats = work_.add("ce_stats", DType::F64, {2, chunk_rows_});
  }
  if (sp_) s.norm_grad = work_.add("norm_grad", DType::F32, {2, C_});
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
    params_.push_back({name, global, shard, decay, counted, w, g});
    parallel::ZeroUnit& unit = units_[static_cast<size_t>(u)];
    unit.params.push_back({name, shape[0], shape.numel() / shape[0], counted, shard.dim});
    unit.offsets.push_back(at);
    return params_.size() - 1;
  };
  const ShardSpec vocab = split(0, tp_.vocab, 1, Vg);
  const ShardSpec q_rows = split(0, tp_.heads, D_, Hg * D_),
                  o_cols = split(1, tp_.heads, D_, Hg * D_);
  const ShardSpec kv_rows = split(0, tp_.kv_heads, D_, Hkvg * D_);
  const ShardSpec mlp_rows = split(0, tp_.inter, 1, Ig), down_cols = split(1, tp_.inter, 1, Ig);
  s.embed = add_param("model.embed_tokens.weight", s.w_embed, 0, -1, true, {Vg, C_}, vocab, true);
  for (int64_t l = 0; l < L; ++l) {
    Layer& y = layers_[static_cast<size_t>(l)];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    y.in_norm = add_param(p + "input_layernorm.weight", y.w_in_norm, 0, -1, false, {C_}, {}, true);
    y.q = add_param(p + "self_attn.q_proj.weight", y.w_qkv, 0, H_ * D_, true, {Hg * D_, C_}, q_rows,
                    true);
    y.k = add_param(p + "self_attn.k_proj.weight", y.w_qkv, H_ * D_, Hkv_ * D_, true,
                    {Hkvg * D_, C_}, kv_rows, kv_first);
    y.v = add_param(p + "self_attn.v_proj.weight", y.w_qkv, (H_ + Hkv_) * D_, Hkv_ * D_, true,
                    {Hkvg * D_, C_}, kv_rows, kv_first);
    y.o = add_param(p + "self_attn.o_proj.weight", y.w_o, 0, -1, true, {C_, Hg * D_}, o_cols, true);
    y.post_norm = add_param(p + "post_attention_layernorm.weight", y.w_post_norm, 0, -1, false,
                            {C_}, {}, true);
    y.gate =
        add_param(p + "mlp.gate_proj.weight", y.w_gate_up, 0, I_, true, {Ig, C_}, mlp_rows, true);
    y.up = add_param(p + "mlp.up_proj.weight", y.w_gate_up, I_, I_, true, {Ig, C_}, mlp_rows, true);
    y.down =
        add_param(p + "mlp.down_proj.weight", y.w_down, 0, -1, true, {C_, Ig}, down_cols, true);
  }
  s.final_norm = add_param("model.norm.weight", s.w_final_norm, 0, -1, false, {C_}, {}, true);
  s.head = config_.tie_word_embeddings
               ? s.embed
               : add_param("lm_head.weight", s.w_head, 0, -1, true, {Vg, C_}, vocab, true);
}

void LlamaModel::set_tensor_parallel(parallel::TpMappings tp) {
  KEEL_CHECK(tp.size() == tp_.size && tp.rank() == tp_.rank,
             "the model holds TP slice {} of {}, and the group given is rank {} of {} (internal "
             "error)",
             tp_.rank, tp_.size, tp.rank(), tp.size());
  tp_comm_ = tp;
  block_.set_tensor_parallel(tp);
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

std::vector<int> LlamaModel::weight_order() const {
  const int L = static_cast<int>(layers_.size()), head = L + 1;
  std::vector<int> order = {0};
  for (int l = 0; l < L; ++l) order.push_back(1 + l);
  order.push_back(head);
  if (config_.tie_word_embeddings) order.push_back(0);
  for (int l = L - 1; l >= 0; --l) order.push_back(1 + l);
  return order;
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

void LlamaModel::embed(const int32_t* tokens) {
  KEEL_CHECK(holds_.allocate, "this model was built to plan memory only and cannot run");
  // Attention's workspace holds one scratch slot per thread, sized when the model was built.
  KEEL_CHECK(omp_get_max_threads() <= workspace_threads_,
             "the model was built for {} OpenMP threads and now runs with {}; build it after "
             "setting the thread count",
             workspace_threads_, omp_get_max_threads());
  KEEL_CHECK(tp_comm_.size() == tp_.size,
             "the model holds a tensor-parallel slice and has no TP group (internal error)");
  const kernels::Ops& k = *ops_;
  int32_t* kept = acts_[s_->tokens].data_as<int32_t>();
  std::copy_n(tokens, N_, kept);
  float* x0 = acts_[s_->x[0]].f32();
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
  return {w(y.w_in_norm), w(y.w_qkv), w(y.w_o), w(y.w_post_norm), w(y.w_gate_up), w(y.w_down)};
}

BlockGrads LlamaModel::block_grads(int l) const {
  const Layer& y = layers_[static_cast<size_t>(l)];
  return {g(y.w_in_norm), g(y.w_qkv), g(y.w_o), g(y.w_post_norm), g(y.w_gate_up), g(y.w_down)};
}

BlockActs LlamaModel::block_acts(int l) const {
  const Layer& y = layers_[static_cast<size_t>(l)];
  auto a = [&](Slot s) { return acts_[s].f32(); };
  return {a(y.ln1),  a(y.rstd1), a(y.qkv),   a(y.att), a(y.lse),
          a(y.xmid), a(y.ln2),   a(y.rstd2), a(y.gu),  a(y.h)};
}

BlockPositions LlamaModel::positions() const {
  return {B_, T_, work_[s_->rope_cos].f32(), work_[s_->rope_sin].f32()};
}

// One block: x[l] → x[l+1]. With recompute (checkpointing's backward), x[l+1] is left alone.
void LlamaModel::block_forward(int l, bool recompute) {
  const size_t i = static_cast<size_t>(l);
  // dtmp is free in the forward and in the backward's recompute (dres holds the gradient then).
  block_.forward(recompute ? nullptr : acts_[s_->x[i + 1]].f32(), acts_[s_->x[i]].f32(),
                 block_weights(l), block_acts(l), positions(), work_[s_->attn_ws].f32(),
                 work_[s_->dtmp].f32());
}

// Takes ∂/∂x[l+1] in dres and leaves ∂/∂x[l] there; parameter gradients accumulate.
void LlamaModel::block_backward(int l) {
  if (checkpointing_) block_forward(l, /*recompute=*/true);
  const BlockScratch scratch = {work_[s_->dres].f32(),
                                work_[s_->dtmp].f32(),
                                work_[s_->dbig].f32(),
                                work_[s_->dsmall].f32(),
                                tp_.kv_replicas > 1 ? work_[s_->kv_grad].f32() : nullptr,
                                sp_ ? work_[s_->norm_grad].f32() : nullptr};
  block_.backward(acts_[s_->x[static_cast<size_t>(l)]].f32(), block_weights(l), block_grads(l),
                  block_acts(l), positions(), scratch, work_[s_->attn_ws].f32());
}

// Final norm, output head and cross-entropy, chunk by chunk of rows. With backward, leaves
// ∂/∂x[L] in dres and accumulates the head's and final norm's gradients. Under sequence
// parallelism the norm runs on the rows held and its output is gathered whole for the head (the
// loss covers every row on every rank, as without SP); backward, the head's input gradient is
// reduce-scattered back to the rows held.
double LlamaModel::head(const int32_t* targets, float grad_scale, bool backward,
                        float* logits_out) {
  const kernels::Ops& k = *ops_;
  const float* xL = acts_[s_->x.back()].f32();
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

// The embedding and every block's forward, each unit's weights held only while it runs.
void LlamaModel::run_forward(const int32_t* tokens) {
  if (hooks_) hooks_->begin_micro_batch();
  use_weights(0);
  embed(tokens);
  drop_weights(0);
  for (int l = 0; l < static_cast<int>(layers_.size()); ++l) {
    use_weights(1 + l);
    block_forward(l, false);
    drop_weights(1 + l);
  }
}

double LlamaModel::forward(const int32_t* tokens, const int32_t* targets, float* logits) {
  KEEL_CHECK(!logits || !tp_.split(),
             "the logits of a tensor-parallel model are split over its TP group (internal error)");
  run_forward(tokens);
  const int head_unit = static_cast<int>(layers_.size()) + 1;
  const bool tied = config_.tie_word_embeddings;
  use_weights(head_unit);
  if (tied) use_weights(0);
  const double loss = head(targets, 0.0f, false, logits);
  if (tied) drop_weights(0);
  drop_weights(head_unit);
  return loss;
}

double LlamaModel::forward_backward(const int32_t* tokens, const int32_t* targets,
                                    float grad_scale) {
  run_forward(tokens);
  // The head (final norm and lm_head, or the tied embedding) runs forward and backward at once.
  const int head_unit = static_cast<int>(layers_.size()) + 1;
  const bool tied = config_.tie_word_embeddings;
  use_weights(head_unit);
  if (tied) use_weights(0);
  use_grads(head_unit);
  if (tied) use_grads(0);  // held until the embedding's own backward adds to it
  const double loss = head(targets, grad_scale, true, nullptr);
  if (tied) drop_weights(0);
  drop_weights(head_unit);
  drop_grads(head_unit);
  for (int l = static_cast<int>(layers_.size()) - 1; l >= 0; --l) {
    use_weights(1 + l);
    use_grads(1 + l);
    block_backward(l);
    drop_weights(1 + l);
    drop_grads(1 + l);
  }
  if (!tied) use_grads(0);  // the embedding's backward reads no weights
  const kernels::Ops& k = *ops_;
  const int32_t* kept = acts_[s_->tokens].data_as<int32_t>();
  const float* dx0 = work_[s_->dres].f32();
  if (sp_) {  // the lookups of every row: the rows held by each rank, gathered
    tp_comm_.all_gather(work_[s_->dtmp].f32(), dx0, rows_.count * C_);
    dx0 = work_[s_->dtmp].f32();
  }
  if (tp_.split())
    k.embedding_backward_slice(g(s_->w_embed), dx0, kept, N_, C_, tp_.vocab.begin, V_, stream_);
  else
    k.embedding_backward(g(s_->w_embed), work_[s_->dres].f32(), kept, N_, C_, V_, stream_);
  drop_grads(0);
  return loss;
}

double LlamaModel::flops_per_token() const {
  // 6 FLOPs per weight per token (forward 2, backward 4) for every matrix the token passes through
  // (the embedding lookup is not a product), plus attention's QKᵀ and PV: 2·2·T·D per head
  // forward, half of it masked away by causality, ×3 with the backward. Work that checkpointing
  // recomputes is not model FLOPs and is not counted.
  // The whole model's, whatever slice of it this rank holds.
  const ModelConfig& m = config_;
  const double L = static_cast<double>(m.num_hidden_layers);
  const int64_t H = m.num_attention_heads, QKV = (H + 2 * m.num_key_value_heads) * D_;
  const double per_layer =
      static_cast<double>(QKV * C_ + C_ * H * D_ + 3 * m.intermediate_size * C_);
  const double matmul = 6.0 * (L * per_layer + static_cast<double>(m.vocab_size * C_));
  const double attention = 3.0 * L * static_cast<double>(H) * 2.0 * static_cast<double>(T_ * D_);
  return matmul + attention;
}

std::string LlamaModel::describe_memory() const {
  std::ostringstream os;
  if (holds_.weights) os << weights_.describe();
  if (holds_.grads) os << grads_.describe();
  os << acts_.describe() << work_.describe();
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
