// The MLP half of an MoE block (Mixtral's sparse MoE): a router picks k of E SwiGLU experts per
// token, the tokens are sorted by expert so each expert is one GEMM (and, under expert
// parallelism, sent to the ranks holding their experts), and each token's output is its experts'
// outputs weighted by the router and summed in a fixed order. Forward and backward by hand; the
// router's load-balancing and z-losses enter the backward as extra gradient on its logits.
// Like LlamaBlock it owns no memory: the caller hands it weights, activations and scratch.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "kernels/memory_plan.h"
#include "kernels/ops.h"
#include "parallel/moe_dispatch.h"
#include "parallel/tensor_parallel.h"

namespace keel::runtime {

// An MoE layer's sizes as this rank holds it.
struct MoeShape {
  int64_t C = 0;         // hidden size
  int64_t I = 0;         // each expert's intermediate size (its TP slice)
  int64_t E = 0;         // experts in the layer (all ranks')
  int64_t k = 0;         // experts per token
  int64_t capacity = 0;  // most slots an expert takes per sequence of T (0: dropless)
  int64_t B = 0, T = 0;  // the largest pass: B sequences of T rows (buffers are sized for it)
  int ep = 1;            // expert-parallel ranks (this one holds E/ep experts)
  int64_t N() const { return B * T; }
  int64_t local_experts() const { return E / ep; }
  // Rows this rank's experts can receive: every token's k choices from every rank, but no more
  // than each local expert taking every token once, or with a capacity its B sequences' worth
  // from each rank.
  int64_t max_expert_rows() const {
    const int64_t dropless = ep * N() * std::min(k, local_experts());
    return capacity > 0 ? std::min(dropless, ep * local_experts() * B * capacity) : dropless;
  }
};

// The layer's weights (or gradients): the router and this rank's experts, stacked.
template <typename F>
struct MoeTensors {
  F* router = nullptr;   // (E, C)
  F* gate_up = nullptr;  // (E/ep, 2I, C): each expert's w1 (gate) rows, then its w3 (up) rows
  F* down = nullptr;     // (E/ep, C, I): each expert's w2
};
using MoeWeights = MoeTensors<const float>;
using MoeGrads = MoeTensors<float>;

// What the forward keeps for the backward (R = max_expert_rows rows, M ≤ N·k).
struct MoeActs {
  float* probs = nullptr;     // (N, E) router softmax
  float* lse = nullptr;       // (N) its log-sum-exp
  int32_t* sel = nullptr;     // (N, k) chosen experts
  float* gate = nullptr;      // (N, k) their renormalised weights
  int32_t* dest = nullptr;    // (N, k) each slot's row in the send order, -1 dropped
  int32_t* src = nullptr;     // (N·k) each sent row's token
  int64_t* counts = nullptr;  // (E) rows sent to each expert
  int64_t* recv = nullptr;    // (E) rows each rank sends to each local expert (ep × E/ep)
  float* choices = nullptr;   // (B, E) each sequence's top-k picks per expert (aux loss)
  float* xe = nullptr;        // (R, C) the rows the local experts take, expert-major
  float* gu = nullptr;        // (R, 2I) their gate and up
  float* h = nullptr;         // (R, I) their SwiGLU
  float* y = nullptr;         // (N·k, C) the experts' outputs, back in send order
};

// Scratch shared by every layer and micro-batch.
struct MoeScratch {
  float* logits = nullptr;    // (N, E); the backward's logit gradient too
  float* rows = nullptr;      // (N·k, C) rows in send order
  float* expert = nullptr;    // (R, C) rows at the experts
  float* staging = nullptr;   // (R, C) what all_to_all_v moves, before regrouping (ep > 1)
  float* dh = nullptr;        // (R, I)
  float* dgu = nullptr;       // (R, 2I)
  float* dgate = nullptr;     // (N, k)
  float* aux_grad = nullptr;  // (B, E)
};

// Where the buffers above live: slots of a caller's memory plan, declared for a layer of `shape`
// (its B·T rows at most) by declare_moe_buffers, and turned into pointers by moe_acts and
// moe_scratch. The model declares the activations once per layer and activation slot and the
// scratch once; the decoder both once, without the backward's scratch.
using MoePlanAdd = std::function<MemoryPlan::Slot(const char* name, DType dtype, Shape shape)>;
using MoePlanAt = std::function<void*(MemoryPlan::Slot)>;
struct MoeActSlots {
  MemoryPlan::Slot probs, lse, sel, gate, dest, src, counts, recv, choices, xe, gu, h, y;
};
struct MoeScratchSlots {
  MemoryPlan::Slot logits, rows, expert, staging, dh, dgu, dgate, aux;
  bool backward = false;  // whether the backward's scratch (dh, dgu, dgate) is declared
};
MoeActSlots declare_moe_acts(const MoeShape& shape, const MoePlanAdd& add);
MoeScratchSlots declare_moe_scratch(const MoeShape& shape, const MoePlanAdd& add, bool backward);
MoeActs moe_acts(const MoeActSlots& slots, const MoePlanAt& at);
MoeScratch moe_scratch(const MoeScratchSlots& slots, int ep, const MoePlanAt& at);

// A layer's routing, summed over the micro-batches of a step (or an evaluation).
struct MoeStats {
  std::vector<double> tokens;  // (E) slots each expert took (kept)
  std::vector<double> routed;  // (E) slots the router sent each expert (before any drop)
  double slots = 0;            // slots routed (N·k per micro-batch)
  double dropped = 0;          // slots dropped by capacity
  double aux = 0;              // Σ over sequences of E·Σ f·P (transformers' definition)
  double sequences = 0;
  double z = 0;        // Σ over rows of lse²
  double entropy = 0;  // Σ over rows of the router's entropy (nats)
  double rows = 0;
  void clear();
};

// How the router's losses weigh into the gradient: the objective adds
// aux_scale·Σ_sequences aux_b + z_scale·Σ_rows lse² for this layer.
struct MoeLossScale {
  float aux = 0;
  float z = 0;
};

class MoeMlp {
 public:
  MoeMlp(const MoeShape& shape, Device device);
  const MoeShape& shape() const { return shape_; }
  // The TP group (experts keep the dense MLP's TP split) and the expert-parallel group.
  void set_tensor_parallel(parallel::TpMappings tp) { tp_ = tp; }
  void set_expert_parallel(parallel::Communicator* ep);
  void set_progress(std::function<void()> progress) { progress_ = std::move(progress); }
  // The router's losses' weights in the gradient (zero until set).
  void set_loss_scale(MoeLossScale scale) { scale_ = scale; }
  const MoeLossScale& loss_scale() const { return scale_; }
  // Bytes this rank has sent over the expert-parallel group so far, as the routing says.
  uint64_t exchanged_bytes() const { return exchange_.bytes_sent(); }

  // out (N, C) = this rank's part of the layer applied to x (N = B·T rows, B sequences of T, at
  // most the shape's): under TP a partial sum the caller reduces, as the dense MLP's down GEMM.
  // capacity: drop past the experts' capacity (training, evaluation; the whole T-row sequences
  // of the shape only), else dropless (decoding). out null (checkpointing's recompute): stops
  // once the activations are rebuilt. stats: where the routing is counted (null: not counted).
  void forward(float* out, const float* x, int64_t B, int64_t T, bool capacity, const MoeWeights& w,
               const MoeActs& a, const MoeScratch& s, MoeStats* stats) const;
  // dx (N, C) = ∂/∂x from dout (N, C) (every row's gradient of the layer's output) and the
  // router's losses; gradients accumulate into g. Under TP dx is this rank's part: the experts'
  // input gradient (summed over TP by the caller) and, on TP rank 0 only, the router's.
  void backward(float* dx, const float* dout, const float* x, int64_t B, int64_t T,
                const MoeWeights& w, const MoeGrads& g, const MoeActs& a,
                const MoeScratch& s) const;

 private:
  void progress() const {
    if (progress_) progress_();
  }
  // The expert GEMMs over the R rows in a.xe, expert-major: gu, h, and out (R, C).
  void experts_forward(float* out, const MoeWeights& w, const MoeActs& a,
                       const std::vector<int64_t>& rows) const;

  MoeShape shape_;
  const kernels::Ops* ops_;
  Stream stream_;
  parallel::TpMappings tp_;
  mutable parallel::MoeExchange exchange_;
  MoeLossScale scale_;
  std::function<void()> progress_;
};

}  // namespace keel::runtime
