// LivenessTable (parallel/liveness.h): the verdicts the heartbeat thread acts on, on a clock the
// test drives — a silent rank, a job in which nobody advances and who holds it up, pauses and
// finished ranks that are no hang — and the words of the report and of the status.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <optional>
#include <string>

#include "parallel/communicator.h"
#include "parallel/liveness.h"

namespace keel::parallel {
namespace {

using Clock = LivenessTable::Clock;

Clock::time_point at(double seconds) {
  return Clock::time_point{} + std::chrono::hours(1) +
         std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

Beat beat(int rank, int64_t step, uint64_t sequence) {
  Beat b;
  b.rank = rank;
  b.step = step;
  b.sequence = sequence;
  std::snprintf(b.host, sizeof b.host, "node-%c", static_cast<char>('a' + rank));
  return b;
}

Beat in(Beat b, CommOp op, const char* group, uint64_t bytes, double seconds) {
  b.in_collective = 1;
  b.op = static_cast<uint8_t>(op);
  std::strncpy(b.group, group, sizeof b.group - 1);
  b.bytes = bytes;
  b.seconds = seconds;
  return b;
}

bool has(const std::optional<std::string>& report, const std::string& text) {
  return report && report->find(text) != std::string::npos;
}

constexpr uint64_t kMiB = uint64_t{1} << 20;

TEST(LivenessTest, ASilentRankIsReportedOnceTheTimeoutPassesWithWhatItWasDoing) {
  LivenessTable t(3, 0, {1, 2}, at(0));
  const double timeout = 2.3;
  for (int i = 0; i < 10; ++i) {
    const double s = 0.1 + 0.5 * i;  // ranks 0 and 1 beat (and move on) every half second
    t.record(beat(0, 7, 100 + static_cast<uint64_t>(i)), at(s));
    t.record(beat(1, 7, 100 + static_cast<uint64_t>(i)), at(s));
    if (i == 0) t.record(in(beat(2, 7, 40), CommOp::kAllReduce, "dp", 4 * kMiB, 0.2), at(s));
    const auto report = t.find_hang(at(s), timeout, true);
    if (i < 5) {  // rank 2 silent for 2.0 s at most
      EXPECT_FALSE(report) << "at " << s << " s: " << *report;
      continue;
    }
    ASSERT_TRUE(report) << "rank 2 silent since 0.1 s, at " << s << " s";
    EXPECT_TRUE(has(report, "no heartbeat from rank 2 for more than 2.3 s")) << *report;
    EXPECT_TRUE(has(report,
                    "rank 2 (host node-c), last heard 2.5 s ago at step 7: all_reduce "
                    "over dp, 4.0 MiB for 0.2 s"))
        << *report;
    EXPECT_TRUE(has(report, "Meanwhile ranks 0, 1: computing step 7")) << *report;
    EXPECT_TRUE(has(report, "control.hang_timeout")) << *report;
    EXPECT_TRUE(has(report, "SIGSTOP")) << *report;
    EXPECT_FALSE(has(report, "rank 1 (host")) << "rank 1 beats: " << *report;
    return;
  }
  FAIL() << "no report";
}

TEST(LivenessTest, ARankNeverHeardFromIsReportedToo) {
  LivenessTable t(2, 0, {1}, at(0));
  t.record(beat(0, 1, 0), at(1.0));
  EXPECT_FALSE(t.find_hang(at(1.9), 2.0, true));
  const auto report = t.find_hang(at(2.1), 2.0, true);
  EXPECT_TRUE(has(report, "rank 1 (host unknown), never heard from")) << report.value_or("");
}

TEST(LivenessTest, ARankThatFinishedIsNoHang) {
  LivenessTable t(2, 0, {1}, at(0));
  Beat done = beat(1, 20, 900);
  done.done = 1;
  t.record(done, at(0.5));
  EXPECT_TRUE(t.watched_done());
  // Rank 0 writes its last files for long after: no progress, and still no hang.
  t.record(beat(0, 20, 900), at(1.0));
  t.record(beat(0, 20, 900), at(9.0));
  EXPECT_FALSE(t.find_hang(at(9.0), 2.0, true));
}

// Rank 1 at the same step as the others but outside the collective they wait in: it holds them up.
TEST(LivenessTest, WhenNobodyAdvancesTheRankOutsideTheCollectiveIsNamed) {
  LivenessTable t(3, 0, {1, 2}, at(0));
  auto record_all = [&](double s) {
    t.record(in(beat(0, 7, 50), CommOp::kAllReduce, "dp", 4 * kMiB, s - 1.0), at(s));
    Beat computing = beat(1, 7, 48);
    computing.seconds = s - 1.0;
    t.record(computing, at(s));
    t.record(in(beat(2, 7, 60), CommOp::kAllReduce, "dp", 4 * kMiB, s - 1.0), at(s));
  };
  for (double s = 1.0; s <= 3.9; s += 0.5) {
    record_all(s);
    EXPECT_FALSE(t.find_hang(at(s), 3.0, true)) << "at " << s << " s";
  }
  record_all(4.1);
  EXPECT_FALSE(t.find_hang(at(4.1), 3.0, false)) << "only rank 0 judges progress";
  const auto report = t.find_hang(at(4.1), 3.0, true);
  ASSERT_TRUE(report);
  EXPECT_TRUE(has(report, "no rank has advanced its step or finished a collective for 3.1 s"))
      << *report;
  EXPECT_TRUE(has(report,
                  "rank 1 holds the others up: rank 1 (host node-b), last heard 0.0 s ago "
                  "at step 7: computing step 7, 3.1 s since its last collective"))
      << *report;
  EXPECT_TRUE(
      has(report, "The others: ranks 0, 2: all_reduce over dp, 4.0 MiB for 3.1 s at step 7"))
      << *report;
  EXPECT_TRUE(has(report, "raise control.hang_timeout")) << *report;
}

TEST(LivenessTest, OneRankMovingIsProgress) {
  LivenessTable t(2, 0, {1}, at(0));
  for (int i = 0; i <= 10; ++i) {
    const double s = 0.5 * i;
    t.record(in(beat(0, 7, 50), CommOp::kAllReduce, "dp", 4 * kMiB, s), at(s));
    t.record(beat(1, 7, 100 + static_cast<uint64_t>(i)), at(s));  // enters and leaves collectives
    EXPECT_FALSE(t.find_hang(at(s), 2.0, true)) << "at " << s << " s";
  }
}

// The rank at the lowest step holds the others up, even inside a collective of its own.
TEST(LivenessTest, TheRankBehindIsNamedWhateverItWaitsIn) {
  LivenessTable t(3, 0, {1, 2}, at(0));
  t.record(in(beat(0, 8, 50), CommOp::kAllReduce, "dp", kMiB, 0), at(0.1));
  t.record(in(beat(1, 7, 50), CommOp::kBroadcast, "world", 1024, 0), at(0.1));
  t.record(in(beat(2, 8, 50), CommOp::kAllReduce, "dp", kMiB, 0), at(0.1));
  // Beating on, with nothing changed.
  t.record(in(beat(0, 8, 50), CommOp::kAllReduce, "dp", kMiB, 2.4), at(2.5));
  t.record(in(beat(1, 7, 50), CommOp::kBroadcast, "world", 1024, 2.4), at(2.5));
  t.record(in(beat(2, 8, 50), CommOp::kAllReduce, "dp", kMiB, 2.4), at(2.5));
  const auto report = t.find_hang(at(2.5), 2.0, true);
  EXPECT_TRUE(has(report,
                  "rank 1 holds the others up: rank 1 (host node-b), last heard 0.0 s "
                  "ago at step 7: broadcast over world, 1.0 KiB for 2.4 s"))
      << report.value_or("");
}

TEST(LivenessTest, BeforeTheFirstStepOnlySilenceCounts) {
  LivenessTable t(2, 0, {1}, at(0));
  for (double s = 0.0; s <= 10.0; s += 0.5) {
    t.record(beat(0, 0, 50), at(s));
    if (s < 5.0) t.record(in(beat(1, 0, 50), CommOp::kBroadcast, "world", 64, s), at(s));
    const auto report = t.find_hang(at(s), 2.0, true);
    EXPECT_EQ(s > 6.5, report.has_value()) << "at " << s << " s: " << report.value_or("");
    if (report) {
      EXPECT_TRUE(has(report, "no heartbeat from rank 1")) << *report;
    }
  }
}

TEST(LivenessTest, APausedRunIsNoHangButASilentRankStillIs) {
  LivenessTable t(2, 0, {1}, at(0));
  Beat paused0 = beat(0, 7, 50), paused1 = beat(1, 7, 50);
  paused0.paused = paused1.paused = 1;
  for (double s = 0.0; s <= 10.0; s += 0.5) {
    t.record(paused0, at(s));
    t.record(paused1, at(s));
    EXPECT_FALSE(t.find_hang(at(s), 2.0, true)) << "at " << s << " s";
  }
  // Resumed: a whole timeout again before the unchanged step counts.
  t.record(beat(0, 7, 50), at(10.5));
  t.record(beat(1, 7, 50), at(10.5));
  EXPECT_FALSE(t.find_hang(at(11.9), 2.0, true));
  t.record(paused0, at(12.0));  // paused again, and rank 1 falls silent
  EXPECT_TRUE(has(t.find_hang(at(12.6), 2.0, true), "no heartbeat from rank 1"));
}

TEST(LivenessTest, TheStatusSaysWhatEachRankDoes) {
  LivenessTable t(3, 0, {1, 2}, at(0));
  Beat b0 = in(beat(0, 7, 50), CommOp::kAllReduce, "dp", 4 * kMiB, 2.1);
  b0.rss_bytes = 300 * kMiB;
  b0.peak_rss_bytes = 310 * kMiB;
  t.record(b0, at(1.0));
  Beat b1 = beat(1, 7, 48);
  b1.seconds = 0.3;
  t.record(b1, at(0.5));
  const std::vector<RankLiveness> ranks = t.ranks(at(1.0));
  ASSERT_EQ(ranks.size(), 3u);
  EXPECT_EQ(ranks[0].rank, 0);
  EXPECT_EQ(ranks[0].host, "node-a");
  EXPECT_EQ(ranks[0].step, 7);
  EXPECT_EQ(ranks[0].seconds_since_heartbeat, 0.0);
  EXPECT_EQ(ranks[0].activity, "all_reduce over dp, 4.0 MiB for 2.1 s");
  EXPECT_EQ(ranks[0].rss_bytes, 300 * kMiB);
  EXPECT_EQ(ranks[0].peak_rss_bytes, 310 * kMiB);
  EXPECT_DOUBLE_EQ(ranks[1].seconds_since_heartbeat, 0.5);
  EXPECT_EQ(ranks[1].activity, "computing step 7, 0.8 s since its last collective");
  EXPECT_EQ(ranks[2].activity, "not heard from yet");
}

}  // namespace
}  // namespace keel::parallel
