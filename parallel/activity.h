// What this rank is doing now — the step it attempts, whether the run is paused, the collective it
// is blocked in — written by the thread that trains and read, without ever blocking that thread,
// by the heartbeat thread (parallel/heartbeat.h) that tells rank 0. One per process; the
// communicators that carry one (Communicator::set_activity) record their blocking collectives in
// it, at the cost of a few relaxed atomic stores each.
#pragma once

#include <atomic>
#include <cstdint>

namespace keel::parallel {

enum class CommOp : uint8_t;

class Activity {
 public:
  // What a reader sees: one consistent picture (never the op of one collective with the bytes of
  // another).
  struct Snapshot {
    int64_t step = 0;     // the step being attempted (0: before the first)
    bool paused = false;  // the run is paused: a step that does not advance is no hang
    bool in_collective = false;
    CommOp op{};             // when in_collective
    const char* group = "";  // when in_collective: "dp", "tp", "world", ...
    uint64_t bytes = 0;      // when in_collective: the buffer's bytes on this rank
    // Bumped on every entry to and exit from a collective: a reader that sees it unchanged for a
    // while knows this rank neither finished nor started one in that time.
    uint64_t sequence = 0;
  };

  Activity() = default;
  Activity(const Activity&) = delete;
  Activity& operator=(const Activity&) = delete;

  // Called by the trainer before each step (runtime/train/trainer_run.cpp).
  void set_step(int64_t step) { step_.store(step, std::memory_order_relaxed); }
  // Called by the run's pause loop on entering and leaving a pause.
  void set_paused(bool paused) { paused_.store(paused, std::memory_order_relaxed); }

  // Entry to and exit from a blocking collective (or a Work::wait), called by the communicator
  // on the thread that trains, which alone writes. group must be a string with static storage (a
  // literal): the reader may look at it any time later.
  void enter(CommOp op, const char* group, uint64_t bytes) {
    begin_write();
    op_.store(static_cast<uint8_t>(op), std::memory_order_relaxed);
    group_.store(group, std::memory_order_relaxed);
    bytes_.store(bytes, std::memory_order_relaxed);
    end_write();
  }
  void leave() {
    begin_write();
    op_.store(kNoOp, std::memory_order_relaxed);
    end_write();
  }

  // Any thread; retries while the writer is mid-update (a few stores: it never waits long).
  Snapshot snapshot() const;

  // enter() on construction and leave() on destruction; nothing when activity is null (a
  // communicator that carries none).
  class Scope {
   public:
    Scope(Activity* activity, CommOp op, const char* group, uint64_t bytes) : a_(activity) {
      if (a_) a_->enter(op, group, bytes);
    }
    ~Scope() {
      if (a_) a_->leave();
    }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    Activity* a_;
  };

 private:
  static constexpr uint8_t kNoOp = 0xff;
  // A sequence lock with one writer: odd while the fields change. The stores are relaxed; the
  // fences order them against the sequence (free on x86, a barrier instruction on ARM).
  void begin_write() {
    const uint64_t s = seq_.load(std::memory_order_relaxed);
    seq_.store(s + 1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_release);
  }
  void end_write() {
    seq_.store(seq_.load(std::memory_order_relaxed) + 1, std::memory_order_release);
  }

  std::atomic<int64_t> step_{0};
  std::atomic<bool> paused_{false};
  std::atomic<uint64_t> seq_{0};
  std::atomic<uint8_t> op_{kNoOp};
  std::atomic<const char*> group_{""};
  std::atomic<uint64_t> bytes_{0};
};

}  // namespace keel::parallel
