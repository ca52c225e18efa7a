// Hang detection for a multi-rank job: on every rank a background thread sends a small beat (step,
// paused, the collective in progress, memory, host) to rank 0 every interval, and rank 0 beats to
// the others, over a duplicate of the world communicator of its own, so that beats never match
// the trainer's messages. A rank silent for control.hang_timeout (stopped, swapped out, its host
// gone), or a job in which no rank has advanced for that long, is reported in one paragraph — on
// stderr, in the rank's log and to on_hang — and the job is ended instead of left hanging.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "parallel/activity.h"
#include "parallel/communicator.h"
#include "parallel/liveness.h"

namespace keel::parallel {

struct HeartbeatOptions {
  // Seconds of silence (or, on rank 0, of no progress anywhere) that make a hang; > 0.
  double hang_timeout = 300.0;
  // Seconds between beats; 0: min(1 s, hang_timeout / 4).
  double interval = 0.0;
  // The report is appended to this file (the rank's log); "": none.
  std::string log_path;
  // Called on the heartbeat thread with the report, before the job ends.
  std::function<void(const std::string& report)> on_hang;
  // Ends the job (the launcher's World::abort); called on the heartbeat thread with the report,
  // which it prints. Empty: MpiSession::abort(1, report). If it returns, the heartbeat stops.
  std::function<void(const std::string& report)> end_job;
};

class Heartbeat {
 public:
  // Starts the thread. Collective over world (it duplicates it), which must be an MPI world
  // communicator of more than one rank, opened with MPI_THREAD_MULTIPLE, and outlive this object.
  // activity is this rank's, written by the thread that trains.
  Heartbeat(Communicator& world, const Activity& activity, HeartbeatOptions options);
  // Without finish(): stops the thread at once and says nothing to the other ranks (the way out
  // when an error ends the job anyway).
  ~Heartbeat();
  Heartbeat(const Heartbeat&) = delete;
  Heartbeat& operator=(const Heartbeat&) = delete;

  // At the end of a run, on every rank: tells the others this rank is done, then waits — still
  // watching for hangs — until rank 0 (on rank 0: every rank) has said the same, so that no rank
  // takes another's normal exit for a hang. Returns within a poll (~10 ms) of the last rank's
  // call. Call it before MPI is finalized.
  void finish();

  // Every rank as this one sees it (rank 0: all of them; another rank: itself and rank 0).
  // Thread-safe; for the status.
  std::vector<RankLiveness> ranks() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace keel::parallel
