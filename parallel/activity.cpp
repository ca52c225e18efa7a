#include "parallel/activity.h"

namespace keel::parallel {

Activity::Snapshot Activity::snapshot() const {
  Snapshot s;
  for (;;) {
    const uint64_t before = seq_.load(std::memory_order_acquire);
    const uint8_t op = op_.load(std::memory_order_relaxed);
    const char* group = group_.load(std::memory_order_relaxed);
    const uint64_t bytes = bytes_.load(std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_acquire);
    if (before % 2 == 1 || seq_.load(std::memory_order_relaxed) != before) continue;
    s.in_collective = op != kNoOp;
    s.op = static_cast<CommOp>(s.in_collective ? op : 0);
    s.group = s.in_collective ? group : "";
    s.bytes = s.in_collective ? bytes : 0;
    s.sequence = before;
    break;
  }
  s.step = step_.load(std::memory_order_relaxed);
  s.paused = paused_.load(std::memory_order_relaxed);
  return s;
}

}  // namespace keel::parallel
