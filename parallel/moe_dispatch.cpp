#include "parallel/moe_dispatch.h"

#include <algorithm>
#include <numeric>

#include "kernels/error.h"

namespace keel::parallel {

int64_t plan_routes(int32_t* dest, int32_t* src, int64_t* counts, const int32_t* sel, int64_t B,
                    int64_t T, int64_t E, int64_t k, int64_t capacity) {
  std::fill_n(counts, E, 0);
  // Which slots each expert keeps: per sequence, the first `capacity` in token order.
  std::vector<int64_t> taken(static_cast<size_t>(E));
  for (int64_t b = 0; b < B; ++b) {
    std::fill(taken.begin(), taken.end(), 0);
    for (int64_t n = b * T; n < (b + 1) * T; ++n) {
      for (int64_t j = 0; j < k; ++j) {
        const int32_t e = sel[n * k + j];
        KEEL_CHECK(e >= 0 && e < E, "token {} chose expert {} of {} (internal error)", n, e, E);
        const bool kept = capacity == 0 || taken[static_cast<size_t>(e)] < capacity;
        dest[n * k + j] = kept ? 0 : -1;
        if (!kept) continue;
        ++taken[static_cast<size_t>(e)];
        ++counts[e];
      }
    }
  }
  // Rows: expert after expert, each expert's in token order.
  std::vector<int64_t> next(static_cast<size_t>(E));
  std::exclusive_scan(counts, counts + E, next.begin(), int64_t{0});
  for (int64_t n = 0; n < B * T; ++n) {
    for (int64_t j = 0; j < k; ++j) {
      int32_t& d = dest[n * k + j];
      if (d < 0) continue;
      d = static_cast<int32_t>(next[static_cast<size_t>(sel[n * k + j])]++);
      src[d] = static_cast<int32_t>(n);
    }
  }
  return std::accumulate(counts, counts + E, int64_t{0});
}

MoeExchange::MoeExchange(Communicator* ep, int64_t experts) : ep_(ep), experts_(experts) {
  KEEL_CHECK(experts % ranks() == 0,
             "{} experts do not split evenly over {} expert-parallel ranks (internal error)",
             experts, ranks());
}

int64_t MoeExchange::exchange_counts(std::span<int64_t> recv_counts,
                                     std::span<const int64_t> counts) {
  KEEL_CHECK(static_cast<int64_t>(counts.size()) == experts_ &&
                 static_cast<int64_t>(recv_counts.size()) == experts_,
             "an expert exchange counts rows per expert, {} of them (internal error)", experts_);
  if (ranks() == 1) {
    std::copy(counts.begin(), counts.end(), recv_counts.begin());
  } else {
    // Chunk r of counts (rank r's experts) goes to rank r; chunk s of recv_counts comes from s.
    ep_->all_to_all(Tensor(recv_counts.data(), DType::I64, {experts_}),
                    Tensor(const_cast<int64_t*>(counts.data()), DType::I64, {experts_}));
    const uint64_t n = static_cast<uint64_t>(experts_) * sizeof(int64_t);
    bytes_ += n * static_cast<uint64_t>(ranks() - 1) / static_cast<uint64_t>(ranks());
  }
  return std::accumulate(recv_counts.begin(), recv_counts.end(), int64_t{0});
}

std::vector<int64_t> MoeExchange::expert_rows(std::span<const int64_t> recv_counts) const {
  const int64_t El = local_experts();
  std::vector<int64_t> rows(static_cast<size_t>(El), 0);
  for (int s = 0; s < ranks(); ++s)
    for (int64_t e = 0; e < El; ++e) rows[static_cast<size_t>(e)] += recv_counts[s * El + e];
  return rows;
}

uint64_t MoeExchange::remote_bytes(const std::vector<int64_t>& elems) const {
  uint64_t out = 0;
  for (int r = 0; r < ranks(); ++r)
    if (r != ep_->rank()) out += static_cast<uint64_t>(elems[static_cast<size_t>(r)]) * 4;
  return out;
}

std::vector<int64_t> MoeExchange::peer_elems(std::span<const int64_t> per_expert,
                                             int64_t width) const {
  const int64_t El = local_experts();
  std::vector<int64_t> out(static_cast<size_t>(ranks()), 0);
  for (int r = 0; r < ranks(); ++r)
    for (int64_t e = 0; e < El; ++e) out[static_cast<size_t>(r)] += per_expert[r * El + e] * width;
  return out;
}

void MoeExchange::regroup(float* out, const float* in, std::span<const int64_t> recv_counts,
                          int64_t width, bool to_expert_major) const {
  const int64_t El = local_experts();
  const int P = ranks();
  // Row offset of (rank s, expert e) in the source-major and in the expert-major layout.
  std::vector<int64_t> source_at(static_cast<size_t>(P * El)), expert_at(source_at.size());
  std::exclusive_scan(recv_counts.begin(), recv_counts.end(), source_at.begin(), int64_t{0});
  int64_t at = 0;
  for (int64_t e = 0; e < El; ++e)
    for (int s = 0; s < P; ++s) {
      expert_at[static_cast<size_t>(s * El + e)] = at;
      at += recv_counts[s * El + e];
    }
  for (size_t i = 0; i < source_at.size(); ++i) {
    const int64_t from = (to_expert_major ? source_at[i] : expert_at[i]) * width;
    const int64_t to = (to_expert_major ? expert_at[i] : source_at[i]) * width;
    std::copy_n(in + from, recv_counts[i] * width, out + to);
  }
}

void MoeExchange::dispatch(float* out, const float* send, std::span<const int64_t> counts,
                           std::span<const int64_t> recv_counts, int64_t width, float* staging) {
  const int64_t rows = std::accumulate(recv_counts.begin(), recv_counts.end(), int64_t{0});
  if (ranks() == 1) {
    if (out != send) std::copy_n(send, rows * width, out);
    return;
  }
  const std::vector<int64_t> sent = peer_elems(counts, width),
                             arriving = peer_elems(recv_counts, width);
  const int64_t total = std::accumulate(sent.begin(), sent.end(), int64_t{0});
  ep_->all_to_all_v(Tensor(staging, DType::F32, {rows * width}), arriving,
                    Tensor(const_cast<float*>(send), DType::F32, {total}), sent);
  bytes_ += remote_bytes(sent);
  regroup(out, staging, recv_counts, width, /*to_expert_major=*/true);
}

void MoeExchange::give_back(float* send, const float* in, std::span<const int64_t> counts,
                            std::span<const int64_t> recv_counts, int64_t width, float* staging) {
  const int64_t rows = std::accumulate(recv_counts.begin(), recv_counts.end(), int64_t{0});
  if (ranks() == 1) {
    if (send != in) std::copy_n(in, rows * width, send);
    return;
  }
  regroup(staging, in, recv_counts, width, /*to_expert_major=*/false);
  const std::vector<int64_t> sent = peer_elems(counts, width),
                             arriving = peer_elems(recv_counts, width);
  const int64_t total = std::accumulate(sent.begin(), sent.end(), int64_t{0});
  ep_->all_to_all_v(Tensor(send, DType::F32, {total}), sent,
                    Tensor(staging, DType::F32, {rows * width}), arriving);
  bytes_ += remote_bytes(arriving);
}

}  // namespace keel::parallel
