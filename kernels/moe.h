// The arithmetic of a Mixture-of-Experts layer around its expert GEMMs: the router (softmax over
// the experts, top-k, the chosen weights renormalised, Mixtral's order), its backward with the
// load-balancing and z-losses folded in, and the row moves that sort tokens by expert and add the
// experts' outputs back. Which token goes where (capacity, ranks) is parallel/moe_dispatch.h's.
#pragma once

#include <cstdint>

#include "kernels/device.h"

namespace keel::kernels::cpu {

// Per row of logits (N, E): probs (N, E) = softmax, lse (N) = its log-sum-exp, sel (N, k) the k
// most probable experts, most probable first (ties to the lower index), gate (N, k) their
// probabilities divided by their sum.
void moe_router_forward(float* probs, float* lse, int32_t* sel, float* gate, const float* logits,
                        int64_t N, int64_t E, int64_t k, Stream stream = {});

// The router's losses' statistics over B sequences of T rows: counts (B, E) += how many of each
// sequence's top-k choices picked each expert (before any token is dropped), psum (B, E) += the
// sum of each expert's probability over the sequence's rows, zsum (1) += Σ lse².
void moe_router_stats(float* counts, float* psum, double* zsum, const float* probs,
                      const float* lse, const int32_t* sel, int64_t B, int64_t T, int64_t E,
                      int64_t k, Stream stream = {});

// dlogits (N, E) overwritten with the gradient of
//   Σ dgate·gate + Σ_b Σ_i aux_grad[b, i]·Σ_{t in b} probs[t, i] + z_scale·Σ_t lse_t²
// where dgate (N, k) is the gradient of the renormalised weights and aux_grad (B, E) that of each
// sequence's probability sums (null: none); rows are B sequences of T.
void moe_router_backward(float* dlogits, const float* dgate, const float* probs, const float* lse,
                         const int32_t* sel, const float* gate, const float* aux_grad,
                         float z_scale, int64_t N, int64_t T, int64_t E, int64_t k,
                         Stream stream = {});

// out[i] = in[rows[i]] for i < n (rows of width C); rows[i] < 0 leaves out[i] zero.
void moe_gather_rows(float* out, const float* in, const int32_t* rows, int64_t n, int64_t C,
                     Stream stream = {});

// out[t] = Σ_j weight[t, j] · in[rows[t, j]] for t < N, j in order 0..k-1 (rows[t, j] < 0 adds
// nothing; out overwritten). The combine of the experts' outputs, in a fixed order.
void moe_combine(float* out, const float* in, const int32_t* rows, const float* weight, int64_t N,
                 int64_t k, int64_t C, Stream stream = {});

// The combine's backward: dweight[t, j] = dout[t] · in[rows[t, j]] (0 where rows < 0), and
// din[rows[t, j]] = weight[t, j] · dout[t] (din's other rows untouched).
void moe_combine_backward(float* din, float* dweight, const float* dout, const float* in,
                          const int32_t* rows, const float* weight, int64_t N, int64_t k, int64_t C,
                          Stream stream = {});

// out[t] += Σ_j in[rows[t, j]] for t < N, j in order (rows < 0 add nothing): the input gradients
// of a token's experts summed back onto the token.
void moe_add_gathered(float* out, const float* in, const int32_t* rows, int64_t N, int64_t k,
                      int64_t C, Stream stream = {});

}  // namespace keel::kernels::cpu
