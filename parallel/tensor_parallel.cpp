#include "parallel/tensor_parallel.h"

#include <algorithm>
#include <cstring>

#include "kernels/error.h"
#include "parallel/communicator.h"

namespace keel::parallel {

Span even_span(int64_t n, int ranks, int rank) {
  KEEL_CHECK(ranks > 0 && rank >= 0 && rank < ranks, "rank {} of {} ranks", rank, ranks);
  const int64_t base = n / ranks, extra = n % ranks;
  return {rank * base + std::min<int64_t>(rank, extra), base + (rank < extra ? 1 : 0)};
}

TpSplit tp_split(int64_t heads, int64_t kv_heads, int64_t intermediate, int64_t vocab, int size,
                 int rank) {
  const std::string fix = " (set parallel.tensor_model_parallel_size to a divisor of it)";
  KEEL_CHECK(heads % size == 0,
             "tensor parallelism over {} ranks splits the query heads: model.num_attention_heads "
             "{} is not a multiple of {}{}",
             size, heads, size, fix);
  KEEL_CHECK(kv_heads % size == 0 || size % kv_heads == 0,
             "tensor parallelism over {} ranks splits or shares the key/value heads: "
             "model.num_key_value_heads {} neither is a multiple of {} nor divides it (set "
             "parallel.tensor_model_parallel_size to a divisor or a multiple of it)",
             size, kv_heads, size);
  KEEL_CHECK(intermediate % size == 0,
             "tensor parallelism over {} ranks splits the MLP: model.intermediate_size {} is not a "
             "multiple of {}{}",
             size, intermediate, size, fix);
  KEEL_CHECK(vocab >= size,
             "tensor parallelism over {} ranks splits the vocabulary: model.vocab_size {} is "
             "smaller than that",
             size, vocab);
  TpSplit s;
  s.size = size, s.rank = rank;
  s.heads = even_span(heads, size, rank);
  if (kv_heads % size == 0) {
    s.kv_heads = even_span(kv_heads, size, rank);
  } else {  // each kv head serves the query heads of size / kv_heads consecutive ranks
    s.kv_replicas = static_cast<int>(size / kv_heads);
    s.kv_heads = {rank / s.kv_replicas, 1};
  }
  s.inter = even_span(intermediate, size, rank);
  s.vocab = even_span(vocab, size, rank);
  return s;
}

TpMappings::TpMappings(Communicator* tp) : tp_(tp && tp->size() > 1 ? tp : nullptr) {}

int TpMappings::size() const { return tp_ ? tp_->size() : 1; }
int TpMappings::rank() const { return tp_ ? tp_->rank() : 0; }

void TpMappings::reduce(float* x, int64_t n) const {
  if (tp_) tp_->all_reduce(Tensor(x, DType::F32, {n}), ReduceOp::kSum);
}

void TpMappings::reduce(double* x, int64_t n) const {
  if (tp_) tp_->all_reduce(Tensor(x, DType::F64, {n}), ReduceOp::kSum);
}

void TpMappings::reduce_max(float* x, int64_t n) const {
  if (tp_) tp_->all_reduce(Tensor(x, DType::F32, {n}), ReduceOp::kMax);
}

void TpMappings::all_gather(float* full, const float* chunk, int64_t n) const {
  if (!tp_) {
    if (full != chunk) std::memmove(full, chunk, static_cast<size_t>(n) * sizeof(float));
    return;
  }
  // The communicator reads `chunk` only; its Tensor view is not const.
  tp_->all_gather(Tensor(full, DType::F32, {n * size()}),
                  Tensor(const_cast<float*>(chunk), DType::F32, {n}));
}

void TpMappings::reduce_scatter(float* chunk, float* full, int64_t n) const {
  if (!tp_) {
    if (full != chunk) std::memmove(chunk, full, static_cast<size_t>(n) * sizeof(float));
    return;
  }
  tp_->reduce_scatter(Tensor(chunk, DType::F32, {n}), Tensor(full, DType::F32, {n * size()}),
                      ReduceOp::kSum);
}

}  // namespace keel::parallel
