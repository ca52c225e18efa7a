#include "runtime/model/generate.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>

#include "kernels/error.h"
#include "kernels/ops.h"
#include "kernels/rope.h"

namespace keel::runtime {

using Slot = MemoryPlan::Slot;

namespace {
// Prompt positions run through the blocks together, at most this many at a time.
constexpr int64_t kChunk = 128;
}  // namespace

struct Generator::Slots {
  const LlamaBlock* block;  // the model's, or (with experts) moe_block
  std::vector<BlockWeights> blocks;
  const float *embed, *norm, *head;
  float eps;
  Slot k_cache, v_cache;  // (L, max_positions, Hkv·D) each, rope applied to the keys
  Slot x, xmid, ln;       // (chunk, C) residual stream, its middle, normalised input
  Slot rstd;              // (chunk)
  Slot qkv;               // (chunk, QKV)
  Slot q, att;            // (chunk, H·D)
  bool dense = false;     // whether some layer's MLP is dense
  Slot gate_up;           // (chunk, 2I) dense layers
  Slot h;                 // (chunk, I) dense layers
  // Mixture-of-experts layers decode dropless through an MoeMlp of their own, sized for a chunk
  // (the model's is sized for its B·T), run by a copy of the model's block. A chunk of n rows
  // sends n·k to the experts (R = chunk·k rows at most).
  std::unique_ptr<MoeMlp> moe;
  std::optional<LlamaBlock> moe_block;
  MoeActSlots moe_acts;      // one chunk's routing and expert rows
  MoeScratchSlots moe_work;  // the forward's scratch
  Slot logits;               // (V) after the last position
  Slot rope_cos, rope_sin;   // (max_positions, D/2)
  Slot attn_ws;
};

Generator::Generator(const LlamaModel& model, int64_t max_positions)
    : max_positions_(max_positions),
      chunk_(std::min(max_positions, kChunk)),
      ops_(&kernels::ops(model.parameters().front().value.device())),
      s_(std::make_unique<Slots>()) {
  const ModelConfig& m = model.config();
  L_ = m.num_hidden_layers, H_ = m.num_attention_heads, Hkv_ = m.num_key_value_heads;
  C_ = m.hidden_size, D_ = C_ / H_, I_ = m.intermediate_size, V_ = m.vocab_size;
  KEEL_CHECK(max_positions > 0 && max_positions <= m.max_position_embeddings,
             "generation over {} positions: the model has max_position_embeddings {}",
             max_positions, m.max_position_embeddings);
  Slots& s = *s_;
  auto weight = [&](const std::string& name) {
    const float* p = model.parameter_by_name(name).value.f32();
    KEEL_CHECK(p, "generation needs the model's weights, and it does not hold '{}'", name);
    return p;
  };
  s.block = &model.block();
  for (int l = 0; l < L_; ++l) {
    weight("model.layers." + std::to_string(l) + ".self_attn.q_proj.weight");
    s.blocks.push_back(model.block_weights(l));
  }
  s.embed = weight("model.embed_tokens.weight");
  s.norm = weight("model.norm.weight");
  s.head = m.tie_word_embeddings ? s.embed : weight("lm_head.weight");
  s.eps = static_cast<float>(m.rms_norm_eps);

  const kernels::Ops& k = *ops_;
  const int64_t HD = H_ * D_, KV = Hkv_ * D_, QKV = HD + 2 * KV;
  s.k_cache = plan_.add("k_cache", DType::F32, {L_, max_positions, KV});
  s.v_cache = plan_.add("v_cache", DType::F32, {L_, max_positions, KV});
  s.x = plan_.add("x", DType::F32, {chunk_, C_});
  s.xmid = plan_.add("xmid", DType::F32, {chunk_, C_});
  s.ln = plan_.add("ln", DType::F32, {chunk_, C_});
  s.rstd = plan_.add("rstd", DType::F32, {chunk_});
  s.qkv = plan_.add("qkv", DType::F32, {chunk_, QKV});
  s.q = plan_.add("q", DType::F32, {chunk_, HD});
  s.att = plan_.add("att", DType::F32, {chunk_, HD});
  s.dense = m.num_moe_layers() < L_;
  if (s.dense) {
    s.gate_up = plan_.add("gate_up", DType::F32, {chunk_, 2 * I_});
    s.h = plan_.add("h", DType::F32, {chunk_, I_});
  }
  if (m.moe()) {
    const int64_t E = m.num_local_experts, top = m.num_experts_per_tok;
    s.moe = std::make_unique<MoeMlp>(MoeShape{C_, I_, E, top, 0, 1, chunk_},
                                     model.parameters().front().value.device());
    s.moe_block.emplace(model.block());
    s.moe_block->set_moe(s.moe.get());
    s.block = &*s.moe_block;
    const MoePlanAdd add = [&](const char* name, DType dtype, Shape shape) {
      return plan_.add(name, dtype, shape);
    };
    s.moe_acts = declare_moe_acts(s.moe->shape(), add);
    s.moe_work = declare_moe_scratch(s.moe->shape(), add, /*backward=*/false);
  }
  s.logits = plan_.add("logits", DType::F32, {V_});
  s.rope_cos = plan_.add("rope_cos", DType::F32, {max_positions, D_ / 2});
  s.rope_sin = plan_.add("rope_sin", DType::F32, {max_positions, D_ / 2});
  const size_t ws = k.attention_cached_workspace_floats(max_positions, omp_get_max_threads());
  s.attn_ws = plan_.add("attention", DType::F32, {static_cast<int64_t>(ws)});
  plan_.allocate();
  kernels::cpu::rope_tables(plan_[s.rope_cos].f32(), plan_[s.rope_sin].f32(), max_positions, D_,
                            m.rope_theta);
}

Generator::~Generator() = default;

const float* Generator::append(const int32_t* tokens, int64_t n) {
  KEEL_CHECK(n > 0, "nothing to append");
  KEEL_CHECK(length_ + n <= max_positions_,
             "{} positions do not fit: the cache holds {} of at most {}", n, length_,
             max_positions_);
  for (int64_t i = 0; i < n; i += chunk_) run_chunk(tokens + i, std::min(chunk_, n - i));
  // The logits after the last position: its row of the chunk that ran last.
  const Slots& s = *s_;
  const kernels::Ops& k = *ops_;
  const int64_t last = (n - 1) % chunk_;
  float* ln = plan_[s.ln].f32();
  k.rmsnorm_forward(ln, plan_[s.rstd].f32(), plan_[s.x].f32() + last * C_, s.norm, 1, C_, s.eps,
                    stream_);
  float* logits = plan_[s.logits].f32();
  k.matmul_forward(logits, ln, s.head, 1, C_, V_, stream_);
  return logits;
}

// n positions from length_ through every block (the training block's own forward, the keys and
// values going to the cache and attention reading every cached position).
void Generator::run_chunk(const int32_t* tokens, int64_t n) {
  const Slots& s = *s_;
  const kernels::Ops& k = *ops_;
  const int64_t KV = Hkv_ * D_;
  for (int64_t i = 0; i < n; ++i)
    KEEL_CHECK(tokens[i] >= 0 && tokens[i] < V_, "token {} is outside the vocabulary of {}",
               tokens[i], V_);
  float* x = plan_[s.x].f32();
  float *ln = plan_[s.ln].f32(), *rstd = plan_[s.rstd].f32();
  // Decoding keeps nothing for a backward: both norms share one buffer, and there is no lse.
  auto f32 = [&](Slot slot) { return plan_[slot].f32(); };
  BlockActs acts = {ln, rstd, f32(s.qkv), f32(s.att), nullptr, f32(s.xmid), ln, rstd};
  MoeScratch moe_ws;
  if (s.moe) {
    const MoePlanAt at = [&](Slot slot) { return plan_[slot].data(); };
    acts.moe = moe_acts(s.moe_acts, at);
    moe_ws = moe_scratch(s.moe_work, 1, at);
  }
  if (s.dense) acts.gu = f32(s.gate_up), acts.h = f32(s.h);
  const BlockPositions pos = {1, n, plan_[s.rope_cos].f32() + length_ * (D_ / 2),
                              plan_[s.rope_sin].f32() + length_ * (D_ / 2)};
  k.embedding_forward(x, tokens, s.embed, n, C_, V_, stream_);
  for (int64_t l = 0; l < L_; ++l) {
    const KvCache cache = {plan_[s.k_cache].f32() + l * max_positions_ * KV,
                           plan_[s.v_cache].f32() + l * max_positions_ * KV, length_,
                           plan_[s.q].f32()};
    s.block->forward_cached(x, s.blocks[static_cast<size_t>(l)], acts, pos, cache,
                            plan_[s.attn_ws].f32(), s.moe ? &moe_ws : nullptr);
  }
  length_ += n;
}

Sampler::Sampler(const SamplingOptions& options, uint64_t seed) : options_(options), rng_(seed) {
  KEEL_CHECK(options.temperature >= 0 && std::isfinite(options.temperature),
             "temperature must be 0 (greedy) or positive, got {}", options.temperature);
  KEEL_CHECK(options.top_k >= 0, "top_k must be 0 (off) or positive, got {}", options.top_k);
  KEEL_CHECK(options.top_p > 0 && options.top_p <= 1, "top_p must be in (0, 1], got {}",
             options.top_p);
}

int32_t Sampler::next(const float* logits, int64_t V) {
  if (options_.temperature == 0 || options_.top_k == 1)
    return static_cast<int32_t>(std::max_element(logits, logits + V) - logits);
  // Candidates most likely first (ties by id, so the order is deterministic).
  order_.resize(static_cast<size_t>(V));
  std::iota(order_.begin(), order_.end(), 0);
  auto likelier = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  auto keep = static_cast<size_t>(V);
  if (options_.top_k > 0 && options_.top_k < V) {
    // Hugging Face keeps every token whose logit reaches the k-th largest (ties included).
    const auto k = static_cast<size_t>(options_.top_k);
    std::nth_element(order_.begin(), order_.begin() + static_cast<ptrdiff_t>(k - 1), order_.end(),
                     likelier);
    const float kth = logits[order_[k - 1]];
    keep = static_cast<size_t>(
        std::partition(order_.begin(), order_.end(), [&](int32_t t) { return logits[t] >= kth; }) -
        order_.begin());
  }
  std::sort(order_.begin(), order_.begin() + static_cast<ptrdiff_t>(keep), likelier);
  // Softmax of logits / temperature over the candidates, in double.
  const double inv_t = 1.0 / options_.temperature, top = logits[order_[0]];
  weight_.resize(keep);
  double total = 0.0;
  for (size_t i = 0; i < keep; ++i)
    total += weight_[i] = std::exp((logits[order_[i]] - top) * inv_t);
  if (options_.top_p < 1.0) {
    double before = 0.0;
    size_t n = 0;
    while (n < keep && before < options_.top_p * total) before += weight_[n++];
    keep = std::max<size_t>(n, 1);
    total = std::accumulate(weight_.begin(), weight_.begin() + static_cast<ptrdiff_t>(keep), 0.0);
  }
  // Inverse CDF at a uniform in [0, 1) with 53 random bits.
  const double u = static_cast<double>(rng_() >> 11) * 0x1.0p-53 * total;
  double cum = 0.0;
  for (size_t i = 0; i + 1 < keep; ++i)
    if ((cum += weight_[i]) > u) return order_[i];
  return order_[keep - 1];
}

std::vector<int32_t> generate(Generator& generator, Sampler& sampler,
                              const std::vector<int32_t>& prompt, int64_t max_new, int32_t stop_id,
                              const std::function<void(int32_t)>& on_token) {
  KEEL_CHECK(!prompt.empty(), "the prompt has no tokens");
  const float* logits = generator.append(prompt.data(), static_cast<int64_t>(prompt.size()));
  std::vector<int32_t> out;
  while (static_cast<int64_t>(out.size()) < max_new) {
    const int32_t t = sampler.next(logits, generator.vocab_size());
    out.push_back(t);
    if (on_token) on_token(t);
    // The sequence (prompt and new tokens) never outgrows the cache's positions.
    if (t == stop_id || generator.length() + 1 >= generator.max_positions()) break;
    logits = generator.append(&t, 1);
  }
  return out;
}

}  // namespace keel::runtime
