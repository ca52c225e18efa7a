// What one micro-batch moves on the tensor-parallel group, counted from the layout the way the
// communicator's byte counters count each call (parallel/communicator.h): keel plan prints it, and
// the TP tests hold it against the counters of a real run.
#include "parallel/communicator.h"
#include "runtime/llama.h"

namespace keel::runtime {

uint64_t LlamaModel::tp_bytes_per_micro_batch() const {
  if (!tp_.split()) return 0;
  const int P = tp_.size;
  auto all_reduce = [&](int64_t floats, int64_t width = 4) {
    return parallel::all_reduce_bytes(static_cast<uint64_t>(floats * width), P);
  };
  const int64_t L = config_.num_hidden_layers;
  const uint64_t activation = all_reduce(N_ * C_);
  // Each block: the row-parallel o and down outputs forward (checkpointing's recompute sums o's
  // again; it needs the MLP's insides, not its output), the column-parallel q/k/v and gate/up
  // input gradients backward, and a shared key/value head's weight gradient.
  uint64_t block = (checkpointing_ ? 3 : 2) * activation + 2 * activation;
  if (tp_.kv_replicas > 1) block += all_reduce(2 * block_.shape().kv_total * D_ * C_);
  // The embedding's sum forward; per chunk of logits rows, the softmax's row maxima (floats) and
  // sums (two doubles a row), and the head's input gradient.
  uint64_t bytes = activation + static_cast<uint64_t>(L) * block;
  for (int64_t r0 = 0; r0 < N_; r0 += chunk_rows_) {
    const int64_t rows = std::min(chunk_rows_, N_ - r0);
    bytes += all_reduce(rows) + all_reduce(2 * rows, 8) + all_reduce(rows * C_);
  }
  return bytes;
}

}  // namespace keel::runtime
