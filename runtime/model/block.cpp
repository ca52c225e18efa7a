#include "runtime/model/block.h"

#include <algorithm>

namespace keel::runtime {

template <typename Attend>
void LlamaBlock::forward_with(float* out, const float* x, const BlockWeights& w, const BlockActs& a,
                              const BlockPositions& pos, Attend&& attend) const {
  const BlockShape& s = shape_;
  const kernels::Ops& k = *ops_;
  const int64_t N = pos.rows(), C = s.C, I = s.I, QKV = s.qkv_width(), HD = s.q_width();
  // Attention: xmid = x + o(attention(rope(qkv(norm(x))))).
  k.rmsnorm_forward(a.ln1, a.rstd1, x, w.in_norm, N, C, s.eps, stream_);
  k.matmul_forward(a.qkv, a.ln1, w.qkv, N, C, QKV, stream_);
  progress();
  k.rope_forward(a.qkv, pos.cos, pos.sin, pos.B, pos.T, s.H, s.D, QKV, stream_);
  k.rope_forward(a.qkv + HD, pos.cos, pos.sin, pos.B, pos.T, s.Hkv, s.D, QKV, stream_);
  attend();
  progress();
  k.matmul_forward(a.xmid, a.att, w.o, N, HD, C, stream_);
  tp_.reduce(a.xmid, N * C);  // row-parallel o: the sum of every rank's heads
  progress();
  k.add_inplace(a.xmid, x, N * C, stream_);
  // MLP: out = xmid + down(swiglu(gate_up(norm(xmid)))).
  k.rmsnorm_forward(a.ln2, a.rstd2, a.xmid, w.post_norm, N, C, s.eps, stream_);
  k.matmul_forward(a.gu, a.ln2, w.gate_up, N, C, 2 * I, stream_);
  progress();
  k.swiglu_forward(a.h, a.gu, N, I, stream_);
  if (!out) return;
  k.matmul_forward(out, a.h, w.down, N, I, C, stream_);
  tp_.reduce(out, N * C);  // row-parallel down
  k.add_inplace(out, a.xmid, N * C, stream_);
}

void LlamaBlock::forward(float* out, const float* x, const BlockWeights& w, const BlockActs& a,
                         const BlockPositions& pos, float* attn_ws) const {
  const BlockShape& s = shape_;
  const kernels::Ops& k = *ops_;
  forward_with(out, x, w, a, pos, [&] {
    k.attention_forward(a.att, a.lse, a.qkv, pos.B, pos.T, s.H, s.Hkv, s.D, attn_ws, stream_);
  });
}

void LlamaBlock::backward(const float* x, const BlockWeights& w, const BlockGrads& g,
                          const BlockActs& a, const BlockPositions& pos, const BlockScratch& sc,
                          float* attn_ws) const {
  const BlockShape& s = shape_;
  const kernels::Ops& k = *ops_;
  const int64_t N = pos.rows(), C = s.C, I = s.I, QKV = s.qkv_width(), HD = s.q_width();
  // MLP, in reverse.
  k.matmul_backward(sc.dsmall, g.down, sc.dres, a.h, w.down, N, I, C, false, stream_);
  progress();
  k.swiglu_backward(sc.dbig, sc.dsmall, a.gu, N, I, stream_);
  k.matmul_backward(sc.dtmp, g.gate_up, sc.dbig, a.ln2, w.gate_up, N, C, 2 * I, false, stream_);
  tp_.reduce(sc.dtmp, N * C);  // column-parallel gate/up: the input's gradient sums over ranks
  progress();
  k.rmsnorm_backward(sc.dres, g.post_norm, sc.dtmp, a.xmid, w.post_norm, a.rstd2, N, C, true,
                     stream_);
  // Attention, in reverse.
  k.matmul_backward(sc.dsmall, g.o, sc.dres, a.att, w.o, N, HD, C, false, stream_);
  progress();
  k.attention_backward(sc.dbig, sc.dsmall, a.qkv, a.att, a.lse, pos.B, pos.T, s.H, s.Hkv, s.D,
                       attn_ws, stream_);
  progress();
  k.rope_backward(sc.dbig, pos.cos, pos.sin, pos.B, pos.T, s.H, s.D, QKV, stream_);
  k.rope_backward(sc.dbig + HD, pos.cos, pos.sin, pos.B, pos.T, s.Hkv, s.D, QKV, stream_);
  qkv_backward(w, g, a, sc, N);
  tp_.reduce(sc.dtmp, N * C);  // column-parallel q/k/v
  progress();
  k.rmsnorm_backward(sc.dres, g.in_norm, sc.dtmp, x, w.in_norm, a.rstd1, N, C, true, stream_);
}

// dtmp = dqkv · W_qkv, and the weight gradient. A key/value head shared by several TP ranks gets
// part of its gradient from each (each rank's own query heads): those rows are summed over the TP
// group in a buffer with a place for every head (zero where a rank holds none) before they join
// the gradient, so every replica holds the same whole gradient and steps the same way.
void LlamaBlock::qkv_backward(const BlockWeights& w, const BlockGrads& g, const BlockActs& a,
                              const BlockScratch& sc, int64_t N) const {
  const BlockShape& s = shape_;
  const kernels::Ops& k = *ops_;
  const int64_t C = s.C, QKV = s.qkv_width(), HD = s.q_width(), KV = s.kv_width();
  if (s.kv_replicas == 1) {
    k.matmul_backward(sc.dtmp, g.qkv, sc.dbig, a.ln1, w.qkv, N, C, QKV, false, stream_);
    return;
  }
  k.matmul_backward(sc.dtmp, nullptr, sc.dbig, a.ln1, w.qkv, N, C, QKV, false, stream_);
  // g_q (HD, C) += dq (N, HD)ᵀ · ln1 (N, C): the columns of dqkv that are q, row stride QKV.
  k.gemm(true, false, HD, C, N, 1.0f, sc.dbig, QKV, a.ln1, C, 1.0f, g.qkv, C, stream_);
  const int64_t head = s.D * C, total = 2 * s.kv_total * head;
  std::fill_n(sc.kv_grad, total, 0.0f);
  float* gk = sc.kv_grad + s.kv_first * head;
  float* gv = sc.kv_grad + (s.kv_total + s.kv_first) * head;
  k.gemm(true, false, KV, C, N, 1.0f, sc.dbig + HD, QKV, a.ln1, C, 0.0f, gk, C, stream_);
  k.gemm(true, false, KV, C, N, 1.0f, sc.dbig + HD + KV, QKV, a.ln1, C, 0.0f, gv, C, stream_);
  tp_.reduce(sc.kv_grad, total);
  k.add_inplace(g.qkv + HD * C, gk, KV * C, stream_);
  k.add_inplace(g.qkv + (HD + KV) * C, gv, KV * C, stream_);
}

void LlamaBlock::forward_cached(float* x, const BlockWeights& w, const BlockActs& a,
                                const BlockPositions& pos, const KvCache& cache,
                                float* attn_ws) const {
  const BlockShape& s = shape_;
  const kernels::Ops& k = *ops_;
  const int64_t n = pos.T, HD = s.q_width(), KV = s.kv_width(), QKV = s.qkv_width();
  forward_with(x, x, w, a, pos, [&] {
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
