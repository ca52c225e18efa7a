// GaLore's per-tensor layout and workspace slots (optim/galore.h), shared by the files that step
// (galore.cpp) and refresh (galore_refresh.cpp) the projectors; not part of GaLore's interface.
#pragma once

#include <algorithm>
#include <cstdint>

#include "kernels/memory_plan.h"
#include "optim/galore_config.h"
#include "parallel/zero_layout.h"

namespace keel::optim {

namespace detail {

// A targeted matrix seen from the side S that every rank of its group holds whole and the side L
// split across them (ZeRO splits the longer side, tensor parallelism the side of its own split;
// a whole matrix counts as split along its longer side). This rank holds Lk split-side vectors
// (padding included) of all S whole-side positions: rows_split, the tensor is (Lk × S) with
// rect.ld == S; else (S × Lk) with rect.ld == Lk. The Gram matrix is always the whole side's
// (S × S, summed over the group); the split side's vectors follow from it.
struct GaloreLayout {
  bool on = false;
  bool rows_split = true;
  bool whole_side = true;   // the projected side is the whole one (S)
  bool whole_short = true;  // S is the short side (whose vectors sign each singular pair)
  int64_t S = 0, L = 0, Lk = 0, r = 0;
  // Split side projected: R is (r × S) when the rows are split, else (S × r), and each rank of
  // the group keeps `block` of its S positions (columns, or rows): chunk = r · block floats.
  int64_t block = 0, chunk = 0;
  int64_t inner = 0;  // elements of R the inner optimizer steps on this rank
  // R and the projector as checkpoints see them: global shapes and the parts held here. R is the
  // projected matrix, r × cols when the rows are projected and rows × r when the columns are,
  // whatever the layout: sliced as the matrix is when the whole side is projected, else in
  // blocks of S positions; the projector is V (r × S, whole on every rank) or Uᵀ (r × L, this
  // rank's columns).
  int64_t r_rows = 0, r_cols = 0, p_rows = 0, p_cols = 0;
  parallel::ShardRect r_rect, p_rect;
  MemoryPlan::Slot projector = 0;  // whole side: V (r × S); split: this rank's U rows (r × Lk)
};

struct GaloreSlots {
  MemoryPlan::Slot grad = 0, delta = 0;  // R and the inner optimizer's update of it
  MemoryPlan::Slot staging = 0;          // long side: R's partial sums, the gathered update
  MemoryPlan::Slot gram = 0, gram_scratch = 0, eig = 0, eig_int = 0, values = 0, basis = 0;
  MemoryPlan::Slot sketch = 0, qr = 0, small = 0, small_f = 0, small_vectors = 0;
  MemoryPlan::Slot sketch_f = 0, product = 0, basis_f = 0;
  MemoryPlan::Slot split_vectors = 0, signs = 0;  // the split short side's vectors, their signs
};

}  // namespace detail

namespace galore {

using detail::GaloreLayout;
using detail::GaloreSlots;

// The whole side's positions in rank b's block of R (the last blocks may be short or empty).
inline int64_t block_width(const GaloreLayout& l, int64_t b) {
  return std::clamp<int64_t>(l.S - b * l.block, 0, l.block);
}

// Vectors of the randomized projector's sketch: r + oversample, at most the whole side.
inline int64_t sketch_size(const GaloreLayout& l, const GaloreConfig& g) {
  return std::min(l.r + g.oversample, l.S);
}

inline void to_float(float* out, const double* in, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(in[i]);
}
inline void to_double(double* out, const float* in, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = in[i];
}

}  // namespace galore
}  // namespace keel::optim
