// Heartbeat (parallel/heartbeat.h) across real ranks, with the job's end replaced by a note: ranks
// that finish at different moments wait for each other and nobody reports a hang; a rank that
// falls silent is reported by rank 0, named, within the timeout; rank 0 sees every rank's beat.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>

#include "mpi_test_env.h"
#include "parallel/heartbeat.h"

namespace keel::parallel {
namespace {

using testing::world;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// The report a Heartbeat gave instead of ending the job ("" while none).
struct Reports {
  std::mutex mu;
  std::string text;
  std::string get() {
    const std::lock_guard<std::mutex> lock(mu);
    return text;
  }
};

HeartbeatOptions options(double timeout, Reports& reports) {
  HeartbeatOptions o;
  o.hang_timeout = timeout;
  o.interval = 0.1;  // the same on every rank, whatever its timeout
  o.end_job = [&reports](const std::string& report) {
    const std::lock_guard<std::mutex> lock(reports.mu);
    reports.text = report;
  };
  return o;
}

// Rank 0 trains on for 3.5 s after the others finished (writing its last files): they wait for
// it in finish(), and no rank, watching with a 2 s timeout, takes a finished one for hung.
TEST(MpiHeartbeatTest, RanksFinishingAtDifferentMomentsWaitForEachOtherWithNoReport) {
  Activity activity;
  activity.set_step(12);
  Reports reports;
  Heartbeat heartbeat(world(), activity, options(2.0, reports));
  const Clock::time_point start = Clock::now();
  if (world().rank() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(3500));
  const Clock::time_point finishing = Clock::now();
  heartbeat.finish();
  const double waited = seconds_since(finishing);
  EXPECT_EQ(reports.get(), "");
  if (world().rank() == 0) {
    EXPECT_LT(waited, 1.0) << "the others had finished long before";
  } else {
    EXPECT_GE(seconds_since(start), 3.4) << "finish() returned before rank 0 had finished";
  }
  world().barrier();
}

// Rank 1's heartbeat stops (destroyed without finish(), as when its process is stopped): rank 0
// reports it by rank within the timeout and a few beats.
TEST(MpiHeartbeatTest, ASilentRankIsReportedByRankZero) {
  Activity activity;
  activity.set_step(3);
  Reports reports;
  // Only rank 0 judges with a short timeout: the other ranks watch rank 0, which goes quiet once
  // it has reported.
  const double timeout = world().rank() == 0 ? 1.0 : 30.0;
  auto heartbeat = std::make_unique<Heartbeat>(world(), activity, options(timeout, reports));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // beats go both ways
  if (world().rank() == 0) {
    const std::vector<RankLiveness> ranks = heartbeat->ranks();
    ASSERT_EQ(ranks.size(), static_cast<size_t>(world().size()));
    for (const RankLiveness& r : ranks) {
      EXPECT_EQ(r.step, 3) << "rank " << r.rank;
      EXPECT_FALSE(r.host.empty()) << "rank " << r.rank;
      EXPECT_GT(r.rss_bytes, 0u) << "rank " << r.rank;
      EXPECT_GE(r.peak_rss_bytes, r.rss_bytes) << "rank " << r.rank;
      EXPECT_LT(r.seconds_since_heartbeat, 1.0) << "rank " << r.rank;
      EXPECT_EQ(r.activity.rfind("computing step 3", 0), 0u) << r.activity;
    }
  }
  const Clock::time_point silent = Clock::now();
  if (world().rank() == 1) heartbeat.reset();
  if (world().rank() == 0) {
    // Rank 0 itself moves on (collectives come and go), so it is the silence that is reported.
    while (reports.get().empty() && seconds_since(silent) < 10.0) {
      activity.enter(CommOp::kAllReduce, "dp", 64);
      activity.leave();
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    const std::string report = reports.get();
    const double after = seconds_since(silent);
    EXPECT_NE(report.find("hang: no heartbeat from rank 1 for more than 1.0 s"), std::string::npos)
        << report;
    EXPECT_NE(report.find("at step 3: computing step 3"), std::string::npos) << report;
    EXPECT_GE(after, 0.8) << report;
    EXPECT_LE(after, 2.0) << report;
  }
  world().barrier();
  heartbeat.reset();
  EXPECT_EQ(world().rank() == 0 ? "" : reports.get(), "");
  world().barrier();
}

}  // namespace
}  // namespace keel::parallel
