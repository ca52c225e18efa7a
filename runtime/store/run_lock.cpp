#include "runtime/store/run_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <sstream>
#include <utility>

#include "kernels/error.h"
#include "runtime/store/durable_file.h"

namespace keel::runtime {

namespace fs = std::filesystem;

namespace {

// The lock file's text: pid, host, start time (UTC) and what the holder does, one a line.
std::string holder_text(const std::string& doing) {
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0) std::strcpy(host, "unknown");
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  ::gmtime_r(&now, &utc);
  char since[64];
  std::strftime(since, sizeof since, "%Y-%m-%d %H:%M:%S UTC", &utc);
  std::ostringstream text;
  text << ::getpid() << "\n" << host << "\n" << since << "\n" << doing << "\n";
  return text.str();
}

// The holder that the lock file open on fd names, as "being trained by pid 1234 on host h since
// ...". A holder that has locked but not yet written its name is "in use by another process".
std::string describe_holder(int fd) {
  char buf[1024];
  const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
  std::istringstream text(std::string(buf, n > 0 ? static_cast<size_t>(n) : 0));
  std::string pid, host, since, doing;
  if (!std::getline(text, pid) || !std::getline(text, host) || !std::getline(text, since) ||
      !std::getline(text, doing))
    return "in use by another process that has just started";
  return format("{} by pid {} on host {} since {}", doing, pid, host, since);
}

bool same_file(int fd, const std::string& path) {
  struct stat open_file {
  }, named{};
  return ::fstat(fd, &open_file) == 0 && ::stat(path.c_str(), &named) == 0 &&
         open_file.st_dev == named.st_dev && open_file.st_ino == named.st_ino;
}

}  // namespace

RunLock::RunLock(const std::string& dir, const RunLockUse& use)
    : dir_(dir), path_((fs::path(dir) / kRunLockFile).string()) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    created_dir_ = fs::create_directories(dir, ec);
    KEEL_CHECK(!ec && fs::is_directory(dir),
               "cannot create {} {}: {}; point {} at a directory that can be created and written",
               use.setting, dir, ec ? ec.message() : "it exists and is not a directory",
               use.setting);
  }
  try {
    // The previous holder removes the file as it lets go: a file opened just before that is no
    // longer the lock, so lock again whatever the path names now.
    for (int attempt = 0; fd_ < 0; ++attempt) {
      const int fd = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
      KEEL_CHECK(fd >= 0,
                 "cannot create the lock file {}: {}; point {} at a directory this user "
                 "can write",
                 path_, std::strerror(errno), use.setting);
      if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
        const int err = errno;
        const std::string holder = err == EWOULDBLOCK ? describe_holder(fd) : "";
        ::close(fd);
        KEEL_CHECK(err == EWOULDBLOCK,
                   "cannot lock {}: {} (a filesystem without flock?); point {} at a local "
                   "directory",
                   path_, std::strerror(err), use.setting);
        KEEL_FAIL("{} {} is {}; wait for it to finish, stop it, or {}", use.setting, dir, holder,
                  use.instead);
      }
      if (same_file(fd, path_)) {
        fd_ = fd;
      } else {
        ::close(fd);
        KEEL_CHECK(attempt < 100, "cannot lock {}: it is replaced as fast as it is opened", path_);
      }
    }
    const std::string text = holder_text(use.doing);
    KEEL_CHECK(::ftruncate(fd_, 0) == 0, "cannot write the lock file {}: {}", path_,
               std::strerror(errno));
    write_all(fd_, text.data(), text.size(), path_);
  } catch (...) {
    release();
    throw;
  }
}

RunLock::RunLock(RunLock&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      dir_(std::move(other.dir_)),
      path_(std::move(other.path_)),
      created_dir_(std::exchange(other.created_dir_, false)) {}

RunLock& RunLock::operator=(RunLock&& other) noexcept {
  if (this != &other) {
    release();
    fd_ = std::exchange(other.fd_, -1);
    dir_ = std::move(other.dir_);
    path_ = std::move(other.path_);
    created_dir_ = std::exchange(other.created_dir_, false);
  }
  return *this;
}

RunLock::~RunLock() { release(); }

void RunLock::release() noexcept {
  if (fd_ >= 0) {
    // Removed while still held, so that nobody locks a file that is about to vanish (the
    // constructor's same_file check catches one opened just before).
    ::unlink(path_.c_str());
    ::close(fd_);
    fd_ = -1;
  }
  // Only when it is still empty: a run that wrote anything keeps its directory.
  if (created_dir_) ::rmdir(dir_.c_str());
  created_dir_ = false;
}

}  // namespace keel::runtime
