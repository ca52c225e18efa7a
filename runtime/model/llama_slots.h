// The model's slots (runtime/model/llama.h), shared by the files that build the model (llama.cpp,
// llama_plans.cpp) and run it (model/llama_run.cpp); not part of the model's interface.
#pragma once

#include <vector>

#include "runtime/model/llama.h"

namespace keel::runtime {

using Slot = MemoryPlan::Slot;

// Logits of at most this many floats exist at once (32 MiB).
inline constexpr int64_t kLogitsChunkFloats = int64_t{8} << 20;

// Slots of one block. Parameters: q, k and v are views of one (QKV, C) matrix, gate and up of one
// (2I, C) matrix, so each pair of projections is one GEMM.
// A mixture-of-experts layer has a router, and gate_up and down stack its experts' matrices.
struct LlamaModel::Layer {
  Slot w_in_norm, w_qkv, w_o, w_post_norm, w_gate_up, w_down;
  bool moe = false;
  Slot w_router = 0;
};

// What one micro-batch keeps from its forward until its backward: the activation slot it runs in
// (a pipeline stage keeps several micro-batches in flight, each in its own).
struct LlamaModel::MicroActs {
  // The model chunk the slot belongs to, whose local layers [first, last) it runs; x, blocks and
  // deferred are indexed from `first` (x[l - first] enters local layer l).
  int chunk = 0;
  int64_t first = 0, last = 0;
  // (n, C) the residual stream entering each block; x.back() leaves the last. After the
  // micro-batch's backward x[0] holds its gradient (what stage_input_grad hands back); on the last
  // stage its forward leaves the head's gradient ∂/∂x[L] in x[L], which only the head read.
  std::vector<Slot> x;
  // Each block's insides. With checkpointing every block of every slot shares one set (slot 0's
  // block 0): the backward recomputes it from x[l] just before it needs it.
  // A mixture-of-experts layer's MLP keeps MoeActs (runtime/model/moe_mlp.h) instead of gu, h.
  struct Block {
    Slot ln1, rstd1, qkv, att, lse, xmid, ln2, rstd2, gu, h;
    bool moe = false;
    MoeActSlots experts = {};
  };
  std::vector<Block> blocks;
  // A split backward (ModelSplit::split_backward): each block's GEMM output gradients, kept from
  // the input-gradient pass to the weight-gradient pass.
  struct Deferred {
    Slot down, gate_up, o, qkv;
  };
  std::vector<Deferred> deferred;
  Slot tokens = 0;  // (N) first stage: the micro-batch's tokens, for the embedding backward
};

struct LlamaModel::Slots {
  Slot w_embed, w_final_norm, w_head;
  size_t embed, final_norm, head;  // indices into params_
  std::vector<MicroActs> slots;    // one per activation slot
  Slot lnf, rstdf;                 // (N, C) (SP: gathered), (n): the head's, used and done at once
  Slot logits, losses;             // (chunk, V), (N)
  Slot dres, dtmp;                 // (n, C) residual gradient (n: rows held), (N, C) scratch
  Slot dbig;                       // (N, max(QKV, 2I)): dqkv, then dgate_up
  Slot dsmall;                     // (N, max(H·D, I)): datt, then dh
  Slot attn_ws;                    // attention workspace
  Slot rope_cos, rope_sin;         // (T, D/2)
  Slot kv_grad = 0;                // (2·Hkv·D, C) shared key/value heads' gradients (TP > Hkv)
  Slot row_max = 0, ce_stats = 0;  // (chunk), (2, chunk) doubles: vocabulary-parallel softmax
  Slot norm_grad = 0;              // (2, C) SP: a norm's partial weight gradient, summed over TP
  // MoE layers' scratch (MoeScratch), when the stage has one.
  bool moe = false;
  MoeScratchSlots moe_work = {};
};

}  // namespace keel::runtime
