// Every blocking collective of MpiCommunicator against its definition, on 1, 7 and 1000003
// elements of rank-dependent data, with the byte counters held against the formulas of
// docs/PARALLEL.md written out again here. Runs under mpirun -np 2 and -np 4.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "mpi_test_env.h"

namespace keel::parallel::testing {
namespace {

using Counter = OpCounter;

// The formulas, spelled out independently of the library's helpers.
uint64_t ring_all_reduce(uint64_t n, int ranks) { return 2 * n * (ranks - 1) / ranks; }
uint64_t ring_chunked(uint64_t full, int ranks) { return full * (ranks - 1) / ranks; }

std::vector<float> rank_data(int rank, int64_t n) {
  std::vector<float> x(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) x[static_cast<size_t>(i)] = value(rank, i);
  return x;
}

TEST(MpiCollectivesTest, AllReduceSumsF32) {
  MpiCommunicator& c = world();
  const int n_ranks = c.size();
  for (int64_t n : kSizes) {
    SCOPED_TRACE(n);
    std::vector<float> x = rank_data(c.rank(), n), want(static_cast<size_t>(n), 0.0f);
    for (int k = 0; k < n_ranks; ++k)
      for (int64_t i = 0; i < n; ++i) want[static_cast<size_t>(i)] += value(k, i);
    c.reset_stats();
    c.all_reduce(host_view(x));
    EXPECT_EQ(first_mismatch(x, want), "");
    EXPECT_EQ(c.stats()[CommOp::kAllReduce], (Counter{1, ring_all_reduce(4 * n, n_ranks)}));
    EXPECT_EQ(c.stats().total_calls(), 1u);
  }
}

TEST(MpiCollectivesTest, AllReduceMaxF32) {
  MpiCommunicator& c = world();
  for (int64_t n : kSizes) {
    std::vector<float> x = rank_data(c.rank(), n), want(static_cast<size_t>(n), -1e30f);
    for (int k = 0; k < c.size(); ++k)
      for (int64_t i = 0; i < n; ++i)
        want[static_cast<size_t>(i)] = std::max(want[static_cast<size_t>(i)], value(k, i));
    c.all_reduce(host_view(x), ReduceOp::kMax);
    EXPECT_EQ(first_mismatch(x, want), "") << n;
  }
}

TEST(MpiCollectivesTest, AllReduceOtherDtypes) {
  MpiCommunicator& c = world();
  const int r = c.rank(), n_ranks = c.size();
  std::vector<double> d = {0.5 * r, 1e-300, -3.25};
  std::vector<int32_t> i32 = {r, -7 * r, 1 << 20};
  std::vector<int64_t> i64 = {(int64_t{1} << 40) + r, -r};
  c.all_reduce(host_view(d));
  c.all_reduce(host_view(i32));
  c.all_reduce(host_view(i64));
  const int tri = n_ranks * (n_ranks - 1) / 2;
  EXPECT_EQ(d, (std::vector<double>{0.5 * tri, 1e-300 * n_ranks, -3.25 * n_ranks}));
  EXPECT_EQ(i32, (std::vector<int32_t>{tri, -7 * tri, n_ranks << 20}));
  EXPECT_EQ(i64, (std::vector<int64_t>{(int64_t{1} << 40) * n_ranks + tri, -tri}));
  std::vector<int64_t> m = {r, -r};
  c.all_reduce(host_view(m), ReduceOp::kMax);
  EXPECT_EQ(m, (std::vector<int64_t>{n_ranks - 1, 0}));
}

TEST(MpiCollectivesTest, AllReduceBf16IsExactOnSmallIntegers) {
  MpiCommunicator& c = world();
  for (int64_t n : kSizes) {
    std::vector<uint16_t> x(static_cast<size_t>(n)), want(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      float s = 0.0f;
      for (int k = 0; k < c.size(); ++k) s += value(k, i);
      x[static_cast<size_t>(i)] = f32_to_bf16(value(c.rank(), i));
      want[static_cast<size_t>(i)] = f32_to_bf16(s);
    }
    c.reset_stats();
    c.all_reduce(host_view_bf16(x));
    EXPECT_EQ(first_mismatch(x, want), "") << n;
    EXPECT_EQ(c.stats()[CommOp::kAllReduce], (Counter{1, ring_all_reduce(2 * n, c.size())}));
    std::vector<uint16_t> mx(static_cast<size_t>(n)), mx_want(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      float best = -1e30f;
      for (int k = 0; k < c.size(); ++k) best = std::max(best, value(k, i) * 0.5f);
      mx[static_cast<size_t>(i)] = f32_to_bf16(value(c.rank(), i) * 0.5f);
      mx_want[static_cast<size_t>(i)] = f32_to_bf16(best);
    }
    c.all_reduce(host_view_bf16(mx), ReduceOp::kMax);
    EXPECT_EQ(first_mismatch(mx, mx_want), "") << n;
  }
}

// Values that need rounding: each pairwise step adds in fp32 and rounds to bf16 once. On two ranks
// that is one rounding of the exact sum; on more, each of the N−1 roundings is at most half an ulp
// (2^-9 relative) of a partial sum no larger than Σ|x|.
TEST(MpiCollectivesTest, AllReduceBf16AddsInFp32AndRoundsEachStep) {
  MpiCommunicator& c = world();
  const int64_t n = 100003;
  // Built from integers and a power-of-two scale, so every site that computes it gets the same
  // float (no contraction into FMAs can change it).
  auto input = [](int rank, int64_t i) {
    const int64_t k = static_cast<int64_t>(value(rank, i)) * 1000 + (i % 997) * 7 + rank * 3;
    return f32_to_bf16(static_cast<float>(k) / 64.0f);
  };
  std::vector<uint16_t> x(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) x[static_cast<size_t>(i)] = input(c.rank(), i);
  c.all_reduce(host_view_bf16(x));
  int64_t bad = 0, rounded = 0;
  for (int64_t i = 0; i < n; ++i) {
    double exact = 0.0, magnitude = 0.0;
    for (int k = 0; k < c.size(); ++k) {
      exact += bf16_to_f32(input(k, i));
      magnitude += std::fabs(bf16_to_f32(input(k, i)));
    }
    const float got = bf16_to_f32(x[static_cast<size_t>(i)]);
    if (c.size() == 2) {
      const uint16_t want = f32_to_bf16(bf16_to_f32(input(0, i)) + bf16_to_f32(input(1, i)));
      bad += x[static_cast<size_t>(i)] != want;
    } else {
      bad += std::fabs(got - exact) > (c.size() - 1) * std::ldexp(magnitude, -9);
    }
    rounded += static_cast<double>(got) != exact;
  }
  EXPECT_EQ(bad, 0);
  EXPECT_GT(rounded, n / 4);  // the data really does exercise the rounding
}

TEST(MpiCollectivesTest, ReduceScatterSumsEachRanksChunk) {
  MpiCommunicator& c = world();
  const int r = c.rank(), n_ranks = c.size();
  for (int64_t m : kSizes) {
    SCOPED_TRACE(m);
    const int64_t full = m * n_ranks;
    std::vector<float> want(static_cast<size_t>(m), 0.0f);
    for (int k = 0; k < n_ranks; ++k)
      for (int64_t i = 0; i < m; ++i) want[static_cast<size_t>(i)] += value(k, r * m + i);

    std::vector<float> in = rank_data(r, full), out(static_cast<size_t>(m), -1.0f);
    c.reset_stats();
    c.reduce_scatter(host_view(out), host_view(in));
    EXPECT_EQ(first_mismatch(out, want), "");
    EXPECT_EQ(in, rank_data(r, full));  // out of place: the input is untouched
    EXPECT_EQ(c.stats()[CommOp::kReduceScatter], (Counter{1, ring_chunked(4 * full, n_ranks)}));

    // In place: the shard is this rank's chunk of the full buffer (ZeRO's layout).
    float* chunk = in.data() + r * m;
    c.reduce_scatter(host_view(chunk, static_cast<size_t>(m)), host_view(in));
    EXPECT_EQ(first_mismatch(std::vector<float>(chunk, chunk + m), want), "");
  }
}

TEST(MpiCollectivesTest, ReduceScatterMaxAndBf16) {
  MpiCommunicator& c = world();
  const int r = c.rank(), n_ranks = c.size();
  const int64_t m = 7, full = m * n_ranks;
  std::vector<float> in = rank_data(r, full), out(m);
  std::vector<uint16_t> in16(static_cast<size_t>(full)), out16(m), want16(m);
  for (int64_t j = 0; j < full; ++j) in16[static_cast<size_t>(j)] = f32_to_bf16(value(r, j));
  std::vector<float> want(m, -1e30f);
  for (int64_t i = 0; i < m; ++i) {
    float s = 0.0f;
    for (int k = 0; k < n_ranks; ++k) {
      want[static_cast<size_t>(i)] = std::max(want[static_cast<size_t>(i)], value(k, r * m + i));
      s += value(k, r * m + i);
    }
    want16[static_cast<size_t>(i)] = f32_to_bf16(s);
  }
  c.reduce_scatter(host_view(out), host_view(in), ReduceOp::kMax);
  c.reduce_scatter(host_view_bf16(out16), host_view_bf16(in16));
  EXPECT_EQ(first_mismatch(out, want), "");
  EXPECT_EQ(first_mismatch(out16, want16), "");
}

TEST(MpiCollectivesTest, AllGatherConcatenatesByRank) {
  MpiCommunicator& c = world();
  const int r = c.rank(), n_ranks = c.size();
  for (int64_t m : kSizes) {
    SCOPED_TRACE(m);
    std::vector<float> want(static_cast<size_t>(m * n_ranks));
    for (int k = 0; k < n_ranks; ++k)
      for (int64_t i = 0; i < m; ++i) want[static_cast<size_t>(k * m + i)] = value(k, i);

    std::vector<float> in = rank_data(r, m), out(static_cast<size_t>(m * n_ranks), -1.0f);
    c.reset_stats();
    c.all_gather(host_view(out), host_view(in));
    EXPECT_EQ(first_mismatch(out, want), "");
    EXPECT_EQ(c.stats()[CommOp::kAllGather],
              (Counter{1, ring_chunked(4 * static_cast<uint64_t>(m * n_ranks), n_ranks)}));

    // In place: this rank's shard already sits in its chunk of the output.
    std::vector<float> full(static_cast<size_t>(m * n_ranks), -1.0f);
    std::copy(in.begin(), in.end(), full.begin() + r * m);
    c.all_gather(host_view(full), host_view(full.data() + r * m, static_cast<size_t>(m)));
    EXPECT_EQ(first_mismatch(full, want), "");
  }
}

TEST(MpiCollectivesTest, BroadcastFromEveryRoot) {
  MpiCommunicator& c = world();
  for (int root = 0; root < c.size(); ++root) {
    for (int64_t n : kSizes) {
      std::vector<float> x = rank_data(c.rank(), n);
      c.reset_stats();
      c.broadcast(host_view(x), root);
      EXPECT_EQ(first_mismatch(x, rank_data(root, n)), "") << "root " << root << " n " << n;
      EXPECT_EQ(c.stats()[CommOp::kBroadcast], (Counter{1, 4 * static_cast<uint64_t>(n)}));
    }
    std::vector<std::byte> bytes(13);
    for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = std::byte(c.rank() * 31 + i);
    c.broadcast(host_view(bytes), root);
    for (size_t i = 0; i < bytes.size(); ++i) EXPECT_EQ(bytes[i], std::byte(root * 31 + i)) << i;
  }
}

TEST(MpiCollectivesTest, SendRecvBetweenPartners) {
  MpiCommunicator& c = world();
  const int r = c.rank(), partner = r ^ 1;  // 0↔1, 2↔3
  ASSERT_LT(partner, c.size());
  for (int64_t n : kSizes) {
    std::vector<float> mine = rank_data(r, n), got(static_cast<size_t>(n), 0.0f);
    c.reset_stats();
    if (r < partner) {
      c.send(host_view(mine), partner, 5);
      c.recv(host_view(got), partner, 5);
    } else {
      c.recv(host_view(got), partner, 5);
      c.send(host_view(mine), partner, 5);
    }
    EXPECT_EQ(first_mismatch(got, rank_data(partner, n)), "") << n;
    EXPECT_EQ(c.stats()[CommOp::kSend], (Counter{1, 4 * static_cast<uint64_t>(n)}));
    EXPECT_EQ(c.stats()[CommOp::kRecv], (Counter{1, 4 * static_cast<uint64_t>(n)}));
  }
}

TEST(MpiCollectivesTest, TagsMatchSendsToReceivesOutOfOrder) {
  MpiCommunicator& c = world();
  const int r = c.rank(), partner = r ^ 1;
  const int64_t n = 1000003;
  std::vector<float> a = rank_data(r, n), b = rank_data(r + 10, 7);
  std::vector<float> got_a(static_cast<size_t>(n)), got_b(7);
  Work sa = c.send_async(host_view(a), partner, 1);
  Work sb = c.send_async(host_view(b), partner, 2);
  c.recv(host_view(got_b), partner, 2);  // the second message first
  c.recv(host_view(got_a), partner, 1);
  sa.wait();
  sb.wait();
  EXPECT_EQ(first_mismatch(got_a, rank_data(partner, n)), "");
  EXPECT_EQ(first_mismatch(got_b, rank_data(partner + 10, 7)), "");
}

TEST(MpiCollectivesTest, AllToAllExchangesChunks) {
  MpiCommunicator& c = world();
  const int r = c.rank(), n_ranks = c.size();
  for (int64_t m : kSizes) {
    const int64_t full = m * n_ranks;
    std::vector<float> in = rank_data(r, full), out(static_cast<size_t>(full), -1.0f);
    std::vector<float> want(static_cast<size_t>(full));
    for (int j = 0; j < n_ranks; ++j)
      for (int64_t i = 0; i < m; ++i) want[static_cast<size_t>(j * m + i)] = value(j, r * m + i);
    c.reset_stats();
    c.all_to_all(host_view(out), host_view(in));
    EXPECT_EQ(first_mismatch(out, want), "") << m;
    EXPECT_EQ(c.stats()[CommOp::kAllToAll],
              (Counter{1, ring_chunked(4 * static_cast<uint64_t>(full), n_ranks)}));
  }
}

// How many elements rank `from` sends rank `to` in the all_to_all_v tests: uneven, some zero.
int64_t a2a_count(int from, int to, int64_t base) { return ((from * 3 + to * 5) % 4) * base; }
// The k-th element of that block.
float a2a_value(int from, int to, int64_t k) { return value(from * 16 + to, k); }

TEST(MpiCollectivesTest, AllToAllVMovesUnevenBlocks) {
  MpiCommunicator& c = world();
  const int r = c.rank(), n_ranks = c.size();
  for (int64_t base : {int64_t{1}, int64_t{7}, int64_t{250001}}) {
    std::vector<int64_t> send_counts(n_ranks), recv_counts(n_ranks);
    std::vector<float> in, want;
    uint64_t leaving = 0;
    for (int j = 0; j < n_ranks; ++j) {
      send_counts[j] = a2a_count(r, j, base);
      recv_counts[j] = a2a_count(j, r, base);
      for (int64_t k = 0; k < send_counts[j]; ++k) in.push_back(a2a_value(r, j, k));
      for (int64_t k = 0; k < recv_counts[j]; ++k) want.push_back(a2a_value(j, r, k));
      if (j != r) leaving += 4 * static_cast<uint64_t>(send_counts[j]);
    }
    in.push_back(99.0f);  // spare room at the ends is allowed and left alone
    std::vector<float> out(want.size() + 2, -5.0f);
    c.reset_stats();
    c.all_to_all_v(host_view(out), recv_counts, host_view(in), send_counts);
    EXPECT_EQ(first_mismatch(std::vector<float>(out.begin(), out.end() - 2), want), "") << base;
    EXPECT_EQ(out.back(), -5.0f);
    EXPECT_EQ(c.stats()[CommOp::kAllToAllV], (Counter{1, leaving}));
  }
}

TEST(MpiCollectivesTest, BarrierIsCountedWithoutBytes) {
  MpiCommunicator& c = world();
  c.reset_stats();
  c.barrier();
  c.barrier();
  EXPECT_EQ(c.stats()[CommOp::kBarrier], (Counter{2, 0}));
  EXPECT_EQ(c.stats().total_bytes(), 0u);
}

TEST(MpiCollectivesTest, EmptyBuffersAreFine) {
  MpiCommunicator& c = world();
  std::vector<float> none;
  c.all_reduce(host_view(none));
  c.all_gather(host_view(none), host_view(none));
  c.reduce_scatter(host_view(none), host_view(none));
  c.broadcast(host_view(none), 0);
  SUCCEED();
}

}  // namespace
}  // namespace keel::parallel::testing
