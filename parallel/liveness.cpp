#include "parallel/liveness.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <utility>

#include "kernels/error.h"
#include "parallel/communicator.h"

namespace keel::parallel {

std::string host_name() {
  char name[256] = {};
  if (::gethostname(name, sizeof name - 1) != 0 || name[0] == '\0') return "unknown";
  return name;
}

namespace {

double seconds_between(LivenessTable::Clock::time_point a, LivenessTable::Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

std::string seconds_text(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f s", s);
  return buf;
}

// A fixed char field as a string (NUL-terminated, or as long as the field).
template <size_t N>
std::string text_of(const char (&field)[N]) {
  return std::string(field, strnlen(field, N));
}

// What a beat says the rank does, without durations: "all_reduce over dp, 4.0 MiB",
// "computing step 7", "starting", "paused", "finished".
std::string doing(const Beat& b) {
  if (b.done) return "finished";
  if (b.paused) return "paused";
  if (b.in_collective)
    return describe_collective(static_cast<CommOp>(b.op), text_of(b.group).c_str(), b.bytes);
  return b.step > 0 ? format("computing step {}", b.step) : "starting (before step 1)";
}

// doing() with how long, `later` seconds after the beat was sent.
std::string doing_for(const Beat& b, double later) {
  std::string s = doing(b);
  if (b.done || b.paused) return s;
  const std::string t = seconds_text(b.seconds + later);
  return b.in_collective ? s + " for " + t : s + ", " + t + " since its last collective";
}

// "rank 3", "ranks 0, 2, 5", "ranks 0, 1, 2, 3, 4, 5, 6, 7 and 12 more".
std::string rank_list(const std::vector<int>& ranks) {
  constexpr size_t kShown = 8;
  std::string s = ranks.size() == 1 ? "rank " : "ranks ";
  for (size_t i = 0; i < ranks.size() && i < kShown; ++i)
    s += (i ? ", " : "") + std::to_string(ranks[i]);
  if (ranks.size() > kShown) s += format(" and {} more", ranks.size() - kShown);
  return s;
}

}  // namespace

Beat beat_of(const Activity::Snapshot& a) {
  Beat b;
  b.step = a.step;
  b.paused = a.paused;
  b.sequence = a.sequence;
  b.in_collective = a.in_collective;
  if (a.in_collective) {
    b.op = static_cast<uint8_t>(a.op);
    b.bytes = a.bytes;
    std::strncpy(b.group, a.group, sizeof b.group - 1);
  }
  return b;
}

LivenessTable::LivenessTable(int world_size, int self, std::vector<int> watched,
                             Clock::time_point start)
    : self_(self), watched_(std::move(watched)), entries_(static_cast<size_t>(world_size)) {
  KEEL_CHECK(0 <= self && self < world_size, "rank {} is outside a world of {}", self, world_size);
  for (Entry& e : entries_) e.heard_at = e.progressed_at = start;
  for (const int r : watched_)
    KEEL_CHECK(0 <= r && r < world_size && r != self, "cannot watch rank {} from rank {} of {}", r,
               self, world_size);
}

void LivenessTable::record(const Beat& beat, Clock::time_point now) {
  if (beat.rank < 0 || static_cast<size_t>(beat.rank) >= entries_.size()) return;
  Entry& e = entries_[static_cast<size_t>(beat.rank)];
  // A pause is progress: a run resumed after an hour's pause gets a whole timeout again.
  if (!e.heard || beat.step != e.beat.step || beat.sequence != e.beat.sequence || beat.paused)
    e.progressed_at = now;
  e.beat = beat;
  e.heard = true;
  e.heard_at = now;
}

RankLiveness LivenessTable::liveness(int rank, Clock::time_point now) const {
  const Entry& e = entries_[static_cast<size_t>(rank)];
  RankLiveness l;
  l.rank = rank;
  l.host = text_of(e.beat.host);
  l.step = e.beat.step;
  l.paused = e.beat.paused;
  l.seconds_since_heartbeat = rank == self_ ? 0.0 : seconds_between(e.heard_at, now);
  l.activity = e.heard ? doing_for(e.beat, l.seconds_since_heartbeat) : "not heard from yet";
  l.rss_bytes = e.beat.rss_bytes;
  l.peak_rss_bytes = e.beat.peak_rss_bytes;
  return l;
}

std::vector<RankLiveness> LivenessTable::ranks(Clock::time_point now) const {
  std::vector<RankLiveness> out;
  for (size_t r = 0; r < entries_.size(); ++r) {
    const int rank = static_cast<int>(r);
    if (entries_[r].heard || rank == self_ ||
        std::find(watched_.begin(), watched_.end(), rank) != watched_.end())
      out.push_back(liveness(rank, now));
  }
  return out;
}

bool LivenessTable::watched_done() const {
  return std::all_of(watched_.begin(), watched_.end(),
                     [&](int r) { return entries_[static_cast<size_t>(r)].beat.done != 0; });
}

// "rank 1 (host node7) at step 7, in all_reduce over dp, 4.0 MiB for 2.0 s".
std::string LivenessTable::describe(int rank, Clock::time_point now) const {
  const Entry& e = entries_[static_cast<size_t>(rank)];
  const std::string host = text_of(e.beat.host);
  std::string s = format("rank {} (host {})", rank, host.empty() ? "unknown" : host);
  if (!e.heard) return s + ", never heard from";
  const double ago = rank == self_ ? 0.0 : seconds_between(e.heard_at, now);
  if (rank != self_) s += format(", last heard {} ago", seconds_text(ago));
  return s + format(" at step {}: {}", e.beat.step, doing_for(e.beat, 0.0));
}

// The ranks heard from outside `skip`, grouped by what they do, each group with the longest time
// one of them has done it: "ranks 0, 2: all_reduce over dp, 4.0 MiB for 3.1 s at step 7".
std::string LivenessTable::others(const std::vector<int>& skip, Clock::time_point now) const {
  struct Group {
    std::vector<int> ranks;
    Beat beat;
    double seconds = 0.0;
  };
  std::map<std::string, Group> by_doing;
  std::vector<std::string> order;
  for (size_t r = 0; r < entries_.size(); ++r) {
    const int rank = static_cast<int>(r);
    const Entry& e = entries_[r];
    if (!e.heard || std::find(skip.begin(), skip.end(), rank) != skip.end()) continue;
    const std::string what = format("{} at step {}", doing(e.beat), e.beat.step);
    Group& g = by_doing[what];
    if (g.ranks.empty()) order.push_back(what), g.beat = e.beat;
    g.ranks.push_back(rank);
    const double later = rank == self_ ? 0.0 : seconds_between(e.heard_at, now);
    g.seconds = std::max(g.seconds, e.beat.seconds + later);
  }
  std::string s;
  for (const std::string& what : order) {
    Group& g = by_doing[what];
    g.beat.seconds = g.seconds;
    s += (s.empty() ? "" : "; ") + rank_list(g.ranks) + ": " + doing_for(g.beat, 0.0) +
         format(" at step {}", g.beat.step);
  }
  return s;
}

std::optional<std::string> LivenessTable::find_hang(Clock::time_point now, double timeout,
                                                    bool check_progress) const {
  const std::string limit = format("control.hang_timeout is {} s", timeout);
  std::vector<int> silent;
  for (const int r : watched_) {
    const Entry& e = entries_[static_cast<size_t>(r)];
    if (!e.beat.done && seconds_between(e.heard_at, now) > timeout) silent.push_back(r);
  }
  if (!silent.empty()) {
    std::string s = format("no heartbeat from {} for more than {} ({}): ", rank_list(silent),
                           seconds_text(timeout), limit);
    for (size_t i = 0; i < silent.size(); ++i) s += (i ? "; " : "") + describe(silent[i], now);
    const std::string rest = others(silent, now);
    if (!rest.empty()) s += ". Meanwhile " + rest;
    return s +
           ". Check whether that process was stopped (SIGSTOP), swapped out or killed, or its "
           "host is unreachable";
  }
  if (!check_progress) return std::nullopt;

  // The ranks still running: the table's own and every one heard from that has not finished.
  std::vector<int> live;
  Clock::time_point latest{};
  for (size_t r = 0; r < entries_.size(); ++r) {
    const Entry& e = entries_[r];
    if (!e.heard) continue;
    // Once a rank has finished, the others are past their last collective, writing their last
    // files, which may take long: only silence counts.
    if (e.beat.done) return std::nullopt;
    if (e.beat.paused) return std::nullopt;  // a paused run advances nothing, and is no hang
    // Before the first step a rank may load and initialise for long without a collective (a
    // checkpoint of a large model); there only silence counts.
    if (e.beat.step <= 0) return std::nullopt;
    live.push_back(static_cast<int>(r));
    latest = std::max(latest, e.progressed_at);
  }
  if (live.empty() || seconds_between(latest, now) <= timeout) return std::nullopt;

  // Who holds the others up: the ranks at the lowest step, less those waiting in the collective
  // that most ranks wait in (they are waiting for the others, not holding them up).
  int64_t lowest = INT64_MAX;
  std::map<std::pair<uint8_t, std::string>, int> waiting;
  for (const int r : live) {
    const Beat& b = entries_[static_cast<size_t>(r)].beat;
    lowest = std::min(lowest, b.step);
    if (b.in_collective) ++waiting[{b.op, text_of(b.group)}];
  }
  std::pair<uint8_t, std::string> common{0, ""};
  int most = 0;
  for (const auto& [key, n] : waiting)
    if (n > most) most = n, common = key;
  std::vector<int> lowest_ranks, culprits;
  for (const int r : live) {
    const Beat& b = entries_[static_cast<size_t>(r)].beat;
    if (b.step != lowest) continue;
    lowest_ranks.push_back(r);
    if (!(most > 0 && b.in_collective && b.op == common.first && text_of(b.group) == common.second))
      culprits.push_back(r);
  }
  if (culprits.empty()) culprits = lowest_ranks;  // all wait in the same collective: name them all

  std::string s = format(
      "no rank has advanced its step or finished a collective for {} ({}); {} {} "
      "the others up: ",
      seconds_text(seconds_between(latest, now)), limit, rank_list(culprits),
      culprits.size() == 1 ? "holds" : "hold");
  for (size_t i = 0; i < culprits.size(); ++i) s += (i ? "; " : "") + describe(culprits[i], now);
  const std::string rest = others(culprits, now);
  if (!rest.empty()) s += ". The others: " + rest;
  return s +
         ". Check for a rank stuck in a collective the others never entered, or in a long "
         "computation or I/O outside the collectives; raise control.hang_timeout if steps (or "
         "checkpoint saves) really take this long";
}

}  // namespace keel::parallel
