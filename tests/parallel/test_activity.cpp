// Activity (parallel/activity.h): what a communicator that carries one records while a collective
// blocks — the op, the group's name, the bytes — and clears after; an asynchronous call only while
// its wait() blocks; split children and a ProcessGrid's groups inheriting it. No MPI: a probe
// backend looks at the Activity from inside each call.
#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/process_grid.h"
#include "parallel/self_communicator.h"

namespace keel::parallel {
namespace {

// Rank 0 of a pretend group of 2 that moves nothing: each call, and each wait, notes what the
// communicator's Activity said while it ran.
class ProbeCommunicator final : public Communicator {
 public:
  ProbeCommunicator() : Communicator(0, 2) {}
  std::string_view backend() const override { return "probe"; }
  std::vector<Activity::Snapshot> seen;

 protected:
  Work note(bool async) {
    look();
    return async ? make_work(0) : Work();
  }
  void look() {
    if (activity()) seen.push_back(activity()->snapshot());
  }
  Work do_all_reduce(Tensor, ReduceOp, bool async) override { return note(async); }
  Work do_reduce_scatter(Tensor, Tensor, ReduceOp, bool async) override { return note(async); }
  Work do_all_gather(Tensor, Tensor, bool async) override { return note(async); }
  Work do_broadcast(Tensor, int, bool async) override { return note(async); }
  Work do_send(Tensor, int, int, bool async) override { return note(async); }
  Work do_recv(Tensor, int, int, bool async) override { return note(async); }
  Work do_all_to_all(Tensor, Tensor, bool async) override { return note(async); }
  Work do_all_to_all_v(Tensor, std::span<const int64_t>, Tensor, std::span<const int64_t>,
                       bool async) override {
    return note(async);
  }
  void do_barrier() override { look(); }
  std::unique_ptr<Communicator> do_split(int, int) override {
    return std::make_unique<ProbeCommunicator>();
  }
  bool work_test(uint32_t) override { return false; }
  void work_wait(uint32_t) override { look(); }
};

TEST(ActivityTest, ABlockingCollectiveIsRecordedWhileItRunsAndClearedAfter) {
  Activity activity;
  ProbeCommunicator c;
  c.set_activity(&activity);
  c.set_name("dp");
  std::vector<float> x(1024), y(512);
  const uint64_t before = activity.snapshot().sequence;

  c.all_reduce(host_view(x));
  c.reduce_scatter(host_view(y.data(), 512), host_view(x));
  c.send(host_view(y), 1, 3);
  c.barrier();

  ASSERT_EQ(c.seen.size(), 4u);
  EXPECT_TRUE(c.seen[0].in_collective);
  EXPECT_EQ(c.seen[0].op, CommOp::kAllReduce);
  EXPECT_STREQ(c.seen[0].group, "dp");
  EXPECT_EQ(c.seen[0].bytes, 4096u);
  EXPECT_EQ(c.seen[1].op, CommOp::kReduceScatter);
  EXPECT_EQ(c.seen[1].bytes, 4096u);  // the full input
  EXPECT_EQ(c.seen[2].op, CommOp::kSend);
  EXPECT_EQ(c.seen[2].bytes, 2048u);
  EXPECT_EQ(c.seen[3].op, CommOp::kBarrier);
  for (const Activity::Snapshot& s : c.seen) EXPECT_TRUE(s.in_collective);

  const Activity::Snapshot after = activity.snapshot();
  EXPECT_FALSE(after.in_collective);
  // Every entry and exit moved the sequence: a reader can tell a rank that moves on from one
  // stuck in the same place.
  EXPECT_EQ(after.sequence - before, 4u * 4u);
  EXPECT_EQ(describe_collective(c.seen[0].op, c.seen[0].group, c.seen[0].bytes),
            "all_reduce over dp, 4.0 KiB");
}

TEST(ActivityTest, AnAsynchronousCallIsRecordedOnlyWhileItsWaitBlocks) {
  Activity activity;
  ProbeCommunicator c;
  c.set_activity(&activity);
  c.set_name("tp");
  std::vector<float> out(256), in(128);
  Work w = c.all_gather_async(host_view(out), host_view(in));
  ASSERT_EQ(c.seen.size(), 1u);
  EXPECT_FALSE(c.seen[0].in_collective) << "issuing does not block";
  EXPECT_FALSE(activity.snapshot().in_collective);

  Work moved = std::move(w);  // the op and bytes travel with the handle
  moved.wait();
  ASSERT_EQ(c.seen.size(), 2u);
  EXPECT_TRUE(c.seen[1].in_collective);
  EXPECT_EQ(c.seen[1].op, CommOp::kAllGather);
  EXPECT_STREQ(c.seen[1].group, "tp");
  EXPECT_EQ(c.seen[1].bytes, 1024u);  // the full output
  EXPECT_FALSE(activity.snapshot().in_collective);
}

TEST(ActivityTest, ACommunicatorWithoutOneRecordsNothing) {
  Activity activity;
  ProbeCommunicator c;
  std::vector<float> x(8);
  c.all_reduce(host_view(x));
  EXPECT_EQ(c.activity(), nullptr);
  EXPECT_EQ(activity.snapshot().sequence, 0u);
}

TEST(ActivityTest, SplitChildrenAndTheGridsGroupsInheritItAndAreNamed) {
  Activity activity;
  SelfCommunicator world;
  world.set_activity(&activity);
  const ProcessGrid grid(world, GridLayout::for_world(1, 1, 1));
  for (const Group g : kAllGroups) {
    EXPECT_EQ(grid.comm(g).activity(), &activity) << group_name(g);
    EXPECT_EQ(std::string(grid.comm(g).name()), group_name(g));
  }
  std::vector<float> x(4);
  const uint64_t before = activity.snapshot().sequence;
  grid.dp().all_reduce(host_view(x));
  EXPECT_EQ(activity.snapshot().sequence - before, 4u);
}

TEST(ActivityTest, StepAndPauseAreSeenAsSet) {
  Activity activity;
  activity.set_step(7);
  activity.set_paused(true);
  Activity::Snapshot s = activity.snapshot();
  EXPECT_EQ(s.step, 7);
  EXPECT_TRUE(s.paused);
  activity.set_paused(false);
  EXPECT_FALSE(activity.snapshot().paused);
}

// A reader racing the writer never sees the op of one collective with the bytes of another.
TEST(ActivityTest, AReaderSeesEachCollectiveWhole) {
  Activity activity;
  std::atomic<bool> stop{false};
  std::atomic<int> looked{0};  // snapshots taken inside a collective
  std::thread reader([&] {
    while (!stop.load()) {
      const Activity::Snapshot s = activity.snapshot();
      if (!s.in_collective) continue;
      ++looked;
      const bool all_reduce = s.op == CommOp::kAllReduce;
      EXPECT_EQ(std::string(s.group), all_reduce ? "dp" : "tp");
      EXPECT_EQ(s.bytes, all_reduce ? 1000u : 2000u);
    }
  });
  for (int i = 0; looked.load() < 2'000'000 && i < 200'000'000; ++i) {
    if (i % 2)
      activity.enter(CommOp::kAllReduce, "dp", 1000);
    else
      activity.enter(CommOp::kAllGather, "tp", 2000);
    activity.leave();
  }
  stop = true;
  reader.join();
  EXPECT_GT(looked.load(), 0);
}

}  // namespace
}  // namespace keel::parallel
