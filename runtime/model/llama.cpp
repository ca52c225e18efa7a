#include "runtime/model/llama.h"

#include <algorithm>
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
