// What the heartbeat thread (parallel/heartbeat.h) knows about the ranks of a job: each rank's
// last beat and when it came, when each last made progress, and the verdict — a rank silent for
// control.hang_timeout, or a job in which no rank has advanced for that long — written out as the
// one paragraph that the logs, the status and the exit message show. Pure bookkeeping on times the
// caller passes: no MPI, no threads, so that tests can hold it against a clock of their own.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "parallel/activity.h"

namespace keel::parallel {

// One rank's beat as it travels between ranks: fixed size and trivially copyable (sent as bytes).
struct Beat {
  static constexpr int kGroupChars = 16;
  static constexpr int kHostChars = 64;
  int32_t rank = 0;
  uint8_t done = 0;  // the rank has finished its run: it sends no more beats, and is no hang
  uint8_t paused = 0;
  uint8_t in_collective = 0;
  uint8_t op = 0;  // CommOp, when in_collective
  int64_t step = 0;
  uint64_t sequence = 0;  // Activity::Snapshot::sequence: unchanged while the rank stands still
  uint64_t bytes = 0;
  // Seconds since the rank entered its collective (or, outside one, left its last one), when sent.
  double seconds = 0.0;
  uint64_t rss_bytes = 0;
  uint64_t peak_rss_bytes = 0;
  char group[kGroupChars] = {};
  char host[kHostChars] = {};
};

// A beat that says what `activity` shows now; the caller fills rank, host, memory and seconds.
Beat beat_of(const Activity::Snapshot& activity);

// This machine's name, as beats, the status and control.json carry it ("unknown" without one).
std::string host_name();

// One rank as rank 0 sees it, for the status and the reports.
struct RankLiveness {
  int rank = 0;
  std::string host;
  int64_t step = 0;
  bool paused = false;
  double seconds_since_heartbeat = 0.0;  // on rank 0, for rank 0 itself: 0
  // "all_reduce over dp, 4.0 MiB for 2.1 s", "computing step 7 for 0.3 s", "paused",
  // "finished", "not heard from yet".
  std::string activity;
  uint64_t rss_bytes = 0;
  uint64_t peak_rss_bytes = 0;
};

class LivenessTable {
 public:
  using Clock = std::chrono::steady_clock;

  // world_size ranks; `self` is the rank that keeps the table (its own beats are recorded as it
  // samples them); `watched` the ranks whose silence is a hang (rank 0: every other rank; the
  // others: rank 0). Every watched rank counts as heard at `start`.
  LivenessTable(int world_size, int self, std::vector<int> watched, Clock::time_point start);

  // A beat of beat.rank arrived (or, for self, was sampled) at `now`.
  void record(const Beat& beat, Clock::time_point now);

  // Every rank heard from or watched, by rank.
  std::vector<RankLiveness> ranks(Clock::time_point now) const;

  // Whether every watched rank has said it is done.
  bool watched_done() const;

  // The report of a hang at `now`, if there is one: a watched rank silent for more than `timeout`
  // seconds; or, with `check_progress` (rank 0), no rank that is running having advanced its
  // step or entered or left a collective for that long, when the report names the ranks that hold
  // the others up. Progress is not judged while any rank is paused, before every running rank has
  // begun its first step (loading a large checkpoint may take long), or once one has finished
  // (the others write their last files).
  std::optional<std::string> find_hang(Clock::time_point now, double timeout,
                                       bool check_progress) const;

 private:
  struct Entry {
    Beat beat;
    bool heard = false;
    Clock::time_point heard_at{};
    Clock::time_point progressed_at{};
  };
  RankLiveness liveness(int rank, Clock::time_point now) const;
  std::string describe(int rank, Clock::time_point now) const;
  std::string others(const std::vector<int>& skip, Clock::time_point now) const;

  int self_;
  std::vector<int> watched_;
  std::vector<Entry> entries_;  // by rank
};

}  // namespace keel::parallel
