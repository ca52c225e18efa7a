// keel's ring (large blocking all_reduce and reduce_scatter) against MPI's own collectives on the
// same data, with segments small and odd enough that every chunk takes several trips and ends in a
// partial segment; and the reason it exists: after the first call, repeated large reductions take
// no page faults.
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include "kernels/memory_plan.h"
#include "mpi_test_env.h"

namespace keel::parallel::testing {
namespace {

constexpr MpiTuning kAlwaysRing{0, 4004};  // 1001 floats, 2002 bf16 values, 500 doubles a trip
constexpr MpiTuning kNeverRing{std::numeric_limits<size_t>::max(), size_t{4} << 20};

struct Pair {
  std::unique_ptr<MpiCommunicator> ring, mpi;
};

Pair make_pair() {
  Pair p{MpiCommunicator::duplicate(world().handle()),
         MpiCommunicator::duplicate(world().handle())};
  p.ring->set_tuning(kAlwaysRing);
  p.mpi->set_tuning(kNeverRing);
  return p;
}

template <class T, class F>
std::vector<T> filled(int64_t n, F f) {
  std::vector<T> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = f(i);
  return v;
}

TEST(MpiRingTest, AllReduceMatchesMpiForEveryDtypeAndOp) {
  Pair p = make_pair();
  const int r = world().rank();
  for (int64_t n : {int64_t{1}, int64_t{3}, int64_t{7}, int64_t{5003}, int64_t{1000003}}) {
    SCOPED_TRACE(n);
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax}) {
      auto f32 = filled<float>(n, [&](int64_t i) { return value(r, i); });
      auto f32_ref = f32;
      p.ring->all_reduce(host_view(f32), op);
      p.mpi->all_reduce(host_view(f32_ref), op);
      EXPECT_EQ(first_mismatch(f32, f32_ref), "");

      auto f64 = filled<double>(n, [&](int64_t i) { return value(r, i) * 0.25; });
      auto f64_ref = f64;
      p.ring->all_reduce(host_view(f64), op);
      p.mpi->all_reduce(host_view(f64_ref), op);
      EXPECT_EQ(first_mismatch(f64, f64_ref), "");

      auto i64 = filled<int64_t>(n, [&](int64_t i) { return (int64_t{1} << 40) * r - i; });
      auto i64_ref = i64;
      p.ring->all_reduce(host_view(i64), op);
      p.mpi->all_reduce(host_view(i64_ref), op);
      EXPECT_EQ(first_mismatch(i64, i64_ref), "");

      auto i32 = filled<int32_t>(n, [&](int64_t i) { return static_cast<int32_t>(i % 1000) - r; });
      auto i32_ref = i32;
      p.ring->all_reduce(host_view(i32), op);
      p.mpi->all_reduce(host_view(i32_ref), op);
      EXPECT_EQ(first_mismatch(i32, i32_ref), "");

      auto bf = filled<uint16_t>(n, [&](int64_t i) { return f32_to_bf16(value(r, i)); });
      auto bf_ref = bf;
      p.ring->all_reduce(host_view_bf16(bf), op);
      p.mpi->all_reduce(host_view_bf16(bf_ref), op);
      EXPECT_EQ(first_mismatch(bf, bf_ref), "");
    }
  }
}

TEST(MpiRingTest, ReduceScatterMatchesMpiOutOfPlaceAndInPlace) {
  Pair p = make_pair();
  const int r = world().rank(), n_ranks = world().size();
  for (int64_t m : {int64_t{1}, int64_t{7}, int64_t{2503}, int64_t{250001}}) {
    SCOPED_TRACE(m);
    const int64_t full = m * n_ranks;
    const auto in = filled<float>(full, [&](int64_t i) { return value(r, i); });
    auto in_ring = in, in_mpi = in;
    std::vector<float> out_ring(static_cast<size_t>(m), -1.0f), out_mpi(static_cast<size_t>(m));
    p.ring->reduce_scatter(host_view(out_ring), host_view(in_ring));
    p.mpi->reduce_scatter(host_view(out_mpi), host_view(in_mpi));
    EXPECT_EQ(first_mismatch(out_ring, out_mpi), "");
    EXPECT_EQ(first_mismatch(in_ring, in), "");  // the ring only reads its input

    float* shard = in_ring.data() + r * m;
    p.ring->reduce_scatter(host_view(shard, static_cast<size_t>(m)), host_view(in_ring));
    EXPECT_EQ(first_mismatch(std::vector<float>(shard, shard + m), out_mpi), "");

    auto bf = filled<uint16_t>(full, [&](int64_t i) { return f32_to_bf16(value(r, i)); });
    std::vector<uint16_t> bf_ring(static_cast<size_t>(m)), bf_mpi(static_cast<size_t>(m));
    p.ring->reduce_scatter(host_view_bf16(bf_ring), host_view_bf16(bf), ReduceOp::kMax);
    p.mpi->reduce_scatter(host_view_bf16(bf_mpi), host_view_bf16(bf), ReduceOp::kMax);
    EXPECT_EQ(first_mismatch(bf_ring, bf_mpi), "");
  }
}

TEST(MpiRingTest, SplitCommunicatorsInheritTheTuning) {
  Pair p = make_pair();
  auto child = p.ring->split(world().rank() % 2, world().rank());
  auto* mpi_child = dynamic_cast<MpiCommunicator*>(child.get());
  ASSERT_NE(mpi_child, nullptr);
  EXPECT_EQ(mpi_child->tuning().segment_bytes, kAlwaysRing.segment_bytes);
  EXPECT_EQ(mpi_child->tuning().ring_min_bytes, kAlwaysRing.ring_min_bytes);
  std::vector<float> x(10001, 1.0f);
  child->all_reduce(host_view(x));
  EXPECT_EQ(x, std::vector<float>(10001, static_cast<float>(child->size())));
}

TEST(MpiRingTest, BadTuningIsAnError) {
  Pair p = make_pair();
  EXPECT_THROW(p.ring->set_tuning(MpiTuning{0, 8}), Error);
}

long minor_faults() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}

// The point of the ring: a buffer from a memory plan (pre-faulted) reduced again and again costs
// no page faults once the scratch exists. 16 MiB of fresh 4 KiB pages would be 4096 faults a call.
TEST(MpiRingTest, RepeatedLargeReductionsTakeNoPageFaults) {
  MpiCommunicator& c = world();
  ASSERT_LE(c.tuning().ring_min_bytes, size_t{16} << 20);
  HostBuffer buf(size_t{16} << 20), shard(size_t{16} << 20);
  const size_t n = buf.size() / sizeof(float);
  Tensor x(buf.data(), DType::F32, Shape{static_cast<int64_t>(n)});
  Tensor out(shard.data(), DType::F32, Shape{static_cast<int64_t>(n / c.size())});
  c.all_reduce(x);  // maps the scratch
  c.reduce_scatter(out, x);
  const long before = minor_faults();
  for (int i = 0; i < 5; ++i) {
    c.all_reduce(x);
    c.reduce_scatter(out, x);
  }
  const long faults = minor_faults() - before;
  EXPECT_LT(faults, 64) << "page faults in 5 all_reduce + 5 reduce_scatter calls of 16 MiB";
  RecordProperty("minor_faults", std::to_string(faults));
}

// The same for the asynchronous reduce-scatters ZeRO overlaps with compute: two in flight at a
// time, as ZeRO keeps them, and no page faults once each slot has its segments (Open MPI's
// MPI_Ireduce_scatter_block took a fresh message-sized temporary in every call).
TEST(MpiRingTest, RepeatedAsyncReduceScattersTakeNoPageFaults) {
  MpiCommunicator& c = world();
  ASSERT_LE(c.tuning().ring_min_bytes, size_t{16} << 20);
  HostBuffer a(size_t{16} << 20), b(size_t{16} << 20), sa(size_t{16} << 20), sb(size_t{16} << 20);
  const size_t n = a.size() / sizeof(float);
  auto view = [](const HostBuffer& h, size_t elems) {
    return Tensor(h.data(), DType::F32, Shape{static_cast<int64_t>(elems)});
  };
  auto round = [&] {
    Work wa = c.reduce_scatter_async(view(sa, n / c.size()), view(a, n));
    Work wb = c.reduce_scatter_async(view(sb, n / c.size()), view(b, n));
    while (!wa.test()) {
    }
    wb.wait();
  };
  round();  // gives the two slots their segments
  const long before = minor_faults();
  for (int i = 0; i < 5; ++i) round();
  const long faults = minor_faults() - before;
  EXPECT_LT(faults, 64) << "page faults in 10 asynchronous reduce_scatter calls of 16 MiB";
  RecordProperty("minor_faults", std::to_string(faults));
}

}  // namespace
}  // namespace keel::parallel::testing
