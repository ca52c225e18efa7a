// One LLaMA block as a type: x → x + attention(norm(x)) → … + SwiGLU(norm(…)), its forward, its
// backward (the forward in reverse) and its forward against a key/value cache for decoding.
// Training, evaluation and generation all run this one block; the parallel splits of a block
// (tensor parallelism's communication, an MoE MLP) and other backends plug in here, once.
// The block owns no memory: the caller hands it the weights, gradients and activations of the
// layer it runs (the model's plans, or ZeRO's buffers of the moment).
#pragma once

#include <cstdint>
#include <functional>

#include "kernels/ops.h"
#include "parallel/tensor_parallel.h"
#include "runtime/model/moe_mlp.h"

namespace keel::runtime {

// The sizes of a block as this rank holds it (under tensor parallelism, its slice).
struct BlockShape {
  int64_t C = 0;    // hidden size
  int64_t H = 0;    // query heads
  int64_t Hkv = 0;  // key/value heads (H a multiple of it)
  int64_t D = 0;    // head dimension
  int64_t I = 0;    // MLP intermediate size
  float eps = 0;    // RMSNorm epsilon
  // A key/value head shared by kv_replicas TP ranks (TP above the key/value heads): its weight
  // gradient sums over them. kv_first is the head held here, of kv_total in the model.
  int kv_replicas = 1;
  int64_t kv_first = 0, kv_total = 0;
  // Sequence parallelism (training's forward and backward; decoding runs every row everywhere):
  // the residual stream, the norms' inputs and their statistics hold only this rank's chunk of
  // the N rows (rows [r·N/tp, (r+1)·N/tp) on TP rank r). Each norm's output is all-gathered
  // whole before its column-parallel GEMM, and the row-parallel GEMMs' outputs are
  // reduce-scattered back to the chunk; backward, the reverse.
  bool sequence_parallel = false;
  int64_t q_width() const { return H * D; }
  int64_t kv_width() const { return Hkv * D; }
  int64_t qkv_width() const { return (H + 2 * Hkv) * D; }
};

// A block's parameters (or their gradients), each a pointer into the caller's buffer. q, k and v
// are rows of one (QKV, C) matrix and gate, up of one (2I, C) matrix, so each is one GEMM.
// A mixture-of-experts block has a router, and gate_up and down stack its experts' matrices.
template <typename F>
struct BlockTensors {
  F* in_norm = nullptr;    // (C)
  F* qkv = nullptr;        // (QKV, C)
  F* o = nullptr;          // (C, H·D)
  F* post_norm = nullptr;  // (C)
  F* gate_up = nullptr;    // (2I, C); MoE: (E/ep, 2I, C)
  F* down = nullptr;       // (C, I); MoE: (E/ep, C, I)
  F* router = nullptr;     // MoE only: (E, C)
  bool moe() const { return router != nullptr; }
  MoeTensors<F> experts() const { return {router, gate_up, down}; }
};
using BlockWeights = BlockTensors<const float>;
using BlockGrads = BlockTensors<float>;

// What the forward keeps for the backward, N rows each (N = B·T); under sequence parallelism
// n = N/tp rows (this rank's chunk) where marked, else N.
struct BlockActs {
  float* ln1 = nullptr;    // (N, C) normalised input (SP: gathered from every rank's chunk)
  float* rstd1 = nullptr;  // (n)
  float* qkv = nullptr;    // (N, QKV) rope applied to q and k
  float* att = nullptr;    // (N, H·D) attention output
  float* lse = nullptr;    // (B, H, T) log-sum-exp per query (training only)
  float* xmid = nullptr;   // (n, C) residual stream after attention
  float* ln2 = nullptr;    // (N, C) (SP: gathered)
  float* rstd2 = nullptr;  // (n)
  float* gu = nullptr;     // (N, 2I) gate and up (dense MLP)
  float* h = nullptr;      // (N, I) SwiGLU output (dense MLP)
  MoeActs moe = {};        // an MoE MLP's instead
  // Where an MoE MLP counts its routing (null: not counted, as in a recompute or evaluation).
  MoeStats* moe_stats = nullptr;
};

// The positions a pass covers: B sequences of T tokens, rotated by the rope tables' rows from the
// pass's first position on (cos, sin: (T, D/2) each, already offset).
struct BlockPositions {
  int64_t B = 0, T = 0;
  const float* cos = nullptr;
  const float* sin = nullptr;
  int64_t rows() const { return B * T; }
};

// Scratch the backward needs, N rows each. dres carries the residual gradient in and out.
struct BlockScratch {
  float* dres = nullptr;       // (n, C): this rank's chunk under sequence parallelism
  float* dtmp = nullptr;       // (N, C)
  float* dbig = nullptr;       // (N, max(QKV, 2I))
  float* dsmall = nullptr;     // (N, max(H·D, I))
  float* kv_grad = nullptr;    // (2·kv_total·D, C) when kv_replicas > 1
  float* norm_grad = nullptr;  // (2, C) under sequence parallelism: the norms' partial gradients
  MoeScratch moe = {};         // an MoE MLP's
};

// A split backward (zero-bubble pipelines): what the input-gradient pass leaves for the
// weight-gradient pass, the output gradient of each of the block's four GEMMs (N rows each).
struct BlockDeferred {
  float* down = nullptr;     // (N, C)
  float* gate_up = nullptr;  // (N, 2I)
  float* o = nullptr;        // (N, C)
  float* qkv = nullptr;      // (N, QKV) rope undone
};

// Decoding's cache of one block: the keys (rope applied) and values of every earlier position.
struct KvCache {
  float* k = nullptr;  // (max_positions, Hkv·D)
  float* v = nullptr;  // (max_positions, Hkv·D)
  int64_t length = 0;  // positions already cached; the pass appends after them
  float* q = nullptr;  // (rows, H·D) scratch: the new positions' queries, packed
};

class LlamaBlock {
 public:
  // device: where the buffers the block is handed live; its ops come from that backend's table.
  LlamaBlock(const BlockShape& shape, Device device) : shape_(shape), ops_(&kernels::ops(device)) {}
  const BlockShape& shape() const { return shape_; }
  // The TP group this block's slice belongs to (Megatron's four conjugate pairs: after the o and
  // down GEMMs forward, after the q/k/v and gate/up GEMMs' input gradients backward).
  void set_tensor_parallel(parallel::TpMappings tp) { tp_ = tp; }
  const parallel::TpMappings& tensor_parallel() const { return tp_; }
  // Called between the block's long operations, so a watchdog can see the rank is alive.
  void set_progress(std::function<void()> progress) { progress_ = std::move(progress); }
  // The mixture of experts that runs the MLP of the layers whose weights have a router (null:
  // every layer dense). Must outlive the block's use.
  void set_moe(const MoeMlp* moe) { moe_ = moe; }

  // out = the block applied to x (N rows; under sequence parallelism both this rank's chunk).
  // With out null (checkpointing's recompute), stops once the activations the backward reads are
  // rebuilt. out may equal x. attn_ws: the attention workspace for these sizes
  // (kernels/attention.h); partial: (N, C) scratch for the row-parallel GEMMs' outputs before
  // their reduce-scatter (sequence parallelism only, else unused).
  // moe_ws: an MoE MLP's scratch (its layers only).
  void forward(float* out, const float* x, const BlockWeights& w, const BlockActs& a,
               const BlockPositions& pos, float* attn_ws, float* partial = nullptr,
               const MoeScratch* moe_ws = nullptr) const;
  // Takes ∂/∂out in s.dres and leaves ∂/∂x there; parameter gradients accumulate into g.
  // With `defer` (a split backward) the four GEMMs' weight gradients are left out and their
  // output gradients kept in it instead, for weight_backward; the norms' gradients still add.
  void backward(const float* x, const BlockWeights& w, const BlockGrads& g, const BlockActs& a,
                const BlockPositions& pos, const BlockScratch& s, float* attn_ws,
                const BlockDeferred* defer = nullptr) const;
  // The second half of a split backward: the four GEMMs' weight gradients from the activations
  // and what backward(…, defer) kept, added into g exactly as the whole backward adds them.
  void weight_backward(const BlockGrads& g, const BlockActs& a, const BlockDeferred& d,
                       const BlockScratch& s, int64_t N) const;
  // x ← the block applied to x, for one sequence of pos.T new positions after cache.length: their
  // keys and values join the cache, and each query attends to every cached position up to its
  // own. The caller advances cache.length when every block has run. attn_ws: the cached
  // attention's workspace (kernels/attention_cached.h).
  // An MoE MLP decodes dropless (no capacity), with its scratch in moe_ws.
  void forward_cached(float* x, const BlockWeights& w, const BlockActs& a,
                      const BlockPositions& pos, const KvCache& cache, float* attn_ws,
                      const MoeScratch* moe_ws = nullptr) const;

 private:
  // The MLP of a layer whose weights have a router: the MoE, or one keel::Error.
  const MoeMlp& moe() const;
  // The forward with attention as a step the two passes fill in differently.
  // split: sequence parallelism on (training) or off (decoding).
  // capacity: whether an MoE MLP drops past its experts' capacity (training, evaluation).
  template <typename Attend>
  void forward_with(float* out, const float* x, const BlockWeights& w, const BlockActs& a,
                    const BlockPositions& pos, bool split, float* partial, const MoeScratch* moe_ws,
                    bool capacity, Attend&& attend) const;
  void progress() const {
    if (progress_) progress_();
  }
  // The rows of an N-row pass's residual stream held here: all of them, or with split (sequence
  // parallelism) this rank's chunk, [first, first + count).
  parallel::Span held_rows(int64_t N, bool split) const;

  // q/k/v's input gradient into sc.dtmp from dqkv (with g_qkv not null, the weight gradient too).
  void qkv_backward(const BlockWeights& w, float* g_qkv, const BlockActs& a, const BlockScratch& sc,
                    const float* dqkv, int64_t N) const;
  // q/k/v's weight gradient alone, from dqkv and ln1.
  void qkv_weight_backward(float* g_qkv, const float* dqkv, const float* ln1,
                           const BlockScratch& sc, int64_t N) const;

  BlockShape shape_;
  const kernels::Ops* ops_;
  Stream stream_;  // what the ops are ordered on (unused on the CPU)
  parallel::TpMappings tp_;
  std::function<void()> progress_;
  const MoeMlp* moe_ = nullptr;
};

}  // namespace keel::runtime
