// Where a Mixture-of-Experts layer's tokens go: which (token, choice) slots each expert takes
// (capacity per sequence, in token order), their rows in an expert-sorted buffer, and the
// exchange of those rows with the ranks that hold the experts (expert parallelism, all_to_all_v
// over the ep group) and back. Everything here orders rows the same way whatever the layout, so
// an expert sees its tokens in the order one rank holding every expert would.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "parallel/communicator.h"

namespace keel::parallel {

// The routes of N = B·T rows' k choices sel (N, k) among E experts: dest (N, k) is each slot's
// row in the send buffer (experts in order, each expert's slots in token order), -1 for a
// dropped slot; src (≤ N·k) the token of each row; counts (E) the rows sent to each expert.
// capacity: the most slots an expert takes from one sequence of T rows, the earliest tokens
// first (0: no limit, dropless). Returns the rows kept, Σ counts.
int64_t plan_routes(int32_t* dest, int32_t* src, int64_t* counts, const int32_t* sel, int64_t B,
                    int64_t T, int64_t E, int64_t k, int64_t capacity);

// The exchange of expert rows over the expert-parallel group: rank r holds experts
// [r·E/ep, (r+1)·E/ep). A send buffer (rows grouped by expert, as plan_routes lays them out)
// goes out in one all_to_all_v; what arrives is regrouped expert-major (each local expert's rows
// from rank 0, then rank 1, ...), so every expert is one GEMM; return() is the reverse.
// Without expert parallelism (ep null or of one rank) both are copies.
class MoeExchange {
 public:
  MoeExchange(Communicator* ep, int64_t experts);
  int ranks() const { return ep_ ? ep_->size() : 1; }
  int64_t local_experts() const { return experts_ / ranks(); }
  int64_t first_expert() const { return (ep_ ? ep_->rank() : 0) * local_experts(); }

  // Collective: exchanges the counts (E, what this rank sends to each expert) for
  // recv_counts (ep × local experts: what each rank sends to each of this rank's experts).
  // Returns the rows this rank's experts receive.
  int64_t exchange_counts(std::span<int64_t> recv_counts, std::span<const int64_t> counts);
  // Rows per local expert, summed over the ranks, from recv_counts.
  std::vector<int64_t> expert_rows(std::span<const int64_t> recv_counts) const;

  // Collective: the send buffer's rows (width floats each) to their experts' ranks, arriving in
  // out expert-major; staging holds as many rows as arrive.
  void dispatch(float* out, const float* send, std::span<const int64_t> counts,
                std::span<const int64_t> recv_counts, int64_t width, float* staging);
  // Collective: the reverse, expert-major rows back to the ranks that sent them, into the send
  // buffer's order.
  void give_back(float* send, const float* in, std::span<const int64_t> counts,
                 std::span<const int64_t> recv_counts, int64_t width, float* staging);

  // Bytes this rank has sent to the other ranks so far, as the routing says (what the ep
  // communicator's counters should count: all_to_all's and all_to_all_v's formulas).
  uint64_t bytes_sent() const { return bytes_; }

 private:
  // Σ over the other ranks of elems (their row counts times the width), in bytes.
  uint64_t remote_bytes(const std::vector<int64_t>& elems) const;
  // Row counts per peer (what goes to or comes from each rank), times width.
  std::vector<int64_t> peer_elems(std::span<const int64_t> per_expert, int64_t width) const;
  // Source-major (each rank's rows for each local expert) ↔ expert-major, through rows.
  void regroup(float* out, const float* in, std::span<const int64_t> recv_counts, int64_t width,
               bool to_expert_major) const;

  Communicator* ep_;
  int64_t experts_;
  uint64_t bytes_ = 0;
};

}  // namespace keel::parallel
