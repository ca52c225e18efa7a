// What one micro-batch moves on the tensor-parallel group, counted from the layout the way the
// communicator's byte counters count each call (parallel/communicator.h): keel plan prints it, and
// the TP tests hold it against the counters of a real run.
#include "parallel/communicator.h"
#include "runtime/model/llama.h"

namespace keel::runtime {

uint64_t LlamaModel::tp_bytes_per_micro_batch() const {
  if (!tp_.split()) return 0;
  const int P = tp_.size;
  auto all_reduce = [&](int64_t floats, int64_t width = 4) {
    return parallel::all_reduce_bytes(static_cast<uint64_t>(floats * width), P);
  };
  const int64_t L = num_layers();  // the stage's
  // An all-reduce of the activations; under sequence parallelism an all-gather or a
  // reduce-scatter of them instead (each half the bytes, in pairs).
  const uint64_t activation = all_reduce(N_ * C_);
  const uint64_t slice = parallel::reduce_scatter_bytes(static_cast<uint64_t>(4 * N_ * C_), P);
  // Each block, forward: the row-parallel o and down outputs summed (SP: the norms' outputs
  // gathered and o's and down's scattered); checkpointing's recompute again up to the MLP's
  // insides (o's sum, or the two gathers and o's scatter). Backward: the column-parallel q/k/v and
  // gate/up input gradients summed (SP: scattered, after the row-parallel GEMMs' output gradients
  // are gathered; and the norm weights' gradients, 2·C floats, summed). A shared key/value head's
  // weight gradient is summed over the group.
  uint64_t block = sp_ ? (checkpointing_ ? 11 : 8) * slice + all_reduce(2 * C_)
                       : (checkpointing_ ? 5 : 4) * activation;
  if (tp_.kv_replicas > 1) block += all_reduce(2 * block_.shape().kv_total * D_ * C_);
  // The first stage: the embedding's sum forward (SP: scattered, and its gradient gathered
  // backward). The last: under SP the final norm's output gathered for the head, the head's
  // input gradient scattered and the final norm's weight gradient summed; per chunk of logits
  // rows, the softmax's row maxima (floats) and sums (two doubles a row), and without SP the
  // head's input gradient summed.
  uint64_t bytes = static_cast<uint64_t>(L) * block;
  if (first_) bytes += sp_ ? 2 * slice : activation;
  if (!last_) return bytes;
  if (sp_) bytes += 2 * slice + all_reduce(C_);
  for (int64_t r0 = 0; r0 < N_; r0 += chunk_rows_) {
    const int64_t rows = std::min(chunk_rows_, N_ - r0);
    bytes += all_reduce(rows) + all_reduce(2 * rows, 8) + (sp_ ? 0 : all_reduce(rows * C_));
  }
  return bytes;
}

}  // namespace keel::runtime
