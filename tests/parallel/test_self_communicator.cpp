// The one-rank communicator and everything the Communicator base class checks before a backend
// runs (sizes, dtypes, overlap, peers, tags), plus a ProcessGrid over one rank. No MPI needed.
#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <numeric>
#include <string>
#include <vector>

#include "parallel/process_grid.h"
#include "parallel/self_communicator.h"

namespace keel::parallel {
namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

std::vector<float> iota_floats(size_t n, float start) {
  std::vector<float> v(n);
  std::iota(v.begin(), v.end(), start);
  return v;
}

TEST(SelfCommunicatorTest, CollectivesOfOneRankAreTheIdentity) {
  SelfCommunicator c;
  EXPECT_EQ(c.rank(), 0);
  EXPECT_EQ(c.size(), 1);
  std::vector<float> x = iota_floats(7, 1.0f);
  const std::vector<float> x0 = x;
  c.all_reduce(host_view(x));
  c.all_reduce(host_view(x), ReduceOp::kMax);
  c.broadcast(host_view(x), 0);
  EXPECT_EQ(x, x0);

  std::vector<float> out(7, 0.0f);
  c.reduce_scatter(host_view(out), host_view(x));
  EXPECT_EQ(out, x0);
  std::fill(out.begin(), out.end(), 0.0f);
  c.all_gather(host_view(out), host_view(x));
  EXPECT_EQ(out, x0);
  std::fill(out.begin(), out.end(), 0.0f);
  c.all_to_all(host_view(out), host_view(x));
  EXPECT_EQ(out, x0);
  std::fill(out.begin(), out.end(), 0.0f);
  const int64_t five[] = {5};
  c.all_to_all_v(host_view(out), five, host_view(x), five);
  EXPECT_EQ(std::vector<float>(out.begin(), out.begin() + 5),
            std::vector<float>(x0.begin(), x0.begin() + 5));
  EXPECT_EQ(out[5], 0.0f);
  c.barrier();

  // In place: the shard is the whole buffer.
  c.reduce_scatter(host_view(x), host_view(x));
  c.all_gather(host_view(x), host_view(x));
  EXPECT_EQ(x, x0);
}

TEST(SelfCommunicatorTest, AsyncCallsCompleteAtOnce) {
  SelfCommunicator c;
  std::vector<float> x = iota_floats(3, 0.0f);
  Work w = c.all_reduce_async(host_view(x));
  EXPECT_FALSE(w.pending());
  EXPECT_TRUE(w.test());
  w.wait();
  Work moved = std::move(w);
  EXPECT_FALSE(moved.pending());
  Work none;
  EXPECT_TRUE(none.test());
}

TEST(SelfCommunicatorTest, CountsCallsWithZeroBytesOnOneRank) {
  SelfCommunicator c;
  std::vector<float> x(10);
  c.all_reduce(host_view(x));
  c.all_reduce(host_view(x));
  c.broadcast(host_view(x), 0);
  c.barrier();
  EXPECT_EQ(c.stats()[CommOp::kAllReduce], (OpCounter{2, 0}));
  EXPECT_EQ(c.stats()[CommOp::kBroadcast], (OpCounter{1, 0}));
  EXPECT_EQ(c.stats()[CommOp::kBarrier], (OpCounter{1, 0}));
  c.reset_stats();
  EXPECT_EQ(c.stats().total_calls(), 0u);
}

TEST(SelfCommunicatorTest, BadArgumentsAreErrorsBeforeAnythingIsSent) {
  SelfCommunicator c;
  std::vector<float> x(8), y(6);
  std::vector<int32_t> xi(8);
  std::vector<uint8_t> bytes(8);
  EXPECT_NE(error_of([&] {
              c.reduce_scatter(host_view(y), host_view(x));
            }).find("reduce_scatter: the input must hold 1 chunks of the output's 6 elements"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              c.all_gather(host_view(x), host_view(y));
            }).find("all_gather: the output must hold 1 chunks of the input's 6 elements"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              c.all_gather(host_view(x), host_view(xi));
            }).find("all_gather: output is F32 but input is I32"),
            std::string::npos);
  EXPECT_NE(
      error_of([&] { c.all_reduce(host_view(bytes)); }).find("all_reduce cannot reduce U8 buffers"),
      std::string::npos);
  EXPECT_NE(error_of([&] {
              c.broadcast(host_view(x), 1);
            }).find("broadcast: root rank 1 is outside the group of 1 ranks"),
            std::string::npos);
  EXPECT_NE(error_of([&] { c.send(host_view(x), 0); }).find("cannot send to itself"),
            std::string::npos);
  EXPECT_NE(error_of([&] { c.recv(host_view(x), 0); }).find("cannot receive from itself"),
            std::string::npos);
  const int64_t two[] = {2, 2};
  EXPECT_NE(error_of([&] {
              c.all_to_all_v(host_view(y), two, host_view(x), two);
            }).find("needs one send and one receive count per rank (1), got 2 and 2"),
            std::string::npos);
  const int64_t nine[] = {9};
  EXPECT_NE(error_of([&] {
              c.all_to_all_v(host_view(y), nine, host_view(x), nine);
            }).find("the send counts add up to 9 elements but the input holds 8"),
            std::string::npos);
  // Overlap other than the documented in-place chunk.
  EXPECT_NE(error_of([&] {
              c.all_to_all(host_view(x.data() + 1, 4), host_view(x.data(), 4));
            }).find("all_to_all: the output overlaps the input"),
            std::string::npos);
  const Tensor on_gpu(x.data(), DType::F32, Shape{8}, Device::cuda(0));
  EXPECT_NE(error_of([&] {
              c.all_reduce(on_gpu);
            }).find("the in-out buffer is on cuda:0, but a self communicator works on cpu"),
            std::string::npos);
  EXPECT_NE(error_of([&] { (void)c.split(-3, 0); }).find("split: color -3 is negative"),
            std::string::npos);
  // Nothing was counted: the checks run before the counters.
  EXPECT_EQ(c.stats().total_calls(), 0u);
}

TEST(SelfCommunicatorTest, SplitGivesAnotherRankOfOneOrNothing) {
  SelfCommunicator c;
  auto child = c.split(0, 0);
  ASSERT_TRUE(child);
  EXPECT_EQ(child->size(), 1);
  EXPECT_EQ(child->backend(), "self");
  EXPECT_EQ(c.split(Communicator::kNoColor, 0), nullptr);
}

TEST(SelfCommunicatorTest, IsAloneOnItsHost) {
  SelfCommunicator c;
  EXPECT_EQ(c.ranks_on_host(), 1);
}

TEST(ProcessGridTest, OneRankGridHasAGroupOfOneOfEveryKind) {
  SelfCommunicator world;
  ProcessGrid grid(world, GridLayout(GridSizes{}));
  EXPECT_EQ(grid.rank(), 0);
  EXPECT_EQ(grid.coord(), GridCoord{});
  for (Group g : kAllGroups) {
    EXPECT_EQ(grid.comm(g).size(), 1) << group_name(g);
    EXPECT_EQ(grid.comm(g).rank(), 0) << group_name(g);
  }
  EXPECT_EQ(&grid.world(), &world);
  std::vector<float> x(4);
  grid.dp().all_reduce(host_view(x));
  grid.tp().barrier();
  EXPECT_EQ(grid.total_stats()[CommOp::kAllReduce].calls, 1u);
  EXPECT_EQ(grid.describe_stats(), "tp: barrier 1 calls 0 B\ndp: all_reduce 1 calls 0 B");
  grid.reset_stats();
  EXPECT_EQ(grid.total_stats().total_calls(), 0u);
  EXPECT_EQ(grid.describe_stats(), "no communication");
}

TEST(ProcessGridTest, LayoutThatDoesNotFitTheWorldIsAnError) {
  SelfCommunicator world;
  EXPECT_NE(error_of([&] {
              ProcessGrid grid(world, GridLayout(GridSizes{2, 1, 1, 1}));
            }).find("the job has 1 ranks but the grid needs 2 × 1 × 1 = 2"),
            std::string::npos);
}

}  // namespace
}  // namespace keel::parallel
