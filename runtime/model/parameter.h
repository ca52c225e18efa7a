// A trainable parameter as every layer of keel sees it: its Hugging Face name, its global shape,
// which slice of it this rank holds, and views of that slice's value and gradient. Today every
// rank holds the whole tensor; ZeRO and tensor parallelism fill in the shard spec.
#pragma once

#include <string>
#include <vector>

#include "kernels/tensor.h"

namespace keel::runtime {

// Which part of the global tensor the local value holds: rows (dim 0) or columns (dim 1)
// [begin, end) of it, or the whole tensor when dim < 0. Tensor parallelism's split; ZeRO's shard
// of the local value is a rectangle inside it, and the two compose (runtime/train/memory_report.h).
struct ShardSpec {
  int dim = -1;
  int64_t begin = 0;
  int64_t end = 0;
  bool whole() const { return dim < 0; }
  // Where the local value's element (0, 0) sits in the global tensor.
  int64_t row0() const { return dim == 0 ? begin : 0; }
  int64_t col0() const { return dim == 1 ? begin : 0; }
};

struct Parameter {
  std::string name;  // Hugging Face name, e.g. "model.layers.0.self_attn.q_proj.weight"
  Shape global_shape;
  ShardSpec shard;
  bool weight_decay = true;  // false for norm weights (Hugging Face Trainer's rule)
  // Whether this rank counts the tensor in sums over the TP group (the gradient norm): true for
  // a TP split's own slice; of the ranks holding the same values (norms everywhere, a key/value
  // head shared by several ranks) only the first.
  bool tp_counted = true;
  // The last pipeline stage's copy of the embedding its head is tied to (the first stage holds
  // the tensor): stepped with the same summed gradient to the same values, but not counted in
  // the gradient norm, nor saved, nor exported: the first stage's is.
  bool tied_copy = false;
  // One of an MoE layer's experts: held by the expert-parallel rank its index falls to, shared
  // (and its gradient summed) only with the expert-data-parallel group; whole in the model's
  // parameter count only over the expert-parallel group.
  bool expert = false;
  Tensor value;  // fp32, the local slice
  Tensor grad;   // fp32, same shape as value; accumulates across micro-batches
};

// Fills `value` with N(0, std²) from a counter-based generator keyed by (seed, name, global
// element index): the same element gets the same number whatever the sharding.
void init_normal(Parameter& p, uint64_t seed, double std);
// Fills `value` with a constant.
void init_constant(Parameter& p, float v);

}  // namespace keel::runtime
