// Tensor parallelism as Megatron lays it out: what each rank of the TP group holds of a LLaMA
// layer (its query heads, its key/value heads, its slice of the MLP and of the vocabulary), and
// the communication of the conjugate pairs that the block places by hand. The split is pure
// arithmetic (unit-tested without MPI); the mappings are collectives on the TP communicator.
//
// Column-parallel (q/k/v, gate/up): each rank holds whole rows of the weight, so the input is
// replicated and each rank's output is its own columns of the activation; the input's gradient
// is a sum over ranks. Row-parallel (o, down): each rank holds the columns matching its slice of
// the activation, and the output is a sum over ranks. So, around each half of a block:
//   forward  x ─ copy (identity) ─ column GEMM ─ … ─ row GEMM ─ reduce (all-reduce) ─ out
//   backward dx ─ reduce (all-reduce) ─ … ─ … ─ copy's conjugate (identity) ─ dout
// With sequence parallelism the replicated tensors (norms and residual stream) are split along
// the sequence instead: the copy becomes an all-gather and the reduce a reduce-scatter, and their
// backwards the reverse. The rows are cut in contiguous chunks, rank r holding chunk r.
#pragma once

#include <cstdint>
#include <string>

#include "kernels/tensor.h"

namespace keel::parallel {

class Communicator;

// Rows [begin, begin + count) of a dimension split over ranks as evenly as it goes: the first
// (n mod ranks) ranks hold one more. No padding: a rank's rows are all real.
struct Span {
  int64_t begin = 0;
  int64_t count = 0;
  int64_t end() const { return begin + count; }
  bool operator==(const Span&) const = default;
};
Span even_span(int64_t n, int ranks, int rank);

// What TP rank `rank` of `size` holds of a model with these global sizes.
struct TpSplit {
  int size = 1, rank = 0;
  Span heads;     // query heads
  Span kv_heads;  // key/value heads; when size > Hkv, one head shared by kv_replicas ranks
  int kv_replicas = 1;
  Span inter;  // MLP intermediate rows (of gate and of up; columns of down)
  Span vocab;  // rows of the embedding and the output head
  bool split() const { return size > 1; }
};

// The split, or one keel::Error naming the sizes TP cannot serve and the fix: query heads not a
// multiple of size; key/value heads that neither divide into size ranks nor are a divisor of
// size (so each rank's query heads share one kv head); intermediate size not a multiple of size;
// a vocabulary smaller than size.
TpSplit tp_split(int64_t heads, int64_t kv_heads, int64_t intermediate, int64_t vocab, int size,
                 int rank);

// The conjugate mappings on the TP group. A null communicator (or one of one rank) is TP = 1 and
// every call does nothing, so the block calls them unconditionally.
class TpMappings {
 public:
  explicit TpMappings(Communicator* tp = nullptr);
  bool active() const { return tp_ != nullptr; }
  int size() const;
  int rank() const;
  Communicator* comm() const { return tp_; }

  // The row-parallel output's forward and the column-parallel input's backward: the sum over
  // ranks, in place. n floats.
  void reduce(float* x, int64_t n) const;
  void reduce(double* x, int64_t n) const;
  // Max over ranks, in place (the vocabulary-parallel softmax's running max).
  void reduce_max(float* x, int64_t n) const;

  // Sequence parallelism's pair. full holds size() chunks of n floats, chunk r from rank r.
  // all_gather: full ← every rank's `chunk` in its place; chunk may be full's own chunk rank()
  // (gathered in place). reduce_scatter: chunk ← the sum over ranks of their full's chunk rank();
  // chunk may be full's own chunk rank(), and the rest of full is then left undefined. TP = 1:
  // a copy (nothing when the two are the same floats).
  void all_gather(float* full, const float* chunk, int64_t n) const;
  void reduce_scatter(float* chunk, float* full, int64_t n) const;

 private:
  Communicator* tp_;
};

}  // namespace keel::parallel
