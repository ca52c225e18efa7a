// The asynchronous variants: many operations in flight at once and completed in any order, test()
// polling, handles that are moved or dropped, the in-place reduce_scatter's deferred copy, and
// the limit on operations in flight.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "mpi_test_env.h"

namespace keel::parallel::testing {
namespace {

std::vector<float> rank_data(int rank, int64_t n, int salt = 0) {
  std::vector<float> x(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) x[static_cast<size_t>(i)] = value(rank + salt, i);
  return x;
}

std::vector<float> summed(int ranks, int64_t n, int salt = 0) {
  std::vector<float> s(static_cast<size_t>(n), 0.0f);
  for (int k = 0; k < ranks; ++k)
    for (int64_t i = 0; i < n; ++i) s[static_cast<size_t>(i)] += value(k + salt, i);
  return s;
}

TEST(MpiAsyncTest, EveryOpInFlightAtOnceCompletedInReverseOrder) {
  MpiCommunicator& c = world();
  const int r = c.rank(), n_ranks = c.size();
  const int64_t big = 1000003, m = 1000003;
  std::vector<float> ar1 = rank_data(r, 1, 1), ar7 = rank_data(r, 7, 2), arb = rank_data(r, big);
  std::vector<float> rs_in = rank_data(r, m * n_ranks, 3), rs_out(m);
  std::vector<float> ag_in = rank_data(r, m, 4), ag_out(static_cast<size_t>(m * n_ranks));
  std::vector<float> bc = rank_data(r, 7, 5);
  std::vector<float> a2a_in = rank_data(r, 3 * n_ranks, 6), a2a_out(3 * n_ranks);
  std::vector<int64_t> counts(n_ranks, 2);
  std::vector<float> a2av_in = rank_data(r, 2 * n_ranks, 7), a2av_out(2 * n_ranks);

  c.reset_stats();
  std::vector<Work> work;
  work.push_back(c.all_reduce_async(host_view(ar1)));
  work.push_back(c.all_reduce_async(host_view(ar7)));
  work.push_back(c.all_reduce_async(host_view(arb)));
  work.push_back(c.reduce_scatter_async(host_view(rs_out), host_view(rs_in)));
  work.push_back(c.all_gather_async(host_view(ag_out), host_view(ag_in)));
  work.push_back(c.broadcast_async(host_view(bc), n_ranks - 1));
  work.push_back(c.all_to_all_async(host_view(a2a_out), host_view(a2a_in)));
  work.push_back(c.all_to_all_v_async(host_view(a2av_out), counts, host_view(a2av_in), counts));
  for (const Work& w : work) EXPECT_TRUE(w.pending());
  for (auto it = work.rbegin(); it != work.rend(); ++it) it->wait();
  for (const Work& w : work) EXPECT_FALSE(w.pending());

  EXPECT_EQ(first_mismatch(ar1, summed(n_ranks, 1, 1)), "");
  EXPECT_EQ(first_mismatch(ar7, summed(n_ranks, 7, 2)), "");
  EXPECT_EQ(first_mismatch(arb, summed(n_ranks, big)), "");
  std::vector<float> rs_want(static_cast<size_t>(m), 0.0f);
  for (int k = 0; k < n_ranks; ++k)
    for (int64_t i = 0; i < m; ++i) rs_want[static_cast<size_t>(i)] += value(k + 3, r * m + i);
  EXPECT_EQ(first_mismatch(rs_out, rs_want), "");
  std::vector<float> ag_want;
  for (int k = 0; k < n_ranks; ++k) {
    const auto part = rank_data(k, m, 4);
    ag_want.insert(ag_want.end(), part.begin(), part.end());
  }
  EXPECT_EQ(first_mismatch(ag_out, ag_want), "");
  EXPECT_EQ(first_mismatch(bc, rank_data(n_ranks - 1, 7, 5)), "");
  for (int j = 0; j < n_ranks; ++j)
    for (int i = 0; i < 3; ++i)
      EXPECT_EQ(a2a_out[static_cast<size_t>(3 * j + i)], value(j + 6, 3 * r + i));
  for (int j = 0; j < n_ranks; ++j)
    for (int i = 0; i < 2; ++i)
      EXPECT_EQ(a2av_out[static_cast<size_t>(2 * j + i)], value(j + 7, 2 * r + i));

  // Asynchronous calls count like blocking ones, when issued.
  EXPECT_EQ(c.stats()[CommOp::kAllReduce].calls, 3u);
  EXPECT_EQ(c.stats()[CommOp::kAllReduce].bytes, all_reduce_bytes(4, n_ranks) +
                                                     all_reduce_bytes(28, n_ranks) +
                                                     all_reduce_bytes(4 * big, n_ranks));
  EXPECT_EQ(c.stats()[CommOp::kReduceScatter].bytes,
            reduce_scatter_bytes(4 * static_cast<uint64_t>(m * n_ranks), n_ranks));
  EXPECT_EQ(c.stats().total_calls(), 8u);
}

TEST(MpiAsyncTest, TestPollsUntilDone) {
  MpiCommunicator& c = world();
  const int64_t n = 1000003;
  std::vector<float> x = rank_data(c.rank(), n);
  Work w = c.all_reduce_async(host_view(x));
  long polls = 0;
  while (!w.test()) ++polls;
  EXPECT_FALSE(w.pending());
  EXPECT_TRUE(w.test());
  w.wait();  // free once complete
  EXPECT_EQ(first_mismatch(x, summed(c.size(), n)), "");
  RecordProperty("polls", std::to_string(polls));
}

TEST(MpiAsyncTest, DroppedAndMovedHandlesStillComplete) {
  MpiCommunicator& c = world();
  std::vector<float> a = rank_data(c.rank(), 1000), b = rank_data(c.rank(), 7);
  { Work dropped = c.all_reduce_async(host_view(a)); }  // the destructor waits
  EXPECT_EQ(first_mismatch(a, summed(c.size(), 1000)), "");

  std::vector<float> d = rank_data(c.rank(), 5, 1);
  Work first = c.all_reduce_async(host_view(b));
  Work second = c.all_reduce_async(host_view(d));
  first = std::move(second);  // waits for b's all_reduce, then holds d's
  EXPECT_FALSE(second.pending());
  EXPECT_EQ(first_mismatch(b, summed(c.size(), 7)), "");
  first.wait();
  EXPECT_EQ(first_mismatch(d, summed(c.size(), 5, 1)), "");
}

TEST(MpiAsyncTest, InPlaceReduceScatterMovesTheResultWhenDone) {
  MpiCommunicator& c = world();
  const int r = c.rank(), n_ranks = c.size();
  const int64_t m = 1000003;
  std::vector<float> buf = rank_data(r, m * n_ranks);
  float* shard = buf.data() + r * m;
  Work w = c.reduce_scatter_async(host_view(shard, static_cast<size_t>(m)), host_view(buf));
  w.wait();
  std::vector<float> want(static_cast<size_t>(m), 0.0f);
  for (int k = 0; k < n_ranks; ++k)
    for (int64_t i = 0; i < m; ++i) want[static_cast<size_t>(i)] += value(k, r * m + i);
  EXPECT_EQ(first_mismatch(std::vector<float>(shard, shard + m), want), "");

  std::vector<float> full(static_cast<size_t>(m * n_ranks), 0.0f);
  std::copy(want.begin(), want.end(), full.begin() + r * m);
  c.all_gather_async(host_view(full), host_view(full.data() + r * m, static_cast<size_t>(m)))
      .wait();
  for (int k = 0; k < n_ranks; ++k)
    for (int64_t i = 0; i < m; i += 9973) {
      float s = 0.0f;
      for (int q = 0; q < n_ranks; ++q) s += value(q, k * m + i);
      EXPECT_EQ(full[static_cast<size_t>(k * m + i)], s);
    }
}

// Large asynchronous reduce-scatters run keel's non-blocking ring: several in flight at once
// (each on its own tag), of different dtypes and ops, driven by test() and wait() in any order,
// give MPI's results; the stream of them reuses each slot's segments.
TEST(MpiAsyncTest, NonBlockingRingsInFlightTogether) {
  MpiCommunicator& c = world();
  const int r = c.rank(), n_ranks = c.size();
  const int64_t m = 700001;  // bytes per chunk above ring_min_bytes, several segments each
  for (int round = 0; round < 3; ++round) {
    std::vector<float> a = rank_data(r, m * n_ranks, 1), a_out(static_cast<size_t>(m));
    std::vector<float> b = rank_data(r, m * n_ranks, 2), b_out(static_cast<size_t>(m));
    std::vector<double> d(static_cast<size_t>(m * n_ranks)), d_out(static_cast<size_t>(m));
    for (size_t i = 0; i < d.size(); ++i) d[i] = value(r, static_cast<int64_t>(i)) * 0.5;
    Work wa = c.reduce_scatter_async(host_view(a_out), host_view(a));
    Work wb = c.reduce_scatter_async(host_view(b_out), host_view(b), ReduceOp::kMax);
    Work wd = c.reduce_scatter_async(host_view(d_out), host_view(d));
    while (!wb.test()) {
    }
    wd.wait();
    wa.wait();
    std::vector<float> want_a(static_cast<size_t>(m), 0.0f), want_b(static_cast<size_t>(m), -1e30f);
    std::vector<double> want_d(static_cast<size_t>(m), 0.0);
    for (int k = 0; k < n_ranks; ++k)
      for (int64_t i = 0; i < m; ++i) {
        const auto u = static_cast<size_t>(i);
        want_a[u] += value(k + 1, r * m + i);
        want_b[u] = std::max(want_b[u], value(k + 2, r * m + i));
        want_d[u] += value(k, r * m + i) * 0.5;
      }
    EXPECT_EQ(first_mismatch(a_out, want_a), "") << "round " << round;
    EXPECT_EQ(first_mismatch(b_out, want_b), "") << "round " << round;
    EXPECT_EQ(first_mismatch(d_out, want_d), "") << "round " << round;
  }
}

TEST(MpiAsyncTest, RingOfAsyncSendsAndReceives) {
  MpiCommunicator& c = world();
  const int r = c.rank(), n = c.size();
  const int next = (r + 1) % n, prev = (r + n - 1) % n;
  std::vector<float> out = rank_data(r, 1000003), in(1000003);
  Work recv = c.recv_async(host_view(in), prev, 3);
  Work send = c.send_async(host_view(out), next, 3);
  send.wait();
  recv.wait();
  EXPECT_EQ(first_mismatch(in, rank_data(prev, 1000003)), "");
}

TEST(MpiAsyncTest, TooManyOperationsInFlightIsAnError) {
  MpiCommunicator& c = world();
  std::vector<float> x(MpiCommunicator::kMaxInFlight + 1, 1.0f);
  std::vector<Work> work;
  for (int i = 0; i < MpiCommunicator::kMaxInFlight; ++i)
    work.push_back(c.all_reduce_async(host_view(&x[static_cast<size_t>(i)], 1)));
  std::string error;
  try {
    work.push_back(c.all_reduce_async(host_view(&x.back(), 1)));
  } catch (const Error& e) {
    error = e.what();
  }
  EXPECT_NE(error.find("more than 32 asynchronous operations are in flight"), std::string::npos)
      << error;
  for (Work& w : work) w.wait();
  for (int i = 0; i < MpiCommunicator::kMaxInFlight; ++i)
    EXPECT_EQ(x[static_cast<size_t>(i)], static_cast<float>(c.size()));
  // The slots are free again.
  c.all_reduce_async(host_view(&x.back(), 1)).wait();
  EXPECT_EQ(x.back(), static_cast<float>(c.size()));
}

}  // namespace
}  // namespace keel::parallel::testing
