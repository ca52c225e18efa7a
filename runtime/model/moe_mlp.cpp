#include "runtime/model/moe_mlp.h"

#include <algorithm>
#include <cmath>

namespace keel::runtime {

void MoeStats::clear() {
  std::fill(tokens.begin(), tokens.end(), 0.0);
  std::fill(routed.begin(), routed.end(), 0.0);
  slots = dropped = aux = sequences = z = entropy = rows = 0;
}

MoeActSlots declare_moe_acts(const MoeShape& m, const MoePlanAdd& add) {
  const int64_t N = m.N(), E = m.E, k = m.k, R = m.max_expert_rows(), C = m.C, I = m.I;
  return {add("router_probs", DType::F32, {N, E}),       add("router_lse", DType::F32, {N}),
          add("router_choice", DType::I32, {N, k}),      add("router_weight", DType::F32, {N, k}),
          add("route_row", DType::I32, {N, k}),          add("route_token", DType::I32, {N * k}),
          add("route_counts", DType::I64, {E}),          add("route_arrivals", DType::I64, {E}),
          add("router_picks", DType::F32, {m.B, E}),     add("expert_in", DType::F32, {R, C}),
          add("expert_gate_up", DType::F32, {R, 2 * I}), add("expert_h", DType::F32, {R, I}),
          add("expert_out", DType::F32, {N * k, C})};
}

MoeScratchSlots declare_moe_scratch(const MoeShape& m, const MoePlanAdd& add, bool backward) {
  const int64_t N = m.N(), E = m.E, k = m.k, R = m.max_expert_rows(), C = m.C, I = m.I;
  MoeScratchSlots s;
  s.backward = backward;
  s.logits = add("router_logits", DType::F32, {N, E});
  s.rows = add("route_rows", DType::F32, {N * k, C});
  s.expert = add("expert_rows", DType::F32, {R, C});
  if (m.ep > 1) s.staging = add("expert_staging", DType::F32, {R, C});
  if (backward) {
    s.dh = add("expert_dh", DType::F32, {R, I});
    s.dgu = add("expert_dgate_up", DType::F32, {R, 2 * I});
    s.dgate = add("router_dweight", DType::F32, {N, k});
  }
  s.aux = add("router_aux", DType::F32, {m.B, E});
  return s;
}

MoeActs moe_acts(const MoeActSlots& s, const MoePlanAt& at) {
  auto f32 = [&](MemoryPlan::Slot slot) { return static_cast<float*>(at(slot)); };
  auto i32 = [&](MemoryPlan::Slot slot) { return static_cast<int32_t*>(at(slot)); };
  auto i64 = [&](MemoryPlan::Slot slot) { return static_cast<int64_t*>(at(slot)); };
  return {f32(s.probs), f32(s.lse),    i32(s.sel),  f32(s.gate),    i32(s.dest),
          i32(s.src),   i64(s.counts), i64(s.recv), f32(s.choices), f32(s.xe),
          f32(s.gu),    f32(s.h),      f32(s.y)};
}

MoeScratch moe_scratch(const MoeScratchSlots& s, int ep, const MoePlanAt& at) {
  auto f32 = [&](MemoryPlan::Slot slot) { return static_cast<float*>(at(slot)); };
  MoeScratch out{f32(s.logits), f32(s.rows), f32(s.expert)};
  if (ep > 1) out.staging = f32(s.staging);
  if (s.backward) out.dh = f32(s.dh), out.dgu = f32(s.dgu), out.dgate = f32(s.dgate);
  out.aux_grad = f32(s.aux);
  return out;
}

MoeMlp::MoeMlp(const MoeShape& shape, Device device)
    : shape_(shape), ops_(&kernels::ops(device)), exchange_(nullptr, shape.E) {
  KEEL_CHECK(shape.k >= 1 && shape.k <= shape.E && shape.E % shape.ep == 0,
             "an MoE layer of {} experts, {} per token, over {} expert-parallel ranks (internal "
             "error)",
             shape.E, shape.k, shape.ep);
}

void MoeMlp::set_expert_parallel(parallel::Communicator* ep) {
  const int size = ep ? ep->size() : 1;
  KEEL_CHECK(size == shape_.ep,
             "the MoE layer is split over {} expert-parallel ranks, and the group given has {} "
             "(internal error)",
             shape_.ep, size);
  exchange_ = parallel::MoeExchange(ep, shape_.E);
}

void MoeMlp::experts_forward(float* out, const MoeWeights& w, const MoeActs& a,
                             const std::vector<int64_t>& rows) const {
  const kernels::Ops& k = *ops_;
  const int64_t C = shape_.C, I = shape_.I;
  int64_t at = 0;
  for (size_t e = 0; e < rows.size(); ++e) {
    const int64_t n = rows[e];
    if (n > 0) {
      const int64_t E = static_cast<int64_t>(e);
      k.matmul_forward(a.gu + at * 2 * I, a.xe + at * C, w.gate_up + E * 2 * I * C, n, C, 2 * I,
                       stream_);
      k.swiglu_forward(a.h + at * I, a.gu + at * 2 * I, n, I, stream_);
      if (out) k.matmul_forward(out + at * C, a.h + at * I, w.down + E * C * I, n, I, C, stream_);
    }
    at += n;
    progress();
  }
}

void MoeMlp::forward(float* out, const float* x, int64_t B, int64_t T, bool capacity,
                     const MoeWeights& w, const MoeActs& a, const MoeScratch& s,
                     MoeStats* stats) const {
  const MoeShape& m = shape_;
  const kernels::Ops& k = *ops_;
  const int64_t N = B * T, E = m.E, C = m.C;
  KEEL_CHECK(N <= m.N() && (!capacity || T == m.T),
             "an MoE layer sized for {} sequences of {} rows runs {} of {} (internal error)", m.B,
             m.T, B, T);
  // Route: logits → softmax → top-k → renormalised weights; the slots sorted by expert.
  k.matmul_forward(s.logits, x, w.router, N, C, E, stream_);
  k.moe_router_forward(a.probs, a.lse, a.sel, a.gate, s.logits, N, E, m.k, stream_);
  const int64_t sent = parallel::plan_routes(a.dest, a.src, a.counts, a.sel, B, T, E, m.k,
                                             capacity ? m.capacity : 0);
  std::fill_n(a.choices, B * E, 0.0f);
  double zsum = 0;
  float* psum = s.aux_grad;  // (B, E) free until the backward
  std::fill_n(psum, B * E, 0.0f);
  k.moe_router_stats(a.choices, psum, &zsum, a.probs, a.lse, a.sel, B, T, E, m.k, stream_);
  if (stats) {
    stats->tokens.resize(static_cast<size_t>(E), 0.0);
    stats->routed.resize(static_cast<size_t>(E), 0.0);
    for (int64_t e = 0; e < E; ++e) stats->tokens[static_cast<size_t>(e)] += a.counts[e];
    for (int64_t i = 0; i < B * E; ++i) stats->routed[static_cast<size_t>(i % E)] += a.choices[i];
    stats->slots += static_cast<double>(N * m.k);
    stats->dropped += static_cast<double>(N * m.k - sent);
    const double T2 = static_cast<double>(T) * T;
    for (int64_t b = 0; b < B; ++b) {
      double f_p = 0;
      for (int64_t e = 0; e < E; ++e)
        f_p += static_cast<double>(a.choices[b * E + e]) * psum[b * E + e];
      stats->aux += static_cast<double>(E) * f_p / T2;
    }
    stats->sequences += static_cast<double>(B);
    stats->z += zsum;
    for (int64_t n = 0; n < N; ++n) {
      double h = 0;
      for (int64_t e = 0; e < E; ++e) {
        const double p = a.probs[n * E + e];
        if (p > 0) h -= p * std::log(p);
      }
      stats->entropy += h;
    }
    stats->rows += static_cast<double>(N);
  }
  // Dispatch: each kept slot's row to its expert's rank, then the experts, then back.
  k.moe_gather_rows(s.rows, x, a.src, sent, C, stream_);
  const int64_t R = exchange_.exchange_counts({a.recv, static_cast<size_t>(E)},
                                              {a.counts, static_cast<size_t>(E)});
  KEEL_CHECK(R <= m.max_expert_rows(),
             "{} rows arrived at this rank's experts, more than the {} planned (internal error)", R,
             m.max_expert_rows());
  const std::span<const int64_t> counts(a.counts, static_cast<size_t>(E)),
      recv(a.recv, static_cast<size_t>(E));
  exchange_.dispatch(a.xe, s.rows, counts, recv, C, s.staging);
  progress();
  experts_forward(s.expert, w, a, exchange_.expert_rows(recv));
  exchange_.give_back(a.y, s.expert, counts, recv, C, s.staging);
  progress();
  if (!out) return;
  k.moe_combine(out, a.y, a.dest, a.gate, N, m.k, C, stream_);
}

void MoeMlp::backward(float* dx, const float* dout, const float* x, int64_t B, int64_t T,
                      const MoeWeights& w, const MoeGrads& g, const MoeActs& a,
                      const MoeScratch& s) const {
  const MoeShape& m = shape_;
  const kernels::Ops& k = *ops_;
  const int64_t N = B * T, E = m.E, C = m.C, I = m.I;
  const std::span<const int64_t> counts(a.counts, static_cast<size_t>(E)),
      recv(a.recv, static_cast<size_t>(E));
  // The combine: each kept slot's output gradient (weight · dout) in send order, and the
  // gradient of its weight, dout · y (under TP y is this rank's partial sum: summed over TP).
  k.moe_combine_backward(s.rows, s.dgate, dout, a.y, a.dest, a.gate, N, m.k, C, stream_);
  tp_.reduce(s.dgate, N * m.k);
  // The experts, in reverse: the slots' output gradients to the experts, their weight
  // gradients, their input gradients back.
  exchange_.dispatch(s.expert, s.rows, counts, recv, C, s.staging);
  progress();
  const std::vector<int64_t> rows = exchange_.expert_rows(recv);
  int64_t at = 0;
  for (size_t e = 0; e < rows.size(); ++e) {
    const int64_t n = rows[e], ex = static_cast<int64_t>(e);
    if (n > 0) {
      k.matmul_backward(s.dh + at * I, g.down + ex * C * I, s.expert + at * C, a.h + at * I,
                        w.down + ex * C * I, n, I, C, false, stream_);
      k.swiglu_backward(s.dgu + at * 2 * I, s.dh + at * I, a.gu + at * 2 * I, n, I, stream_);
      // The input gradient overwrites the output gradient's rows, read above and done with.
      k.matmul_backward(s.expert + at * C, g.gate_up + ex * 2 * I * C, s.dgu + at * 2 * I,
                        a.xe + at * C, w.gate_up + ex * 2 * I * C, n, C, 2 * I, false, stream_);
    }
    at += n;
    progress();
  }
  exchange_.give_back(s.rows, s.expert, counts, recv, C, s.staging);
  std::fill_n(dx, N * C, 0.0f);
  k.moe_add_gathered(dx, s.rows, a.dest, N, m.k, C, stream_);
  // The router: its losses' gradient on each sequence's probabilities, E·(choices/T)/T each
  // (scaled), and the gates'; then its weight's gradient and (on one TP rank) the input's.
  for (int64_t i = 0; i < B * E; ++i)
    s.aux_grad[i] = scale_.aux * static_cast<float>(E) * a.choices[i] / static_cast<float>(T * T);
  k.moe_router_backward(s.logits, s.dgate, a.probs, a.lse, a.sel, a.gate, s.aux_grad, scale_.z, N,
                        T, E, m.k, stream_);
  k.matmul_backward(tp_.rank() == 0 ? dx : nullptr, g.router, s.logits, x, w.router, N, C, E,
                    /*accumulate_dinp=*/true, stream_);
}

}  // namespace keel::runtime
