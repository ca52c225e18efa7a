// RunLock: one holder per directory, named to whoever is refused; the lock of a SIGKILLed holder
// is free again; a lock that created its directory removes it while it is still empty.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>

#include "file_test_util.h"
#include "runtime/store/run_lock.h"

namespace keel::runtime {
namespace {

namespace fs = std::filesystem;

class RunLockTest : public testing::FileTest {
 protected:
  const RunLockUse use_{"being trained", "training.output_dir",
                        "set training.output_dir to another directory"};
  std::string lock_text(const std::string& dir) const {
    std::ifstream f(dir + "/" + kRunLockFile);
    return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
  }
};

TEST_F(RunLockTest, SecondHolderIsRefusedNamingTheFirst) {
  const std::string run = path("run");
  {
    const RunLock lock(run, use_);
    EXPECT_EQ(lock.path(), run + "/.keel.lock");
    EXPECT_EQ(lock_text(run).rfind(std::to_string(::getpid()) + "\n", 0), 0u) << lock_text(run);
    // Another open file description of the same file: refused as another process would be.
    testing::expect_error([&] { const RunLock second(run, use_); },
                          "training.output_dir " + run + " is being trained by pid " +
                              std::to_string(::getpid()) + " on host ");
    testing::expect_error([&] { const RunLock second(run, use_); },
                          "; wait for it to finish, stop it, or set training.output_dir to "
                          "another directory");
    std::optional<RunLock> first(std::in_place, path("other"), use_);
    const RunLock taker(std::move(*first));
    first.reset();  // the moved-from lock lets go of nothing
    testing::expect_error([&] { const RunLock second(path("other"), use_); },
                          "is being trained by pid");
  }
  EXPECT_FALSE(fs::exists(run)) << "a lock that created an empty directory removes it";
  EXPECT_FALSE(fs::exists(path("other")));
  const RunLock again(run, use_);
  std::ofstream(run + "/metrics.jsonl") << "{}\n";
}

TEST_F(RunLockTest, KeepsADirectoryWithFiles) {
  const std::string run = path("run");
  {
    const RunLock lock(run, use_);
    std::ofstream(run + "/metrics.jsonl") << "{}\n";
  }
  EXPECT_TRUE(fs::exists(run + "/metrics.jsonl"));
  EXPECT_FALSE(fs::exists(run + "/.keel.lock"));
  fs::create_directories(path("existing"));
  { const RunLock lock(path("existing"), use_); }
  EXPECT_TRUE(fs::exists(path("existing"))) << "a directory the lock did not create stays";
}

TEST_F(RunLockTest, KilledHolderLeavesTheLockFree) {
  const std::string run = path("run");
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {  // holds the lock until killed
    const RunLock lock(run, use_);
    const char c = 1;
    if (::write(ready[1], &c, 1) != 1) ::_exit(2);
    for (;;) ::pause();
  }
  char c = 0;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  ::close(ready[0]);
  ::close(ready[1]);
  testing::expect_error([&] { const RunLock second(run, use_); },
                        "is being trained by pid " + std::to_string(child) + " on host ");
  ASSERT_EQ(::kill(child, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(fs::exists(run + "/.keel.lock")) << "SIGKILL leaves the file, not the flock";
  const RunLock lock(run, use_);
  EXPECT_EQ(lock_text(run).rfind(std::to_string(::getpid()) + "\n", 0), 0u) << lock_text(run);
}

TEST_F(RunLockTest, DirectoryThatCannotBeCreated) {
  const std::string file = write("file", "x");
  testing::expect_error([&] { const RunLock lock(file + "/run", use_); },
                        "cannot create training.output_dir " + file +
                            "/run: Not a directory; point training.output_dir at a directory "
                            "that can be created and written");
  testing::expect_error([&] { const RunLock lock(file, use_); },
                        "cannot create training.output_dir " + file + ": ");
}

}  // namespace
}  // namespace keel::runtime
