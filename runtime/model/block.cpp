#include "runtime/model/block.h"

#include <algorithm>

namespace keel::runtime {

const MoeMlp& LlamaBlock::moe() const {
  KEEL_CHECK(moe_, "a block with a router runs without its mixture of experts (internal error)");
  return *moe_;
}

parallel::Span LlamaBlock::held_rows(int64_t N, bool split) const {
  if (!split) return {0, N};
  const int64_t n = N / tp_.size();
  return {tp_.rank() * n, n};
}

template <typename Attend>
void LlamaBlock::forward_with(float* out, const float* x, const BlockWeights& w, const BlockActs& a,
                              const BlockPositions& pos, bool split, float* partial,
                              const MoeScratch* moe_ws, bool capacity, Attend&& attend) const {
  const BlockShape& s = shape_;
  const kernels::Ops& k = *ops_;
  const int64_t N = pos.rows(), C = s.C, I = s.I, QKV = s.qkv_width(), HD = s.q_width();
  // The residual stream's rows held here (n: all N without sequence parallelism).
  const parallel::Span rows = held_rows(N, split);
  const int64_t n = rows.count, at = rows.begin * C;
  KEEL_CHECK(!split || partial, "sequence parallelism needs the forward's partial buffer");
  // A row-parallel GEMM's output (every rank's partial sum over its heads or its slice of the
  // MLP): summed in place, or under SP summed and scattered, this rank keeping its rows.
  auto row_parallel = [&](float* chunk, float* full) {
    if (split)
      tp_.reduce_scatter(chunk, full, n * C);
    else
      tp_.reduce(full, N * C);
  };
  // Attention: xmid = x + o(attention(rope(qkv(norm(x))))).
  k.rmsnorm_forward(a.ln1 + at, a.rstd1, x, w.in_norm, n, C, s.eps, stream_);
  if (split) tp_.all_gather(a.ln1, a.ln1 + at, n * C);  // SP: every row into q/k/v
  k.matmul_forward(a.qkv, a.ln1, w.qkv, N, C, QKV, stream_);
  progress();
  k.rope_forward(a.qkv, pos.cos, pos.sin, pos.B, pos.T, s.H, s.D, QKV, stream_);
  k.rope_forward(a.qkv + HD, pos.cos, pos.sin, pos.B, pos.T, s.Hkv, s.D, QKV, stream_);
  attend();
  progress();
  float* o_out = split ? partial : a.xmid;
  k.matmul_forward(o_out, a.att, w.o, N, HD, C, stream_);
  row_parallel(a.xmid, o_out);  // row-parallel o: the sum of every rank's heads
  progress();
  k.add_inplace(a.xmid, x, n * C, stream_);
  // MLP: out = xmid + down(swiglu(gate_up(norm(xmid)))).
  // An MoE MLP: the same, with a router choosing experts for each row.
  k.rmsnorm_forward(a.ln2 + at, a.rstd2, a.xmid, w.post_norm, n, C, s.eps, stream_);
  if (split) tp_.all_gather(a.ln2, a.ln2 + at, n * C);  // SP: every row into gate/up
  float* down_out = split ? partial : out;
  if (w.moe()) {
    KEEL_CHECK(moe_ws, "an MoE block's forward needs the MoE scratch (internal error)");
    moe().forward(out ? down_out : nullptr, a.ln2, pos.B, pos.T, capacity, w.experts(), a.moe,
                  *moe_ws, a.moe_stats);
  } else {
    k.matmul_forward(a.gu, a.ln2, w.gate_up, N, C, 2 * I, stream_);
    progress();
    k.swiglu_forward(a.h, a.gu, N, I, stream_);
    if (out) k.matmul_forward(down_out, a.h, w.down, N, I, C, stream_);
  }
  if (!out) return;
  row_parallel(out, down_out);  // row-parallel down
  k.add_inplace(out, a.xmid, n * C, stream_);
}

void LlamaBlock::forward(float* out, const float* x, const BlockWeights& w, const BlockActs& a,
                         const BlockPositions& pos, float* attn_ws, float* partial,
                         const MoeScratch* moe_ws) const {
  const BlockShape& s = shape_;
  const kernels::Ops& k = *ops_;
  forward_with(out, x, w, a, pos, s.sequence_parallel, partial, moe_ws, /*capacity=*/true, [&] {
    k.attention_forward(a.att, a.lse, a.qkv, pos.B, pos.T, s.H, s.Hkv, s.D, attn_ws, stream_);
  });
}

void LlamaBlock::backward(const float* x, const BlockWeights& w, const BlockGrads& g,
                          const BlockActs& a, const BlockPositions& pos, const BlockScratch& sc,
                          float* attn_ws, const BlockDeferred* defer) const {
  const BlockShape& s = shape_;
  const kernels::Ops& k = *ops_;
  const int64_t N = pos.rows(), C = s.C, I = s.I, QKV = s.qkv_width(), HD = s.q_width();
  const bool split = s.sequence_parallel;
  const parallel::Span rows = held_rows(N, split);
  const int64_t n = rows.count, at = rows.begin * C;
  // Under SP the residual gradient (dres) holds this rank's rows: the row-parallel GEMMs'
  // backward reads every row, gathered into dtmp (all-gather, the conjugate of the forward's
  // reduce-scatter); the column-parallel GEMMs' input gradient is summed and scattered back to
  // the rows held, in place in dtmp (reduce-scatter, the conjugate of the all-gather). Without
  // SP the first is dres itself and the second an all-reduce.
  auto every_row = [&]() -> const float* {
    if (!split) return sc.dres;
    tp_.all_gather(sc.dtmp, sc.dres, n * C);
    return sc.dtmp;
  };
  auto column_parallel = [&] {
    if (split)
      tp_.reduce_scatter(sc.dtmp + at, sc.dtmp, n * C);
    else
      tp_.reduce(sc.dtmp, N * C);
  };
  // Under SP each rank's norm-weight gradients sum over its rows only: they are kept apart and
  // summed over the group below, so every rank adds the whole gradient (as without SP).
  KEEL_CHECK(!split || sc.norm_grad, "sequence parallelism needs the backward's norm_grad buffer");
  if (split) std::fill_n(sc.norm_grad, 2 * C, 0.0f);
  float* g_post_norm = split ? sc.norm_grad : g.post_norm;
  float* g_in_norm = split ? sc.norm_grad + C : g.in_norm;
  // A GEMM's output gradient: where it is, or (split backward) copied to where the weight pass
  // finds it; and the weight gradient to add now (none when deferred).
  auto keep = [&](float* kept, const float* dout, int64_t width) -> const float* {
    if (!defer) return dout;
    std::copy_n(dout, N * width, kept);
    return kept;
  };
  auto now = [&](float* grad) { return defer ? nullptr : grad; };
  // MLP, in reverse.
  KEEL_CHECK(!defer || !w.moe(),
             "a split backward of an MoE block is not supported (internal error: the config "
             "check refuses it)");
  const float* d_down = keep(defer ? defer->down : nullptr, every_row(), C);
  if (w.moe()) {
    moe().backward(sc.dtmp, d_down, a.ln2, pos.B, pos.T, w.experts(), g.experts(), a.moe, sc.moe);
  } else {
    k.matmul_backward(sc.dsmall, now(g.down), d_down, a.h, w.down, N, I, C, false, stream_);
    progress();
    float* d_gate_up = defer ? defer->gate_up : sc.dbig;
    k.swiglu_backward(d_gate_up, sc.dsmall, a.gu, N, I, stream_);
    k.matmul_backward(sc.dtmp, now(g.gate_up), d_gate_up, a.ln2, w.gate_up, N, C, 2 * I, false,
                      stream_);
  }
  column_parallel();  // column-parallel gate/up: the input's gradient sums over ranks
  progress();
  k.rmsnorm_backward(sc.dres, g_post_norm, sc.dtmp + at, a.xmid, w.post_norm, a.rstd2, n, C, true,
                     stream_);
  // Attention, in reverse.
  const float* d_o = keep(defer ? defer->o : nullptr, every_row(), C);
  k.matmul_backward(sc.dsmall, now(g.o), d_o, a.att, w.o, N, HD, C, false, stream_);
  progress();
  float* d_qkv = defer ? defer->qkv : sc.dbig;
  k.attention_backward(d_qkv, sc.dsmall, a.qkv, a.att, a.lse, pos.B, pos.T, s.H, s.Hkv, s.D,
                       attn_ws, stream_);
  progress();
  k.rope_backward(d_qkv, pos.cos, pos.sin, pos.B, pos.T, s.H, s.D, QKV, stream_);
  k.rope_backward(d_qkv + HD, pos.cos, pos.sin, pos.B, pos.T, s.Hkv, s.D, QKV, stream_);
  qkv_backward(w, now(g.qkv), a, sc, d_qkv, N);
  column_parallel();  // column-parallel q/k/v
  progress();
  k.rmsnorm_backward(sc.dres, g_in_norm, sc.dtmp + at, x, w.in_norm, a.rstd1, n, C, true, stream_);
  if (!split) return;
  tp_.reduce(sc.norm_grad, 2 * C);
  k.add_inplace(g.post_norm, sc.norm_grad, C, stream_);
  k.add_inplace(g.in_norm, sc.norm_grad + C, C, stream_);
}

// dtmp = dqkv · W_qkv, and the weight gradient. A key/value head shared by several TP ranks gets
// part of its gradient from each (each rank's own query heads): those rows are summed over the TP
// group in a buffer with a place for every head (zero where a rank holds none) before they join
// the gradient, so every replica holds the same whole gradient and steps the same way.
void LlamaBlock::qkv_backward(const BlockWeights& w, float* g_qkv, const BlockActs& a,
                              const BlockScratch& sc, const float* dqkv, int64_t N) const {
  const BlockShape& s = shape_;
  const kernels::Ops& k = *ops_;
  const int64_t C = s.C, QKV = s.qkv_width();
  if (s.kv_replicas == 1) {
    k.matmul_backward(sc.dtmp, g_qkv, dqkv, a.ln1, w.qkv, N, C, QKV, false, stream_);
    return;
  }
  k.matmul_backward(sc.dtmp, nullptr, dqkv, a.ln1, w.qkv, N, C, QKV, false, stream_);
  if (g_qkv) qkv_weight_backward(g_qkv, dqkv, a.ln1, sc, N);
}

void LlamaBlock::qkv_weight_backward(float* g_qkv, const float* dqkv, const float* ln1,
                                     const BlockScratch& sc, int64_t N) const {
  const BlockShape& s = shape_;
  const kernels::Ops& k = *ops_;
  const int64_t C = s.C, QKV = s.qkv_width(), HD = s.q_width(), KV = s.kv_width();
  if (s.kv_replicas == 1) {
    k.matmul_backward(nullptr, g_qkv, dqkv, ln1, nullptr, N, C, QKV, false, stream_);
    return;
  }
  // g_q (HD, C) += dq (N, HD)ᵀ · ln1 (N, C): the columns of dqkv that are q, row stride QKV.
  k.gemm(true, false, HD, C, N, 1.0f, dqkv, QKV, ln1, C, 1.0f, g_qkv, C, stream_);
  const int64_t head = s.D * C, total = 2 * s.kv_total * head;
  std::fill_n(sc.kv_grad, total, 0.0f);
  float* gk = sc.kv_grad + s.kv_first * head;
  float* gv = sc.kv_grad + (s.kv_total + s.kv_first) * head;
  k.gemm(true, false, KV, C, N, 1.0f, dqkv + HD, QKV, ln1, C, 0.0f, gk, C, stream_);
  k.gemm(true, false, KV, C, N, 1.0f, dqkv + HD + KV, QKV, ln1, C, 0.0f, gv, C, stream_);
  tp_.reduce(sc.kv_grad, total);
  k.add_inplace(g_qkv + HD * C, gk, KV * C, stream_);
  k.add_inplace(g_qkv + (HD + KV) * C, gv, KV * C, stream_);
}

void LlamaBlock::weight_backward(const BlockGrads& g, const BlockActs& a, const BlockDeferred& d,
                                 const BlockScratch& sc, int64_t N) const {
  const BlockShape& s = shape_;
  const kernels::Ops& k = *ops_;
  const int64_t C = s.C, I = s.I, HD = s.q_width();
  // The same GEMMs as the whole backward's, into the same gradients: the same sums.
  k.matmul_backward(nullptr, g.down, d.down, a.h, nullptr, N, I, C, false, stream_);
  progress();
  k.matmul_backward(nullptr, g.gate_up, d.gate_up, a.ln2, nullptr, N, C, 2 * I, false, stream_);
  progress();
  k.matmul_backward(nullptr, g.o, d.o, a.att, nullptr, N, HD, C, false, stream_);
  progress();
  qkv_weight_backward(g.qkv, d.qkv, a.ln1, sc, N);
}

void LlamaBlock::forward_cached(float* x, const BlockWeights& w, const BlockActs& a,
                                const BlockPositions& pos, const KvCache& cache, float* attn_ws,
                                const MoeScratch* moe_ws) const {
  const BlockShape& s = shape_;
  const kernels::Ops& k = *ops_;
  const int64_t n = pos.T, HD = s.q_width(), KV = s.kv_width(), QKV = s.qkv_width();
  forward_with(x, x, w, a, pos, /*split=*/false, nullptr, moe_ws, /*capacity=*/false, [&] {
    for (int64_t i = 0; i < n; ++i) {
      const float* row = a.qkv + i * QKV;
      std::copy_n(row, HD, cache.q + i * HD);
      std::copy_n(row + HD, KV, cache.k + (cache.length + i) * KV);
      std::copy_n(row + HD + KV, KV, cache.v + (cache.length + i) * KV);
    }
    k.attention_cached(a.att, cache.q, cache.k, cache.v, n, cache.length, s.H, s.Hkv, s.D, attn_ws,
                       stream_);
  });
}

}  // namespace keel::runtime
