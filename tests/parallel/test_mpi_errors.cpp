// Failures under MPI become keel::Error with context: an MPI error code through KEEL_MPI (MPI's
// own message, the call, the rank), a message of the wrong size, and bad arguments on every rank
// before anything is sent.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "mpi_test_env.h"

namespace keel::parallel::testing {
namespace {

TEST(MpiErrorsTest, TruncatedReceiveCarriesMpisMessageTheCallAndTheRank) {
  MpiCommunicator& c = world();
  std::vector<float> five(5, 1.0f), three(3);
  std::string error, where;
  if (c.rank() == 0) {
    c.send(host_view(five), 1, 7);
  } else if (c.rank() == 1) {
    try {
      c.recv(host_view(three), 0, 7);
    } catch (const Error& e) {
      error = e.what();
      where = e.where();
    }
    EXPECT_NE(error.find("MPI failed: MPI_ERR_TRUNCATE"), std::string::npos) << error;
    EXPECT_NE(error.find("in MPI_Recv("), std::string::npos) << error;
    EXPECT_NE(error.find(format("(rank 1 of {})", c.size())), std::string::npos) << error;
    EXPECT_NE(where.find("mpi_communicator.cpp:"), std::string::npos) << where;
  }
  c.barrier();
}

TEST(MpiErrorsTest, ShortMessageIsAnError) {
  MpiCommunicator& c = world();
  std::vector<float> five(5, 1.0f), seven(7);
  if (c.rank() == 0) {
    c.send(host_view(five), 1, 8);
    c.send(host_view(five), 1, 9);
  } else if (c.rank() == 1) {
    std::string blocking, async;
    try {
      c.recv(host_view(seven), 0, 8);
    } catch (const Error& e) {
      blocking = e.what();
    }
    Work w = c.recv_async(host_view(seven), 0, 9);
    try {
      w.wait();
    } catch (const Error& e) {
      async = e.what();
    }
    EXPECT_FALSE(w.pending());
    EXPECT_EQ(blocking, "recv: expected 7 elements from rank 0 (tag 8) but the message held 5");
    EXPECT_EQ(async, "recv: expected 7 elements from rank 0 (tag 9) but the message held 5");
  }
  c.barrier();
}

TEST(MpiErrorsTest, BadArgumentsFailOnEveryRankBeforeAnythingIsSent) {
  MpiCommunicator& c = world();
  std::vector<float> x(10), y(3);
  c.reset_stats();
  EXPECT_THROW(c.all_gather(host_view(x), host_view(y)), Error);
  EXPECT_THROW(c.reduce_scatter(host_view(y), host_view(x)), Error);
  EXPECT_THROW(c.broadcast(host_view(x), c.size()), Error);
  EXPECT_THROW(c.send(host_view(x), c.rank()), Error);
  EXPECT_THROW(c.send(host_view(x), (c.rank() + 1) % c.size(), Communicator::kMaxTag + 1), Error);
  EXPECT_EQ(c.stats().total_calls(), 0u);
  // The communicator is still usable.
  std::vector<float> ones(3, 1.0f);
  c.all_reduce(host_view(ones));
  EXPECT_EQ(ones, std::vector<float>(3, static_cast<float>(c.size())));
}

TEST(MpiErrorsTest, SplitWithNoColorLeavesARankOut) {
  MpiCommunicator& c = world();
  // Rank 0 stays out; the others form one group ordered by descending rank.
  auto sub = c.split(c.rank() == 0 ? Communicator::kNoColor : 0, -c.rank());
  if (c.rank() == 0) {
    EXPECT_EQ(sub, nullptr);
  } else {
    ASSERT_TRUE(sub);
    EXPECT_EQ(sub->size(), c.size() - 1);
    EXPECT_EQ(sub->rank(), c.size() - 1 - c.rank());
    EXPECT_EQ(sub->backend(), "mpi");
    int32_t r = c.rank(), sum = 0;
    std::vector<int32_t> all(static_cast<size_t>(sub->size()));
    sub->all_gather(host_view(all), host_view(&r, 1));
    for (int32_t v : all) sum += v;
    EXPECT_EQ(sum, c.size() * (c.size() - 1) / 2);
    EXPECT_EQ(all.front(), c.size() - 1);
    EXPECT_EQ(sub->stats().total_calls(), 1u);
  }
}

}  // namespace
}  // namespace keel::parallel::testing
