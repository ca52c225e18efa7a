// The vocabulary-parallel embedding and cross-entropy of tensor parallelism: each rank of the TP
// group holds rows [v0, v0 + V) of the embedding table and of the output head, so no rank ever
// holds a whole row of logits. The ops here work on one rank's slice; the model joins the slices
// with collectives on the TP group between the phases (kernels sit below parallel/):
//   embedding:      lookup of the rows held here (others zero) → all-reduce sum
//   cross-entropy:  row max → all-reduce max → Σ exp and the target's logit → all-reduce sum
//                   → loss, and the gradient over the logits in place.
// With one rank holding the whole vocabulary (v0 = 0) the results are the plain ops' up to the
// rounding of Σ exp's order.
#pragma once

#include <cstdint>

#include "kernels/device.h"

namespace keel::kernels::cpu {

// out (N, C): row n = table (V, C)[tokens[n] − v0] when tokens[n] lies in [v0, v0 + V), else 0.
void embedding_forward_slice(float* out, const int32_t* tokens, const float* table, int64_t N,
                             int64_t C, int64_t v0, int64_t V, Stream stream = {});

// dtable (V, C) += Σ over n with tokens[n] − v0 == v of dout[n] (accumulates; tokens outside
// the slice are skipped). Deterministic whatever the thread count.
void embedding_backward_slice(float* dtable, const float* dout, const int32_t* tokens, int64_t N,
                              int64_t C, int64_t v0, int64_t V, Stream stream = {});

// row_max (N): the largest of each row of this rank's logits (N, V).
void cross_entropy_slice_max(float* row_max, const float* logits, int64_t N, int64_t V,
                             Stream stream = {});

// stats (2, N) in double: row n of stats[0] = Σ_v exp(logits[n][v] − row_max[n]) over this
// rank's slice (row_max already the maximum over every rank), stats[1] = the target's logit when
// the target lies in [v0, v0 + V), else 0. Summed over ranks they are the whole row's.
void cross_entropy_slice_sums(double* stats, const float* logits, const float* row_max,
                              const int32_t* targets, int64_t N, int64_t V, int64_t v0,
                              Stream stream = {});

// losses (N) = log Σexp + max − the target's logit from the summed stats (0 for ignored targets,
// negative as in cross_entropy.h). With backward, logits (N, V) are overwritten in place by
// grad_scale · (softmax − onehot) restricted to this slice (zero rows for ignored targets).
void cross_entropy_slice_finish(float* losses, float* logits, const float* row_max,
                                const double* stats, const int32_t* targets, int64_t N, int64_t V,
                                int64_t v0, float grad_scale, bool backward, Stream stream = {});

}  // namespace keel::kernels::cpu
