// One writer per run directory: `keel train` and `keel import` hold an exclusive flock on
// <dir>/.keel.lock while they write there, the file naming the holder (pid, host, start time), so a
// second run on the same directory is refused at its start instead of interleaving metrics.jsonl
// and racing on checkpoint renames. The kernel drops a flock when its process dies, so the lock of
// a killed run is free again without anyone cleaning up. Readers (eval, generate, export) take
// none.
#pragma once

#include <string>

namespace keel::runtime {

inline constexpr const char* kRunLockFile = ".keel.lock";

// Who takes the lock, for the messages of whoever finds it held or cannot take it.
struct RunLockUse {
  std::string doing;    // written into the lock: "being trained", "being imported into"
  std::string setting;  // what named the directory: "training.output_dir", "--out"
  std::string instead;  // the fix when it is held: "set training.output_dir to another directory"
};

// Locks dir (created, with its parents, when missing) until destroyed. Throws, before anything
// is written, when dir cannot be created (naming it and the system's reason) or when another
// process holds the lock (naming that process). Move-only; on release the lock file is removed,
// and so is dir itself when the lock created it and it is still empty (a refused or failed run
// leaves nothing behind).
class RunLock {
 public:
  RunLock(const std::string& dir, const RunLockUse& use);
  RunLock(RunLock&& other) noexcept;
  RunLock& operator=(RunLock&& other) noexcept;
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;
  ~RunLock();

  // The lock file, <dir>/.keel.lock.
  const std::string& path() const { return path_; }

 private:
  void release() noexcept;

  int fd_ = -1;
  std::string dir_, path_;
  bool created_dir_ = false;
};

}  // namespace keel::runtime
